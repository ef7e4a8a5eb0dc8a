"""``rollback()``: return a deployment to the artifact each device served before its current one."""

from __future__ import annotations

from collections.abc import Iterable

from edgectl.builders import ArtifactStore
from edgectl.errors import EdgectlError, NotFoundError
from edgectl.plan import selects
from edgectl.runs import RunRecord
from edgectl.signing import rollback_deployment, signers_for
from edgectl.spec import Spec

from edgectl.apply.observe import endpoint_of, observe, select_devices
from edgectl.apply.report import DeviceResult, Events, Recorded


def rollback(spec: Spec, deployment: str, *, device_names: Iterable[str] | None = None,
             events: Events | None = None, record: RunRecord | None = None,
             store: ArtifactStore | None = None) -> list[DeviceResult]:
    """Return ``deployment`` to the artifact each device served before its current one (the agent keeps it).
    ``store``: where edgectl's built artifacts are (default: the user's store); it signs only rollbacks to those."""
    events = Recorded(events or Events(), record)
    if deployment not in spec.deployments:
        raise NotFoundError(f"no deployment named '{deployment}' in the manifests",
                            hint="known deployments: " + (", ".join(sorted(spec.deployments)) or "(none)"))
    selector = spec.deployments[deployment].spec.selector
    devices = [d for d in select_devices(spec, device_names) if device_names or selects(selector, d)]
    signers = signers_for(spec, devices)
    results = []
    for name, ctx in observe(devices, start_agents=False, signers=signers).items():
        res = DeviceResult(name, endpoint=endpoint_of(ctx))
        results.append(res)
        cur = next((d for d in (ctx.observed.deployments if ctx.observed else []) if d.name == deployment), None)
        if ctx.error or ctx.client is None:
            res.error = ctx.error or f"device '{name}': no agent answers"
        elif cur is None or cur.desired is None:
            res.error = f"device '{name}': '{deployment}' is not deployed there"
        elif cur.previous is None:
            res.error = f"device '{name}': '{deployment}' has no previous artifact to return to"
        else:
            try:
                ctx.client.put_deployment(rollback_deployment(cur.desired, cur.previous, signer=ctx.signer,
                                                              store=store or ArtifactStore()))
                msg = f"{deployment}: rolled back {cur.active.digest[7:19] if cur.active else '-'} → " \
                      f"{cur.previous.digest[7:19]} ({cur.previous.format} {cur.previous.quant})"
                events.info(name, msg)
                res.actions.append(msg)
            except EdgectlError as e:
                res.error = str(e)
    return results

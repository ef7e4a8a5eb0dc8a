"""edgectl's own rollout engine: one deployment's waves over the devices' transports, the devices of a wave in
parallel threads, each through :func:`edgectl.apply.steps.deploy_one`. The rules (waves, halting, gate) are those
of :mod:`edgectl.apply.rollout`, shared with the Ansible engine (:mod:`edgectl.apply.ansible`)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from edgectl.builders import ArtifactStore
from edgectl.plan import DevicePlan
from edgectl.runs import RunRecord
from edgectl.spec import Device, Spec

from edgectl.apply.observe import DeviceContext
from edgectl.apply.report import DeviceResult, Events
from edgectl.apply.rollout import Halting, is_canary, unavailable_halt, wave_label, waves
from edgectl.apply.steps import Artifacts, deploy_one, roll_back

ENGINES = ("ssh", "ansible")


def engine_of(spec: Spec, device: Device, override: str | None = None) -> str:
    """'ansible' when the device is reached over SSH and its fleet (or ``override``) says so, else 'ssh' (edgectl's
    own transports; local devices always use them)."""
    if device.transport.type != "ssh":
        return "ssh"
    if override is not None:
        return override
    return next((f.spec.engine for f in spec.fleets.values() if any(d.name == device.name for d in f.spec.devices)),
                "ssh")


def rollout(spec: Spec, name: str, targets: list[DevicePlan], contexts: dict[str, DeviceContext],
            store: ArtifactStore, artifacts: Artifacts, results: dict[str, DeviceResult], events: Events,
            parallel: int, record: RunRecord | None) -> str | None:
    """Deploy ``name`` to ``targets`` wave by wave; returns why the rollout halted, or None."""
    rules = spec.deployments[name].spec.rollout
    unreachable = [dp.device for dp in targets if contexts[dp.device].error or contexts[dp.device].client is None]
    why = unavailable_halt(name, rules, [dp.device for dp in targets], unreachable)
    if why:
        events.info(None, "halted " + why)
        return why
    by_name = {dp.device: dp for dp in targets if dp.device not in unreachable}
    order = waves(rules, list(by_name))
    halting = Halting(name, rules, order)
    for index, wave in enumerate(order):
        w = record.wave(name, index, wave, canary=is_canary(rules, index)) if record else {}
        events.info(None, f"{name}: {wave_label(rules, index, len(order))}: " + ", ".join(wave))
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(wave)))) as pool:
            outcomes = list(pool.map(lambda d: deploy_one(spec, by_name[d], name, contexts[d], store, artifacts,
                                                          results[d], events), wave))
        why = halting.after_wave(index, sum(1 for ok in outcomes if not ok))
        if why:
            w["outcome"] = "failed"
            for d, ok in zip(wave, outcomes):
                if ok and rules.rollback:
                    roll_back(name, contexts[d], results[d], events, "the wave failed", store)
            for d in halting.later(index):
                results[d].actions.append(f"{name}: not started (rollout halted)")
            events.info(None, "halted " + why)
            return why
        w["outcome"] = halting.outcome()
    return None

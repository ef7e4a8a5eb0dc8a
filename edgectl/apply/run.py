"""``apply()``: make the devices match the manifests.

Order of work, so that bad input changes nothing: observe (read-only) -> plan once (with the store's cache hits,
looked up before planning) -> refuse unfit -> start agents only where there is work (the Ansible engine's devices
through the playbook's bootstrap), and replace agents that verify nothing on devices whose fleet signs -> only then
observe those again and plan again with the hardware they report and what they serve -> build everything planned
(a fresh artifact whose measured quality misses its deployment's floor makes the plan run again with that figure, and
is never deployed) ->
per deployment, its rollout (edgectl.apply.engine or edgectl.apply.ansible, same rules) -> remove what is no longer
selected. A device that could not be observed (unreachable, an agent that is not this edgectl's) is a failure of the
run, never "no changes". The result says exactly what happened where.
"""

from __future__ import annotations

from collections.abc import Iterable

from edgectl.agents.lifecycle import runs_unverified
from edgectl.builders import ArtifactStore
from edgectl.delivery import DELIVERY_MODES, by_delivery, mode_function
from edgectl.errors import EdgectlError, PlanError
from edgectl.plan import Plan, selects
from edgectl.plan.planner import AUTO_RUNTIME_ORDER
from edgectl.runs import RunRecord
from edgectl.signing import signers_for
from edgectl.spec import BuiltArtifact, Spec

from edgectl.apply import ansible
from edgectl.apply.engine import ENGINES, engine_of
from edgectl.apply.engine import rollout as engine_rollout
from edgectl.apply.observe import OBSERVE_PARALLEL, DeviceContext, endpoint_of, observe, select_devices
from edgectl.apply.planning import build_to_the_floor, make_plan, rejected_error
from edgectl.apply.report import ApplyResult, DeviceResult, Events, Recorded
from edgectl.apply.steps import dep_plan



def apply(spec: Spec, *, store: ArtifactStore, device_names: Iterable[str] | None = None,
          skip_unfit: bool = False, events: Events | None = None, parallel: int = 8,
          record: RunRecord | None = None, engine: str | None = None) -> ApplyResult:
    """``engine``: 'ssh' or 'ansible' for every SSH device, overriding each fleet's ``spec.engine``."""
    if engine is not None and engine not in ENGINES:
        raise PlanError(f"unknown engine '{engine}'", hint="use one of: " + ", ".join(ENGINES))
    events = Recorded(events or Events(), record)
    devices = select_devices(spec, device_names)
    groups = by_delivery(devices)
    if set(groups) != {"push"} and devices:  # other modes (pull: published to a registry, never connected to)
        done = [mode_function(DELIVERY_MODES[mode].publish)(spec, group, store=store, events=events,
                                                            skip_unfit=skip_unfit)
                for mode, group in groups.items() if mode != "push"]
        if "push" in groups:
            done.append(apply(spec, store=store, device_names=[d.name for d in groups["push"]],
                              skip_unfit=skip_unfit, events=events.inner, parallel=parallel, record=record,
                              engine=engine))
        if len(done) == 1:
            return done[0]
        return ApplyResult(Plan([dp for r in done for dp in r.plan.devices]), [d for r in done for d in r.devices],
                           halted=[h for r in done for h in r.halted])
    signers = signers_for(spec, devices)  # a bad key stops here, before anything changes
    contexts = observe(devices, start_agents=False, parallel=max(parallel, OBSERVE_PARALLEL), signers=signers)
    built: dict[str, BuiltArtifact] = {}  # the store's cache hits, looked up once for every plan of this run
    p = make_plan(spec, contexts, store, built)
    _refuse_unfit(p, skip_unfit)
    # A reachable device with profile 'auto' and no agent yet plans as "unknown": its agent must start (and
    # report the hardware) before it can be planned.
    unobserved = [dp.device for dp in p.devices if dp.status == "unknown" and contexts[dp.device].error is None
                  and any(selects(d.spec.selector, contexts[dp.device].device) for d in spec.deployments.values())]
    # An agent started before its fleet turned signing on verifies nothing: it is work even when the plan is empty
    # (the agent lifecycle replaces it with one pinned to the fleet's key).
    unverified = [n for n, c in contexts.items() if c.error is None and c.client is not None
                  and runs_unverified(c.signer.public_pem if c.signer else None, c.facts)]
    if p.is_empty and not unobserved and not unverified and not any(c.error for c in contexts.values()):
        return ApplyResult(p, [DeviceResult(d.name, endpoint=endpoint_of(contexts[d.name])) for d in devices])

    by_ansible = {d.name for d in devices if engine_of(spec, d, engine) == "ansible"}
    waiting, boot_actions = _start_agents(spec, p, contexts, unobserved, by_ansible, events, parallel, signers)
    if unverified:  # the pinned agent recovers only signed deployments: plan again with what it serves
        _pin_unverified(unverified, contexts, boot_actions, events, parallel, signers)
    if waiting or unverified:  # they report their hardware (and what they serve) now: plan again with it
        p = make_plan(spec, contexts, store, built)

    # build; a fresh artifact below its deployment's quality floor makes the plan run again (never deployed)
    p, artifacts, rejected = build_to_the_floor(spec, p, contexts, store, built, events)
    results = {dp.device: DeviceResult(dp.device, endpoint=endpoint_of(contexts[dp.device]),
                                       actions=list(boot_actions.get(dp.device, [])) + rejected.get(dp.device, []))
               for dp in p.devices}
    for dp in p.devices:
        if contexts[dp.device].error:  # never "no changes" for a device that could not be observed
            results[dp.device].error = contexts[dp.device].error
        elif rejected_error(dp, rejected):  # its fresh artifact missed the quality floor, and nothing else fits
            results[dp.device].error = rejected_error(dp, rejected)
        elif dp.status != "ok" and dp.device in waiting:
            # fit by its profile, not by what its agent reports
            why = "; ".join(f"{d.deployment}: {d.unfit}" + (f" ({d.hint})" if d.hint else "")
                            for d in dp.deployments if d.unfit) or (dp.hint or "")
            results[dp.device].error = (f"device '{dp.device}' is {dp.status} by the hardware its agent reports "
                                        f"(the plan before it started used the profile): {why}; nothing was pushed")
    halted: list[str] = []
    for name in sorted(spec.deployments):
        targets = [dp for dp in p.devices if dp.status == "ok" and dep_plan(dp, name) is not None
                   and dep_plan(dp, name).steps]
        for run_rollout, mine in ((engine_rollout, [dp for dp in targets if dp.device not in by_ansible]),
                                  (ansible.rollout, [dp for dp in targets if dp.device in by_ansible])):
            if mine:
                why = run_rollout(spec, name, mine, contexts, store, artifacts, results, events, parallel, record)
                if why:
                    halted.append(why)
    fresh = [contexts[n].device for n in by_ansible if n in results and contexts[n].client is None]
    if fresh:  # agents the playbook started: observe them now for what they serve
        contexts.update(observe(fresh, start_agents=False, signers=signers))
    _remove_and_read_serving(p, contexts, results, events)
    return ApplyResult(p, [results[dp.device] for dp in p.devices], halted=halted)


def _refuse_unfit(p: Plan, skip_unfit: bool) -> None:
    if p.unfit and not skip_unfit:
        names = ", ".join(dp.device for dp in p.unfit)
        raise PlanError(f"a deployment fits on no artifact for: {names}; nothing was changed",
                        hint="see `edgectl plan` for the numbers; shrink context_length/parallel, choose a smaller "
                             "model, or pass --skip-unfit to deploy to the devices that fit")


def _start_agents(spec: Spec, p: Plan, contexts: dict[str, DeviceContext], unobserved: list[str],
                  by_ansible: set[str], events: Events, parallel: int, signers: dict
                  ) -> tuple[list[str], dict[str, list[str]]]:
    """Start agents only where there is work (the Ansible engine's devices through the playbook's own bootstrap,
    the others through edgectl's transports), then observe those again: a restarted agent may already serve (it
    recovers its last good state from disk), which can make steps unnecessary. Returns the devices that waited for
    an agent, and what the playbook did on each."""
    busy = [dp.device for dp in p.devices if dp.status == "ok" and dp.steps] + unobserved
    waiting = [n for n in busy if contexts[n].client is None and contexts[n].error is None]
    if not waiting:
        return [], {}
    needed = {dp.device: {dep.chosen.runtime for dep in dp.deployments if dep.chosen is not None}
              for dp in p.devices}
    for n in unobserved:  # the runtime an 'auto' profile falls back to when the agent has none
        needed[n] = {AUTO_RUNTIME_ORDER[0]}
    booted = [n for n in waiting if n in by_ansible]
    restarted = [n for n in waiting if n not in by_ansible]
    boot_actions: dict[str, list[str]] = {}
    for n in waiting:
        events.info(n, "starting agent")
        if contexts[n].transport is not None:
            contexts[n].transport.close()
    if booted:
        boot_actions = ansible.bootstrap(booted, needed, contexts, events, parallel)
        contexts.update(observe([contexts[n].device for n in booted if contexts[n].error is None],
                                start_agents=False, parallel=parallel, signers=signers))
    if restarted:
        contexts.update(observe([contexts[n].device for n in restarted], start_agents=True, runtimes=needed,
                                parallel=parallel, signers=signers, events=events))
    return waiting, boot_actions


def _pin_unverified(names: list[str], contexts: dict[str, DeviceContext], actions: dict[str, list[str]],
                    events: Events, parallel: int, signers: dict) -> None:
    """Replace the agents that verify nothing on devices whose fleet signs: the lifecycle stops each and starts one
    pinned to the fleet's key (trust on first use, as at a first install); it recovers what it served from disk."""
    for n in names:
        events.info(n, "replacing the agent: it verifies no signatures, and this fleet signs")
        contexts[n].transport.close()
    needed = {n: {d.desired.runtime for d in (contexts[n].observed.deployments if contexts[n].observed else [])
                  if d.desired is not None} for n in names}
    contexts.update(observe([contexts[n].device for n in names], start_agents=True, runtimes=needed,
                            parallel=parallel, signers=signers))
    for n in names:
        actions.setdefault(n, []).append("agent replaced by one pinned to the fleet's verify key")


def _remove_and_read_serving(p: Plan, contexts: dict[str, DeviceContext], results: dict[str, DeviceResult],
                             events: Events) -> None:
    """Remove the deployments no longer selected, then note what each device serves."""
    for dp in p.devices:
        ctx, res = contexts[dp.device], results[dp.device]
        if dp.removals and ctx.client is not None and not ctx.error:
            try:
                for step in dp.removals:
                    events.info(dp.device, f"remove {step.deployment}")
                    ctx.client.delete_deployment(step.deployment)
                    res.actions.append(f"removed {step.deployment}")
            except EdgectlError as e:
                res.error = str(e)
        if ctx.client is not None:
            try:
                state = ctx.client.state()
                res.serving = [d.name for d in state.deployments if d.state == "serving"]
            except EdgectlError:
                pass

"""Run a plan: build what is missing, push it, activate it, remove what is no longer desired.

Order of work, so that bad input changes nothing: observe (read-only) -> plan -> refuse unfit -> start agents only
where there is work (the ansible engine's devices through the playbook's bootstrap) -> re-observe those and plan
again with the hardware they report -> build everything planned -> per deployment, its rollout: waves of
devices (all at once, rolling, or a canary first), devices of a wave in parallel, each pushed, activated and passed
through the health gate; a device that fails is rolled back to what it served before; too many failures halt the
rollout and roll the wave back -> remove what is no longer selected. The result says exactly what happened where.
"""

from __future__ import annotations

import json
import platform
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgectl_agent import __version__ as AGENT_VERSION
from edgectl_agent.api import AgentState, ArtifactRef, DesiredDeployment, Facts
from edgectl_agent.signing import KEY_UNUSABLE

from edgectl.agent_client import AgentClient, SmokeResult
from edgectl.builders import ArtifactStore, build, builder_for, lookup
from edgectl.builders.sources import is_available
from edgectl.errors import EdgectlError, NotFoundError, PlanError
from edgectl.plan import DeploymentPlan, DevicePlan, Plan, compat, plan, recipe_id, selects
from edgectl.plan.planner import AUTO_RUNTIME_ORDER
from edgectl.runs import RunRecord
from edgectl.signing import Signer, rollback_deployment, signed, signers_for
from edgectl.spec import BuiltArtifact, Device, Recipe, Spec
from edgectl.spec.deployment import HealthGate, Rollout, resolve_count
from edgectl.agents import connect
from edgectl.transport import Transport
from edgectl.transport.local import VERIFY_KEY_FILE

# Observing (read-only: an SSH handshake and a few small requests per device) waits on the network and the devices
# far more than it computes, so it overlaps more devices than a rollout works on at once (--parallel).
OBSERVE_PARALLEL = 32
# A push needs the bytes still missing on the device plus this share free on its store (what the agent reports right
# before the push): room for the runtime's own files and the state, and never a device filled to the last byte.
DISK_MARGIN = 0.10


class Refused(PlanError):
    """A device refused before anything was changed on it (nothing to roll back)."""


class Events:
    """What apply reports while it works. The CLI subclasses this to render with Rich; the default is silent.
    Devices of a wave report from several threads."""

    def info(self, device: str | None, message: str) -> None:  # noqa: D401 - callback
        pass

    def progress(self, key: str, description: str, done: int, total: int) -> None:
        pass


class _Recorded(Events):
    """Forwards events (one at a time) and copies the messages into the run record."""

    def __init__(self, inner: Events, record: RunRecord | None) -> None:
        self.inner, self.record, self._lock = inner, record, threading.Lock()

    def info(self, device: str | None, message: str) -> None:
        with self._lock:
            self.inner.info(device, message)
        if self.record is not None:
            self.record.event(device, message)

    def progress(self, key: str, description: str, done: int, total: int) -> None:
        with self._lock:
            self.inner.progress(key, description, done, total)


@dataclass
class DeviceContext:
    device: Device
    transport: Transport | None = None
    client: AgentClient | None = None
    facts: Facts | None = None
    observed: AgentState | None = None
    error: str | None = None
    signer: Signer | None = None  # the device's fleet signing key (None: deployments go unsigned)


@dataclass
class DeviceResult:
    device: str
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    endpoint: str | None = None
    serving: list[str] = field(default_factory=list)


@dataclass
class ApplyResult:
    plan: Plan
    devices: list[DeviceResult]
    halted: list[str] = field(default_factory=list)  # why a deployment's rollout stopped early

    @property
    def ok(self) -> bool:
        return not self.failed and not self.halted

    @property
    def failed(self) -> list[DeviceResult]:
        return [d for d in self.devices if d.error]

    @property
    def changed(self) -> bool:
        return any(d.actions for d in self.devices)


def select_devices(spec: Spec, names: Iterable[str] | None) -> list[Device]:
    devices = spec.devices
    if not names:
        return list(devices.values())
    out = []
    for n in names:
        if n not in devices:
            raise NotFoundError(f"no device named '{n}' in the manifests",
                                hint="known devices: " + (", ".join(sorted(devices)) or "(none)"))
        out.append(devices[n])
    return out


def observe(devices: Iterable[Device], *, start_agents: bool, runtimes: dict[str, set[str]] | None = None,
            parallel: int = OBSERVE_PARALLEL, signers: dict[str, Signer | None] | None = None
            ) -> dict[str, DeviceContext]:
    """Reach each device's agent (starting it only if asked, able to run ``runtimes[device]``) and read its facts
    and state; ``parallel`` devices at a time (a fleet's SSH handshakes and agent starts overlap). ``signers``:
    per device, its fleet's signing key (a local agent started now is pinned to its public key)."""
    devices = list(devices)

    def one(device: Device) -> DeviceContext:
        ctx = DeviceContext(device, signer=(signers or {}).get(device.name))
        try:
            ctx.transport = connect(device, verify_key=ctx.signer.public_pem if ctx.signer else None)
            ctx.client = ctx.transport.agent(start=start_agents, runtimes=(runtimes or {}).get(device.name, ()))
            if ctx.client is not None:
                ctx.facts = ctx.client.facts()
                ctx.observed = ctx.client.state()
            else:
                ctx.facts = ctx.transport.facts_without_agent()
        except EdgectlError as e:
            ctx.error = str(e)
        return ctx

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(devices)))) as pool:
        return {ctx.device.name: ctx for ctx in pool.map(one, devices)}


def close_contexts(contexts: dict[str, DeviceContext]) -> None:
    """Close every agent client and transport ``observe`` opened (SSH connections, docker clients, HTTP pools)."""
    for ctx in contexts.values():
        for thing in (ctx.client, ctx.transport):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                    pass


def make_plan(spec: Spec, contexts: dict[str, DeviceContext], store: ArtifactStore) -> Plan:
    """Plan twice when needed: once to learn the chosen recipes, then with what the local store already holds
    (so steps skip builds that are cache hits). The planner itself stays pure."""
    facts = {n: c.facts for n, c in contexts.items()}
    observed = {n: c.observed for n, c in contexts.items()}
    available = available_sources(spec)
    first = plan(spec, facts, observed, {}, devices=list(contexts), available=available)
    built = find_built(spec, first, store)
    return plan(spec, facts, observed, built, devices=list(contexts), available=available) if built else first


def available_sources(spec: Spec) -> dict[str, frozenset[int]]:
    """Per deployed model, the indexes of its sources present on this machine, so the planner prefers formats that
    can be built here. Nothing is downloaded or hashed."""
    return {name: frozenset(i for i, s in enumerate(spec.models[name].spec.sources) if is_available(s))
            for name in sorted({d.spec.model for d in spec.deployments.values()})}


def find_built(spec: Spec, p: Plan, store: ArtifactStore) -> dict[str, BuiltArtifact]:
    built: dict[str, BuiltArtifact] = {}
    for recipe in chosen_recipes(p):
        model = spec.models[recipe.model]
        try:
            art = lookup(recipe, model, store)
        except EdgectlError:
            art = None  # the build step will report the real problem
        if art is not None:
            built[recipe_id(recipe)] = art
    return built


def chosen_recipes(p: Plan) -> list[Recipe]:
    seen: dict[str, Recipe] = {}
    for dp in p.devices:
        for dep in dp.deployments:
            if dep.chosen is not None:
                seen.setdefault(recipe_id(dep.chosen.recipe), dep.chosen.recipe)
    return list(seen.values())


def build_planned(spec: Spec, p: Plan, store: ArtifactStore, events: Events,
                  only: set[str] | None = None) -> dict[str, tuple[BuiltArtifact, bool]]:
    """Build every chosen recipe (cache hits do no work). ``only``: recipe ids to build."""
    out: dict[str, tuple[BuiltArtifact, bool]] = {}
    for recipe in chosen_recipes(p):
        rid = recipe_id(recipe)
        if only is not None and rid not in only:
            continue
        label = f"{recipe.model} {recipe.format} {recipe.quant}"

        def progress(stage: str, done: int, total: int | None, _rid: str = rid, _label: str = label) -> None:
            events.progress(f"{_rid}:{stage}", f"{stage} {_label}", done, total)

        events.info(None, f"build {label}")
        out[rid] = build(recipe, spec.models[recipe.model], store, progress=progress)
    return out


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


def apply(spec: Spec, *, store: ArtifactStore, device_names: Iterable[str] | None = None,
          skip_unfit: bool = False, events: Events | None = None, parallel: int = 8,
          record: RunRecord | None = None, engine: str | None = None) -> ApplyResult:
    """``engine``: 'ssh' or 'ansible' for every SSH device, overriding each fleet's ``spec.engine``."""
    if engine is not None and engine not in ENGINES:
        raise PlanError(f"unknown engine '{engine}'", hint="use one of: " + ", ".join(ENGINES))
    events = _Recorded(events or Events(), record)
    devices = select_devices(spec, device_names)
    signers = signers_for(spec, devices)  # a bad key stops here, before anything changes
    contexts = observe(devices, start_agents=False, parallel=max(parallel, OBSERVE_PARALLEL), signers=signers)
    p = make_plan(spec, contexts, store)
    if p.unfit and not skip_unfit:
        names = ", ".join(dp.device for dp in p.unfit)
        raise PlanError(f"a deployment fits on no artifact for: {names}; nothing was changed",
                        hint="see `edgectl plan` for the numbers; shrink context_length/parallel, choose a smaller "
                             "model, or pass --skip-unfit to deploy to the devices that fit")
    # A reachable device with profile 'auto' and no agent yet plans as "unknown": its agent must start (and
    # report the hardware) before it can be planned.
    unobserved = [dp.device for dp in p.devices if dp.status == "unknown" and contexts[dp.device].error is None
                  and any(selects(d.spec.selector, contexts[dp.device].device) for d in spec.deployments.values())]
    if p.is_empty and not unobserved:
        return ApplyResult(p, [DeviceResult(d.name, endpoint=_endpoint(contexts[d.name])) for d in devices])

    # Start agents only where there is work, then observe those again: a restarted agent may already
    # serve (it recovers its last good state from disk), which can make steps unnecessary.
    busy = [dp.device for dp in p.devices if dp.status == "ok" and dp.steps] + unobserved
    by_ansible = {d.name for d in devices if engine_of(spec, d, engine) == "ansible"}
    waiting = [n for n in busy if contexts[n].client is None and contexts[n].error is None]
    needed = {dp.device: {dep.chosen.runtime for dep in dp.deployments if dep.chosen is not None}
              for dp in p.devices}
    for n in unobserved:  # the runtime an 'auto' profile falls back to when the agent has none
        needed[n] = {AUTO_RUNTIME_ORDER[0]}
    # Agents start before the plan that deploys is made (it needs the hardware they report): the ansible engine's
    # devices through the playbook's own bootstrap, the others through edgectl's transports.
    booted = [n for n in waiting if n in by_ansible]
    restarted = [n for n in waiting if n not in by_ansible]
    boot_actions: dict[str, list[str]] = {}
    for n in waiting:
        events.info(n, "starting agent")
        if contexts[n].transport is not None:
            contexts[n].transport.close()
    if booted:
        boot_actions = _bootstrap_ansible(booted, needed, contexts, events, parallel)
        contexts.update(observe([contexts[n].device for n in booted if contexts[n].error is None],
                                start_agents=False, parallel=parallel, signers=signers))
    if restarted:
        contexts.update(observe([contexts[n].device for n in restarted], start_agents=True, runtimes=needed,
                                parallel=parallel, signers=signers))
    if waiting:
        p = make_plan(spec, contexts, store)

    needs_build = {recipe_id(dep.chosen.recipe) for dp in p.devices for dep in dp.deployments
                   if dep.chosen is not None and any(s.action == "build" for s in dep.steps)}
    artifacts: dict[str, tuple[BuiltArtifact, bool]] = {}
    if needs_build:
        artifacts.update(build_planned(spec, p, store, events, only=needs_build))
    results = {dp.device: DeviceResult(dp.device, endpoint=_endpoint(contexts[dp.device]),
                                       actions=list(boot_actions.get(dp.device, []))) for dp in p.devices}
    for dp in p.devices:
        if contexts[dp.device].error and (dp.steps or dp.device in unobserved):
            results[dp.device].error = contexts[dp.device].error
        elif dp.status != "ok" and dp.device in waiting:
            # fit by its profile, not by what its agent reports
            why = "; ".join(f"{d.deployment}: {d.unfit}" + (f" ({d.hint})" if d.hint else "")
                            for d in dp.deployments if d.unfit) or (dp.hint or "")
            results[dp.device].error = (f"device '{dp.device}' is {dp.status} by the hardware its agent reports "
                                        f"(the plan before it started used the profile): {why}; nothing was pushed")
    halted: list[str] = []
    for name in sorted(spec.deployments):
        targets = [dp for dp in p.devices if dp.status == "ok" and _dep_plan(dp, name) is not None
                   and _dep_plan(dp, name).steps]
        own = [dp for dp in targets if dp.device not in by_ansible]
        if own:
            why = _rollout(spec, name, own, contexts, store, artifacts, results, events, parallel, record)
            if why:
                halted.append(why)
        handed = [dp for dp in targets if dp.device in by_ansible]
        if handed:
            why = _rollout_ansible(spec, name, handed, contexts, store, artifacts, results, events, parallel, record)
            if why:
                halted.append(why)
    fresh = [contexts[n].device for n in by_ansible if n in results and contexts[n].client is None]
    if fresh:  # agents the playbook started: observe them now for what they serve
        contexts.update(observe(fresh, start_agents=False, signers=signers))
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
    return ApplyResult(p, [results[dp.device] for dp in p.devices], halted=halted)


def _dep_plan(dp: DevicePlan, name: str) -> DeploymentPlan | None:
    return next((d for d in dp.deployments if d.deployment == name), None)


def waves(rollout: Rollout, devices: list[str]) -> list[list[str]]:
    """The rollout's waves over ``devices`` (in the given order): one for all-at-once; for canary the first
    ``canary`` devices alone, then waves of ``wave_size``; for rolling waves of ``wave_size``."""
    if rollout.strategy == "all-at-once" or not devices:
        return [devices] if devices else []
    size = resolve_count(rollout.wave_size, len(devices), at_least=1)
    head: list[list[str]] = []
    rest = devices
    if rollout.strategy == "canary":
        head, rest = [devices[:rollout.canary]], devices[rollout.canary:]
    return head + [rest[i:i + size] for i in range(0, len(rest), size)]


def _rollout(spec: Spec, name: str, targets: list[DevicePlan], contexts: dict[str, DeviceContext],
             store: ArtifactStore, artifacts: dict[str, tuple[BuiltArtifact, bool]],
             results: dict[str, DeviceResult], events: Events, parallel: int, record: RunRecord | None) -> str | None:
    """Deploy ``name`` to ``targets`` wave by wave; returns why the rollout halted, or None."""
    rollout = spec.deployments[name].spec.rollout
    unreachable = [dp.device for dp in targets if contexts[dp.device].error or contexts[dp.device].client is None]
    allowed = resolve_count(rollout.max_unavailable, len(targets))
    if len(unreachable) > allowed:
        why = (f"{name}: {len(unreachable)} of {len(targets)} devices unreachable ({', '.join(unreachable)}), more "
               f"than max_unavailable {rollout.max_unavailable}; no device was changed")
        events.info(None, "halted " + why)
        return why
    reachable = [dp for dp in targets if dp.device not in unreachable]
    by_name = {dp.device: dp for dp in reachable}
    tried = failed = 0
    plan_waves = waves(rollout, [dp.device for dp in reachable])
    for index, wave in enumerate(plan_waves):
        canary = rollout.strategy == "canary" and index == 0
        w = record.wave(name, index, wave, canary=canary) if record else {}
        events.info(None, f"{name}: wave {index + 1}/{len(plan_waves)}{' (canary)' if canary else ''}: "
                          + ", ".join(wave))
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(wave)))) as pool:
            outcomes = list(pool.map(lambda d: _deploy_one(spec, by_name[d], name, contexts[d], store, artifacts,
                                                           results[d], events), wave))
        tried += len(wave)
        failed += sum(1 for ok in outcomes if not ok)
        if failed > resolve_count(rollout.max_failure, tried):
            w["outcome"] = "failed"
            later = [d for later_wave in plan_waves[index + 1:] for d in later_wave]
            for d, ok in zip(wave, outcomes):
                if ok and rollout.rollback:
                    _roll_back(name, contexts[d], results[d], events, "the wave failed", store)
            for d in later:
                results[d].actions.append(f"{name}: not started (rollout halted)")
            why = (f"{name}: {failed} of {tried} devices failed in wave {index + 1}"
                   f"{' (canary)' if canary else ''}, more than max_failure {rollout.max_failure}; "
                   + ("the wave was rolled back" if rollout.rollback else "rollback is off")
                   + (f"; not started: {', '.join(later)}" if later else ""))
            events.info(None, "halted " + why)
            return why
        w["outcome"] = "ok" if failed == 0 else "ok-with-failures"
    return None


def _rollout_ansible(spec: Spec, name: str, targets: list[DevicePlan], contexts: dict[str, DeviceContext],
                     store: ArtifactStore, artifacts: dict[str, tuple[BuiltArtifact, bool]],
                     results: dict[str, DeviceResult], events: Events, forks: int,
                     record: RunRecord | None) -> str | None:
    """Deploy ``name`` to ``targets`` with the Ansible engine: one playbook run, the rollout's waves as ``serial``
    batches, forks for the devices of a wave; same halting rule and results as :func:`_rollout`."""
    from edgectl.transport import ansible as engine

    rollout = spec.deployments[name].spec.rollout
    unreachable = [dp.device for dp in targets if contexts[dp.device].error]
    allowed = resolve_count(rollout.max_unavailable, len(targets))
    if len(unreachable) > allowed:
        why = (f"{name}: {len(unreachable)} of {len(targets)} devices unreachable ({', '.join(unreachable)}), more "
               f"than max_unavailable {rollout.max_unavailable}; no device was changed")
        events.info(None, "halted " + why)
        return why
    reachable = [dp for dp in targets if dp.device not in unreachable]
    hosts: dict[str, dict] = {}
    houses: dict[tuple[str, ...], Path] = {}  # one wheelhouse build per set of extras, not per device
    for dp in reachable:
        try:
            hosts[dp.device] = _ansible_host(spec, dp, name, contexts[dp.device], store, artifacts, results[dp.device],
                                             houses)
        except EdgectlError as e:
            results[dp.device].error = str(e)
    order = waves(rollout, [d for d in (dp.device for dp in reachable) if d in hosts])
    if not order:
        return None
    sizes, allowed_failures = engine.serial_and_allowed(order, rollout.max_failure, resolve_count)
    # of the devices that bootstrap here, those that install their venv (one per shared transport.venv)
    installers = engine.venv_installers([d for wave in order for d in wave if hosts[d]["edgectl_bootstrap"]],
                                        {d: contexts[d].device.transport.venv for d in hosts})
    hosts = {d: {**hosts[d], "edgectl_allowed_failures": allowed_failures[d], "edgectl_installs": d in installers}
             for wave in order for d in wave}
    for index, wave in enumerate(order):
        canary = rollout.strategy == "canary" and index == 0
        events.info(None, f"{name}: wave {index + 1}/{len(order)}{' (canary)' if canary else ''} via ansible: "
                          + ", ".join(wave))

    outcome = engine.run_playbook(hosts, {"edgectl_serial": sizes}, forks=forks, on_event=_ansible_progress(events))
    tried = failed = 0
    why = None
    for index, wave in enumerate(order):
        canary = rollout.strategy == "canary" and index == 0
        w = record.wave(name, index, wave, canary=canary) if record else {}
        for d in wave:
            ho = outcome.hosts[d]
            results[d].actions += ho.actions
            if ho.error:
                results[d].error = ho.error
            elif not ho.started and why is not None:
                results[d].actions.append(f"{name}: not started (rollout halted)")
            elif not ho.started:
                results[d].error = (f"device '{d}': the playbook never reached it (ansible-playbook exit "
                                    f"{outcome.rc})\n{outcome.stdout_tail.strip()[-1500:]}")
        if why is not None:
            w["outcome"] = "not started"
            continue
        tried += len(wave)
        failed += sum(1 for d in wave if results[d].error)
        if failed > resolve_count(rollout.max_failure, tried):
            w["outcome"] = "failed"
            later = [d for later_wave in order[index + 1:] for d in later_wave]
            why = (f"{name}: {failed} of {tried} devices failed in wave {index + 1}"
                   f"{' (canary)' if canary else ''}, more than max_failure {rollout.max_failure}; "
                   + ("the wave was rolled back" if rollout.rollback else "rollback is off")
                   + (f"; not started: {', '.join(later)}" if later else ""))
            events.info(None, "halted " + why)
        else:
            w["outcome"] = "ok" if failed == 0 else "ok-with-failures"
    return why


def _ansible_host(spec: Spec, dp: DevicePlan, name: str, ctx: DeviceContext, store: ArtifactStore,
                  artifacts: dict[str, tuple[BuiltArtifact, bool]], res: DeviceResult,
                  houses: dict[tuple[str, ...], Path]) -> dict:
    """The host variables the playbook needs for ``name`` on this device: connection, artifact blobs, the desired
    deployment, what to roll back to, and (when no agent answered) the bootstrap argv lists and wheels."""
    from edgectl.transport import ansible as engine
    from edgectl.transport.ssh import known_hosts_files

    dep = _dep_plan(dp, name)
    rollout = spec.deployments[name].spec.rollout
    art = _artifact_for(spec, dp, dep, ctx, store, artifacts, res)
    out = engine.host_connection(ctx.device, known_hosts_files())
    kind = dep.chosen.recipe.kind
    gate = rollout.health_gate
    out.update({
        "edgectl_deployment": name,
        "edgectl_blobs": [{"digest": d, "path": str(p), "size": p.stat().st_size} for d, p in store.blobs_of(art)],
        "edgectl_desired": json.loads(signed(ctx.signer, desired_deployment(spec, dp, dep, art, kind=kind))
                                      .model_dump_json()),
        "edgectl_smoke": ({"kind": kind, "max_tokens": gate.max_tokens, "min_tokens_per_s": gate.min_tokens_per_s,
                           "max_ttft_ms": gate.max_ttft_ms} if gate.smoke else None),
        "edgectl_rollback": _rollback_request(name, ctx, store) if rollout.rollback else None,
        "edgectl_bootstrap": ctx.client is None,
    })
    if ctx.client is None:
        out.update(_ansible_bootstrap_vars(ctx, {d.chosen.runtime for d in dp.deployments if d.chosen is not None},
                                           houses))
    return out


def _ansible_bootstrap_vars(ctx: DeviceContext, runtimes: Iterable[str],
                            houses: dict[tuple[str, ...], Path]) -> dict:
    """The host variables that install (from edgectl's wheelhouse) and start an agent able to run ``runtimes``."""
    from edgectl.transport import bootstrap

    t = ctx.device.transport
    layout = bootstrap.RemoteLayout(t.agent_dir, t.venv)
    runtimes = sorted(set(runtimes))
    extras = bootstrap.extras_for(runtimes)
    if tuple(extras) not in houses:
        houses[tuple(extras)] = bootstrap.build_wheelhouse(extras)
    house = houses[tuple(extras)]
    return {
        "edgectl_agent_version": AGENT_VERSION,
        "edgectl_venv": layout.venv,
        "edgectl_platform": f"{sys.version_info[0]}.{sys.version_info[1]} {platform.machine()}",
        "edgectl_platform_script": bootstrap.PLATFORM_SCRIPT,
        "edgectl_wheels": [str(w) for w in sorted(house.glob("*.whl"))],
        "edgectl_installed_argv": bootstrap.installed_argv(layout, runtimes),
        "edgectl_venv_argv": bootstrap.venv_argv(t.python, layout),
        "edgectl_install_argv": bootstrap.install_argv(layout, extras),
        "edgectl_reinstall_argv": bootstrap.reinstall_argv(layout),
        "edgectl_start_argv": bootstrap.start_argv(layout, ctx.device.agent.port),
    }


def _bootstrap_ansible(names: list[str], runtimes: dict[str, set[str]], contexts: dict[str, DeviceContext],
                       events: Events, forks: int) -> dict[str, list[str]]:
    """Install and start the agents of ``names`` with the playbook (bootstrap only, one batch), so that they report
    their hardware before the plan that deploys to them is made. A device that fails keeps the playbook's reason
    as its error. Returns what was done per device."""
    from edgectl.transport import ansible as engine
    from edgectl.transport.ssh import known_hosts_files

    hosts: dict[str, dict] = {}
    houses: dict[tuple[str, ...], Path] = {}
    for n in names:
        ctx = contexts[n]
        try:
            hosts[n] = {**engine.host_connection(ctx.device, known_hosts_files()),
                        **_ansible_bootstrap_vars(ctx, runtimes.get(n, set()), houses),
                        "edgectl_bootstrap": True, "edgectl_bootstrap_only": True, "edgectl_rollback": None,
                        "edgectl_allowed_failures": len(names)}
        except EdgectlError as e:
            ctx.error = str(e)
    if not hosts:
        return {}
    installers = engine.venv_installers(list(hosts), {d: contexts[d].device.transport.venv for d in hosts})
    hosts = {d: {**v, "edgectl_installs": d in installers} for d, v in hosts.items()}
    events.info(None, "bootstrap via ansible: " + ", ".join(hosts))
    outcome = engine.run_playbook(hosts, {"edgectl_serial": [len(hosts)]}, forks=forks,
                                  on_event=_ansible_progress(events))
    for d, ho in outcome.hosts.items():
        if ho.error or not ho.started:
            contexts[d].error = ho.error or (f"device '{d}': the playbook never reached it (ansible-playbook exit "
                                             f"{outcome.rc})\n{outcome.stdout_tail.strip()[-1500:]}")
    return {d: ho.actions for d, ho in outcome.hosts.items()}


def _ansible_progress(events: Events):
    """A runner event handler that reports the playbook's 'edgectl-action:' messages as they happen."""
    from edgectl.transport import ansible as engine

    def on_event(ev: dict) -> None:
        data = ev.get("event_data") or {}
        msg = (data.get("res") or {}).get("msg")
        if ev.get("event") == "runner_on_ok" and isinstance(msg, str) and msg.startswith(engine.ACTION_PREFIX):
            events.info(data.get("host"), " ".join(msg[len(engine.ACTION_PREFIX):].split()))

    return on_event


def _rollback_request(name: str, ctx: DeviceContext, store: ArtifactStore) -> dict:
    """What returns ``name`` to what the agent served before this run: PUT that, or DELETE a new deployment."""
    before = next((d for d in (ctx.observed.deployments if ctx.observed else []) if d.name == name), None)
    if before is not None and before.active is not None and before.desired is not None:
        back = rollback_deployment(before.desired, before.active, signer=ctx.signer, store=store)
        body = json.loads(back.model_dump_json())
        return {"method": "PUT", "body": body, "text": f"rolled back to {before.active.digest[:19]}"}
    return {"method": "DELETE", "text": "removed again (nothing served it before)"}


def _artifact_for(spec: Spec, dp: DevicePlan, dep: DeploymentPlan, ctx: DeviceContext, store: ArtifactStore,
                  artifacts: dict[str, tuple[BuiltArtifact, bool]], res: DeviceResult) -> BuiltArtifact:
    """The built artifact for this deployment, checked against the runtime the device reports (before any byte
    is pushed); notes in ``res`` whether it was built now or found in the cache."""
    rid = recipe_id(dep.chosen.recipe)
    art, fresh = artifacts[rid] if rid in artifacts else (
        lookup(dep.chosen.recipe, spec.models[dep.model], store), False)
    if art is None:  # internal invariant: every planned build ran before devices are touched
        raise PlanError(f"artifact {rid} is not in the local store", hint="run `edgectl build` and retry")
    runtime = dep.chosen.runtime
    reported = dict(ctx.facts.runtimes) if ctx.facts is not None else {}
    why = compat.mismatch(art.compat, runtime, reported.get(runtime), reported)
    if why:  # found only now that the artifact exists: refuse before any byte is pushed
        raise Refused(f"device '{dp.device}', deployment '{dep.deployment}': {art.format} {art.quant} "
                      f"cannot be loaded there: {why}", hint="nothing was pushed to this device; "
                      "`edgectl plan` shows the same check")
    check_signing_key(dp.device, ctx)
    if any(step.action == "build" for step in dep.steps):
        res.actions.append(f"{'built' if fresh else 'found in cache'} {art.format} {art.quant}")
    return art


def _deploy_one(spec: Spec, dp: DevicePlan, name: str, ctx: DeviceContext, store: ArtifactStore,
                artifacts: dict[str, tuple[BuiltArtifact, bool]], res: DeviceResult, events: Events) -> bool:
    """Push, activate and gate one deployment on one device; on failure roll it back (when the rollout says so).
    True when it serves the new artifact and passed the gate."""
    dep = _dep_plan(dp, name)
    rollout = spec.deployments[name].spec.rollout
    try:
        changed = _apply_deployment(spec, dp, dep, ctx, store, artifacts, res, events)
        if changed:
            _health_gate(rollout.health_gate, name, dep.chosen.recipe.kind, ctx, res, events)
        return True
    except EdgectlError as e:
        res.error = str(e)
        events.info(dp.device, f"{name} failed: {e.message}")
        if rollout.rollback and not isinstance(e, Refused):
            _roll_back(name, ctx, res, events, "it failed", store)
        return False


def gate_problems(gate: HealthGate, r: SmokeResult) -> list[str]:
    """What fails ``gate`` in the agent's own timings of the smoke request (empty: it passes)."""
    limits = gate.max_ttft_ms is not None or gate.min_tokens_per_s is not None
    if limits and r.tokens is None:
        return ["the agent reported no timings for the smoke request (an edgectl-agent older than this edgectl), "
                "so max_ttft_ms/min_tokens_per_s cannot be checked"]
    problems = []
    if gate.max_ttft_ms is not None and (r.ttft_s is None or r.ttft_s * 1000 > gate.max_ttft_ms):
        problems.append(f"time to first token {(r.ttft_s or 0) * 1000:.1f} ms > max_ttft_ms {gate.max_ttft_ms:g}")
    rate = r.tokens_per_s
    if gate.min_tokens_per_s is not None and (rate is None or rate < gate.min_tokens_per_s):
        problems.append(f"decode {rate or 0:.1f} tokens/s < min_tokens_per_s {gate.min_tokens_per_s:g}")
    return problems


def _health_gate(gate: HealthGate, name: str, kind: str, ctx: DeviceContext, res: DeviceResult,
                 events: Events) -> None:
    if not gate.smoke:
        return
    r = ctx.client.smoke(name, kind=kind, max_tokens=gate.max_tokens)
    problems = gate_problems(gate, r)
    if problems:
        raise PlanError(f"device '{ctx.device.name}', deployment '{name}': health gate failed (as timed by the "
                        "agent): " + "; ".join(problems),
                        hint="the smoke request ran on the new artifact; relax rollout.health_gate or pick a "
                             "smaller quant type (quantization.allow); an agent without timings needs this "
                             f"edgectl's edgectl-agent {AGENT_VERSION} on the device")
    rate = r.tokens_per_s
    detail = (f"ttft {r.ttft_s * 1000:.0f} ms, {rate:.1f} tok/s as timed by the agent"
              if r.ttft_s is not None and rate else "ready")
    events.info(ctx.device.name, f"{name}: health gate passed ({detail})")
    res.actions.append(f"{name}: health gate passed ({detail})")


def _roll_back(name: str, ctx: DeviceContext, res: DeviceResult, events: Events, why: str,
               store: ArtifactStore) -> None:
    """Return ``name`` on this device to what the agent served before this run (or remove it if it was new)."""
    before = next((d for d in (ctx.observed.deployments if ctx.observed else []) if d.name == name), None)
    try:
        if before is not None and before.active is not None and before.desired is not None:
            ctx.client.put_deployment(rollback_deployment(before.desired, before.active, signer=ctx.signer,
                                                          store=store))
            msg = f"{name}: rolled back to {before.active.digest[:19]} ({why})"
        else:
            ctx.client.delete_deployment(name)
            msg = f"{name}: removed again ({why}; nothing served it before)"
    except EdgectlError as e:
        msg = f"{name}: rollback failed: {e.message}"
        res.error = (res.error + "\n" if res.error else "") + msg
    events.info(ctx.device.name, msg)
    res.actions.append(msg)


def _apply_deployment(spec: Spec, dp: DevicePlan, dep: DeploymentPlan, ctx: DeviceContext, store: ArtifactStore,
                      artifacts: dict[str, tuple[BuiltArtifact, bool]], res: DeviceResult, events: Events) -> bool:
    """Run one deployment's steps on one device; True when it activated something."""
    client = ctx.client
    if client is None:
        raise PlanError(f"device '{dp.device}': no agent to apply to", hint="see the agent's log")
    art = _artifact_for(spec, dp, dep, ctx, store, artifacts, res)
    activated = False
    for step in dep.steps:
        if step.action == "push":
            check_disk(dp.device, dep.deployment, art, store, client)
            events.info(dp.device, f"push {art.digest[:19]} ({art.size_bytes / 1e6:.1f} MB)")
            client.upload_blobs(store.blobs_of(art),
                                progress=lambda d, t, _a=art: events.progress(
                                    f"push:{dp.device}:{_a.digest}", f"push to {dp.device}", d, t))
            res.actions.append(f"pushed {art.digest[:19]}")
        elif step.action == "activate":
            events.info(dp.device, f"activate {step.deployment} ({art.format} {art.quant})")
            client.put_deployment(signed(ctx.signer, desired_deployment(spec, dp, dep, art,
                                                                        kind=dep.chosen.recipe.kind)))
            res.actions.append(f"activated {step.deployment}")
            activated = True
    return activated


def check_signing_key(device: str, ctx: DeviceContext) -> None:
    """Refuse, before any byte is pushed, a device whose agent requires signatures by another key than the one its
    fleet signs with (or by a key it cannot load): the agent would refuse the deployment anyway."""
    wanted = ctx.facts.verify_key_id if ctx.facts is not None else None
    if wanted is None:
        return
    signer = ctx.signer
    if wanted == KEY_UNUSABLE:
        raise Refused(f"device '{device}': its agent must verify signatures but cannot load its verify key, so it "
                      "refuses every deployment; nothing was pushed",
                      hint="see the agent's log for the key file and why; put the fleet's public key (the PATH.pub "
                           "of `edgectl keygen PATH`) there and restart the agent")
    if signer is None:
        raise Refused(f"device '{device}': its agent accepts only deployments signed by key {wanted}, and its fleet "
                      "signs nothing; nothing was pushed",
                      hint="add `signing: {key_file: PATH}` to the Fleet's spec, PATH being the private key of that "
                           "public key (`edgectl keygen PATH` makes a pair)")
    if signer.key_id != wanted:
        raise Refused(f"device '{device}': its agent accepts only deployments signed by key {wanted}, and its fleet "
                      f"signs with key {signer.key_id} ({signer.path}); nothing was pushed",
                      hint="point the Fleet's spec.signing.key_file at the private key the device trusts; if the key "
                           "changed on purpose, install its PATH.pub as the agent's verify key and restart the agent "
                           f"(a local agent: replace {VERIFY_KEY_FILE} in its root)")


def disk_shortfall(missing: int, free: int, margin: float = DISK_MARGIN) -> int | None:
    """Bytes needed (missing + margin) when ``free`` is less than that, else None."""
    need = int(missing * (1 + margin))
    return need if free < need else None


def check_disk(device: str, deployment: str, art: BuiltArtifact, store: ArtifactStore, client: AgentClient) -> None:
    """Refuse a push, before any byte is sent, when the device's store has less free space than the bytes still
    missing there plus DISK_MARGIN. Free space is what the agent reports now, not a profile's figure, and earlier
    pushes of this run are already counted in it."""
    held = set(client.state().artifacts)
    missing = 0
    for digest, path in store.blobs_of(art):
        if digest not in held:
            missing += path.stat().st_size - client.upload_status(digest).received_bytes
    free = client.facts().disk_free_bytes
    need = disk_shortfall(missing, free)
    if need is not None:
        raise Refused(f"device '{device}', deployment '{deployment}': not enough disk for {art.format} {art.quant} "
                      f"{art.digest[:19]}: {_mb(missing)} to push + {DISK_MARGIN:.0%} = {_mb(need)} needed, the "
                      f"agent reports {_mb(free)} free on its store; nothing was pushed",
                      hint="free space on the device (remove deployments it no longer needs; the agent deletes "
                           "their artifacts), give its agent a bigger disk (transport.agent_dir), or allow a "
                           "smaller quant type (quantization.allow)")


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB ({n} bytes)"


def desired_deployment(spec: Spec, dp: DevicePlan, dep: DeploymentPlan, art: BuiltArtifact, *,
                       kind: str = "llm") -> DesiredDeployment:
    d = spec.deployments[dep.deployment].spec
    return DesiredDeployment(
        name=dep.deployment,
        artifact=ArtifactRef(digest=art.digest, format=art.format, quant=art.quant, size_bytes=art.size_bytes,
                             model=art.model, layout=art.layout),
        runtime=dep.chosen.runtime if dep.chosen is not None else builder_for(art.format, kind).runtime,
        context_length=d.context_length,
        parallel=d.parallel,
        threads=d.threads or dp.threads,
        runtime_options={**(dep.chosen.runtime_options if dep.chosen is not None else {}), **d.runtime_options},
    )


def diff(spec: Spec, contexts: dict[str, DeviceContext], p: Plan) -> list[dict]:
    """Desired (the plan's artifact) against observed (what each agent serves), one row per device and deployment,
    with what apply would do about it. Drift - an agent serving another digest than the one planned, a deployment
    failed or changed out of band - is named as such."""
    rows = []
    for dp in p.devices:
        ctx = contexts[dp.device]
        current = {d.name: d for d in (ctx.observed.deployments if ctx.observed else [])}
        for dep in dp.deployments:
            cur = current.get(dep.deployment)
            want = f"{dep.chosen.recipe.format} {dep.chosen.recipe.quant}" if dep.chosen else "(does not fit)"
            have = (f"{cur.active.format} {cur.active.quant} {cur.active.digest[7:19]}" if cur and cur.active
                    else "-") + (f" [{cur.state}]" if cur else "")
            actions = [s.action for s in dep.steps]
            if ctx.error:
                status = "unreachable"
            elif dep.chosen is None:
                status = "unfit"
            elif not actions:
                status = "in sync"
            elif cur is None or cur.active is None:
                status = "not deployed"
            elif actions == ["activate"] and dep.steps[0].detail.startswith("reload"):
                status = "drift: " + dep.steps[0].detail  # same artifact, other settings
            else:
                status = "drift: serves another artifact" if cur.state == "serving" else f"drift: {cur.state}"
            rows.append({"device": dp.device, "deployment": dep.deployment, "desired": want, "observed": have,
                         "status": status, "steps": actions})
        for step in dp.removals:
            cur = current.get(step.deployment)
            have = f"{cur.active.format} {cur.active.quant} {cur.active.digest[7:19]}" if cur and cur.active else "-"
            rows.append({"device": dp.device, "deployment": step.deployment, "desired": "(not selected)",
                         "observed": have, "status": "not desired", "steps": ["remove"]})
    return rows


def rollback(spec: Spec, deployment: str, *, device_names: Iterable[str] | None = None,
             events: Events | None = None, record: RunRecord | None = None,
             store: ArtifactStore | None = None) -> list[DeviceResult]:
    """Return ``deployment`` to the artifact each device served before its current one (the agent keeps it).
    ``store``: where edgectl's built artifacts are (default: the user's store); it signs only rollbacks to those."""
    events = _Recorded(events or Events(), record)
    if deployment not in spec.deployments:
        raise NotFoundError(f"no deployment named '{deployment}' in the manifests",
                            hint="known deployments: " + (", ".join(sorted(spec.deployments)) or "(none)"))
    selector = spec.deployments[deployment].spec.selector
    devices = [d for d in select_devices(spec, device_names) if device_names or selects(selector, d)]
    signers = signers_for(spec, devices)
    results = []
    for name, ctx in observe(devices, start_agents=False, signers=signers).items():
        res = DeviceResult(name, endpoint=_endpoint(ctx))
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


def _endpoint(ctx: DeviceContext) -> str | None:
    return ctx.transport.endpoint if ctx.transport is not None else None

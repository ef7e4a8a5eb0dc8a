"""Run a plan: build what is missing, push it, activate it, remove what is no longer desired.

Order of work, so that bad input changes nothing: observe (read-only) -> plan -> refuse unfit -> start agents only
where there is work -> re-observe those -> execute steps per device. A failure on one device is recorded and the
others go on; the result says exactly what happened where.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from edgectl_agent.api import AgentState, ArtifactRef, DesiredDeployment, Facts

from edgectl.agent_client import AgentClient
from edgectl.build import ArtifactStore, build, builder_for, lookup
from edgectl.build.sources import is_available
from edgectl.errors import EdgectlError, NotFoundError, PlanError
from edgectl.plan import DeploymentPlan, DevicePlan, Plan, compat, plan, recipe_id
from edgectl.spec import BuiltArtifact, Device, Recipe, Spec
from edgectl.transport import Transport, transport_for

class Events:
    """What apply reports while it works. The CLI subclasses this to render with Rich; the default is silent."""

    def info(self, device: str | None, message: str) -> None:  # noqa: D401 - callback
        pass

    def progress(self, key: str, description: str, done: int, total: int) -> None:
        pass


@dataclass
class DeviceContext:
    device: Device
    transport: Transport | None = None
    client: AgentClient | None = None
    facts: Facts | None = None
    observed: AgentState | None = None
    error: str | None = None


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


def observe(devices: Iterable[Device], *, start_agents: bool,
            runtimes: dict[str, set[str]] | None = None) -> dict[str, DeviceContext]:
    """Reach each device's agent (starting it only if asked, able to run ``runtimes[device]``) and read its facts
    and state."""
    contexts: dict[str, DeviceContext] = {}
    for device in devices:
        ctx = DeviceContext(device)
        contexts[device.name] = ctx
        try:
            ctx.transport = transport_for(device)
            ctx.client = ctx.transport.agent(start=start_agents, runtimes=(runtimes or {}).get(device.name, ()))
            if ctx.client is not None:
                ctx.facts = ctx.client.facts()
                ctx.observed = ctx.client.state()
            else:
                ctx.facts = ctx.transport.facts_without_agent()
        except EdgectlError as e:
            ctx.error = str(e)
    return contexts


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


def apply(spec: Spec, *, store: ArtifactStore, device_names: Iterable[str] | None = None,
          skip_unfit: bool = False, events: Events | None = None) -> ApplyResult:
    events = events or Events()
    devices = select_devices(spec, device_names)
    contexts = observe(devices, start_agents=False)
    p = make_plan(spec, contexts, store)
    if p.unfit and not skip_unfit:
        names = ", ".join(dp.device for dp in p.unfit)
        raise PlanError(f"a deployment fits on no artifact for: {names}; nothing was changed",
                        hint="see `edgectl plan` for the numbers; shrink context_length/parallel, choose a smaller "
                             "model, or pass --skip-unfit to deploy to the devices that fit")
    if p.is_empty:
        return ApplyResult(p, [DeviceResult(d.name, endpoint=_endpoint(contexts[d.name])) for d in devices])

    # Start agents only where there is work, then observe those again: a restarted agent may already
    # serve (it recovers its last good state from disk), which can make steps unnecessary.
    busy = [dp.device for dp in p.devices if dp.status == "ok" and dp.steps]
    restarted = [n for n in busy if contexts[n].client is None and contexts[n].error is None]
    if restarted:
        needed = {dp.device: {dep.chosen.runtime for dep in dp.deployments if dep.chosen is not None}
                  for dp in p.devices}
        for n in restarted:
            events.info(n, "starting agent")
            if contexts[n].transport is not None:
                contexts[n].transport.close()
        contexts.update(observe([contexts[n].device for n in restarted], start_agents=True, runtimes=needed))
        p = make_plan(spec, contexts, store)

    needs_build = {recipe_id(dep.chosen.recipe) for dp in p.devices for dep in dp.deployments
                   if dep.chosen is not None and any(s.action == "build" for s in dep.steps)}
    artifacts: dict[str, tuple[BuiltArtifact, bool]] = {}
    results: list[DeviceResult] = []
    if needs_build:
        artifacts.update(build_planned(spec, p, store, events, only=needs_build))
    for dp in p.devices:
        ctx = contexts[dp.device]
        res = DeviceResult(dp.device, endpoint=_endpoint(ctx))
        results.append(res)
        if ctx.error:
            res.error = ctx.error
            continue
        try:
            _apply_device(spec, dp, ctx, store, artifacts, res, events)
        except EdgectlError as e:
            res.error = str(e)
            events.info(dp.device, f"failed: {e.message}")
        if ctx.client is not None:
            try:
                state = ctx.client.state()
                res.serving = [d.name for d in state.deployments if d.state == "serving"]
            except EdgectlError:
                pass
    return ApplyResult(p, results)


def _apply_device(spec: Spec, dp: DevicePlan, ctx: DeviceContext, store: ArtifactStore,
                  artifacts: dict[str, tuple[BuiltArtifact, bool]], res: DeviceResult, events: Events) -> None:
    if dp.status != "ok" or not dp.steps:
        return
    client = ctx.client
    if client is None:
        raise PlanError(f"device '{dp.device}': no agent to apply to", hint="see the agent's log")
    for dep in dp.deployments:
        if not dep.steps or dep.chosen is None:
            continue
        rid = recipe_id(dep.chosen.recipe)
        art, fresh = artifacts[rid] if rid in artifacts else (
            lookup(dep.chosen.recipe, spec.models[dep.model], store), False)
        if art is None:  # internal invariant: every planned build ran before devices are touched
            raise PlanError(f"artifact {rid} is not in the local store", hint="run `edgectl build` and retry")
        runtime = dep.chosen.runtime
        version = ctx.facts.runtimes.get(runtime) if ctx.facts is not None else None
        why = compat.mismatch(art.compat, runtime, version)
        if why:  # found only now that the artifact exists: refuse before any byte is pushed
            raise PlanError(f"device '{dp.device}', deployment '{dep.deployment}': {art.format} {art.quant} "
                            f"cannot be loaded there: {why}", hint="nothing was pushed to this device; "
                            "`edgectl plan` shows the same check")
        for step in dep.steps:
            if step.action == "build":
                res.actions.append(f"{'built' if fresh else 'found in cache'} {art.format} {art.quant}")
            elif step.action == "push":
                events.info(dp.device, f"push {art.digest[:19]} ({art.size_bytes / 1e6:.1f} MB)")
                client.upload_blobs(store.blobs_of(art),
                                    progress=lambda d, t, _a=art: events.progress(
                                        f"push:{dp.device}:{_a.digest}", f"push to {dp.device}", d, t))
                res.actions.append(f"pushed {art.digest[:19]}")
            elif step.action == "activate":
                events.info(dp.device, f"activate {step.deployment} ({art.format} {art.quant})")
                client.put_deployment(desired_deployment(spec, dp, dep, art, kind=dep.chosen.recipe.kind))
                res.actions.append(f"activated {step.deployment}")
    for step in dp.removals:
        events.info(dp.device, f"remove {step.deployment}")
        client.delete_deployment(step.deployment)
        res.actions.append(f"removed {step.deployment}")


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


def _endpoint(ctx: DeviceContext) -> str | None:
    return ctx.transport.endpoint if ctx.transport is not None else None

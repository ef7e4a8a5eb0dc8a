"""The planner: a pure function from (spec, observed facts, observed agent state, local cache) to a Plan.

Per device: resolve its profile (a named one with per-device overrides, or ``auto`` from the observed facts),
warn where facts contradict it, and compute the RAM budget = (RAM - OS reserve) x (1 - headroom). Per deployment
selected onto the device (in name order, each taking its share of the budget): candidates = the formats the
device's runtimes load x the quant types a builder can make, capped at the source's precision; estimate each;
choose the highest quality that fits; record why every other candidate lost. Steps (build, push, activate, remove)
are only what differs from what the agent reports.

No I/O here: callers pass everything in. Golden cases in tests/unit/plan/cases pin the behaviour. This module runs
the plan per device and derives the steps; the profile and budgets are ``profiles.py``'s, the choice of one
deployment's artifact ``select.py``'s, and the plan's data classes ``result.py``'s.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

from edgectl_agent.api import AgentState, DeploymentState, Facts

from edgectl.plan.nf4 import nf4_target
from edgectl.plan.platforms import device_platform, install_refusal, installs_on_device, runtimes_with_builds
from edgectl.plan.profiles import (AUTO_RUNTIME_ORDER, auto_name, disk_budget, openvino_device, profile_from_facts,
                                   ram_budget, resolve_profile, unified_gpu, usable_runtimes, vram_budget)
from edgectl.plan.result import (Candidate, DeploymentPlan, DevicePlan, Plan, Rejected, Step, gib, recipe_id,
                                 recipe_label)
from edgectl.plan.select import OPENVINO_RUNTIMES, Target, plan_deployment
from edgectl.plan.speed import hardware, missing_figures
from edgectl.spec import AUTO_PROFILE, BuiltArtifact, Deployment, Device, Model, Selector, Spec
from edgectl.spec.deployment import gate_digest, gates_for

# Names other modules import from here (the planner's public face); defined in profiles, result and select.
__all__ = ["AUTO_RUNTIME_ORDER", "OPENVINO_RUNTIMES", "Candidate", "DeploymentPlan", "DevicePlan", "Plan", "Rejected",
           "Step", "plan", "plan_device", "profile_from_facts", "ram_budget", "recipe_id", "resolve_profile", "selects"]


def selects(selector: Selector, device: Device) -> bool:
    """A deployment selector matches a device by name, or by carrying all the selector's labels."""
    if device.name in selector.devices:
        return True
    return bool(selector.labels) and all(device.labels.get(k) == v for k, v in selector.labels.items())


def plan(spec: Spec, facts: dict[str, Facts | None], observed: dict[str, AgentState | None],
         built: dict[str, BuiltArtifact], *, devices: list[str] | None = None,
         available: dict[str, frozenset[int]] | None = None) -> Plan:
    """Plan every device in ``devices`` (default: the devices in ``facts``, else all devices of the spec).

    ``facts``/``observed``: per device name, what its agent reported (None = not reachable / not running).
    ``built``: recipe_id -> artifact already in the local store (its exact size and digest are used).
    ``available``: model name -> indexes of its sources present on this machine (None = assume all are).
    """
    names = devices if devices is not None else (list(facts) if facts else list(spec.devices))
    memo: dict = {}  # devices with the same profile and facts get the same candidates: computed once per plan
    with _collector_paused():
        return Plan([plan_device(spec, spec.devices[n], facts.get(n), observed.get(n), built, available, memo=memo)
                     for n in names])


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while the plan is made. A 10,000-device plan allocates tens of
    thousands of small objects that all outlive it, and each allocation burst made the collector walk the whole
    heap (the loaded Spec included) for nothing: 0.35 s of the plan's 0.5 s of CPU (bench/manifest_load.py). Reference counting still frees
    what is dropped; the collector resumes (if it was on) when the plan is made."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def plan_device(spec: Spec, device: Device, facts: Facts | None, observed: AgentState | None,
                built: dict[str, BuiltArtifact], available: dict[str, frozenset[int]] | None = None, *,
                memo: dict | None = None) -> DevicePlan:
    wanted = sorted(name for name, dep in spec.deployments.items() if selects(dep.spec.selector, device))
    # A device nobody has observed is planned from its profile alone: devices alike in profile, overrides and
    # deployments get the same plan, computed once (a 10,000-device fleet has a handful of distinct ones).
    alike = None
    if memo is not None and facts is None and observed is None:
        alike = ("device", device.profile, device.overrides, tuple(wanted), device.transport.type,
                 installs_on_device(device))
        if alike in memo:
            return _copy_for(memo[alike], device.name)
    dp = _plan_device(spec, device, facts, observed, built, available, wanted, memo)
    if alike is not None:
        memo[alike] = _copy_for(dp, device.name)
    return dp


def _copy_for(dp: DevicePlan, name: str) -> DevicePlan:
    """A copy of ``dp`` for device ``name`` whose lists can be changed without touching the original."""
    out = copy.copy(dp)
    out.device, out.warnings, out.removals = name, list(dp.warnings), list(dp.removals)
    out.deployments = []
    for d in dp.deployments:
        d2 = copy.copy(d)
        d2.rejected, d2.steps = list(d.rejected), list(d.steps)
        out.deployments.append(d2)
    return out


def _plan_device(spec: Spec, device: Device, facts: Facts | None, observed: AgentState | None,
                 built: dict[str, BuiltArtifact], available: dict[str, frozenset[int]] | None, wanted: list[str],
                 memo: dict | None) -> DevicePlan:
    profile, warnings = resolve_profile(spec, device, facts)
    if profile is None:
        return DevicePlan(device.name, device.profile, "unknown", warnings=warnings,
                          removals=_removals(observed, wanted),
                          hint="start its agent so edgectl can observe the hardware, or name a profile "
                               "(see `profiles/`) instead of 'auto'")
    budget = ram_budget(profile)
    dp = DevicePlan(device.name, device.profile if device.profile != AUTO_PROFILE else f"auto ({auto_name(facts)})",
                    "ok", budget_bytes=budget, threads=profile.default_threads, warnings=warnings)
    platform = device_platform(profile, facts)
    dp.platform = str(platform)
    refusal = install_refusal(device, platform) if facts is None else None
    if refusal is not None:  # an agent edgectl cannot install there: refused before anything is built or pushed
        dp.status, dp.hint = "unfit", refusal[1]
        dp.warnings = [*dp.warnings, refusal[0]]  # not append: the list may be shared with other devices
        return dp
    no_build: list[str] = []  # the profile's runtimes with no build for the device's platform (plan/platforms.py)
    runtimes = runtimes_with_builds(usable_runtimes(profile, facts, dp.warnings), platform, facts, no_build,
                                    on_device=installs_on_device(device))
    dp.warnings += no_build
    target = Target(runtimes=runtimes, budget=budget, disk=disk_budget(profile, facts),
                    vram=vram_budget(profile, facts, dp.warnings), prefer=dict(profile.quant_preference),
                    versions=dict(facts.runtimes) if facts is not None else None,
                    openvino_device=openvino_device(profile, facts, dp.warnings),
                    hardware=hardware(profile, dp.profile, facts.benchmark if facts is not None else None, os=platform.os),
                    no_speed=missing_figures(profile), threads=profile.default_threads,
                    unified_gpu=unified_gpu(profile, facts, dp.warnings),
                    measured=tuple(facts.benchmark.artifacts) if facts is not None and facts.benchmark else (),
                    nf4=nf4_target(profile, facts, profile.headroom))
    # Every deployment first gets room for its smallest artifact; quality then goes to them in name order.
    deployments = [spec.deployments[n] for n in wanted]
    models = [spec.models[d.spec.model] for d in deployments]

    def avail(model: Model) -> frozenset[int] | None:
        return None if available is None else available.get(model.name, frozenset())

    def candidates(dep: Deployment, model: Model, t: Target) -> DeploymentPlan:
        if memo is None:
            return plan_deployment(dep, model, t, built, avail(model))
        key = (dep.name, model.name, tuple(t.runtimes), t.budget, t.disk, t.vram, t.openvino_device, t.hardware,
               t.threads, t.unified_gpu, t.measured, t.nf4,
               tuple((k, tuple(v)) for k, v in sorted(t.prefer.items())),
               tuple(sorted(t.versions.items())) if t.versions is not None else None)
        if key not in memo:
            memo[key] = plan_deployment(dep, model, t, built, avail(model))
        done = memo[key]  # a copy: steps and hints are per device
        return replace(done, rejected=list(done.rejected), steps=list(done.steps))

    floors = [_smallest_fit(candidates(d, m, target)) for d, m in zip(deployments, models)]
    admitted: list[bool] = []
    for floor in floors:  # in name order, while the smallest artifacts of those admitted fit together
        admitted.append(floor is not None and floor + sum(f for f, a in zip(floors, admitted) if a) <= budget)
    remaining, vram = budget, target.vram
    for i, (dep, model) in enumerate(zip(deployments, models)):
        reserved = sum(f for f, a in zip(floors[i + 1:], admitted[i + 1:]) if a)
        room = max(0, remaining - reserved) if admitted[i] else max(0, budget - sum(
            f for f, a in zip(floors, admitted) if a))
        plan_ = candidates(dep, model, replace(target, budget=room, vram=vram))
        dp.deployments.append(plan_)
        if dep.spec.speed is not None and target.hardware is None:
            dp.warnings.append(f"{dep.name}: speed.min_tokens_per_s/max_ttft_ms not checked by the plan: "
                               f"{target.no_speed}; the health gate's limits still check the real speed")
        if plan_.chosen is None:
            dp.status = "unfit"
            if not runtimes and no_build:
                plan_.unfit = f"no runtime of its profile has a build for {platform}: " + "; ".join(no_build)
                plan_.hint = ("deploy it to a device of another platform, or list a runtime that has a build for "
                              "this one in the device's profile")
            if floors[i] is not None:
                others = ", ".join(d.name for d, a in zip(deployments, admitted) if a)
                plan_.hint = (f"it would fit alone, but {others} (planned first, in name order) take the room; "
                              f"move one to another device, or shrink it")
            continue
        chosen = plan_.chosen
        remaining -= chosen.ram_need
        vram -= max(0, chosen.estimate.total_bytes - chosen.ram_need) if chosen.gpu_layers else 0
        threads = dep.spec.threads or profile.default_threads
        plan_.steps = _steps(dep, chosen, threads, observed, built, model.spec.goldens)
        plan_.gate_digest = gate_digest(gates_for(dep.spec.rollout.health_gate, model.spec.goldens))
        if facts is not None and chosen.ram_need > facts.ram_available_bytes and plan_.steps:
            dp.warnings.append(
                f"{dep.name}: needs {gib(chosen.ram_need)} but the device has "
                f"{gib(facts.ram_available_bytes)} available right now; other processes may have to make room")
    dp.removals = _removals(observed, wanted)
    return dp


def _smallest_fit(dp: DeploymentPlan) -> int | None:
    """Memory of the smallest candidate that fits the whole budget (None if none does)."""
    sizes = [dp.chosen.ram_need] if dp.chosen else []
    sizes += [r.total_bytes for r in dp.rejected if r.fits]
    return min(sizes, default=None)


# --- steps -------------------------------------------------------------------------------------------------------


def _steps(dep: Deployment, chosen: Candidate, threads: int, observed: AgentState | None,
           built: dict[str, BuiltArtifact], goldens: list) -> list[Step]:
    name = dep.name
    art = built.get(recipe_id(chosen.recipe))
    label = recipe_label(chosen.recipe)
    if art is None:
        how = "copy as shipped" if chosen.as_shipped else f"from {chosen.recipe.source_precision}"
        return [Step("build", name, f"{label}, {how}"), Step("push", name, label),
                Step("activate", name, label)]
    current = _current(observed, name)
    if current is not None and current.state == "serving" and current.active is not None \
            and current.active.digest == art.digest:
        changed = _config_changes(dep, threads, current, chosen.runtime_options, goldens)
        if not changed:
            return []
        return [Step("activate", name, "reload: " + ", ".join(changed))]
    steps = []
    if observed is None or art.digest not in observed.artifacts:
        steps.append(Step("push", name, f"{label} {art.digest[7:19]} ({gib(art.size_bytes)})"))
    if current is None or current.active is None:
        why = "new" if current is None or current.state != "failed" else f"retry after failure: {current.last_error}"
    else:
        why = f"replace {current.active.format} {current.active.quant} {current.active.digest[7:19]}"
    steps.append(Step("activate", name, f"{label} {art.digest[7:19]} ({why})"))
    return steps


def _current(observed: AgentState | None, name: str) -> DeploymentState | None:
    if observed is None:
        return None
    for d in observed.deployments:
        if d.name == name and d.state != "removed":
            return d
    return None


GATE_CHANGED = "health gate changed (golden prompts or rollout.health_gate): the gate runs again"
GATE_NOT_RECORDED = "health gate not recorded (deployed by an older edgectl): the gate runs again"


def _config_changes(dep: Deployment, threads: int, current: DeploymentState, planned: dict,
                    goldens: list) -> list[str]:
    """The served settings (edgectl.plan.settings.RELOAD_FIELDS, the ones apply sends) that differ from the agent's.
    A changed health gate (the Model's golden prompts, the rollout's gate) reads "health gate changed": the reload
    runs the new gate. A deployment that carries no gate digest (activated by an edgectl before it existed) is
    gated once more, saying so: which gate it passed is unknown, and the reload records the digest, so it happens
    once."""
    from edgectl.plan.settings import current_settings, served_settings

    have = current.desired
    if have is None:
        return ["settings unknown"]
    want = served_settings(dep.spec, threads, planned, goldens)
    got = current_settings(have)
    changed = [f"{k} {got[k]} -> {want[k]}" for k in want if k != "health_gate_digest" and want[k] != got[k]]
    if got["health_gate_digest"] is None:
        changed.append(GATE_NOT_RECORDED)
    elif got["health_gate_digest"] != want["health_gate_digest"]:
        changed.append(GATE_CHANGED)
    return changed


def _removals(observed: AgentState | None, wanted: list[str]) -> list[Step]:
    if observed is None:
        return []
    return [Step("remove", d.name, "no longer in the manifests") for d in observed.deployments
            if d.state != "removed" and d.name not in wanted]

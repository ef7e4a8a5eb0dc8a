"""Plan with what the local store already holds, and build what the plan chose (cache hits do no work); a freshly
built artifact whose measured quality misses its deployment's floor is not deployed: the plan is made again with
that measurement (:func:`build_to_the_floor`)."""

from __future__ import annotations

import dataclasses

from edgectl_agent.api import Facts

from edgectl.builders import ArtifactStore, build, lookup
from edgectl.builders.sources import is_available
from edgectl.delivery import DELIVERY_MODES, by_delivery, mode_function
from edgectl.errors import EdgectlError, PlanError
from edgectl.plan import DevicePlan, Plan, plan, recipe_id
from edgectl.plan.ranking import below_floor
from edgectl.plan.select import candidate_recipes
from edgectl.spec import BuiltArtifact, Recipe, Spec

from edgectl.apply.observe import DeviceContext
from edgectl.apply.report import Events


def make_plan(spec: Spec, contexts: dict[str, DeviceContext], store: ArtifactStore,
              built: dict[str, BuiltArtifact] | None = None, *, reported: bool = True) -> Plan:
    """The plan for the observed ``contexts``, planned once with every artifact the local store holds for a recipe
    the planner may consider (so steps skip builds that are cache hits, and exact sizes and measured quality count).
    ``built``: cache hits an earlier plan of this run already found (filled in place when empty); the planner itself
    stays pure - the store is read here, before it runs. ``reported``: devices never connected to (pull) are
    planned from the facts they last reported (False: from their profiles, contacting nothing)."""
    built = {} if built is None else built
    available = available_sources(spec)
    if not built:
        built.update(find_built(spec, _candidate_recipes(spec, available), store))
    facts = {n: c.facts for n, c in contexts.items()}
    if reported:
        facts.update(reported_facts(spec, [c.device for c in contexts.values() if c.facts is None]))
    observed = {n: c.observed for n, c in contexts.items()}
    return plan(spec, facts, observed, built, devices=list(contexts), available=available)


def reported_facts(spec: Spec, devices: list) -> dict[str, Facts]:
    """The facts of devices edgectl never connects to, as they last reported them (their delivery mode's
    ``facts``: pull devices' status reports, edgectl.pull.status.reported_facts); devices without any are left
    out."""
    out: dict[str, Facts] = {}
    for mode, group in by_delivery(devices).items():
        ref = DELIVERY_MODES[mode].facts
        if ref is not None:
            out.update((name, f) for name, f in mode_function(ref)(spec, group).items() if f is not None)
    return out


def _candidate_recipes(spec: Spec, available: dict[str, frozenset[int]]) -> list[Recipe]:
    """Every recipe the planner may consider for the spec's deployments, on any device."""
    seen: dict[str, Recipe] = {}
    for dep in spec.deployments.values():
        model = spec.models[dep.spec.model]
        for recipe in candidate_recipes(dep, model, available.get(model.name)):
            seen.setdefault(recipe_id(recipe), recipe)
    return list(seen.values())


def available_sources(spec: Spec) -> dict[str, frozenset[int]]:
    """Per deployed model, the indexes of its sources present on this machine, so the planner prefers formats that
    can be built here. Nothing is downloaded or hashed."""
    return {name: frozenset(i for i, s in enumerate(spec.models[name].spec.sources) if is_available(s))
            for name in sorted({d.spec.model for d in spec.deployments.values()})}


def find_built(spec: Spec, recipes: list[Recipe], store: ArtifactStore) -> dict[str, BuiltArtifact]:
    """recipe id -> artifact in ``store``, for those of ``recipes`` it holds (a lookup builds nothing; it hashes a
    source only when its path, size or mtime changed)."""
    built: dict[str, BuiltArtifact] = {}
    for recipe in recipes:
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


Artifacts = dict[str, tuple[BuiltArtifact, bool]]  # recipe id -> (artifact, built by this run)
# Rounds of build -> measure -> plan again: each round rejects at least one recipe for good, so this only guards
# against a planner that chose a rejected artifact again.
MAX_BUILD_ROUNDS = 16


def build_to_the_floor(spec: Spec, p: Plan, contexts: dict[str, DeviceContext], store: ArtifactStore,
                       built: dict[str, BuiltArtifact], events: Events) -> tuple[Plan, Artifacts, dict[str, list[str]]]:
    """Build what ``p`` chose; when a fresh artifact's measured quality (edgectl.builders.quality) misses the
    quality floor of a deployment that chose it (Deployment spec.quality), plan again with that measurement - the
    planner then rejects it, with the numbers, and picks the next best or finds the device unfit - and build the
    new choices, until every choice is built and meets its floor. Returns the final plan, the artifacts built, and
    per device what was rejected (said in ``events`` too)."""
    artifacts: Artifacts = {}
    rejected: dict[str, list[str]] = {}
    for _ in range(MAX_BUILD_ROUNDS):
        needs = {recipe_id(dep.chosen.recipe) for dp in p.devices for dep in dp.deployments
                 if dep.chosen is not None and any(s.action == "build" for s in dep.steps)} - set(artifacts)
        if not needs:
            return p, artifacts, rejected
        fresh = build_planned(spec, p, store, events, only=needs)
        artifacts.update(fresh)
        built.update({rid: art for rid, (art, _) in fresh.items()})
        misses = fresh_below_floor(spec, p, fresh)
        if not misses:
            return p, artifacts, rejected
        for device, text in misses:
            events.info(device, text)
            rejected.setdefault(device, []).append(text)
        p = make_plan(spec, contexts, store, built)
    raise PlanError(f"the plan kept choosing artifacts below their deployments' quality floor after "
                    f"{MAX_BUILD_ROUNDS} rounds of building", hint="report this as a bug; meanwhile pin "
                    "quantization.allow to quant types that meet the floor")


def rejected_error(dp: DevicePlan, rejected: dict[str, list[str]], *, sent: str = "pushed") -> str | None:
    """The device's error when :func:`build_to_the_floor` rejected a fresh artifact there and the plan made again
    found nothing else that fits and meets the floor (None: not that case)."""
    if dp.status == "ok" or dp.device not in rejected:
        return None
    hints = sorted({d.hint for d in dp.deployments if d.unfit and d.hint})
    return (f"device '{dp.device}': " + "; ".join(t.replace("planning again with this measurement", "and nothing "
                                                            "else that fits meets the floor")
                                              for t in rejected[dp.device])
            + (f" ({'; '.join(hints)})" if hints else "") + f"; nothing was {sent}")


def fresh_below_floor(spec: Spec, p: Plan, fresh: Artifacts) -> list[tuple[str, str]]:
    """(device, what missed) for each deployment of ``p`` that chose an artifact of ``fresh`` whose measured quality
    misses the deployment's quality floor."""
    out = []
    for dp in p.devices:
        for dep in dp.deployments:
            art, _ = fresh.get(recipe_id(dep.chosen.recipe), (None, False)) if dep.chosen else (None, False)
            if art is None or art.quality is None:
                continue
            why = below_floor(spec.deployments[dep.deployment], dataclasses.replace(dep.chosen, quality=art.quality))
            if why:
                text = (f"{dep.deployment}: the freshly built {art.format} {art.quant} ({art.digest[:19]}) {why} "
                        f"({art.quality.summary()}); not deployed, planning again with this measurement")
                out.append((dp.device, text))
    return out

"""Plan with what the local store already holds, and build what the plan chose (cache hits do no work)."""

from __future__ import annotations

from edgectl_agent.api import Facts

from edgectl.builders import ArtifactStore, build, lookup
from edgectl.builders.sources import is_available
from edgectl.delivery import DELIVERY_MODES, by_delivery, mode_function
from edgectl.errors import EdgectlError
from edgectl.plan import Plan, plan, recipe_id
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

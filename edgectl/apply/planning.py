"""Plan with what the local store already holds, and build what the plan chose (cache hits do no work)."""

from __future__ import annotations

from edgectl.builders import ArtifactStore, build, lookup
from edgectl.builders.sources import is_available
from edgectl.errors import EdgectlError
from edgectl.plan import Plan, plan, recipe_id
from edgectl.spec import BuiltArtifact, Recipe, Spec

from edgectl.apply.observe import DeviceContext
from edgectl.apply.report import Events


def make_plan(spec: Spec, contexts: dict[str, DeviceContext], store: ArtifactStore,
              built: dict[str, BuiltArtifact] | None = None) -> Plan:
    """The plan for the observed ``contexts``, with the artifacts the local store holds for the recipes it chose
    (so steps skip builds that are cache hits and use exact sizes). ``built``: cache hits already found by an
    earlier plan of this run (updated in place); the planner runs again only when the store holds a chosen recipe
    it did not know about. The planner itself stays pure."""
    built = {} if built is None else built
    facts = {n: c.facts for n, c in contexts.items()}
    observed = {n: c.observed for n, c in contexts.items()}
    available = available_sources(spec)
    p = plan(spec, facts, observed, built, devices=list(contexts), available=available)
    found = find_built(spec, p, store, skip=built)
    if not found:
        return p
    built.update(found)
    return plan(spec, facts, observed, built, devices=list(contexts), available=available)


def available_sources(spec: Spec) -> dict[str, frozenset[int]]:
    """Per deployed model, the indexes of its sources present on this machine, so the planner prefers formats that
    can be built here. Nothing is downloaded or hashed."""
    return {name: frozenset(i for i, s in enumerate(spec.models[name].spec.sources) if is_available(s))
            for name in sorted({d.spec.model for d in spec.deployments.values()})}


def find_built(spec: Spec, p: Plan, store: ArtifactStore, skip: dict[str, BuiltArtifact] | None = None
               ) -> dict[str, BuiltArtifact]:
    """recipe id -> artifact in ``store``, for the recipes ``p`` chose (but those in ``skip``)."""
    built: dict[str, BuiltArtifact] = {}
    for recipe in chosen_recipes(p):
        if skip and recipe_id(recipe) in skip:
            continue
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

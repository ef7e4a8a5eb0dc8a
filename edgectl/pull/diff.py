"""`edgectl diff` rows for a pull device: the plan's artifact against what the device's last report says it serves.

A pull device is never connected to, so its "observed" is its last report (edgectl.pull.status). When the local
store holds the planned artifact, its digest is what the report must name: "in sync" only then; the same format
and quant under another digest (a rebuilt artifact not yet published or not yet applied) is drift, with both
digests named. When the store lacks it (not built here yet), format and quant are compared and the row says so.

The health gate is compared too: the report names the gate its agent ran last (edgectl.pull.status,
``DeviceStatus.gates``); a gate other than the plan's (a Model's golden prompts or rollout.health_gate changed, and
the state carrying the new one not yet applied and gated) is drift until the device reports the new one, and so is
a gate whose smoke request failed. An agent that names no gate (from before it reported one) is not compared.
"""

from __future__ import annotations

from edgectl.plan import recipe_id
from edgectl.plan.result import DevicePlan
from edgectl.plan.settings import gate_drift
from edgectl.spec import BuiltArtifact

NEXT_POLL = "published states apply at its next poll"


def pull_rows(dp: DevicePlan, st, built: dict[str, BuiltArtifact] | None = None) -> list[dict]:
    """``st``: the device's edgectl.observe.DeviceStatus from its last report; ``built``: recipe id -> the artifact
    the local store holds for it (edgectl.apply.planning.make_plan fills it)."""
    built = built or {}
    current = {d.name: d for d in st.deployments}
    seen = st.endpoint or "pull"
    rows = []
    for dep in dp.deployments:
        cur = current.get(dep.deployment)
        want = f"{dep.chosen.recipe.format} {dep.chosen.recipe.quant}" if dep.chosen else "(does not fit)"
        art = built.get(recipe_id(dep.chosen.recipe)) if dep.chosen else None
        have = (f"{cur.active.format} {cur.active.quant} {cur.active.digest[7:19]} [{cur.state}]"
                if cur and cur.active else "-") + f" ({seen})"
        same_kind = (dep.chosen is not None and cur is not None and cur.active is not None
                     and (cur.active.format, cur.active.quant) == (dep.chosen.recipe.format, dep.chosen.recipe.quant))
        if dep.chosen is None:
            status = "unfit"
        elif st.error and (st.error.startswith("stale") or cur is None):
            status = st.error
        elif cur is None or cur.active is None:
            status = "not deployed"
        elif cur.state != "serving":
            status = f"drift: {cur.state}"
        elif (gate := gate_drift(dep.gate_digest, st.gates.get(dep.deployment))) and (
                cur.active.digest == art.digest if art is not None else same_kind):
            status = gate  # the artifact is the planned one; the gate it passed is not
        elif art is not None and cur.active.digest == art.digest:
            status = "in sync"
        elif art is not None and same_kind:
            status = (f"drift: serves {want} {cur.active.digest[7:19]}, the local store's is {art.digest[7:19]} "
                      f"({NEXT_POLL})")
        elif art is None and same_kind:
            status = "in sync"
            have += f"; {want} is not built here: format and quant compared, not the digest"
        else:
            status = f"drift: serves another artifact ({NEXT_POLL})"
        rows.append({"device": dp.device, "deployment": dep.deployment, "desired": want, "observed": have,
                     "status": status, "steps": [] if status == "in sync" else ["publish"],
                     "desired_digest": art.digest if art is not None else None,
                     "observed_digest": cur.active.digest if cur and cur.active else None})
    wanted = {dep.deployment for dep in dp.deployments}
    for name, cur in sorted(current.items()):
        if name not in wanted and cur.active is not None:
            rows.append({"device": dp.device, "deployment": name, "desired": "(not selected)",
                         "observed": f"{cur.active.format} {cur.active.quant} {cur.active.digest[7:19]} ({seen})",
                         "status": "not desired", "steps": ["publish"], "desired_digest": None,
                         "observed_digest": cur.active.digest})
    return rows

"""``diff()``: desired against observed, per device and deployment, with what apply would do about it."""

from __future__ import annotations

from edgectl.delivery import DELIVERY_MODES, by_delivery, mode_function
from edgectl.plan import Plan
from edgectl.pull.diff import pull_rows
from edgectl.spec import BuiltArtifact, Spec

from edgectl.apply.observe import DeviceContext


def diff(spec: Spec, contexts: dict[str, DeviceContext], p: Plan,
         built: dict[str, BuiltArtifact] | None = None) -> list[dict]:
    """Desired (the plan's artifact) against observed (what each agent serves), one row per device and deployment,
    with what apply would do about it. Drift - an agent serving another digest than the one planned, a deployment
    failed or changed out of band - is named as such. ``built``: the store's artifacts by recipe id (make_plan
    fills it), which pull devices' reported digests are matched against (edgectl.pull.diff)."""
    rows = []
    # devices that edgectl does not connect to (pull) are compared with their last report
    reported = {s.device: s for mode, group in by_delivery(contexts[dp.device].device for dp in p.devices).items()
                if DELIVERY_MODES[mode].report for s in mode_function(DELIVERY_MODES[mode].report)(spec, group)}
    for dp in p.devices:
        ctx = contexts[dp.device]
        if dp.device in reported:
            rows += pull_rows(dp, reported[dp.device], built)
            continue
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

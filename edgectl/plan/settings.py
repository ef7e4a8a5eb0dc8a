"""The settings an agent serves a deployment with, besides its artifact: one list of fields, used both by the
planner (any of them differing from what the agent runs is a reload) and by apply (what it sends the agent); and
the health gate a pull device reports it ran, against the plan's (``gate_drift``, for `edgectl diff` and `status`)."""

from __future__ import annotations

from edgectl_agent.api import DesiredDeployment

from edgectl.spec.deployment import DeploymentSpec, gate_digest, gates_for
from edgectl.spec.model import GoldenPrompt

# The fields of a DesiredDeployment that come from the manifest and the plan rather than from the artifact.
# health_gate_digest: what the gate asks (edgectl.spec.deployment.gate_digest); a change re-activates and re-gates.
RELOAD_FIELDS = ("context_length", "parallel", "threads", "runtime_options", "health_gate_digest")


def served_settings(spec: DeploymentSpec, threads: int, planned_options: dict, goldens: list[GoldenPrompt]) -> dict:
    """RELOAD_FIELDS as the manifest and the plan want them (``threads``: the manifest's or the device's default;
    ``planned_options``: the runtime options the plan chose, which the manifest's own override; ``goldens``: the
    Model's golden prompts, which with the rollout's health gate make the gate's digest)."""
    return {"context_length": spec.context_length, "parallel": spec.parallel, "threads": threads,
            "runtime_options": {**planned_options, **spec.runtime_options},
            "health_gate_digest": gate_digest(gates_for(spec.rollout.health_gate, goldens))}


def current_settings(desired: DesiredDeployment) -> dict:
    """RELOAD_FIELDS as an agent runs them now."""
    return {f: dict(getattr(desired, f)) if f == "runtime_options" else getattr(desired, f) for f in RELOAD_FIELDS}


def gate_drift(wanted: str | None, ran: dict | None) -> str | None:
    """Why the health gate a pull device last ran (``ran``: its DeviceStatus.gates entry) is not the plan's
    ``wanted`` one, or None when it is (or when either side names none)."""
    if wanted is None or ran is None or ran.get("gate_digest") is None:
        return None
    if ran["gate_digest"] != wanted:
        return (f"drift: health gate changed (gated with {ran['gate_digest'][7:19]}, wants {wanted[7:19]}; "
                "published states apply at its next poll, then it gates again)")
    if ran.get("error"):
        return f"drift: health gate {wanted[7:19]} failed on the device: {ran['error']}"
    return None


def gate_steps(dp, status) -> list[dict]:
    """A pull device's drift for `edgectl status`: per deployment of its plan ``dp`` (edgectl.plan.DevicePlan), the
    health gate its last report (``status``: edgectl.observe.DeviceStatus, ``gates`` filled by edgectl.pull.status)
    says it ran, when that is not the plan's (:func:`gate_drift`), as a "publish" step."""
    out = []
    for dep in dp.deployments:
        why = gate_drift(dep.gate_digest, status.gates.get(dep.deployment))
        if why:
            out.append({"action": "publish", "deployment": dep.deployment, "detail": why.removeprefix("drift: ")})
    return out

"""Planning: which artifact each device gets, why, and the steps to get there. Pure functions, no I/O."""

from edgectl.plan.estimate import Estimate, estimate
from edgectl.plan.planner import (
    Candidate, DeploymentPlan, DevicePlan, Plan, Rejected, Step, plan, profile_from_facts, ram_budget, recipe_id,
    resolve_profile, selects,
)

__all__ = [
    "Candidate", "DeploymentPlan", "DevicePlan", "Estimate", "Plan", "Rejected", "Step", "estimate", "plan",
    "profile_from_facts", "ram_budget", "recipe_id", "resolve_profile", "selects",
]

"""What a plan is: per device a DevicePlan, per deployment a DeploymentPlan with the chosen Candidate, the
rejected ones and why, and the Steps that reach it. Plain data with ``to_dict`` (``edgectl plan --json``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from edgectl.plan.estimate import GIB, Estimate
from edgectl.plan.speed import Speed
from edgectl.spec import Quality, Recipe

StepAction = Literal["build", "push", "activate", "remove"]
DeviceStatus = Literal["ok", "unfit", "unknown"]


def recipe_id(recipe: Recipe) -> str:
    """Short stable id of a recipe, e.g. ``smollm2-135m-instruct/gguf/Q4_K_M@Q4_1``."""
    backend = f"+{recipe.backend}" if recipe.backend else ""  # e.g. .../onnx/INT4@FP32+olive
    return f"{recipe.model}/{recipe.format}/{recipe.quant}@{recipe.source_precision}{backend}"


@dataclass(frozen=True)
class Candidate:
    recipe: Recipe
    estimate: Estimate
    quality_rank: int
    as_shipped: bool
    buildable: bool
    reason: str = ""
    quality: Quality | None = None  # measured against the source when the artifact was built (from ``built``)
    runtime: str = "llamacpp"  # the agent runtime that serves it
    gpu_layers: int = 0  # llama.cpp layers offloaded to a dedicated GPU (-1 = all)
    ram_bytes: int = 0  # system RAM it needs when part of it lives on the GPU (0 = estimate.total_bytes)
    native: bool = True  # built from a source of a type its builder reads (else after a conversion)
    device: str = ""  # OpenVINO device from the profile's accelerators ('' = the runtime's default, CPU)
    embedding: bool = False  # the model has task: embedding: loaded in embedding mode, gated with an embedding
    speed: Speed | None = None  # expected tokens/s (None = the profile gives no figures to estimate it from)

    @property
    def ram_need(self) -> int:
        return self.ram_bytes or self.estimate.total_bytes

    @property
    def runtime_options(self) -> dict:
        """Options the plan adds to the deployment's runtime_options (the user's own win)."""
        options: dict = {"n_gpu_layers": self.gpu_layers} if self.gpu_layers else {}
        if self.device:
            options["device"] = self.device
        if self.embedding:
            options["embedding"] = True
        return options

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.model_dump(), "id": recipe_id(self.recipe), "estimate": self.estimate.to_dict(),
                "quality_rank": self.quality_rank, "as_shipped": self.as_shipped, "buildable": self.buildable,
                "reason": self.reason, "runtime": self.runtime, "gpu_layers": self.gpu_layers,
                "device": self.device or None,
                "ram_bytes": self.ram_need, "speed": self.speed.to_dict() if self.speed is not None else None,
                "quality": self.quality.model_dump(mode="json") if self.quality is not None else None}


@dataclass(frozen=True)
class Rejected:
    recipe: Recipe | None  # None for a whole format (e.g. no builder for it yet)
    reason: str
    label: str
    total_bytes: int = 0  # its memory estimate, when there is one
    fits: bool = False  # it would fit the budget; it lost on quality

    def to_dict(self) -> dict:
        return {"candidate": self.label, "reason": self.reason, "total_bytes": self.total_bytes or None}


@dataclass(frozen=True)
class Step:
    action: StepAction
    deployment: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"action": self.action, "deployment": self.deployment, "detail": self.detail}


@dataclass
class DeploymentPlan:
    deployment: str
    model: str
    budget_bytes: int
    chosen: Candidate | None = None
    rejected: list[Rejected] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    unfit: str | None = None  # why nothing fits, with the numbers
    hint: str | None = None
    # sha256 of the health gate the device must have passed (edgectl.spec.deployment.gate_digest); pull devices'
    # reports are compared with it (edgectl.pull.diff). None while nothing is chosen.
    gate_digest: str | None = None

    def to_dict(self) -> dict:
        return {"deployment": self.deployment, "model": self.model, "budget_bytes": self.budget_bytes,
                "chosen": self.chosen.to_dict() if self.chosen else None,
                "rejected": [r.to_dict() for r in self.rejected], "steps": [s.to_dict() for s in self.steps],
                "unfit": self.unfit, "hint": self.hint, "gate_digest": self.gate_digest}


@dataclass
class DevicePlan:
    device: str
    profile: str
    status: DeviceStatus
    budget_bytes: int = 0
    threads: int | None = None
    warnings: list[str] = field(default_factory=list)
    deployments: list[DeploymentPlan] = field(default_factory=list)
    removals: list[Step] = field(default_factory=list)
    hint: str | None = None
    platform: str | None = None  # the device's platform as planned (edgectl.plan.platforms), None when unknown

    @property
    def steps(self) -> list[Step]:
        return [s for d in self.deployments for s in d.steps] + self.removals

    def to_dict(self) -> dict:
        return {"device": self.device, "profile": self.profile, "status": self.status,
                "budget_bytes": self.budget_bytes, "threads": self.threads, "warnings": self.warnings,
                "deployments": [d.to_dict() for d in self.deployments],
                "removals": [s.to_dict() for s in self.removals], "hint": self.hint,
                "platform": self.platform}


@dataclass
class Plan:
    devices: list[DevicePlan]

    @property
    def is_empty(self) -> bool:
        """Nothing to do on any device that could be planned."""
        return not any(d.steps for d in self.devices if d.status == "ok")

    @property
    def unfit(self) -> list[DevicePlan]:
        return [d for d in self.devices if d.status == "unfit"]

    def to_dict(self) -> dict:
        return {"devices": [d.to_dict() for d in self.devices], "empty": self.is_empty}


def recipe_label(recipe: Recipe) -> str:
    return f"{recipe.format} {recipe.quant}" + (f" ({recipe.backend})" if recipe.backend else "")


def gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"

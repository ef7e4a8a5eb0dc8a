"""Deployment: which model runs on which devices, with what context and parallelism."""

from __future__ import annotations

from typing import Any, Literal

from edgectl_agent.api import ArtifactFormat
from pydantic import Field, ValidationInfo, field_validator, model_validator

from edgectl.spec.common import Frozen, LabelValue, Metadata, Name


class Selector(Frozen):
    devices: list[Name] = Field(default_factory=list, description="Device names to deploy to.")
    labels: dict[LabelValue, LabelValue] = Field(default_factory=dict,
                                                 description="Deploy to devices carrying all these labels.")

    @model_validator(mode="after")
    def _not_empty(self) -> "Selector":
        if not self.devices and not self.labels:
            raise ValueError("a selector needs 'devices' or 'labels' (an empty selector would match nothing)")
        return self


class Quantization(Frozen):
    format: ArtifactFormat | None = Field(default=None, description="Pin the artifact format; default: the device's preference.")
    allow: list[str] = Field(default_factory=list,
                             description="Only these quant types may be chosen (e.g. [Q4_K_M, Q8_0]); empty = any. "
                                         "Each must be one a builder makes: for quantization.format, that format's.")

    @field_validator("allow")
    @classmethod
    def _known_quants(cls, allow: list[str], info: ValidationInfo) -> list[str]:
        from edgectl.build.registry import BUILDERS  # the registry imports the spec package

        fmt = info.data.get("format")
        valid = {q for b in BUILDERS.values() if fmt is None or b.format == fmt for q in b.quants}
        unknown = [q for q in allow if q not in valid]
        if unknown:
            where = f"the {fmt} format" if fmt else "any format"
            raise ValueError(f"{', '.join(unknown)}: not a quant type edgectl builds for {where}; valid: "
                             + ", ".join(sorted(valid)))
        return allow


class DeploymentSpec(Frozen):
    model: Name = Field(description="Catalog model name (a Model document or a built-in catalog entry).")
    selector: Selector = Field(description="Which devices run this deployment.")
    context_length: int = Field(default=2048, ge=128, le=1_048_576, description="Context window per request slot, in tokens.")
    parallel: int = Field(default=1, ge=1, le=64, description="Concurrent request slots (each gets its own KV cache).")
    quantization: Quantization = Field(default_factory=Quantization, description="Constraints on the chosen artifact.")
    threads: int | None = Field(default=None, gt=0, description="Inference threads; default: the device profile's.")
    runtime_options: dict[str, Any] = Field(default_factory=dict,
                                            description="Extra options passed to the runtime (e.g. n_batch for llama.cpp).")
    strategy: Literal["all-at-once"] = Field(default="all-at-once", description="Rollout strategy.")


class Deployment(Frozen):
    apiVersion: Literal["edgectl.dev/v1alpha1"] = Field(description="Always edgectl.dev/v1alpha1.")
    kind: Literal["Deployment"] = Field(description="Always Deployment.")
    metadata: Metadata = Field(description="Deployment name; also the model id clients use on the device.")
    spec: DeploymentSpec = Field(description="What to run where.")

    @property
    def name(self) -> str:
        return self.metadata.name

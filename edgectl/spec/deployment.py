"""Deployment: which model runs on which devices, with what context and parallelism."""

from __future__ import annotations

from typing import Any, Literal

from edgectl_agent.api import ArtifactFormat
from pydantic import Field, model_validator

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


class Calibration(Frozen):
    path: str = Field(description="An .npz file (numpy.savez) of calibration samples for INT8_STATIC: one array per "
                                  "graph input, named like the input, samples along the first axis (relative to the "
                                  "manifest). Read without pickle.")


class Quantization(Frozen):
    allow: list[str] = Field(default_factory=list,
                             description="Only these quant types may be chosen (e.g. [Q4_K_M, Q8_0]); empty = any.")
    format: ArtifactFormat | None = Field(default=None, description="Pin the artifact format; default: the device's preference.")
    calibration: Calibration | None = Field(
        default=None, description="Tensor models, INT8_STATIC: samples to calibrate activation ranges on; default: "
                                  "samples generated from the graph's input spec (standard normal, fixed seed).")


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

"""Spec objects: frozen pydantic models, no I/O. ``Spec`` bundles every loaded document."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from edgectl.spec.artifact import BuiltArtifact, Quality, Recipe
from edgectl.spec.common import API_VERSION, Metadata
from edgectl.spec.deployment import Deployment, DeploymentSpec, Quantization, Selector
from edgectl.spec.fleet import (AUTO_PROFILE, Device, DockerTransport, Fleet, LocalTransport, ProfileOverrides,
                                SshTransport)
from edgectl.spec.model import Architecture, Model, ModelSource, ModelSpec
from edgectl.spec.profile import RUNTIME_FORMATS, Accelerator, Cpu, DeviceProfile, ProfileSpec

# kind -> model class; the loader dispatches on this.
KINDS = {"DeviceProfile": DeviceProfile, "Fleet": Fleet, "Model": Model, "Deployment": Deployment}


@dataclass(frozen=True)
class Spec:
    """Everything the planner needs from files: profiles and models include the built-ins.

    ``sources`` maps (kind, name) to the 'file:line' the document came from, for messages.
    """

    profiles: dict[str, DeviceProfile] = field(default_factory=dict)
    models: dict[str, Model] = field(default_factory=dict)
    fleets: dict[str, Fleet] = field(default_factory=dict)
    deployments: dict[str, Deployment] = field(default_factory=dict)
    sources: dict[tuple[str, str], str] = field(default_factory=dict)

    @functools.cached_property
    def devices(self) -> dict[str, Device]:
        """Every fleet's devices by name (computed once: the spec does not change after loading)."""
        return {d.name: d for f in self.fleets.values() for d in f.spec.devices}


__all__ = [
    "API_VERSION", "KINDS", "Spec", "Metadata", "Deployment", "DeploymentSpec", "Quantization", "Selector",
    "AUTO_PROFILE", "Device", "DockerTransport", "Fleet", "LocalTransport", "SshTransport", "ProfileOverrides",
    "Architecture", "Model", "ModelSource", "ModelSpec", "RUNTIME_FORMATS", "Accelerator", "Cpu", "DeviceProfile",
    "ProfileSpec", "BuiltArtifact", "Quality", "Recipe",
]

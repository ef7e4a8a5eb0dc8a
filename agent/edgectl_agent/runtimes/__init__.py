"""Runtimes: one file each, one interface (``base.Runtime``); heavy libraries are imported only on load."""

from __future__ import annotations

from edgectl_agent.runtimes.base import GenerationParams, LoadedModel, Runtime, RuntimeCapabilities
from edgectl_agent.runtimes.fake import FakeRuntime
from edgectl_agent.runtimes.llamacpp import LlamaCppRuntime

__all__ = ["GenerationParams", "LoadedModel", "Runtime", "RuntimeCapabilities", "FakeRuntime", "LlamaCppRuntime",
           "default_runtimes"]


def default_runtimes() -> dict[str, Runtime]:
    """Every runtime this agent ships, by the name DesiredDeployment.runtime uses."""
    return {"llamacpp": LlamaCppRuntime(), "fake": FakeRuntime()}

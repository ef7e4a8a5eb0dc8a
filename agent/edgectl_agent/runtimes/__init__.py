"""Runtimes: one file each, one interface (``base.Runtime``); heavy libraries are imported only on load."""

from __future__ import annotations

from edgectl_agent.runtimes.base import (GenerationParams, LoadedModel, Runtime, RuntimeCapabilities, TensorModel,
                                         TensorSpec)
from edgectl_agent.runtimes.fake import FakeRuntime
from edgectl_agent.runtimes.llamacpp import LlamaCppRuntime
from edgectl_agent.runtimes.mlx import MlxRuntime
from edgectl_agent.runtimes.onnxruntime import OnnxRuntime
from edgectl_agent.runtimes.onnxruntime_genai import OnnxGenaiRuntime
from edgectl_agent.runtimes.openvino import OpenVinoRuntime
from edgectl_agent.runtimes.openvino_genai import OpenVinoGenAIRuntime

__all__ = ["GenerationParams", "LoadedModel", "Runtime", "RuntimeCapabilities", "TensorModel", "TensorSpec",
           "FakeRuntime", "LlamaCppRuntime", "MlxRuntime", "OnnxGenaiRuntime", "OnnxRuntime", "OpenVinoGenAIRuntime",
           "OpenVinoRuntime", "default_runtimes"]


def default_runtimes() -> dict[str, Runtime]:
    """Every runtime this agent ships, by the name DesiredDeployment.runtime uses."""
    return {"llamacpp": LlamaCppRuntime(), "fake": FakeRuntime(), "onnxruntime": OnnxRuntime(),
            "onnxruntime-genai": OnnxGenaiRuntime(), "openvino": OpenVinoRuntime(),
            "openvino-genai": OpenVinoGenAIRuntime(), "mlx": MlxRuntime()}

"""Builders: one file per format/tool (gguf, onnx, onnx_genai, openvino, mlx), the registry of builders as data
(registry.py), source resolution and conversions, the content-addressed store, and the build pipeline
(pipeline.py: cache lookup, build on a miss, quality record).

    from edgectl.builders import ArtifactStore, build
    artifact, built_now = build(recipe, model, ArtifactStore())
"""

from __future__ import annotations

from edgectl.builders.convert import CONVERSIONS, Conversion
from edgectl.builders.pipeline import QualityWarning, build, calibration_path, lookup
from edgectl.builders.registry import (
    BUILDERS, COPY_TOOL_VERSION, GGUF_FTYPES, BuilderInfo, builder_for, check_buildable, is_as_shipped, tool_version,
)
from edgectl.builders.sources import ResolvedSource, locate, resolve_source
from edgectl.builders.store import ArtifactStore, sha256_file
from edgectl.progress import StageProgress

__all__ = [
    "ArtifactStore", "BUILDERS", "BuilderInfo", "CONVERSIONS", "COPY_TOOL_VERSION", "Conversion", "GGUF_FTYPES",
    "QualityWarning", "ResolvedSource", "StageProgress", "build", "builder_for", "calibration_path",
    "check_buildable", "is_as_shipped", "locate", "lookup", "resolve_source", "sha256_file", "tool_version",
]

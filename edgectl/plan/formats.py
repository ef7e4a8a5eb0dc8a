"""Sizes and quality of the non-GGUF LLM formats, on the same scales as GGUF (edgectl.plan.gguf).

Weights: each format stores the linear layers' weights at its quant type plus per-group scales (and zero points
when asymmetric), so bits per weight = bits + (scale bits + zero-point bits) / group size. What stays unquantized
(norms; embeddings in some formats) is counted at its real precision. The rules follow each tool's defaults as
edgectl calls it:

- OpenVINO (optimum-intel export + NNCF ``compress_weights``): INT4 = int4 asymmetric, group 128, f16 scale + u4
  zero point per group; the embedding and the output layer are kept at the INT8 "backup" precision (NNCF's
  default). INT4_SYM_CW (the Intel NPU recipe) = int4 symmetric, one f16 scale per output channel, embedding and
  output at INT8. INT8 = int8 asymmetric per output channel. FP16 = every weight f16.
- onnxruntime-genai model builder (CPU): INT4 = MatMulNBits block 32, fp32 scale and u4 zero point per block, the
  embedding at fp32 (the CPU model's io dtype); INT8 = per-block int8; FP16/FP32 = every weight at that width.
- MLX (``mlx_lm.convert -q``): affine quantization, group 64, f16 scale and f16 bias per group, embedding
  quantized too; FP16 = every weight f16.

Quality: a format's quant type is ranked where GGUF's nearest equivalent is (edgectl.plan.gguf.QUALITY_RANK), so
one ordering covers every format: INT4 with a scale per group of 32..128 sits with Q4_0, INT8 with Q8_0, FP16
with F16. Measured figures (Quality, when an artifact was built) refine this order; see the planner.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from edgectl.plan import gguf
from edgectl.spec.model import Architecture


@dataclass(frozen=True)
class QuantLayout:
    """How one (format, quant) stores weights: bits per linear weight and per embedding/output weight."""

    linear_bpw: float
    embedding_bpw: float
    output_bpw: float
    equivalent: str  # the GGUF quant type of about the same quality

    def weights_bytes(self, arch: Architecture) -> int:
        linear = 0
        embedding = output = 0
        for t in gguf.tensors(arch):
            n = t.rows * t.cols
            if t.name == "token_embd":
                embedding = n
            elif t.name == "output":
                output = n
            else:
                linear += n
        norms = (2 * arch.layers + 1) * arch.hidden_size * 4
        out = output if not arch.tied_embeddings else 0
        return int((linear * self.linear_bpw + embedding * self.embedding_bpw + out * self.output_bpw) / 8) + norms


def _bpw(bits: int, group: int, scale_bits: int, zero_bits: int) -> float:
    return bits + (scale_bits + zero_bits) / group


LAYOUTS: dict[tuple[str, str], QuantLayout] = {
    ("openvino", "INT4"): QuantLayout(_bpw(4, 128, 16, 4), 8.0, 8.0, "Q4_0"),
    # The NPU recipe: one f16 scale per output channel (about 4 bits per weight: a row holds thousands), no zero
    # point. One scale per row keeps less of the weights' range than a scale per 32..128 weights: ranked with
    # Q3_K_L until a measurement says otherwise.
    ("openvino", "INT4_SYM_CW"): QuantLayout(_bpw(4, 2048, 16, 0), 8.0, 8.0, "Q3_K_L"),
    ("openvino", "INT8"): QuantLayout(8.0, 8.0, 8.0, "Q8_0"),
    ("openvino", "FP16"): QuantLayout(16.0, 16.0, 16.0, "F16"),
    ("onnx", "INT4"): QuantLayout(_bpw(4, 32, 32, 4), 32.0, _bpw(4, 32, 32, 4), "Q4_0"),
    ("onnx", "INT8"): QuantLayout(_bpw(8, 32, 32, 8), 32.0, _bpw(8, 32, 32, 8), "Q8_0"),
    ("onnx", "FP16"): QuantLayout(16.0, 16.0, 16.0, "F16"),
    ("onnx", "FP32"): QuantLayout(32.0, 32.0, 32.0, "F32"),
    ("mlx", "INT4"): QuantLayout(_bpw(4, 64, 16, 16), _bpw(4, 64, 16, 16), _bpw(4, 64, 16, 16), "Q4_1"),
    ("mlx", "INT8"): QuantLayout(_bpw(8, 64, 16, 16), _bpw(8, 64, 16, 16), _bpw(8, 64, 16, 16), "Q8_0"),
    ("mlx", "FP16"): QuantLayout(16.0, 16.0, 16.0, "F16"),
    # GPTQ (llmcompressor, compressed-tensors pack-quantized): symmetric int4/int8 groups of 128 (64 or 32 where a
    # layer's width needs it), one 16-bit scale per group, no zero point; embedding and output head as vLLM holds
    # them in memory (16-bit). GPTQ's error-compensating rounding sits a step above round-to-nearest Q4_0.
    ("gptq", "W4A16"): QuantLayout(_bpw(4, 128, 16, 0), 16.0, 16.0, "Q4_1"),
    ("gptq", "W8A16"): QuantLayout(_bpw(8, 128, 16, 0), 16.0, 16.0, "Q8_0"),
    # bitsandbytes NF4, quantized as transformers loads a 16-bit folder (runtime "transformers"): 4-bit NormalFloat
    # codes with one fp32 absmax per block of 64 weights; NF4_DQ ("double quantization") stores those absmax values
    # as 8-bit codes with one fp32 scale per 256 blocks. Every linear layer but the output head; embedding and output
    # head stay at the 16-bit compute dtype. NF4's 16 levels sit at a normal distribution's quantiles, like IQ4_NL's
    # non-linear levels (measured: edgectl.builders.quality, docs/formats.md).
    ("bnb", "NF4"): QuantLayout(_bpw(4, 64, 32, 0), 16.0, 16.0, "IQ4_NL"),
    ("bnb", "NF4_DQ"): QuantLayout(4 + 8 / 64 + 32 / (64 * 256), 16.0, 16.0, "IQ4_NL"),
}

# Formats quantized while the runtime loads them: the artifact on disk is the 16-bit model (its bytes are the disk
# figure), the memory is the layout's.
LOAD_TIME_QUANTIZED: dict[str, QuantLayout] = {"bnb": QuantLayout(16.0, 16.0, 16.0, "F16")}

# Precisions a source can have outside GGUF's names.
_PRECISION_ALIASES = {"FP32": "F32", "FP16": "F16", "BF16": "BF16"}


def quality_rank(format: str, quant: str) -> int:
    """Rank on GGUF's quality scale (higher = closer to the unquantized model); -1 when unknown."""
    if format == "gguf":
        return gguf.QUALITY_RANK.get(quant, -1)
    layout = LAYOUTS.get((format, quant))
    if layout is not None:
        return gguf.QUALITY_RANK[layout.equivalent]
    return gguf.QUALITY_RANK.get(_PRECISION_ALIASES.get(quant, quant), -1)


def precision_rank(precision: str) -> int:
    """Rank of a source's precision (Q4_1, BF16, FP32, ...) on the same scale; unknown = unquantized F16."""
    return gguf.QUALITY_RANK.get(_PRECISION_ALIASES.get(precision, precision), gguf.QUALITY_RANK["F16"])


@functools.lru_cache(maxsize=4096)
def weights_bytes(arch: Architecture, format: str, quant: str) -> int:
    """Bytes of weights of ``arch`` as a ``format`` artifact of ``quant`` (cached: a fleet plan asks for the same
    few thousand times)."""
    if format == "gguf":
        return gguf.weights_bytes(arch, quant)
    return LAYOUTS[(format, quant)].weights_bytes(arch)


def stored_bytes(arch: Architecture, format: str, quant: str) -> int:
    """Bytes of the artifact on disk: the weights, except for a load-time quantized format (its 16-bit folder)."""
    stored = LOAD_TIME_QUANTIZED.get(format)
    return stored.weights_bytes(arch) if stored is not None else weights_bytes(arch, format, quant)

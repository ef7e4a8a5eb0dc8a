"""GGUF sizes and quality order, from llama.cpp's own rules.

``weights_bytes(arch, quant)`` walks the tensors a llama-family model has and gives each the ggml type llama.cpp's
``llama_tensor_get_type`` (src/llama-quant.cpp) would pick for that file type: the main type, the output tensor
rule (Q6_K, or Q8_0 when its rows are not a multiple of the block), the extra bits for attn_v/ffn_down in the
_M and _S mixes, and the fallback for rows that K-quant blocks do not divide. Sizes use each ggml type's exact
block size and bytes per block, so the estimate is the size of the tensor data llama.cpp writes (the file adds
its metadata and tokenizer on top, a few MB at most).
"""

from __future__ import annotations

from dataclasses import dataclass

from edgectl_agent.gguf_check import GGML_TYPES

from edgectl.spec.model import Architecture

# ggml type -> (elements per block, bytes per block): the agent's table of ggml's type traits, which its GGUF
# header check uses too (edgectl_agent.gguf_check.GGML_TYPES).
BLOCKS: dict[str, tuple[int, int]] = {name: (block, size) for name, block, size in GGML_TYPES.values()}

# llama.cpp file type -> main ggml type of its tensors.
FILE_TYPES: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q6_K": "Q6_K",
    "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q5_1": "Q5_1", "Q5_0": "Q5_0",
    "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "Q4_1": "Q4_1", "Q4_0": "Q4_0", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
    "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K", "Q2_K": "Q2_K",
}

# File types from lowest to highest quality, by llama.cpp's published perplexity increase over F16
# (tools/quantize/README.md). Equal quality shares a rank: F16 and BF16 both keep 16 bits.
_ORDER = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_0", "IQ4_NL", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_0",
          "Q5_1", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0", "F16", "F32"]
QUALITY_RANK: dict[str, int] = {q: i for i, q in enumerate(_ORDER)} | {"BF16": _ORDER.index("F16")}

# K-quant rows that the 256-element block does not divide fall back to these (llama-quant.cpp).
_FALLBACK = {"Q2_K": "IQ4_NL", "Q3_K": "IQ4_NL", "IQ4_XS": "IQ4_NL", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_UNQUANTIZED = {"F32", "F16", "BF16"}


def is_known(quant: str) -> bool:
    return quant in FILE_TYPES


def bits_per_weight(ggml_type: str) -> float:
    n, b = BLOCKS[ggml_type]
    return 8 * b / n


@dataclass(frozen=True)
class Tensor:
    name: str
    cols: int  # ne[0], the row length llama.cpp checks against the block size
    rows: int
    layer: int | None = None


def ffn_size(arch: Architecture) -> int:
    """Width of the feed-forward layer, derived from the exact parameter count (llama-family layout)."""
    h = arch.hidden_size
    q = arch.attention_heads * arch.head_dim
    kv = arch.kv_heads * arch.head_dim
    embeddings = arch.vocab_size * h * (1 if arch.tied_embeddings else 2)
    per_layer = (arch.parameters - embeddings - h) / arch.layers  # minus the final norm
    attention = h * q + 2 * h * kv + q * h
    norms = 2 * h
    return max(1, round((per_layer - attention - norms) / (3 * h)))


def tensors(arch: Architecture) -> list[Tensor]:
    """The 2-D weight tensors of a llama-family model (norms are 1-D, F32, counted separately)."""
    h, ff = arch.hidden_size, ffn_size(arch)
    q, kv = arch.attention_heads * arch.head_dim, arch.kv_heads * arch.head_dim
    out = [Tensor("token_embd", h, arch.vocab_size)]
    if not arch.tied_embeddings:
        out.append(Tensor("output", h, arch.vocab_size))
    for i in range(arch.layers):
        out += [
            Tensor("attn_q", h, q, i), Tensor("attn_k", h, kv, i), Tensor("attn_v", h, kv, i),
            Tensor("attn_output", q, h, i),
            Tensor("ffn_gate", h, ff, i), Tensor("ffn_up", h, ff, i), Tensor("ffn_down", ff, h, i),
        ]
    return out


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(t: Tensor, file_type: str, arch: Architecture) -> str:
    """The ggml type llama.cpp stores tensor ``t`` in for ``file_type`` (no importance matrix)."""
    main = FILE_TYPES[file_type]
    if main in _UNQUANTIZED:
        return main
    n = arch.layers
    gqa = arch.attention_heads // arch.kv_heads
    new = main
    is_output = t.name == "output" or (t.name == "token_embd" and arch.tied_embeddings)
    if is_output:
        new = "Q8_0" if t.cols % BLOCKS[main][0] or main == "Q8_0" else "Q6_K"
    elif t.name == "attn_v":
        i = t.layer or 0
        if file_type == "Q2_K":
            new = "Q4_K" if gqa >= 4 else "Q3_K"
        elif file_type == "Q3_K_M":
            new = "Q5_K" if i < 2 else "Q4_K"
        elif file_type == "Q3_K_L":
            new = "Q5_K"
        elif file_type in ("IQ4_NL", "IQ4_XS") and gqa >= 4:
            new = "Q5_K"
        elif file_type in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i, n):
            new = "Q6_K"
        elif file_type == "Q4_K_S" and i < 4:
            new = "Q5_K"
    elif t.name == "ffn_down":
        i = t.layer or 0
        if file_type == "Q2_K":
            new = "Q3_K"
        elif file_type == "Q3_K_M":
            new = "Q5_K" if i < n // 16 else "Q4_K"
        elif file_type == "Q3_K_L":
            new = "Q5_K"
        elif file_type == "Q4_K_M" and _use_more_bits(i, n):
            new = "Q6_K"
        elif file_type in ("IQ4_NL", "IQ4_XS") and i < n // 8:
            new = "Q5_K"
        elif file_type == "Q5_K_M" and _use_more_bits(i, n):
            new = "Q6_K"
        elif file_type == "Q4_K_S" and i < n // 8:
            new = "Q5_K"
    elif t.name == "attn_output":
        new = {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(file_type, new)
    if t.cols % BLOCKS[new][0]:
        new = _FALLBACK.get(new, new)
        if t.cols % BLOCKS[new][0]:
            new = "F16"
    return new


def weights_bytes(arch: Architecture, file_type: str) -> int:
    """Bytes of tensor data in a GGUF of ``file_type`` (norms stay F32)."""
    total = 0
    for t in tensors(arch):
        block, size = BLOCKS[tensor_type(t, file_type, arch)]
        total += t.rows * (t.cols // block) * size
    norms = (2 * arch.layers + 1) * arch.hidden_size * 4
    return total + norms

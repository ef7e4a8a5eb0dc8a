"""Memory estimates against the figures llama.cpp itself prints for SmolLM2-135M (Q4_1, n_ctx 2048):
model buffer 92.10 MiB, KV buffer 45.00 MiB, compute buffer 99.38 MiB."""

from __future__ import annotations

import pytest

from edgectl.plan import estimate
from edgectl.plan.gguf import QUALITY_RANK, ffn_size, tensor_type, tensors, weights_bytes
from edgectl.spec.model import Architecture

MIB = 2**20
SMOLLM2 = Architecture(family="llama", parameters=134_515_008, layers=30, hidden_size=576, attention_heads=9,
                       kv_heads=3, head_dim=64, vocab_size=49152, max_context=8192, tied_embeddings=True)


def test_ffn_width_is_derived_from_the_exact_parameter_count() -> None:
    assert ffn_size(SMOLLM2) == 1536


def test_q4_1_weights_match_llama_cpp_model_buffer() -> None:
    assert weights_bytes(SMOLLM2, "Q4_1") / MIB == pytest.approx(92.10, abs=0.01)


def test_kv_and_compute_match_llama_cpp_buffers() -> None:
    e = estimate(SMOLLM2, "Q4_1", 2048, 1)
    assert e.kv_bytes / MIB == pytest.approx(45.0, abs=0.01)
    assert 99.38 <= e.compute_bytes / MIB <= 99.38 * 1.1  # conservative, within 10%
    assert e.total_bytes == e.weights_bytes + e.kv_bytes + e.compute_bytes + e.runtime_bytes


def test_parallel_slots_multiply_the_kv_cache_and_context_is_capped_at_the_model_maximum() -> None:
    one = estimate(SMOLLM2, "Q4_K_M", 2048, 1).kv_bytes
    assert estimate(SMOLLM2, "Q4_K_M", 2048, 4).kv_bytes == 4 * one
    assert estimate(SMOLLM2, "Q4_K_M", 100_000, 1).kv_bytes == estimate(SMOLLM2, "Q4_K_M", 8192, 1).kv_bytes


def test_a_built_artifact_size_replaces_the_rule_estimate() -> None:
    e = estimate(SMOLLM2, "Q4_K_M", 2048, 1, artifact_bytes=123)
    assert e.weights_bytes == 123 and e.weights_exact


def test_tensor_types_follow_llama_cpp_rules() -> None:
    by_name = {(t.name, t.layer): t for t in tensors(SMOLLM2)}
    # 576 columns are not a multiple of 256: K-quant rows fall back (Q4_K -> Q5_0, Q6_K -> Q8_0).
    assert tensor_type(by_name[("attn_q", 5)], "Q4_K_M", SMOLLM2) == "Q5_0"
    assert tensor_type(by_name[("attn_v", 0)], "Q4_K_M", SMOLLM2) == "Q8_0"  # use_more_bits layer
    assert tensor_type(by_name[("attn_v", 4)], "Q4_K_M", SMOLLM2) == "Q5_0"
    # ffn_down has 1536 columns (divisible): Q6_K on the more-bits layers, Q4_K elsewhere.
    assert tensor_type(by_name[("ffn_down", 0)], "Q4_K_M", SMOLLM2) == "Q6_K"
    assert tensor_type(by_name[("ffn_down", 4)], "Q4_K_M", SMOLLM2) == "Q4_K"
    # Tied embeddings are quantized as the output tensor: Q8_0 when the rows do not divide.
    assert tensor_type(by_name[("token_embd", None)], "Q4_0", SMOLLM2) == "Q8_0"
    assert tensor_type(by_name[("attn_q", 5)], "F16", SMOLLM2) == "F16"


def test_sizes_grow_with_quality() -> None:
    order = sorted(["Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16"], key=QUALITY_RANK.get)
    big = SMOLLM2.model_copy(update={"hidden_size": 4096, "attention_heads": 32, "kv_heads": 8, "head_dim": 128,
                                      "layers": 32, "vocab_size": 128256, "tied_embeddings": False,
                                      "parameters": 8_030_261_248})
    sizes = [weights_bytes(big, q) for q in order]
    assert sizes == sorted(sizes)
    assert 4.5e9 < weights_bytes(big, "Q4_K_M") < 5.0e9  # Llama-3.1-8B Q4_K_M files are 4.92 GB


def test_other_formats_size_by_their_real_bits_per_weight() -> None:
    from edgectl.plan.formats import quality_rank, weights_bytes as fmt_bytes

    arch = SMOLLM2
    ov = [fmt_bytes(arch, "openvino", q) for q in ("INT4", "INT8", "FP16")]
    assert ov == sorted(ov) and ov[2] == pytest.approx(arch.parameters * 2, rel=0.02)
    # genai INT4 keeps the (tied) embedding at fp32 and stores fp32 scales per 32: larger than OpenVINO's INT4
    assert fmt_bytes(arch, "onnx", "INT4") > ov[0]
    # MLX 4-bit, group 64 with f16 scale and bias: 4.5 bits per weight everywhere
    assert fmt_bytes(arch, "mlx", "INT4") == pytest.approx(arch.parameters * 4.5 / 8, rel=0.02)
    assert quality_rank("openvino", "INT4") == quality_rank("gguf", "Q4_0") == QUALITY_RANK["Q4_0"]
    assert quality_rank("mlx", "INT8") == QUALITY_RANK["Q8_0"] and quality_rank("onnx", "FP32") == QUALITY_RANK["F32"]


def test_runtimes_keep_the_kv_cache_at_their_own_precision() -> None:
    kv = {r: estimate(SMOLLM2, "INT4", 2048, 1, format="openvino", runtime=r).kv_bytes
          for r in ("llamacpp", "openvino-genai", "onnxruntime-genai")}
    assert kv["openvino-genai"] < kv["llamacpp"] < kv["onnxruntime-genai"]  # u8 (+scales) < f16 < f32

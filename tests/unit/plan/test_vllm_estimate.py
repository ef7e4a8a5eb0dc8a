"""vLLM in the planner: its memory (weights + the KV cache the agent asks vLLM for + its processes) and its GPTQ
weights on the same tensor rules as the other formats."""

from __future__ import annotations

import sys

import edgectl.plan.estimate  # noqa: F401  (the module; edgectl.plan.estimate is also a function's name)
from edgectl.plan import formats
from edgectl.spec.model import Architecture

est = sys.modules["edgectl.plan.estimate"]

SMOLLM2 = Architecture(family="llama", parameters=134_515_008, layers=30, hidden_size=576, attention_heads=9,
                       kv_heads=3, head_dim=64, vocab_size=49152, max_context=8192, tied_embeddings=True)


def test_vllm_kv_cache_is_what_the_agent_asks_vllm_for() -> None:
    from edgectl_agent.runtimes.vllm import kv_cache_bytes

    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    for context, parallel in ((2048, 8), (256, 1)):
        assert est.kv_cache_bytes(SMOLLM2, context, parallel, "vllm") == kv_cache_bytes(config, context, parallel)
    assert est.kv_cache_bytes(SMOLLM2, 256, 1, "vllm") == est.VLLM_MIN_KV_BYTES  # vLLM's floor


def test_vllm_estimate_carries_its_processes_and_gptq_weights() -> None:
    e = est.estimate(SMOLLM2, "W4A16", 2048, 4, format="gptq", runtime="vllm")
    assert e.runtime_bytes == est.AGENT_BYTES + est.RUNTIME_LIB_BYTES["vllm"]
    w4, w8 = formats.weights_bytes(SMOLLM2, "gptq", "W4A16"), formats.weights_bytes(SMOLLM2, "gptq", "W8A16")
    assert e.weights_bytes == w4 < w8 < formats.weights_bytes(SMOLLM2, "gguf", "F16")
    assert formats.quality_rank("gptq", "W8A16") > formats.quality_rank("gptq", "W4A16")

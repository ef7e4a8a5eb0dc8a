"""NF4's bits per weight in the planner and where NF4 runs on a device (edgectl.plan.formats, edgectl.plan.nf4).
The layout is checked against what bitsandbytes really holds in tests/integration/test_bnb_nf4.py."""

from __future__ import annotations

import pytest

from edgectl.plan import formats
from edgectl.plan.estimate import GIB, estimate
from edgectl.plan.nf4 import Nf4Target, nf4_placement, nf4_target
from edgectl.spec import Accelerator, Cpu, ProfileSpec
from edgectl.spec.model import Architecture
from tests.unit.plan.test_golden import make_facts

# SmolLM2-135M's (tied embeddings)
SMOLLM2 = Architecture(family="llama", parameters=134_515_008, layers=30, hidden_size=576, attention_heads=9,
                       kv_heads=3, head_dim=64, vocab_size=49152, max_context=8192, tied_embeddings=True)


def test_nf4_bits_per_weight_are_bitsandbytes_layout() -> None:
    assert formats.LAYOUTS[("bnb", "NF4")].linear_bpw == 4.5  # 4-bit codes + an fp32 absmax per 64
    assert formats.LAYOUTS[("bnb", "NF4_DQ")].linear_bpw == pytest.approx(4.127, abs=1e-3)  # absmax at 8 bits
    nf4, dq = (formats.weights_bytes(SMOLLM2, "bnb", q) for q in ("NF4", "NF4_DQ"))
    linear = sum(t.rows * t.cols for t in formats.gguf.tensors(SMOLLM2) if t.name not in ("token_embd", "output"))
    embedding = 49152 * 576 * 2  # 16-bit, and the head shares it
    assert nf4 - dq == pytest.approx(linear * (4.5 - 4.127) / 8, rel=1e-3)
    assert dq > embedding and nf4 < formats.stored_bytes(SMOLLM2, "bnb", "NF4") / 2
    assert formats.quality_rank("bnb", "NF4") == formats.quality_rank("gguf", "IQ4_NL")


def test_memory_is_the_nf4_layout_and_disk_the_16_bit_folder_even_when_built() -> None:
    est = estimate(SMOLLM2, "NF4_DQ", 2048, 1, artifact_bytes=270_000_000, format="bnb", runtime="transformers")
    assert est.weights_bytes == formats.weights_bytes(SMOLLM2, "bnb", "NF4_DQ")
    assert est.artifact_bytes == 270_000_000 and not est.weights_exact
    assert "disk_bytes" in est.to_dict()
    gguf = estimate(SMOLLM2, "Q4_0", 2048, 1)
    assert gguf.artifact_bytes == gguf.weights_bytes and "disk_bytes" not in gguf.to_dict()


def profile(*accelerators: Accelerator) -> ProfileSpec:
    return ProfileSpec(arch="x86_64", cpu=Cpu(model="x", cores=8), memory_gb=32, os_reserved_gb=2, disk_gb=100,
                       accelerators=list(accelerators), runtimes=["transformers"], default_threads=8)


RTX = Accelerator(kind="gpu", name="NVIDIA GeForce RTX 4090", memory_gb=24, llamacpp_backend="cuda")


def test_an_nvidia_gpu_runs_it_on_cuda_with_its_memory_less_headroom() -> None:
    target = nf4_target(profile(RTX), None, 0.1)
    assert (target.device, target.gpu_bytes) == ("cuda", int(24 * GIB * 0.9))
    # observed: the GPU's own figure wins when smaller, and a bitsandbytes without CUDA falls to its CPU library
    facts = make_facts({"accelerators": [{"kind": "gpu", "name": "RTX", "memory_bytes": 20 * GIB}],
                        "bitsandbytes_backends": ["cpu", "cuda"]})
    assert nf4_target(profile(RTX), facts, 0.0).gpu_bytes == 20 * GIB
    facts = make_facts({"accelerators": [{"kind": "gpu", "name": "RTX"}], "bitsandbytes_backends": ["cpu"]})
    assert nf4_target(profile(RTX), facts, 0.1).device == "cpu"
    # a Jetson-like GPU sharing RAM: cuda, everything in the RAM budget
    shared = Accelerator(kind="gpu", name="NVIDIA Orin", memory_gb=8, llamacpp_backend="cuda", shared_memory=True)
    assert nf4_target(profile(shared), None, 0.1) == Nf4Target("cuda", 0, "on NVIDIA Orin (CUDA)")


def test_the_cpu_only_where_the_agent_reports_the_cpu_library() -> None:
    assert nf4_target(profile(), make_facts({"bitsandbytes_backends": ["cpu"]}), 0.1).device == "cpu"
    refused = nf4_target(profile(), make_facts({"bitsandbytes_backends": ["cuda"]}), 0.1)
    assert refused.device == "" and "bitsandbytes>=0.49" in refused.why
    unobserved = nf4_target(profile(), None, 0.1)
    assert unobserved.device == "" and "not observed" in unobserved.why
    no_gpu_seen = nf4_target(profile(RTX), make_facts({"bitsandbytes_backends": ["cuda"]}), 0.1)
    assert no_gpu_seen.device == "" and "reports no GPU" in no_gpu_seen.why


def test_placement_puts_weights_kv_and_activations_on_a_dedicated_gpu() -> None:
    est = estimate(SMOLLM2, "NF4", 2048, 1, format="bnb", runtime="transformers")
    assert nf4_placement(Nf4Target("cuda", 8 * GIB), est) == ("", est.runtime_bytes, "cuda")
    why, _, _ = nf4_placement(Nf4Target("cuda", 1024), est)
    assert "of GPU memory for NF4 weights" in why
    assert nf4_placement(Nf4Target("cpu"), est) == ("", None, "cpu")
    assert nf4_placement(Nf4Target("", why="nope"), est)[0] == "nope"

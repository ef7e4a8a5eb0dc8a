"""GPU facts the agent reports for the planner: its llama.cpp build's backends (from the library files, without
importing llama_cpp) and NVIDIA memory from nvidia-smi (parsed by a pure function, here on recorded output)."""

from __future__ import annotations

import subprocess

from edgectl_agent import facts

# `nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits` on a two-GPU box, and on a
# Jetson (its integrated GPU has no memory of its own).
TWO_GPUS = "NVIDIA GeForce RTX 4090, 24564, 23012\nNVIDIA RTX A4000, 16376, 16101\n"
JETSON = "Orin, [N/A], [N/A]\n"


def test_nvidia_smi_output_is_parsed_to_memory_figures() -> None:
    a, b = facts.parse_nvidia_smi(TWO_GPUS)
    assert (a.kind, a.name, a.memory_bytes, a.memory_free_bytes) == ("gpu", "NVIDIA GeForce RTX 4090",
                                                                      24564 * 2**20, 23012 * 2**20)
    assert b.name == "NVIDIA RTX A4000" and b.memory_bytes == 16376 * 2**20
    (orin,) = facts.parse_nvidia_smi(JETSON)
    assert orin.name == "Orin" and orin.memory_bytes is None and orin.memory_free_bytes is None
    assert facts.parse_nvidia_smi("") == [] and facts.parse_nvidia_smi("garbage\n") == []


def test_nvidia_smi_is_asked_only_where_the_driver_is(monkeypatch) -> None:
    calls = []

    def run(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, stdout=TWO_GPUS, stderr="")

    monkeypatch.setattr(facts, "nvidia_gpus", lambda: [])
    assert facts.nvidia_gpus_with_memory(run) == [] and calls == []
    monkeypatch.setattr(facts, "nvidia_gpus", lambda: [facts.AcceleratorFact(kind="gpu", name="NVIDIA GPU")])
    monkeypatch.setattr(facts.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    assert [g.memory_bytes for g in facts.nvidia_gpus_with_memory(run)] == [24564 * 2**20, 16376 * 2**20]
    failing = lambda argv, **kw: subprocess.CompletedProcess(argv, 9, stdout="", stderr="NVML: driver mismatch")  # noqa: E731
    assert [g.name for g in facts.nvidia_gpus_with_memory(failing)] == ["NVIDIA GPU"]  # the names from /proc


def test_llama_cpp_backends_from_library_files() -> None:
    cpu = ["libggml-base.so", "libggml-base.so.0", "libggml-cpu.so", "libggml-cpu.so.0.25.3", "libggml.so",
           "libllama.so", "libmtmd.so"]
    assert facts.parse_llamacpp_backends(cpu) == ["cpu"]
    assert facts.parse_llamacpp_backends(cpu + ["libggml-cuda.so", "libggml-cuda.so.0"]) == ["cpu", "cuda"]
    assert facts.parse_llamacpp_backends(["libggml-metal.dylib", "libggml-cpu.dylib"]) == ["cpu", "metal"]
    assert facts.parse_llamacpp_backends(["ggml-vulkan.dll", "ggml-cpu.dll"]) == ["cpu", "vulkan"]


def test_this_machines_llama_cpp_build_is_reported_as_llama_cpp_itself_says() -> None:
    """The real counterpart: the files say what llama.cpp's own llama_supports_gpu_offload() says."""
    import llama_cpp

    backends = facts.llamacpp_backends()
    assert backends is not None and "cpu" in backends
    assert any(b in facts.GPU_BACKENDS for b in backends) == bool(llama_cpp.llama_supports_gpu_offload())
    assert facts.collect_facts(facts.Path("/")).llamacpp_backends == backends

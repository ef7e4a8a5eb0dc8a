"""Where bitsandbytes NF4 (format ``bnb``, runtime ``transformers``) runs on a device, and what it needs there.
Pure, like the planner.

bitsandbytes quantizes on an NVIDIA GPU (CUDA) everywhere it is installed; on the CPU only where the installed
bitsandbytes ships its CPU library (bitsandbytes 0.49+ wheels: ``libbitsandbytes_cpu``), which the device's agent
reports in ``Facts.bitsandbytes_backends``. So:

- a profile with an NVIDIA GPU (an accelerator of kind gpu whose llama.cpp backend is CUDA, or named NVIDIA) runs
  it on ``cuda``, unless the device's agent reports a bitsandbytes without CUDA libraries;
- otherwise the CPU, only where the observed agent reports the CPU library: an unobserved device without a GPU is
  refused (the plan says why), never guessed.

On a dedicated GPU the weights, KV cache and activations must fit its memory and the RAM budget carries the agent
with torch and CUDA's libraries; on a GPU sharing system RAM (Jetson) and on the CPU the whole estimate is RAM.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgectl_agent.api import Facts

from edgectl.plan.estimate import Estimate
from edgectl.plan.result import gib
from edgectl.spec import ProfileSpec

RUNTIME = "transformers"


@dataclass(frozen=True)
class Nf4Target:
    """Where the device runs NF4: ``device`` "cuda", "cpu" or "" (nowhere, ``why`` says why); ``gpu_bytes``: the
    dedicated GPU memory it may use (0: the GPU shares RAM, or the CPU)."""

    device: str
    gpu_bytes: int = 0
    why: str = ""


def _nvidia(profile: ProfileSpec):
    return next((a for a in profile.accelerators if a.kind == "gpu" and (
        a.llamacpp_backend == "cuda" or "nvidia" in a.name.lower())), None)


def nf4_target(profile: ProfileSpec, facts: Facts | None, headroom: float) -> Nf4Target:
    """Where ``profile`` (with ``facts`` when the device was observed) runs NF4."""
    backends = facts.bitsandbytes_backends if facts is not None else None
    gpu = _nvidia(profile)
    no_gpu_seen = facts is not None and not any(a.kind == "gpu" for a in facts.accelerators)
    if gpu is not None and not no_gpu_seen and (backends is None or "cuda" in backends):
        observed = [a.memory_bytes for a in (facts.accelerators if facts else []) if a.kind == "gpu" and a.memory_bytes]
        total = min([int((gpu.memory_gb or 0) * 2**30), *observed]) if observed else int((gpu.memory_gb or 0) * 2**30)
        return Nf4Target("cuda", 0 if gpu.shared_memory else int(total * (1 - headroom)), f"on {gpu.name} (CUDA)")
    if backends is not None and "cpu" in backends:
        return Nf4Target("cpu", 0, "on the CPU: the device's bitsandbytes ships its CPU library")
    if gpu is not None and no_gpu_seen:
        return Nf4Target("", why=f"the profile lists {gpu.name} but the device's agent reports no GPU, and its "
                                 "bitsandbytes has no CPU library")
    if gpu is not None:
        return Nf4Target("", why=f"the device's bitsandbytes has no CUDA library ({', '.join(backends or [])}) for "
                                 f"{gpu.name}, nor a CPU one")
    if facts is None:
        return Nf4Target("", why="bitsandbytes NF4 runs on an NVIDIA GPU, or on the CPU only where the device's agent "
                                 "reports bitsandbytes with its CPU library; this device has no NVIDIA GPU and was "
                                 "not observed")
    return Nf4Target("", why=f"the device has no NVIDIA GPU and its bitsandbytes has no CPU library "
                             f"({', '.join(backends or []) or 'none'}): install bitsandbytes>=0.49 on it")


def nf4_placement(target: Nf4Target | None, est: Estimate) -> tuple[str, int | None, str]:
    """(why not, RAM it needs or None for the whole estimate, device) of an NF4 candidate on a device."""
    if target is None or not target.device:
        return (target.why if target else "bitsandbytes NF4: the device's GPU and agent are unknown"), None, ""
    if target.device == "cuda" and target.gpu_bytes > 0:
        on_gpu = est.weights_bytes + est.kv_bytes + est.compute_bytes
        if on_gpu > target.gpu_bytes:
            return (f"needs {gib(on_gpu)} of GPU memory for NF4 weights, KV cache and activations, "
                    f"{gib(target.gpu_bytes)} usable"), None, "cuda"
        return "", est.runtime_bytes, "cuda"
    return "", None, target.device

"""A device's effective profile: a named one with its per-device overrides, or ``auto`` from the observed facts;
warnings where the facts contradict it; and the budgets planned against it (RAM, disk, GPU memory), its runtimes
and its OpenVINO device. Pure, like the planner."""

from __future__ import annotations

from edgectl_agent.api import Facts
from edgectl_agent.runtimes import catalog

from edgectl.plan.estimate import GIB
from edgectl.plan.result import gib
from edgectl.spec import AUTO_PROFILE, Accelerator, Cpu, Device, ProfileSpec, Spec

# Runtime preference for devices planned from facts ('auto' profile): the runtime catalog's auto order.
AUTO_RUNTIME_ORDER = catalog.AUTO_RUNTIME_ORDER
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x86_64": "x86_64", "aarch64": "aarch64", "armv7l": "armv7l"}
DISK_HEADROOM = 0.10


def resolve_profile(spec: Spec, device: Device, facts: Facts | None) -> tuple[ProfileSpec | None, list[str]]:
    """The device's effective profile (overrides applied) and warnings where the facts contradict it."""
    warnings: list[str] = []
    if device.profile == AUTO_PROFILE:
        if facts is None:
            warnings.append("profile is 'auto' but the device's hardware could not be observed")
            return None, warnings
        profile = profile_from_facts(facts)
        if profile is None:
            warnings.append(f"profile 'auto': unsupported architecture {facts.arch!r}")
            return None, warnings
    else:
        profile = spec.profiles[device.profile].spec
    overrides = device.overrides.model_dump(exclude_none=True)
    if overrides:
        profile = profile.model_copy(update=overrides)
    if facts is not None and device.profile != AUTO_PROFILE:
        profile = _check_facts(device, profile, facts, warnings)
    return profile, warnings


def profile_from_facts(facts: Facts) -> ProfileSpec | None:
    arch = _ARCH_ALIASES.get(facts.arch)
    if arch is None:
        return None
    total_gb = facts.ram_total_bytes / GIB
    runtimes = [r for r in AUTO_RUNTIME_ORDER if r in facts.runtimes] or ["llamacpp"]
    return ProfileSpec(
        arch=arch,
        cpu=Cpu(model=facts.cpu_model or "unknown", cores=max(1, facts.cpu_count), isa=list(facts.cpu_flags)),
        memory_gb=total_gb,
        os_reserved_gb=min(4.0, max(1.0, 0.15 * total_gb)),
        disk_gb=max(facts.disk_free_bytes / GIB, 0.001),
        accelerators=[Accelerator(kind=a.kind, name=a.name,
                                  memory_gb=a.memory_bytes / GIB if a.memory_bytes else None)
                      for a in facts.accelerators],
        runtimes=runtimes,
        default_threads=max(1, facts.cpu_count),
    )


def auto_name(facts: Facts | None) -> str:
    if facts is None:
        return "unobserved"
    return f"{facts.arch}, {facts.cpu_count} CPUs, {gib(facts.ram_total_bytes)}"


def _check_facts(device: Device, profile: ProfileSpec, facts: Facts, warnings: list[str]) -> ProfileSpec:
    """Warn where the observed hardware contradicts the profile; plan with the smaller memory figure."""
    arch = _ARCH_ALIASES.get(facts.arch, facts.arch)
    if arch != profile.arch:
        warnings.append(f"profile '{device.profile}' says {profile.arch} but the device is {facts.arch}")
    observed_gb = facts.ram_total_bytes / GIB
    if observed_gb < profile.memory_gb * 0.9:
        warnings.append(
            f"profile '{device.profile}' says {profile.memory_gb:g} GB RAM but the device has {observed_gb:.1f} GB; "
            f"planning with {observed_gb:.1f} GB (fix the profile, or set overrides.memory_gb for this device)")
        profile = profile.model_copy(update={"memory_gb": observed_gb})
    if facts.cpu_count < profile.cpu.cores:
        warnings.append(f"profile '{device.profile}' says {profile.cpu.cores} cores but the device has "
                        f"{facts.cpu_count}")
    return profile


def ram_budget(profile: ProfileSpec) -> int:
    """RAM edgectl may plan for: (RAM - OS reserve) x (1 - headroom)."""
    return max(0, int((profile.memory_gb - profile.os_reserved_gb) * (1 - profile.headroom) * GIB))


def disk_budget(profile: ProfileSpec, facts: Facts | None) -> int:
    disk = profile.disk_gb * GIB
    if facts is not None:
        disk = min(disk, facts.disk_free_bytes)
    return int(disk * (1 - DISK_HEADROOM))


GPU_BACKENDS = ("cuda", "metal", "vulkan", "hip", "sycl", "opencl", "musa", "cann")  # as edgectl_agent.facts


def _cpu_only_build(gpu: Accelerator, facts: Facts | None, warnings: list[str]) -> bool:
    """True (with a warning saying why) when the device's agent reports a llama.cpp build without a GPU backend."""
    if facts is None or facts.llamacpp_backends is None:
        return False
    if any(b in GPU_BACKENDS for b in facts.llamacpp_backends):
        return False
    want = gpu.llamacpp_backend or "cuda"
    warnings.append(f"the device's llama.cpp build has only the {', '.join(facts.llamacpp_backends)} backend, so "
                    f"{gpu.name} gets no layers; planning without GPU offload (install a {want} build of "
                    f"llama-cpp-python on the device, e.g. CMAKE_ARGS=\"-DGGML_{want.upper()}=on\" pip install "
                    f"llama-cpp-python)")
    return True


def vram_budget(profile: ProfileSpec, facts: Facts | None, warnings: list[str]) -> int:
    """Dedicated GPU memory llama.cpp may offload to, less the profile's headroom; 0 without a dedicated GPU, or
    when the observed device reports none or its llama.cpp build has no GPU backend (then with a warning). An
    observed GPU's own memory figure wins over the profile's."""
    gpus = [a for a in profile.accelerators if a.kind == "gpu" and a.memory_gb and not a.shared_memory]
    if not gpus:
        return 0
    if facts is not None and not any(a.kind == "gpu" for a in facts.accelerators):
        warnings.append(f"the profile lists {gpus[0].name} but the device's agent reports no GPU; planning without "
                        "GPU offload (check the driver, or the llama.cpp build: it needs CUDA/Vulkan support)")
        return 0
    if _cpu_only_build(gpus[0], facts, warnings):
        return 0
    total = max(a.memory_gb for a in gpus) * GIB
    observed = [a.memory_bytes for a in (facts.accelerators if facts else []) if a.kind == "gpu" and a.memory_bytes]
    if observed and max(observed) < total * 0.9:
        warnings.append(f"the profile says {gpus[0].name} has {gib(total)} but the device reports "
                        f"{gib(max(observed))}; planning GPU offload with {gib(max(observed))}")
        total = max(observed)
    return int(total * (1 - profile.headroom))


def unified_gpu(profile: ProfileSpec, facts: Facts | None, warnings: list[str]) -> bool:
    """True when llama.cpp offloads to a GPU that shares system RAM (a Jetson's CUDA, a Mac's Metal): the
    profile's accelerator names its llama.cpp backend, and the device (when observed) has a build with a GPU
    backend. Offloaded layers then count against the same RAM budget."""
    gpus = [a for a in profile.accelerators if a.kind == "gpu" and a.shared_memory and a.llamacpp_backend]
    return bool(gpus) and not _cpu_only_build(gpus[0], facts, warnings)


def openvino_device(profile: ProfileSpec, facts: Facts | None = None, warnings: list[str] | None = None) -> str:
    """The OpenVINO device of the first accelerator in the profile that names one ('' = CPU, OpenVINO's default).

    When the device's agent reports OpenVINO's devices (``Facts.openvino_devices``) and that one is not among them
    (no driver, another machine than the profile describes), OpenVINO is planned on the CPU, with a warning."""
    wanted = next((a.openvino_device for a in profile.accelerators if a.openvino_device), "")
    if not wanted or facts is None or facts.openvino_devices is None:
        return wanted
    found = list(facts.openvino_devices)
    # "GPU" matches "GPU.0"; "GPU.1" only itself (OpenVINO's names: CPU, GPU, GPU.0, GPU.1, NPU)
    if any(d == wanted or d.split(".")[0] == wanted for d in found):
        return wanted
    if warnings is not None:
        warnings.append(f"the profile runs OpenVINO on {wanted}, but the device's OpenVINO reports only "
                        f"{', '.join(found) or 'no device'}; planning OpenVINO artifacts for the CPU (install the "
                        f"{wanted} driver on the device, or fix the profile's accelerators)")
    return ""


def usable_runtimes(profile: ProfileSpec, facts: Facts | None, warnings: list[str]) -> list[str]:
    """The profile's runtimes in preference order; when facts are known, only those installed on the device."""
    if facts is None:
        return list(profile.runtimes)
    installed = [r for r in profile.runtimes if r in facts.runtimes]
    if not installed:
        warnings.append(f"none of the profile's runtimes ({', '.join(profile.runtimes)}) is installed on the device; "
                        "install one, e.g. pip install 'edgectl-agent[llama]'")
    return installed

"""DeviceProfile: what a class of device has (memory, cores, ISA, accelerators) and which runtimes it runs."""

from __future__ import annotations

from typing import Literal

from edgectl_agent.runtimes import catalog
from pydantic import Field

from edgectl.spec.common import Document, Frozen, Metadata

# Runtimes a device profile may list, and the artifact format each one loads: read from the agent's runtime
# catalog (edgectl_agent.runtimes.catalog), the one place a runtime is declared.
RUNTIME_FORMATS: dict[str, str] = {name: catalog.entry(name).formats[0] for name in catalog.PROFILE_RUNTIME_NAMES}
RuntimeName = Literal[catalog.PROFILE_RUNTIME_NAMES]


class Cpu(Frozen):
    model: str = Field(description="CPU model as the vendor names it, e.g. 'Broadcom BCM2712 (4x Cortex-A76)'.")
    cores: int = Field(gt=0, le=1024, description="Number of CPU cores (physical, or performance+efficiency cores).")
    isa: list[str] = Field(default_factory=list,
                           description="ISA features relevant to inference kernels, e.g. neon, dotprod, i8mm, avx2, avx512, amx.")


class Accelerator(Frozen):
    kind: Literal["gpu", "npu", "dsp"] = Field(description="What kind of accelerator this is.")
    name: str = Field(description="Vendor name, e.g. 'NVIDIA GeForce RTX 4090', 'Intel AI Boost NPU'.")
    memory_gb: float | None = Field(default=None, ge=0,
                                    description="Dedicated memory in GB; omit when it shares system RAM.")
    shared_memory: bool = Field(default=False, description="True when it uses system RAM (unified memory, iGPU).")
    tops: float | None = Field(default=None, ge=0, description="Vendor-stated peak INT8 TOPS, for information.")
    memory_bandwidth_gbps: float | None = Field(
        default=None, gt=0, description="Peak bandwidth of its dedicated memory in GB/s (10^9 bytes), as the vendor "
                                        "states it; the planner's speed estimate for layers offloaded to it.")
    compute_gflops: float | None = Field(
        default=None, gt=0, description="Peak FP16/FP32 matrix throughput in GFLOPS, as the vendor states it; the "
                                        "prefill estimate for layers offloaded to it.")
    llamacpp_backend: Literal["cuda", "metal", "vulkan", "hip", "sycl"] | None = Field(
        default=None, description="The llama.cpp backend that drives this accelerator in the device class's usual "
                                  "build (a Jetson's CUDA, a Mac's Metal). A GPU sharing system RAM gets llama.cpp "
                                  "offload planned only when this is set (against the shared RAM budget); a "
                                  "device whose agent reports a llama.cpp build without it gets no offload.")
    openvino_device: str | None = Field(
        default=None, pattern=r"^[A-Z][A-Z0-9_]*(\.[0-9]+)?$",
        description="The OpenVINO device name that drives this accelerator (GPU, GPU.1, NPU). OpenVINO artifacts run "
                    "on the first accelerator in the list that names one, on the CPU when none does; a "
                    "deployment's runtime_options.device wins. Not derived from kind: OpenVINO drives Intel GPUs "
                    "and NPUs only.")


class ProfileSpec(Frozen):
    arch: Literal["x86_64", "aarch64", "armv7l"] = Field(description="CPU architecture as `uname -m` prints it.")
    os: Literal["linux", "android", "darwin"] | None = Field(
        default=None, description="The OS this profile's devices run where it decides how the agent is installed: "
                                  "'android' (Termux: bionic libc, no wheels on the package index) or 'darwin' "
                                  "(macOS: launchd, no systemd); both need the Fleet device's transport.install: "
                                  "on-device. Omitted: Linux, or read from the device's agent.")
    cpu: Cpu = Field(description="The CPU.")
    memory_gb: float = Field(gt=0, description="Total RAM in GB of 2^30 bytes, as RAM is sold (unified memory on "
                                               "Apple Silicon and Jetson).")
    os_reserved_gb: float = Field(ge=0, description="RAM kept for the OS and other processes (GB of 2^30 bytes); never "
                                                    "planned for models.")
    headroom: float = Field(default=0.10, ge=0, lt=1,
                            description="Fraction of the remaining RAM left free as safety margin (0.10 = 10%).")
    disk_gb: float = Field(gt=0, description="Storage available for the agent's artifact store, in GB of 2^30 bytes.")
    accelerators: list[Accelerator] = Field(default_factory=list, description="GPUs / NPUs on the device.")
    runtimes: list[RuntimeName] = Field(min_length=1,
                                        description="Runtimes this device can run, in order of preference.")
    default_threads: int = Field(gt=0, description="Inference threads used unless a deployment says otherwise.")
    memory_bandwidth_gbps: float | None = Field(
        default=None, gt=0, description="Peak system memory bandwidth in GB/s (10^9 bytes/s), from the vendor's "
                                        "figures (channels x width x transfer rate). Decode speed estimates come "
                                        "from it; omitted = no speed estimate.")
    compute_gflops: float | None = Field(
        default=None, gt=0, description="Peak FP32 throughput of all CPU cores in GFLOPS (cores x GHz x FLOPs per "
                                        "cycle). Prefill speed estimates come from it; omitted = no speed "
                                        "estimate.")
    quant_preference: dict[RuntimeName, list[str]] = Field(
        default_factory=dict,
        description="Per runtime, quant types this device class runs best, most preferred first (e.g. llamacpp: "
                    "[Q4_0] on ARM phones, whose llama.cpp repacks Q4_0 for its int8 dot-product kernels). The "
                    "planner takes the first that fits and is allowed, before the highest quality that fits.")
    notes: str | None = Field(default=None, description="Sources of the figures, caveats.")


class DeviceProfile(Document):
    kind: Literal["DeviceProfile"] = Field(description="Always DeviceProfile.")
    metadata: Metadata = Field(description="Name and description of the profile.")
    spec: ProfileSpec = Field(description="What the device class has.")

"""The planner: a pure function from (spec, observed facts, observed agent state, local cache) to a Plan.

Per device: resolve its profile (a named one with per-device overrides, or ``auto`` from the observed facts),
warn where facts contradict it, and compute the RAM budget = (RAM - OS reserve) x (1 - headroom). Per deployment
selected onto the device (in name order, each taking its share of the budget): candidates = the formats the
device's runtimes load x the quant types a builder can make, capped at the source's precision; estimate each;
choose the highest quality that fits; record why every other candidate lost. Steps (build, push, activate, remove)
are only what differs from what the agent reports.

No I/O here: callers pass everything in. Golden cases in tests/unit/plan/cases pin the behaviour.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Literal

from edgectl_agent.api import AgentState, DeploymentState, Facts
from edgectl_agent.runtimes import catalog

from edgectl.builders.registry import BUILDERS
from edgectl.plan import compat, gguf
from edgectl.plan.estimate import AGENT_BYTES, GIB, Estimate, estimate
from edgectl.plan.formats import precision_rank, quality_rank
from edgectl.spec import (
    AUTO_PROFILE, Accelerator, BuiltArtifact, Cpu, Deployment, Device, Model, ProfileSpec, Quality, Recipe, Selector,
    Spec,
)

# Quant types offered when a deployment does not restrict them (the builder can make more: list them in
# quantization.allow). The source's own precision is always offered too: shipping it as is needs no requantization.
# F16/BF16/F32 are not offered by default: llama.cpp lists Q8_0 at +0.0026 perplexity over F16 (Llama-3-8B) at half the
# memory and twice the token rate on bandwidth-bound devices. Name them in quantization.allow to get them.
DEFAULT_GGUF_MENU = ("Q2_K", "Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
# Runtime preference for devices planned from facts ('auto' profile): the runtime catalog's auto order.
AUTO_RUNTIME_ORDER = catalog.AUTO_RUNTIME_ORDER
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x86_64": "x86_64", "aarch64": "aarch64", "armv7l": "armv7l"}
DISK_HEADROOM = 0.10

StepAction = Literal["build", "push", "activate", "remove"]
DeviceStatus = Literal["ok", "unfit", "unknown"]


def recipe_id(recipe: Recipe) -> str:
    """Short stable id of a recipe, e.g. ``smollm2-135m-instruct/gguf/Q4_K_M@Q4_1``."""
    return f"{recipe.model}/{recipe.format}/{recipe.quant}@{recipe.source_precision}"


def selects(selector: Selector, device: Device) -> bool:
    """A deployment selector matches a device by name, or by carrying all the selector's labels."""
    if device.name in selector.devices:
        return True
    return bool(selector.labels) and all(device.labels.get(k) == v for k, v in selector.labels.items())


@dataclass(frozen=True)
class Candidate:
    recipe: Recipe
    estimate: Estimate
    quality_rank: int
    as_shipped: bool
    buildable: bool
    reason: str = ""
    quality: Quality | None = None  # measured against the source when the artifact was built (from ``built``)
    runtime: str = "llamacpp"  # the agent runtime that serves it
    gpu_layers: int = 0  # llama.cpp layers offloaded to a dedicated GPU (-1 = all)
    ram_bytes: int = 0  # system RAM it needs when part of it lives on the GPU (0 = estimate.total_bytes)
    native: bool = True  # built from a source of a type its builder reads (else after a conversion)
    device: str = ""  # OpenVINO device from the profile's accelerators ('' = the runtime's default, CPU)

    @property
    def ram_need(self) -> int:
        return self.ram_bytes or self.estimate.total_bytes

    @property
    def runtime_options(self) -> dict:
        """Options the plan adds to the deployment's runtime_options (the user's own win)."""
        options: dict = {"n_gpu_layers": self.gpu_layers} if self.gpu_layers else {}
        if self.device:
            options["device"] = self.device
        return options

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.model_dump(), "id": recipe_id(self.recipe), "estimate": self.estimate.to_dict(),
                "quality_rank": self.quality_rank, "as_shipped": self.as_shipped, "buildable": self.buildable,
                "reason": self.reason, "runtime": self.runtime, "gpu_layers": self.gpu_layers,
                "device": self.device or None,
                "ram_bytes": self.ram_need,
                "quality": self.quality.model_dump(mode="json") if self.quality is not None else None}


@dataclass(frozen=True)
class Rejected:
    recipe: Recipe | None  # None for a whole format (e.g. no builder for it yet)
    reason: str
    label: str
    total_bytes: int = 0  # its memory estimate, when there is one
    fits: bool = False  # it would fit the budget; it lost on quality

    def to_dict(self) -> dict:
        return {"candidate": self.label, "reason": self.reason, "total_bytes": self.total_bytes or None}


@dataclass(frozen=True)
class Step:
    action: StepAction
    deployment: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"action": self.action, "deployment": self.deployment, "detail": self.detail}


@dataclass
class DeploymentPlan:
    deployment: str
    model: str
    budget_bytes: int
    chosen: Candidate | None = None
    rejected: list[Rejected] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    unfit: str | None = None  # why nothing fits, with the numbers
    hint: str | None = None

    def to_dict(self) -> dict:
        return {"deployment": self.deployment, "model": self.model, "budget_bytes": self.budget_bytes,
                "chosen": self.chosen.to_dict() if self.chosen else None,
                "rejected": [r.to_dict() for r in self.rejected], "steps": [s.to_dict() for s in self.steps],
                "unfit": self.unfit, "hint": self.hint}


@dataclass
class DevicePlan:
    device: str
    profile: str
    status: DeviceStatus
    budget_bytes: int = 0
    threads: int | None = None
    warnings: list[str] = field(default_factory=list)
    deployments: list[DeploymentPlan] = field(default_factory=list)
    removals: list[Step] = field(default_factory=list)
    hint: str | None = None

    @property
    def steps(self) -> list[Step]:
        return [s for d in self.deployments for s in d.steps] + self.removals

    def to_dict(self) -> dict:
        return {"device": self.device, "profile": self.profile, "status": self.status,
                "budget_bytes": self.budget_bytes, "threads": self.threads, "warnings": self.warnings,
                "deployments": [d.to_dict() for d in self.deployments],
                "removals": [s.to_dict() for s in self.removals], "hint": self.hint}


@dataclass
class Plan:
    devices: list[DevicePlan]

    @property
    def is_empty(self) -> bool:
        """Nothing to do on any device that could be planned."""
        return not any(d.steps for d in self.devices if d.status == "ok")

    @property
    def unfit(self) -> list[DevicePlan]:
        return [d for d in self.devices if d.status == "unfit"]

    def to_dict(self) -> dict:
        return {"devices": [d.to_dict() for d in self.devices], "empty": self.is_empty}


# ---------------------------------------------------------------------------------------------------------------


def plan(spec: Spec, facts: dict[str, Facts | None], observed: dict[str, AgentState | None],
         built: dict[str, BuiltArtifact], *, devices: list[str] | None = None,
         available: dict[str, frozenset[int]] | None = None) -> Plan:
    """Plan every device in ``devices`` (default: the devices in ``facts``, else all devices of the spec).

    ``facts``/``observed``: per device name, what its agent reported (None = not reachable / not running).
    ``built``: recipe_id -> artifact already in the local store (its exact size and digest are used).
    ``available``: model name -> indexes of its sources present on this machine (None = assume all are).
    """
    names = devices if devices is not None else (list(facts) if facts else list(spec.devices))
    memo: dict = {}  # devices with the same profile and facts get the same candidates: computed once per plan
    return Plan([plan_device(spec, spec.devices[n], facts.get(n), observed.get(n), built, available, memo=memo)
                 for n in names])


def plan_device(spec: Spec, device: Device, facts: Facts | None, observed: AgentState | None,
                built: dict[str, BuiltArtifact], available: dict[str, frozenset[int]] | None = None, *,
                memo: dict | None = None) -> DevicePlan:
    wanted = sorted(name for name, dep in spec.deployments.items() if selects(dep.spec.selector, device))
    # A device nobody has observed is planned from its profile alone: devices alike in profile, overrides and
    # deployments get the same plan, computed once (a 10,000-device fleet has a handful of distinct ones).
    alike = None
    if memo is not None and facts is None and observed is None:
        alike = ("device", device.profile, device.overrides, tuple(wanted))
        if alike in memo:
            return _copy_for(memo[alike], device.name)
    dp = _plan_device(spec, device, facts, observed, built, available, wanted, memo)
    if alike is not None:
        memo[alike] = _copy_for(dp, device.name)
    return dp


def _copy_for(dp: DevicePlan, name: str) -> DevicePlan:
    """A copy of ``dp`` for device ``name`` whose lists can be changed without touching the original."""
    out = copy.copy(dp)
    out.device, out.warnings, out.removals = name, list(dp.warnings), list(dp.removals)
    out.deployments = []
    for d in dp.deployments:
        d2 = copy.copy(d)
        d2.rejected, d2.steps = list(d.rejected), list(d.steps)
        out.deployments.append(d2)
    return out


def _plan_device(spec: Spec, device: Device, facts: Facts | None, observed: AgentState | None,
                 built: dict[str, BuiltArtifact], available: dict[str, frozenset[int]] | None, wanted: list[str],
                 memo: dict | None) -> DevicePlan:
    profile, warnings = resolve_profile(spec, device, facts)
    if profile is None:
        return DevicePlan(device.name, device.profile, "unknown", warnings=warnings,
                          removals=_removals(observed, wanted),
                          hint="start its agent so edgectl can observe the hardware, or name a profile "
                               "(see `profiles/`) instead of 'auto'")
    budget = ram_budget(profile)
    dp = DevicePlan(device.name, device.profile if device.profile != AUTO_PROFILE else f"auto ({_auto_name(facts)})",
                    "ok", budget_bytes=budget, threads=profile.default_threads, warnings=warnings)
    runtimes = _usable_runtimes(profile, facts, dp.warnings)
    target = Target(runtimes=runtimes, budget=budget, disk=_disk_budget(profile, facts),
                    vram=_vram_budget(profile, facts, dp.warnings), prefer=dict(profile.quant_preference),
                    versions=dict(facts.runtimes) if facts is not None else None,
                    openvino_device=openvino_device(profile))
    # Every deployment first gets room for its smallest artifact; quality then goes to them in name order.
    deployments = [spec.deployments[n] for n in wanted]
    models = [spec.models[d.spec.model] for d in deployments]

    def avail(model: Model) -> frozenset[int] | None:
        return None if available is None else available.get(model.name, frozenset())

    def candidates(dep: Deployment, model: Model, t: Target) -> DeploymentPlan:
        if memo is None:
            return plan_deployment(dep, model, t, built, avail(model))
        key = (dep.name, model.name, tuple(t.runtimes), t.budget, t.disk, t.vram, t.openvino_device,
               tuple((k, tuple(v)) for k, v in sorted(t.prefer.items())),
               tuple(sorted(t.versions.items())) if t.versions is not None else None)
        if key not in memo:
            memo[key] = plan_deployment(dep, model, t, built, avail(model))
        done = memo[key]  # a copy: steps and hints are per device
        return replace(done, rejected=list(done.rejected), steps=list(done.steps))

    floors = [_smallest_fit(candidates(d, m, target)) for d, m in zip(deployments, models)]
    admitted: list[bool] = []
    for floor in floors:  # in name order, while the smallest artifacts of those admitted fit together
        admitted.append(floor is not None and floor + sum(f for f, a in zip(floors, admitted) if a) <= budget)
    remaining, vram = budget, target.vram
    for i, (dep, model) in enumerate(zip(deployments, models)):
        reserved = sum(f for f, a in zip(floors[i + 1:], admitted[i + 1:]) if a)
        room = max(0, remaining - reserved) if admitted[i] else max(0, budget - sum(
            f for f, a in zip(floors, admitted) if a))
        plan_ = candidates(dep, model, replace(target, budget=room, vram=vram))
        dp.deployments.append(plan_)
        if plan_.chosen is None:
            dp.status = "unfit"
            if floors[i] is not None:
                others = ", ".join(d.name for d, a in zip(deployments, admitted) if a)
                plan_.hint = (f"it would fit alone, but {others} (planned first, in name order) take the room; "
                              f"move one to another device, or shrink it")
            continue
        chosen = plan_.chosen
        remaining -= chosen.ram_need
        vram -= max(0, chosen.estimate.total_bytes - chosen.ram_need) if chosen.gpu_layers else 0
        threads = dep.spec.threads or profile.default_threads
        plan_.steps = _steps(dep, chosen, threads, observed, built)
        if facts is not None and chosen.ram_need > facts.ram_available_bytes and plan_.steps:
            dp.warnings.append(
                f"{dep.name}: needs {_gib(chosen.ram_need)} but the device has "
                f"{_gib(facts.ram_available_bytes)} available right now; other processes may have to make room")
    dp.removals = _removals(observed, wanted)
    return dp


def _smallest_fit(dp: DeploymentPlan) -> int | None:
    """Memory of the smallest candidate that fits the whole budget (None if none does)."""
    sizes = [dp.chosen.ram_need] if dp.chosen else []
    sizes += [r.total_bytes for r in dp.rejected if r.fits]
    return min(sizes, default=None)


# --- profiles ----------------------------------------------------------------------------------------------------


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


def _auto_name(facts: Facts | None) -> str:
    if facts is None:
        return "unobserved"
    return f"{facts.arch}, {facts.cpu_count} CPUs, {_gib(facts.ram_total_bytes)}"


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


def _disk_budget(profile: ProfileSpec, facts: Facts | None) -> int:
    disk = profile.disk_gb * GIB
    if facts is not None:
        disk = min(disk, facts.disk_free_bytes)
    return int(disk * (1 - DISK_HEADROOM))


def _vram_budget(profile: ProfileSpec, facts: Facts | None, warnings: list[str]) -> int:
    """Dedicated GPU memory llama.cpp may offload to, less the profile's headroom; 0 without a dedicated GPU, or
    when the observed device reports none (then with a warning)."""
    gpus = [a for a in profile.accelerators if a.kind == "gpu" and a.memory_gb and not a.shared_memory]
    if not gpus:
        return 0
    if facts is not None and not any(a.kind == "gpu" for a in facts.accelerators):
        warnings.append(f"the profile lists {gpus[0].name} but the device's agent reports no GPU; planning without "
                        "GPU offload (check the driver, or the llama.cpp build: it needs CUDA/Vulkan support)")
        return 0
    return int(max(a.memory_gb for a in gpus) * GIB * (1 - profile.headroom))


def openvino_device(profile: ProfileSpec) -> str:
    """The OpenVINO device of the first accelerator in the profile that names one ('' = CPU, OpenVINO's default)."""
    return next((a.openvino_device for a in profile.accelerators if a.openvino_device), "")


def _usable_runtimes(profile: ProfileSpec, facts: Facts | None, warnings: list[str]) -> list[str]:
    """The profile's runtimes in preference order; when facts are known, only those installed on the device."""
    if facts is None:
        return list(profile.runtimes)
    installed = [r for r in profile.runtimes if r in facts.runtimes]
    if not installed:
        warnings.append(f"none of the profile's runtimes ({', '.join(profile.runtimes)}) is installed on the device; "
                        "install one, e.g. pip install 'edgectl-agent[llama]'")
    return installed


# --- candidates --------------------------------------------------------------------------------------------------

# Quant types offered per (format, kind) when a deployment does not restrict them, as for GGUF above: the
# unquantized FP32 is left out (name it in quantization.allow).
DEFAULT_MENUS: dict[tuple[str, str], tuple[str, ...]] = {
    ("gguf", "llm"): DEFAULT_GGUF_MENU,
    ("onnx", "llm"): ("INT4", "INT8", "FP16"),
    ("openvino", "llm"): ("INT4", "INT8", "FP16"),
    ("mlx", "llm"): ("INT4", "INT8", "FP16"),
    ("onnx", "tensor"): ("INT8",),
    ("openvino", "tensor"): ("INT8", "FP16"),
}
# Tensor models: quality by precision. Static INT8 (calibrated activations) and dynamic INT8 rank alike; INT4 is
# weight-only MatMulNBits.
TENSOR_QUALITY_RANK = {"INT4": 0, "INT8": 1, "INT8_STATIC": 1, "FP16": 2, "FP32": 3}
TENSOR_BYTES_PER_WEIGHT = {"INT4": 0.5, "INT8": 1, "INT8_STATIC": 1, "FP16": 2, "FP32": 4}
# onnxruntime's / OpenVINO's arena and the activations of a small graph; not modelled per graph.
ONNX_COMPUTE_BYTES = 32 * 2**20
# Source types a conversion can turn into another (edgectl.builders.sources): HF folder <-> GGUF file.
CONVERTIBLE: dict[str, tuple[str, ...]] = {"gguf": ("huggingface",), "huggingface": ("gguf",)}


def runtime_builder(runtime: str, kind: str):
    """The BuilderInfo whose artifacts ``runtime`` serves for ``kind`` models, or None."""
    return next((b for b in BUILDERS.values() if b.runtime == runtime and b.kind == kind), None)


def estimate_tensor(model: Model, quant: str, *, artifact_bytes: int | None = None) -> Estimate:
    """Memory for a tensor model of ``quant``: the artifact's real size when built, else ``parameters`` x bytes per
    weight (a lower bound, as only MatMul/Gemm weights are quantized), plus a fixed runtime allowance and the agent
    process. No KV cache."""
    weights = artifact_bytes if artifact_bytes is not None else \
        int((model.spec.parameters or 0) * TENSOR_BYTES_PER_WEIGHT[quant])
    return Estimate(weights_bytes=weights, kv_bytes=0, compute_bytes=ONNX_COMPUTE_BYTES, runtime_bytes=AGENT_BYTES,
                    weights_exact=artifact_bytes is not None)


@dataclass(frozen=True)
class Target:
    """What one device offers a deployment: runtimes in preference order, memory, disk, GPU, runtime versions."""

    runtimes: list[str]
    budget: int
    disk: int
    vram: int = 0  # dedicated GPU memory llama.cpp may offload to (0 = none)
    prefer: dict[str, list[str]] = field(default_factory=dict)  # runtime -> preferred quant types
    versions: dict[str, str] | None = None  # runtime -> version the agent reports (None = not observed)
    openvino_device: str = ""  # where OpenVINO runtimes run ('' = CPU)


def _source_precision(model: Model, fmt: str, kind: str, available: frozenset[int] | None) -> tuple[str, bool, bool]:
    """(precision, buildable, native) of the best source a ``fmt`` build can start from: an available source of a
    type the builder reads, else one a conversion turns into such a type, else (not buildable) the best of all."""
    info = BUILDERS[(fmt, kind)]
    sources = list(enumerate(model.spec.sources))
    here = [(i, s) for i, s in sources if available is None or i in available]
    rank = precision_rank if kind == "llm" else (lambda p: TENSOR_QUALITY_RANK.get(p, -1))
    native = [s for _, s in here if s.type in info.source_types]
    converted = [s for _, s in here
                 if any(s.type in CONVERTIBLE.get(t, ()) for t in info.source_types) and kind == "llm"]
    for pool, is_native in ((native, True), (converted, False)):
        if pool:
            return max((s.precision for s in pool), key=rank), True, is_native
    pool = [s for _, s in sources] or []
    default = "F16" if kind == "llm" else "FP32"
    return max((s.precision for s in pool), key=rank, default=default), False, False


def _candidates(dep: Deployment, model: Model, fmt: str, kind: str, runtime: str, built: dict[str, BuiltArtifact],
                available: frozenset[int] | None, versions: dict[str, str] | None):
    """(candidate, reason it is excluded or '') for each quant type of ``fmt`` worth considering."""
    info = BUILDERS[(fmt, kind)]
    q = dep.spec.quantization
    source_precision, buildable, native = _source_precision(model, fmt, kind, available)
    if kind == "llm":
        cap = precision_rank(source_precision)
    else:
        cap = TENSOR_QUALITY_RANK.get(source_precision, TENSOR_QUALITY_RANK["FP32"])
    menu = [x for x in q.allow if x in info.quants] if q.allow else list(DEFAULT_MENUS[(fmt, kind)])
    if buildable and native and fmt == "gguf" and source_precision in info.quants + (source_precision,) \
            and source_precision not in menu and (not q.allow or source_precision in q.allow) \
            and gguf.is_known(source_precision):
        menu.append(source_precision)  # shipping the source as is needs no requantization
    for quant in dict.fromkeys(menu):
        calibration = q.calibration.path if q.calibration and quant == "INT8_STATIC" else None
        recipe = Recipe(model=model.name, format=fmt, kind=kind, quant=quant, source_precision=source_precision,
                        calibration=calibration)
        art = built.get(recipe_id(recipe))
        size = art.size_bytes if art else None
        if kind == "llm":
            est = estimate(model.spec.architecture, quant, dep.spec.context_length, dep.spec.parallel,
                           artifact_bytes=size, format=fmt, runtime=runtime)
            rank = quality_rank(fmt, quant)
        else:
            est = estimate_tensor(model, quant, artifact_bytes=size)
            rank = TENSOR_QUALITY_RANK[quant]
        as_shipped = buildable and native and quant == source_precision and fmt in _SHIPPABLE
        cand = Candidate(recipe, est, rank, as_shipped, buildable, quality=art.quality if art else None,
                         runtime=runtime, native=native)
        mismatch = compat.mismatch(art.compat, runtime, versions.get(runtime), versions) \
            if art is not None and versions is not None and versions.get(runtime) else None
        if rank > cap:
            yield cand, f"above the source's precision {source_precision}: would not add quality"
        elif mismatch:
            yield cand, mismatch
        else:
            yield cand, ""


OPENVINO_RUNTIMES = catalog.OPENVINO_RUNTIMES  # runtimes that take an OpenVINO device name
FORMAT_NAMES = {"gguf": "GGUF", "onnx": "ONNX", "openvino": "OpenVINO IR", "mlx": "MLX"}
# Formats whose artifact can be the source file itself (a GGUF or an ONNX graph shipped as is).
_SHIPPABLE = ("gguf", "onnx")


def _offload(target: Target, est: Estimate, arch_layers: int) -> tuple[int, int]:
    """(GPU layers, bytes left in system RAM) for llama.cpp on a device with dedicated GPU memory: every layer
    when weights + KV cache + compute fit the GPU's memory, else the share of layers that fits (KV cache and
    compute stay with the offloaded layers' share)."""
    if target.vram <= 0 or arch_layers <= 0:
        return 0, est.total_bytes
    gpu_need = est.weights_bytes + est.kv_bytes + est.compute_bytes
    if gpu_need <= target.vram:
        return -1, est.runtime_bytes + est.compute_bytes // 4  # host-side staging buffers stay in RAM
    layers = max(0, min(arch_layers - 1, int(arch_layers * target.vram / gpu_need)))
    host = est.total_bytes - int(gpu_need * layers / arch_layers)
    return layers, host


def plan_deployment(dep: Deployment, model: Model, target: Target, built: dict[str, BuiltArtifact],
                    available: frozenset[int] | None = None) -> DeploymentPlan:
    budget, disk = target.budget, target.disk
    dp = DeploymentPlan(dep.name, model.name, budget_bytes=budget)
    q = dep.spec.quantization
    kind = "tensor" if model.spec.task == "tensor" else "llm"
    if not target.runtimes:
        dp.unfit = "no runtime to run it: the device has none of the runtimes its profile lists"
        dp.hint = "install a runtime in the device's agent: pip install 'edgectl-agent[llama]'"
        return dp
    usable = []  # (runtime, builder) in the profile's order
    for runtime in target.runtimes:
        info = runtime_builder(runtime, kind)
        if info is None:
            other = next((b.kind for b in BUILDERS.values() if b.runtime == runtime), None)
            dp.rejected.append(Rejected(None, f"serves {other or 'no'} models, not {kind} models", label=runtime))
        elif q.format is not None and info.format != q.format:
            dp.rejected.append(Rejected(None, f"loads {info.format}, and quantization.format is {q.format}",
                                        label=runtime))
        else:
            usable.append((runtime, info))
    if not usable:
        dp.unfit = (f"none of the device's runtimes ({', '.join(target.runtimes)}) serves {kind} models"
                    + (f" as {q.format}" if q.format else ""))
        dp.hint = ("remove quantization.format or pick another device" if q.format else
                   "install a runtime for it on the device, or deploy it to another device")
        return dp
    if q.allow:
        valid = sorted({x for _, info in usable for x in info.quants})
        for quant in q.allow:
            if quant not in valid:
                dp.rejected.append(Rejected(None, "no runtime on this device loads it; valid here: "
                                            + ", ".join(valid), label=quant))
    too_big: list[Candidate] = []
    choice: tuple[Candidate, list[Candidate]] | None = None
    for runtime, info in usable:
        fitting: list[Candidate] = []
        for cand, why_not in _candidates(dep, model, info.format, kind, runtime, built, available, target.versions):
            need = cand.estimate.total_bytes
            gpu_layers = 0
            if runtime == "llamacpp" and kind == "llm" and target.vram > 0 and not why_not:
                gpu_layers, need = _offload(target, cand.estimate, model.spec.architecture.layers)
                cand = replace(cand, gpu_layers=gpu_layers, ram_bytes=need)
            if runtime in OPENVINO_RUNTIMES and target.openvino_device:
                cand = replace(cand, device=target.openvino_device)
            if why_not:
                dp.rejected.append(Rejected(cand.recipe, why_not, _label(cand.recipe), cand.estimate.total_bytes))
            elif need > budget:
                too_big.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"needs {_gib(need)}, budget {_gib(budget)}",
                                            _label(cand.recipe), need))
            elif cand.estimate.weights_bytes > disk:
                too_big.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"artifact {_gib(cand.estimate.weights_bytes)} exceeds free "
                                                         f"disk {_gib(disk)}", _label(cand.recipe), need))
            else:
                fitting.append(cand)
        if not fitting:
            continue
        if choice is None:
            choice = (_best(fitting, target.prefer.get(runtime, [])), fitting)
        else:
            for other in fitting:
                dp.rejected.append(Rejected(other.recipe, f"fits, but {choice[0].runtime} comes first in the "
                                                          f"device's runtimes", _label(other.recipe),
                                            other.ram_bytes or other.estimate.total_bytes, fits=True))
    if choice is None:
        _explain_unfit(dp, dep, model, too_big, budget)
        return dp
    best, fitting = choice
    preferred = target.prefer.get(best.runtime, [])
    dp.chosen = replace(best, reason=_why(best, budget, preferred, fitting))
    for other in fitting:
        if other is not best:
            dp.rejected.append(Rejected(other.recipe, _lost_to(other, best, preferred), _label(other.recipe),
                                        other.ram_bytes or other.estimate.total_bytes, fits=True))
    dp.rejected.sort(key=lambda r: (r.recipe is not None, -quality_rank(r.recipe.format, r.recipe.quant)
                                    if r.recipe else 0))
    return dp


# A built artifact measured below this top-1 agreement with its source (fewer than half of its greedy next tokens
# match the source's) no longer behaves like the model asked for: it goes after every other candidate that fits,
# measured or not.
QUALITY_FLOOR = 0.5


def _poor(c: Candidate) -> bool:
    return c.quality is not None and c.quality.top1_agreement < QUALITY_FLOOR


def _comparable(a: Candidate, b: Candidate) -> bool:
    """Both measured, on the same fixed text (figures on different texts do not compare)."""
    return a.quality is not None and b.quality is not None and a.quality.text == b.quality.text


def rank_candidates(fitting: list[Candidate]) -> list[Candidate]:
    """Best first, by quality: the quant type's rank, except where measurements exist. Candidates measured on the
    same text are reordered among their own places by measured top-1 agreement (a measured number beats a rank;
    an unmeasured candidate keeps its place), and one measured below QUALITY_FLOOR goes last. Among equal quality:
    the one shipped as is, then the one fully on the GPU, then the smaller."""
    def key(c: Candidate):
        measured = c.quality.top1_agreement if c.quality is not None else -1.0
        return (_poor(c), -c.quality_rank, -measured, not c.as_shipped, c.gpu_layers != -1, c.estimate.total_bytes)
    ordered = sorted(fitting, key=key)
    for text in dict.fromkeys(c.quality.text for c in ordered if c.quality is not None):
        slots = [i for i, c in enumerate(ordered) if c.quality is not None and c.quality.text == text and not _poor(c)]
        by_measure = sorted((ordered[i] for i in slots), key=lambda c: (-c.quality.top1_agreement, key(c)))
        for i, c in zip(slots, by_measure):
            ordered[i] = c
    return ordered


def _best(fitting: list[Candidate], preferred: list[str]) -> Candidate:
    """The profile's first preferred quant type that fits (unless measured below the floor); else the first of
    :func:`rank_candidates`."""
    for quant in preferred:
        match = [c for c in fitting if c.recipe.quant == quant and not _poor(c)]
        if match:
            return match[0]
    return rank_candidates(fitting)[0]


def _explain_unfit(dp: DeploymentPlan, dep: Deployment, model: Model, too_big: list[Candidate], budget: int) -> None:
    if not too_big:
        dp.unfit = "no candidate artifact: " + ("; ".join(f"{r.label}: {r.reason}" for r in dp.rejected) or "none")
        dp.hint = "check quantization.allow / quantization.format and the device's runtimes"
        return
    smallest = min(too_big, key=lambda c: c.estimate.total_bytes)
    e = smallest.estimate
    dp.unfit = (f"the smallest artifact, {_label(smallest.recipe)}, needs {_gib(e.total_bytes)} "
                f"(weights {_gib(e.weights_bytes)} + KV cache {_gib(e.kv_bytes)} + buffers "
                f"{_gib(e.compute_bytes + e.runtime_bytes)}); the budget left for it on this device is {_gib(budget)}")
    hints = []
    if e.kv_bytes > e.weights_bytes / 4:
        hints.append(f"lower context_length ({dep.spec.context_length}) or parallel ({dep.spec.parallel})")
    hints += ["choose a smaller model", "or deploy to a device with more memory (or set overrides.memory_gb if the "
                                        "profile understates it)"]
    dp.hint = ", ".join(hints)


def _why(c: Candidate, budget: int, preferred: list[str], fitting: list[Candidate] = ()) -> str:
    fmt = FORMAT_NAMES.get(c.recipe.format, c.recipe.format)
    outranked = [o for o in fitting if o.quality_rank > c.quality_rank and o.recipe.quant not in preferred]
    beaten = [o for o in outranked if _comparable(o, c) and not _poor(o)]
    poor = [o for o in outranked if _poor(o)]
    if c.recipe.quant in preferred:
        what = f"the device's preferred {fmt} quant type ({c.recipe.quant}) fits"
    elif beaten:
        what = (f"highest measured quality {fmt} that fits ({c.quality.top1_agreement:.1%} top-1 agreement with the "
                f"source, above " + ", ".join(f"{o.recipe.quant}'s {o.quality.top1_agreement:.1%}" for o in beaten)
                + ")")
    else:
        what = f"highest-quality {fmt} that fits"
    if poor and c.recipe.quant not in preferred:
        what += (" (" + ", ".join(f"{o.recipe.quant} measured {o.quality.top1_agreement:.1%}" for o in poor)
                 + f" top-1 agreement with the source, below the {QUALITY_FLOOR:.0%} floor)")
    how = "shipped as is, no requantization" if c.as_shipped else (
        f"quantized from {c.recipe.source_precision}" if c.buildable and c.native else
        f"converted from the {c.recipe.source_precision} source, then quantized" if c.buildable else
        f"not buildable here: no source of the model is available on this machine "
        f"(best known: {c.recipe.source_precision})")
    ram = c.ram_bytes or c.estimate.total_bytes
    gpu = ("; all layers on the GPU" if c.gpu_layers == -1 else
           f"; {c.gpu_layers} layers on the GPU" if c.gpu_layers > 0 else "")
    if c.device:
        gpu += f"; on OpenVINO device {c.device} (the profile's accelerators)"
    return f"{what}: {_gib(ram)} of {_gib(budget)} budget; {how}{gpu}"


def _lost_to(other: Candidate, best: Candidate, preferred: list[str]) -> str:
    if best.recipe.quant in preferred and other.recipe.quant not in preferred:
        return f"fits, but the device's profile prefers {best.recipe.quant}"
    if _poor(other):
        return (f"fits, but measured {other.quality.top1_agreement:.1%} top-1 agreement with the source, below the "
                f"{QUALITY_FLOOR:.0%} floor")
    if _comparable(other, best) and other.quality.top1_agreement < best.quality.top1_agreement:
        return (f"fits, but measured further from the source than {best.recipe.quant} "
                f"({other.quality.top1_agreement:.1%} vs {best.quality.top1_agreement:.1%} top-1 agreement)")
    if other.quality_rank < best.quality_rank:
        return f"fits, but lower quality than {best.recipe.quant}"
    if other.quality_rank == best.quality_rank and best.as_shipped:
        return f"same quality as {best.recipe.quant}, which ships as is"
    return f"same quality as {best.recipe.quant}, larger"


def _label(recipe: Recipe) -> str:
    return f"{recipe.format} {recipe.quant}"


def _gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.0f} MiB"


# --- steps -------------------------------------------------------------------------------------------------------


def _steps(dep: Deployment, chosen: Candidate, threads: int, observed: AgentState | None,
           built: dict[str, BuiltArtifact]) -> list[Step]:
    name = dep.name
    art = built.get(recipe_id(chosen.recipe))
    label = _label(chosen.recipe)
    if art is None:
        how = "copy as shipped" if chosen.as_shipped else f"from {chosen.recipe.source_precision}"
        return [Step("build", name, f"{label}, {how}"), Step("push", name, label),
                Step("activate", name, label)]
    current = _current(observed, name)
    if current is not None and current.state == "serving" and current.active is not None \
            and current.active.digest == art.digest:
        changed = _config_changes(dep, threads, current, chosen.runtime_options)
        if not changed:
            return []
        return [Step("activate", name, "reload: " + ", ".join(changed))]
    steps = []
    if observed is None or art.digest not in observed.artifacts:
        steps.append(Step("push", name, f"{label} {art.digest[7:19]} ({_gib(art.size_bytes)})"))
    if current is None or current.active is None:
        why = "new" if current is None or current.state != "failed" else f"retry after failure: {current.last_error}"
    else:
        why = f"replace {current.active.format} {current.active.quant} {current.active.digest[7:19]}"
    steps.append(Step("activate", name, f"{label} {art.digest[7:19]} ({why})"))
    return steps


def _current(observed: AgentState | None, name: str) -> DeploymentState | None:
    if observed is None:
        return None
    for d in observed.deployments:
        if d.name == name and d.state != "removed":
            return d
    return None


def _config_changes(dep: Deployment, threads: int, current: DeploymentState, planned: dict) -> list[str]:
    have = current.desired
    if have is None:
        return ["settings unknown"]
    want = {"context_length": dep.spec.context_length, "parallel": dep.spec.parallel, "threads": threads,
            "runtime_options": {**planned, **dep.spec.runtime_options}}
    got = {"context_length": have.context_length, "parallel": have.parallel, "threads": have.threads,
           "runtime_options": dict(have.runtime_options)}
    return [f"{k} {got[k]} -> {want[k]}" for k in want if want[k] != got[k]]


def _removals(observed: AgentState | None, wanted: list[str]) -> list[Step]:
    if observed is None:
        return []
    return [Step("remove", d.name, "no longer in the manifests") for d in observed.deployments
            if d.state != "removed" and d.name not in wanted]

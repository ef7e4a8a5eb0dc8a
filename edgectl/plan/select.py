"""Choosing one deployment's artifact on one device: the candidates (formats the device's runtimes load x the quant
types a builder can make, capped at the source's precision), their estimates, which fit, the best of those (the
profile's preferred quant, else the highest quality, measured quality where there is some), and why every other
one lost (memory, disk, the deployment's speed or quality floor). An Intel NPU target gets OpenVINO's NPU recipe
(:data:`NPU_INT4`) in place of grouped INT4. Pure, like the planner."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgectl_agent.api import ArtifactSpeed
from edgectl_agent.runtimes import catalog

from edgectl.builders.registry import BUILDERS, builder_for
from edgectl.plan import compat, gguf, ranking
from edgectl.plan.estimate import AGENT_BYTES, Estimate, estimate
from edgectl.plan.speed import (DEFAULT_PROMPT_TOKENS, Calibration, Hardware, decode_threads, device_calibration,
                                estimate_speed, measured_speed, prefill_threads)
from edgectl.plan.formats import precision_rank, quality_rank
from edgectl.plan.nf4 import RUNTIME as NF4_RUNTIME, Nf4Target, nf4_placement
from edgectl.plan.result import Candidate, DeploymentPlan, Rejected, gib, recipe_id, recipe_label
from edgectl.spec import BuiltArtifact, Deployment, Model, Recipe

# Quant types offered when a deployment does not restrict them (the builder can make more: list them in
# quantization.allow). The source's own precision is always offered too: shipping it as is needs no requantization.
# F16/BF16/F32 are not offered by default: llama.cpp lists Q8_0 at +0.0026 perplexity over F16 (Llama-3-8B) at half the
# memory and twice the token rate on bandwidth-bound devices. Name them in quantization.allow to get them.
DEFAULT_GGUF_MENU = ("Q2_K", "Q3_K_M", "Q4_0", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
# Quant types offered per (format, kind) when a deployment does not restrict them, as for GGUF above: the
# unquantized FP32 is left out (name it in quantization.allow).
DEFAULT_MENUS: dict[tuple[str, str], tuple[str, ...]] = {
    ("gguf", "llm"): DEFAULT_GGUF_MENU,
    ("onnx", "llm"): ("INT4", "INT8", "FP16"),
    ("openvino", "llm"): ("INT4", "INT8", "FP16"),
    ("mlx", "llm"): ("INT4", "INT8", "FP16"),
    ("gptq", "llm"): ("W4A16", "W8A16"),
    ("bnb", "llm"): ("NF4", "NF4_DQ"),
    ("onnx", "tensor"): ("INT8",),
    ("openvino", "tensor"): ("INT8", "FP16"),
}
# An Intel NPU runs LLMs with symmetric channel-wise INT4 (OpenVINO GenAI's NPU guide): on an NPU target this recipe
# takes grouped INT4's place in the menu and in the profile's quant preference; CPU and GPU keep grouped INT4.
NPU_INT4 = "INT4_SYM_CW"
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
    hardware: Hardware | None = None  # what its speed is estimated from (None = no figures)
    no_speed: str = ""  # why hardware is None
    threads: int = 1  # the profile's default inference threads
    unified_gpu: bool = False  # llama.cpp offloads to a GPU that shares system RAM (Jetson, Apple silicon)
    measured: tuple[ArtifactSpeed, ...] = ()  # artifacts' rates the device's agent measured (Facts.benchmark)
    nf4: Nf4Target | None = None  # where bitsandbytes NF4 runs (plan/nf4.py; None = not worked out)


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


def _menu(dep: Deployment, model: Model, fmt: str, kind: str, available: frozenset[int] | None, *,
          npu: bool = False) -> tuple[str, bool, bool, list[Recipe]]:
    """(source precision, buildable, native, the recipes) of each quant type of ``fmt`` worth considering for
    ``dep`` - whatever the device, except that an NPU target (``npu``) gets the NPU's INT4 recipe in place of the
    grouped one: only which of them fits, and how, depends on it."""
    q = dep.spec.quantization
    backend = q.backend if fmt == q.format else None
    info = BUILDERS[(fmt, kind)] if backend is None else builder_for(fmt, kind, backend)
    source_precision, buildable, native = _source_precision(model, fmt, kind, available)
    menu = [x for x in q.allow if x in info.quants] if q.allow else [
        x for x in DEFAULT_MENUS[(fmt, kind)] if x in info.quants]
    if npu and (fmt, kind) == ("openvino", "llm") and not q.allow:
        menu = [NPU_INT4 if x == "INT4" else x for x in menu]
    if buildable and native and fmt == "gguf" and source_precision in info.quants + (source_precision,) \
            and source_precision not in menu and (not q.allow or source_precision in q.allow) \
            and gguf.is_known(source_precision):
        menu.append(source_precision)  # shipping the source as is needs no requantization
    recipes = [Recipe(model=model.name, format=fmt, kind=kind, quant=quant, source_precision=source_precision,
                      calibration=q.calibration.path if q.calibration and quant == "INT8_STATIC" else None,
                      backend=backend)
               for quant in dict.fromkeys(menu)]
    return source_precision, buildable, native, recipes


def candidate_recipes(dep: Deployment, model: Model, available: frozenset[int] | None) -> list[Recipe]:
    """Every recipe the planner may consider for ``dep`` on any device (each format that serves the model's kind,
    or only ``quantization.format``): what a caller looks up in its store before planning, so that one plan sees
    every cache hit."""
    kind = "tensor" if model.spec.task == "tensor" else "llm"
    fmt_wanted = dep.spec.quantization.format
    recipes = [r for (fmt, k) in BUILDERS if k == kind and (fmt_wanted is None or fmt == fmt_wanted)
               for npu in (False, True) for r in _menu(dep, model, fmt, kind, available, npu=npu)[3]]
    return list(dict.fromkeys(recipes))  # Recipe is frozen (hashable): the NPU menu repeats most of the other


def _candidates(dep: Deployment, model: Model, fmt: str, kind: str, runtime: str, built: dict[str, BuiltArtifact],
                available: frozenset[int] | None, versions: dict[str, str] | None, npu: bool = False):
    """(candidate, reason it is excluded or '') for each quant type of ``fmt`` worth considering."""
    source_precision, buildable, native, recipes = _menu(dep, model, fmt, kind, available, npu=npu)
    if kind == "llm":
        cap = precision_rank(source_precision)
    else:
        cap = TENSOR_QUALITY_RANK.get(source_precision, TENSOR_QUALITY_RANK["FP32"])
    for recipe in recipes:
        quant = recipe.quant
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
        elif npu and (fmt, kind, quant) == ("openvino", "llm", "INT4"):
            yield cand, (f"grouped asymmetric INT4, which an Intel NPU does not run: it needs symmetric channel-wise "
                         f"INT4 ({NPU_INT4})")
        elif mismatch:
            yield cand, mismatch
        else:
            yield cand, ""


OPENVINO_RUNTIMES = catalog.OPENVINO_RUNTIMES  # runtimes that take an OpenVINO device name
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


def _placed(cand: Candidate, why_not: str, runtime: str, kind: str, target: Target, model: Model, ov_device: str
            ) -> tuple[Candidate, int]:
    """``cand`` with where it runs on the device (GPU layers, OpenVINO device ``ov_device``) and how (embedding
    mode for a ``task: embedding`` model), and the system RAM it needs."""
    need = cand.ram_need  # vLLM on a GPU set its RAM share already
    if runtime == "llamacpp" and kind == "llm" and target.vram > 0 and not why_not:
        gpu_layers, need = _offload(target, cand.estimate, model.spec.architecture.layers)
        cand = replace(cand, gpu_layers=gpu_layers, ram_bytes=need)
    elif runtime == "llamacpp" and kind == "llm" and target.unified_gpu and not why_not:
        cand = replace(cand, gpu_layers=-1)  # same memory: the whole estimate stays in the RAM budget
    if model.spec.task == "embedding":
        cand = replace(cand, embedding=True)
    if runtime in OPENVINO_RUNTIMES and ov_device:
        cand = replace(cand, device=ov_device)
    return cand, need


def _threads(dep: Deployment, target: Target) -> int:
    return dep.spec.threads or target.threads


def _measured(cand: Candidate, dep: Deployment, target: Target, built: dict[str, BuiltArtifact]
              ) -> ArtifactSpeed | None:
    """The device's measurement of this very candidate (its built artifact, runtime and threads), if any."""
    art = built.get(recipe_id(cand.recipe))
    if art is None:
        return None
    return next((m for m in target.measured if m.digest == art.digest and m.runtime == cand.runtime
                 and m.threads == _threads(dep, target)), None)


def _estimated(dep: Deployment, model: Model, cand: Candidate, target: Target):
    options = {**cand.runtime_options, **dep.spec.runtime_options}
    return estimate_speed(model.spec.architecture, cand.estimate.weights_bytes, target.hardware,
                          threads=decode_threads(cand.runtime, _threads(dep, target), target.hardware.cores,
                                                 target.hardware.os),
                          gpu_layers=cand.gpu_layers, quant=cand.recipe.quant,
                          prompt_tokens=dep.spec.speed.prompt_tokens if dep.spec.speed else DEFAULT_PROMPT_TOKENS,
                          runtime=cand.runtime, prefill_threads=prefill_threads(
                              cand.runtime, _threads(dep, target), target.hardware.cores, options, target.hardware.os))


def _speed(dep: Deployment, model: Model, cand: Candidate, target: Target, built: dict[str, BuiltArtifact],
           calibrations: dict[str, Calibration]):
    """Measured where the device measured this artifact; else estimated, calibrated by the device's measurement of
    another artifact of the same runtime where there is one."""
    est = _estimated(dep, model, cand, target)
    m = _measured(cand, dep, target, built)
    if m is not None:
        return measured_speed(m, est.prompt_tokens, est)
    calibration = calibrations.get(cand.runtime)
    return calibration.apply(est) if calibration is not None else est


def _calibrations(dep: Deployment, model: Model, kind: str, usable: list, target: Target,
                  built: dict[str, BuiltArtifact], available: frozenset[int] | None, ov_device: str, npu: bool
                  ) -> dict[str, Calibration]:
    """Per runtime, measured / estimated of the first of this model's artifacts the device measured."""
    out: dict[str, Calibration] = {}
    if kind != "llm" or target.hardware is None:
        return out
    for runtime, info in usable:
        for cand, why_not in _candidates(dep, model, info.format, kind, runtime, built, available, target.versions,
                                         npu and runtime in OPENVINO_RUNTIMES):
            cand, _ = _placed(cand, why_not, runtime, kind, target, model, ov_device)
            m = _measured(cand, dep, target, built)
            if m is not None:
                out[runtime] = device_calibration(m, _estimated(dep, model, cand, target),
                                                  f"{recipe_label(cand.recipe)} here")
                break
    return out


# vLLM batches many sequences on one copy of the weights: worth its ~1.5 GB of processes from this many concurrent
# requests on. Below it the next runtime of the profile (llama.cpp, GPU offload) serves with less memory.
VLLM_MIN_PARALLEL = 4


def _vllm_rule(dep: Deployment) -> str:
    if dep.spec.parallel < VLLM_MIN_PARALLEL:
        return (f"vllm serves deployments with parallel >= {VLLM_MIN_PARALLEL} (this one: {dep.spec.parallel}); "
                "fewer clients are served with less memory by the next runtime")
    return ""


def _vllm_on_gpu(target: Target, est: Estimate) -> tuple[str, int]:
    """(why not, RAM needed): vLLM on a dedicated GPU holds weights, KV cache and activations in GPU memory; the
    RAM budget carries its processes and the agent."""
    on_gpu = est.weights_bytes + est.kv_bytes + est.compute_bytes
    if on_gpu > target.vram:
        return f"needs {gib(on_gpu)} of GPU memory for vLLM, {gib(target.vram)} usable", est.runtime_bytes
    return "", est.runtime_bytes


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
        elif model.spec.task == "embedding" and runtime not in catalog.EMBEDDING_RUNTIMES:
            dp.rejected.append(Rejected(None, "does not serve embeddings (task: embedding needs one of: "
                                        f"{', '.join(catalog.EMBEDDING_RUNTIMES)})", label=runtime))
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
    ov_device = str(dep.spec.runtime_options.get("device") or target.openvino_device)  # the user's option wins
    npu = ov_device.split(".")[0].upper() == "NPU"
    too_big: list[Candidate] = []
    slow: list[Candidate] = []  # fit memory and disk, miss the deployment's speed
    poor: list[Candidate] = []  # fit, but measured below the deployment's quality floor
    choice: tuple[Candidate, list[Candidate]] | None = None
    calibrations = (_calibrations(dep, model, kind, usable, target, built, available, ov_device, npu)
                    if target.measured else {})
    for runtime, info in usable:
        fitting: list[Candidate] = []
        npu_here = npu and runtime in OPENVINO_RUNTIMES
        for cand, why_not in _candidates(dep, model, info.format, kind, runtime, built, available, target.versions,
                                         npu_here):
            if runtime == "vllm" and not why_not:
                why_not = _vllm_rule(dep)
                if not why_not and target.vram > 0:  # weights, KV cache, activations in GPU memory; vLLM in RAM
                    why_not, ram = _vllm_on_gpu(target, cand.estimate)
                    cand = replace(cand, ram_bytes=ram)  # gpu_layers is llama.cpp's option, not vLLM's
            if runtime == NF4_RUNTIME and not why_not:  # on an NVIDIA GPU, or the CPU where bitsandbytes has it
                why_not, ram, nf4_device = nf4_placement(target.nf4, cand.estimate)
                cand = replace(cand, ram_bytes=ram or 0, device=nf4_device)
            cand, need = _placed(cand, why_not, runtime, kind, target, model, ov_device)
            if kind == "llm" and target.hardware is not None:
                cand = replace(cand, speed=_speed(dep, model, cand, target, built, calibrations))
            too_slow = ranking.too_slow(dep, cand) if not why_not else ""
            below = ranking.below_floor(dep, cand) if not why_not else ""
            if why_not:
                dp.rejected.append(Rejected(cand.recipe, why_not, recipe_label(cand.recipe), cand.estimate.total_bytes))
            elif need > budget:
                too_big.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"needs {gib(need)}, budget {gib(budget)}",
                                            recipe_label(cand.recipe), need))
            elif cand.estimate.artifact_bytes > disk:
                too_big.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"artifact {gib(cand.estimate.artifact_bytes)} exceeds free "
                                                         f"disk {gib(disk)}", recipe_label(cand.recipe), need))
            elif too_slow:
                slow.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"fits ({gib(need)} of {gib(budget)}), but {too_slow}",
                                            recipe_label(cand.recipe), need))
            elif below:
                poor.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"fits ({gib(need)} of {gib(budget)}), but {below}",
                                            recipe_label(cand.recipe), need))
            else:
                fitting.append(cand)
        if not fitting:
            continue
        if choice is None:
            choice = (ranking.best(fitting, _preferred(target, runtime, npu_here)), fitting)
        else:
            for other in fitting:
                dp.rejected.append(Rejected(other.recipe, f"fits, but {choice[0].runtime} comes first in the "
                                                          f"device's runtimes", recipe_label(other.recipe),
                                            other.ram_bytes or other.estimate.total_bytes, fits=True))
    if choice is None:
        if poor:
            ranking.explain_below_floor(dp, dep, poor)
        elif slow:
            ranking.explain_too_slow(dp, dep, slow)
        else:
            ranking.explain_unfit(dp, dep, model, too_big, budget)
        return dp
    best, fitting = choice
    preferred = _preferred(target, best.runtime, npu and best.runtime in OPENVINO_RUNTIMES)
    reason = ranking.why(best, budget, preferred, fitting,
                         missing=ranking.missing_sources(model, available) if not best.buildable else "")
    if dep.spec.speed is not None and best.speed is not None:
        reason += (f"; meets the deployment's speed ({best.speed.source} {best.speed.decode_tokens_per_s:.1f} "
                   f"tokens/s decode, "
                   f"{best.speed.ttft_ms:.0f} ms to the first token of a {best.speed.prompt_tokens}-token prompt)")
    if dep.spec.quality is not None:
        reason += (f"; meets the deployment's quality floor ({best.quality.summary()})" if best.quality is not None
                   else "; not measured yet: the deployment's quality floor is checked on the built artifact")
    dp.chosen = replace(best, reason=reason)
    for other in fitting:
        if other is not best:
            dp.rejected.append(Rejected(other.recipe, ranking.lost_to(other, best, preferred), recipe_label(other.recipe),
                                        other.ram_bytes or other.estimate.total_bytes, fits=True))
    dp.rejected.sort(key=lambda r: (r.recipe is not None, -quality_rank(r.recipe.format, r.recipe.quant)
                                    if r.recipe else 0))
    return dp


def _preferred(target: Target, runtime: str, npu: bool) -> list[str]:
    """The profile's preferred quant types for ``runtime``; on an NPU, its INT4 recipe stands for INT4."""
    prefer = target.prefer.get(runtime, [])
    return [NPU_INT4 if q == "INT4" else q for q in prefer] if npu else list(prefer)

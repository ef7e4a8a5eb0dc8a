"""Choosing one deployment's artifact on one device: the candidates (formats the device's runtimes load x the quant
types a builder can make, capped at the source's precision), their estimates, which fit, the best of those (the
profile's preferred quant, else the highest quality, measured quality where there is some), and why every other
one lost. Pure, like the planner."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from edgectl_agent.runtimes import catalog

from edgectl.builders.registry import BUILDERS
from edgectl.plan import compat, gguf
from edgectl.plan.estimate import AGENT_BYTES, Estimate, estimate
from edgectl.plan.speed import DEFAULT_PROMPT_TOKENS, Hardware, estimate_speed
from edgectl.plan.formats import precision_rank, quality_rank
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
    hardware: Hardware | None = None  # what its speed is estimated from (None = no figures)
    no_speed: str = ""  # why hardware is None
    threads: int = 1  # the profile's default inference threads
    unified_gpu: bool = False  # llama.cpp offloads to a GPU that shares system RAM (Jetson, Apple silicon)


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


def _menu(dep: Deployment, model: Model, fmt: str, kind: str, available: frozenset[int] | None
          ) -> tuple[str, bool, bool, list[Recipe]]:
    """(source precision, buildable, native, the recipes) of each quant type of ``fmt`` worth considering for
    ``dep`` - whatever the device: only which of them fits, and how, depends on it."""
    info = BUILDERS[(fmt, kind)]
    q = dep.spec.quantization
    source_precision, buildable, native = _source_precision(model, fmt, kind, available)
    menu = [x for x in q.allow if x in info.quants] if q.allow else list(DEFAULT_MENUS[(fmt, kind)])
    if buildable and native and fmt == "gguf" and source_precision in info.quants + (source_precision,) \
            and source_precision not in menu and (not q.allow or source_precision in q.allow) \
            and gguf.is_known(source_precision):
        menu.append(source_precision)  # shipping the source as is needs no requantization
    recipes = [Recipe(model=model.name, format=fmt, kind=kind, quant=quant, source_precision=source_precision,
                      calibration=q.calibration.path if q.calibration and quant == "INT8_STATIC" else None)
               for quant in dict.fromkeys(menu)]
    return source_precision, buildable, native, recipes


def candidate_recipes(dep: Deployment, model: Model, available: frozenset[int] | None) -> list[Recipe]:
    """Every recipe the planner may consider for ``dep`` on any device (each format that serves the model's kind,
    or only ``quantization.format``): what a caller looks up in its store before planning, so that one plan sees
    every cache hit."""
    kind = "tensor" if model.spec.task == "tensor" else "llm"
    fmt_wanted = dep.spec.quantization.format
    return [r for (fmt, k) in BUILDERS if k == kind and (fmt_wanted is None or fmt == fmt_wanted)
            for r in _menu(dep, model, fmt, kind, available)[3]]


def _candidates(dep: Deployment, model: Model, fmt: str, kind: str, runtime: str, built: dict[str, BuiltArtifact],
                available: frozenset[int] | None, versions: dict[str, str] | None):
    """(candidate, reason it is excluded or '') for each quant type of ``fmt`` worth considering."""
    source_precision, buildable, native, recipes = _menu(dep, model, fmt, kind, available)
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
    slow: list[Candidate] = []  # fit memory and disk, miss the deployment's speed
    choice: tuple[Candidate, list[Candidate]] | None = None
    for runtime, info in usable:
        fitting: list[Candidate] = []
        for cand, why_not in _candidates(dep, model, info.format, kind, runtime, built, available, target.versions):
            need = cand.estimate.total_bytes
            gpu_layers = 0
            if runtime == "vllm" and not why_not:
                why_not = _vllm_rule(dep)
                if not why_not and target.vram > 0:  # weights, KV cache, activations in GPU memory; vLLM in RAM
                    why_not, need = _vllm_on_gpu(target, cand.estimate)
                    cand = replace(cand, ram_bytes=need)  # gpu_layers is llama.cpp's option, not vLLM's
            if runtime == "llamacpp" and kind == "llm" and target.vram > 0 and not why_not:
                gpu_layers, need = _offload(target, cand.estimate, model.spec.architecture.layers)
                cand = replace(cand, gpu_layers=gpu_layers, ram_bytes=need)
            elif runtime == "llamacpp" and kind == "llm" and target.unified_gpu and not why_not:
                cand = replace(cand, gpu_layers=-1)  # same memory: the whole estimate stays in the RAM budget
            if runtime in OPENVINO_RUNTIMES and target.openvino_device:
                cand = replace(cand, device=target.openvino_device)
            if kind == "llm" and target.hardware is not None:
                cand = replace(cand, speed=estimate_speed(
                    model.spec.architecture, cand.estimate.weights_bytes, target.hardware,
                    threads=dep.spec.threads or target.threads, gpu_layers=cand.gpu_layers,
                    prompt_tokens=dep.spec.speed.prompt_tokens if dep.spec.speed else DEFAULT_PROMPT_TOKENS,
                    runtime=runtime))
            too_slow = _too_slow(dep, cand) if not why_not else ""
            if why_not:
                dp.rejected.append(Rejected(cand.recipe, why_not, recipe_label(cand.recipe), cand.estimate.total_bytes))
            elif need > budget:
                too_big.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"needs {gib(need)}, budget {gib(budget)}",
                                            recipe_label(cand.recipe), need))
            elif cand.estimate.weights_bytes > disk:
                too_big.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"artifact {gib(cand.estimate.weights_bytes)} exceeds free "
                                                         f"disk {gib(disk)}", recipe_label(cand.recipe), need))
            elif too_slow:
                slow.append(cand)
                dp.rejected.append(Rejected(cand.recipe, f"fits ({gib(need)} of {gib(budget)}), but {too_slow}",
                                            recipe_label(cand.recipe), need))
            else:
                fitting.append(cand)
        if not fitting:
            continue
        if choice is None:
            choice = (_best(fitting, target.prefer.get(runtime, [])), fitting)
        else:
            for other in fitting:
                dp.rejected.append(Rejected(other.recipe, f"fits, but {choice[0].runtime} comes first in the "
                                                          f"device's runtimes", recipe_label(other.recipe),
                                            other.ram_bytes or other.estimate.total_bytes, fits=True))
    if choice is None:
        if slow:
            _explain_too_slow(dp, dep, slow)
        else:
            _explain_unfit(dp, dep, model, too_big, budget)
        return dp
    best, fitting = choice
    preferred = target.prefer.get(best.runtime, [])
    reason = _why(best, budget, preferred, fitting)
    if dep.spec.speed is not None and best.speed is not None:
        reason += (f"; meets the deployment's speed (estimated {best.speed.decode_tokens_per_s:.1f} tokens/s decode, "
                   f"{best.speed.ttft_ms:.0f} ms to the first token of a {best.speed.prompt_tokens}-token prompt)")
    dp.chosen = replace(best, reason=reason)
    for other in fitting:
        if other is not best:
            dp.rejected.append(Rejected(other.recipe, _lost_to(other, best, preferred), recipe_label(other.recipe),
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


def _too_slow(dep: Deployment, c: Candidate) -> str:
    """Why ``c``'s estimated speed misses the deployment's speed requirement ('' = it meets it, or there is no
    requirement, or no estimate to check it with: then the planner warns)."""
    want, s = dep.spec.speed, c.speed
    if want is None or s is None:
        return ""
    misses = []
    if want.min_tokens_per_s is not None and s.decode_tokens_per_s < want.min_tokens_per_s:
        misses.append(f"estimated {s.decode_tokens_per_s:.1f} tokens/s decode < min_tokens_per_s "
                      f"{want.min_tokens_per_s:g}")
    if want.max_ttft_ms is not None and s.ttft_ms > want.max_ttft_ms:
        misses.append(f"estimated time to first token {s.ttft_ms:.0f} ms for a {s.prompt_tokens}-token prompt > "
                      f"max_ttft_ms {want.max_ttft_ms:g}")
    return "; ".join(misses)


def _explain_too_slow(dp: DeploymentPlan, dep: Deployment, slow: list[Candidate]) -> None:
    fastest = max(slow, key=lambda c: c.speed.decode_tokens_per_s)
    dp.unfit = (f"nothing that fits is fast enough: the fastest, {recipe_label(fastest.recipe)}, "
                f"{_too_slow(dep, fastest)} ({fastest.speed.basis})")
    dp.hint = ("lower speed.min_tokens_per_s / speed.max_ttft_ms, choose a smaller model, or deploy to a faster "
               "device")


def _explain_unfit(dp: DeploymentPlan, dep: Deployment, model: Model, too_big: list[Candidate], budget: int) -> None:
    if not too_big:
        dp.unfit = "no candidate artifact: " + ("; ".join(f"{r.label}: {r.reason}" for r in dp.rejected) or "none")
        dp.hint = "check quantization.allow / quantization.format and the device's runtimes"
        return
    smallest = min(too_big, key=lambda c: c.estimate.total_bytes)
    e = smallest.estimate
    dp.unfit = (f"the smallest artifact, {recipe_label(smallest.recipe)}, needs {gib(e.total_bytes)} "
                f"(weights {gib(e.weights_bytes)} + KV cache {gib(e.kv_bytes)} + buffers "
                f"{gib(e.compute_bytes + e.runtime_bytes)}); the budget left for it on this device is {gib(budget)}")
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
    gpu = ("; all layers on the GPU (it shares system RAM: counted in the RAM budget)"
           if c.gpu_layers == -1 and not c.ram_bytes else
           "; all layers on the GPU" if c.gpu_layers == -1 else
           f"; {c.gpu_layers} layers on the GPU" if c.gpu_layers > 0 else "")
    if c.device:
        gpu += f"; on OpenVINO device {c.device} (the profile's accelerators)"
    return f"{what}: {gib(ram)} of {gib(budget)} budget; {how}{gpu}"


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

"""How the planner ranks the candidates that fit, and the reasons it gives: why one was chosen, why every other one
lost (quality, the profile's preference, memory, the deployment's speed or quality floor), and how to get a missing
source. Pure; used by :mod:`edgectl.plan.select`."""

from __future__ import annotations

from edgectl.plan.result import Candidate, DeploymentPlan, gib, recipe_label
from edgectl.spec import Deployment, Model

FORMAT_NAMES = {"gguf": "GGUF", "onnx": "ONNX", "openvino": "OpenVINO IR", "mlx": "MLX"}
# A built artifact measured below this top-1 agreement with its source (fewer than half of its greedy next tokens
# match the source's) no longer behaves like the model asked for: it goes after every other candidate that fits,
# measured or not.
QUALITY_FLOOR = 0.5


def is_poor(c: Candidate) -> bool:
    return c.quality is not None and c.quality.top1_agreement < QUALITY_FLOOR


def comparable(a: Candidate, b: Candidate) -> bool:
    """Both measured, on the same fixed text (figures on different texts do not compare)."""
    return a.quality is not None and b.quality is not None and a.quality.text == b.quality.text


def rank_candidates(fitting: list[Candidate]) -> list[Candidate]:
    """Best first, by quality: the quant type's rank, except where measurements exist. Candidates measured on the
    same text are reordered among their own places by measured top-1 agreement (a measured number beats a rank;
    an unmeasured candidate keeps its place), and one measured below QUALITY_FLOOR goes last. Among equal quality:
    the one shipped as is, then the one fully on the GPU, then the smaller."""
    def key(c: Candidate):
        measured = c.quality.top1_agreement if c.quality is not None else -1.0
        return (is_poor(c), -c.quality_rank, -measured, not c.as_shipped, c.gpu_layers != -1, c.estimate.total_bytes)
    ordered = sorted(fitting, key=key)
    for text in dict.fromkeys(c.quality.text for c in ordered if c.quality is not None):
        slots = [i for i, c in enumerate(ordered) if c.quality is not None and c.quality.text == text and not is_poor(c)]
        by_measure = sorted((ordered[i] for i in slots), key=lambda c: (-c.quality.top1_agreement, key(c)))
        for i, c in zip(slots, by_measure):
            ordered[i] = c
    return ordered


def best(fitting: list[Candidate], preferred: list[str]) -> Candidate:
    """The profile's first preferred quant type that fits (unless measured below the floor); else the first of
    :func:`rank_candidates`."""
    for quant in preferred:
        match = [c for c in fitting if c.recipe.quant == quant and not is_poor(c)]
        if match:
            return match[0]
    return rank_candidates(fitting)[0]


def too_slow(dep: Deployment, c: Candidate) -> str:
    """Why ``c``'s speed (measured on the device, else estimated: the text says which) misses the deployment's speed requirement ('' = it meets it, or there is no
    requirement, or no estimate to check it with: then the planner warns)."""
    want, s = dep.spec.speed, c.speed
    if want is None or s is None:
        return ""
    misses = []
    if want.min_tokens_per_s is not None and s.decode_tokens_per_s < want.min_tokens_per_s:
        misses.append(f"{s.source} {s.decode_tokens_per_s:.1f} tokens/s decode < min_tokens_per_s "
                      f"{want.min_tokens_per_s:g}")
    if want.max_ttft_ms is not None and s.ttft_ms > want.max_ttft_ms:
        misses.append(f"{s.source} time to first token {s.ttft_ms:.0f} ms for a {s.prompt_tokens}-token prompt > "
                      f"max_ttft_ms {want.max_ttft_ms:g}")
    return "; ".join(misses)


def below_floor(dep: Deployment, c: Candidate) -> str:
    """Why ``c``'s measured quality misses the deployment's quality floor ('' = it meets it, there is no floor, or
    no measurement yet: an artifact not built is measured when it is)."""
    floor, q = dep.spec.quality, c.quality
    if floor is None or q is None:
        return ""
    misses = []
    if floor.min_top1_agreement is not None and q.top1_agreement < floor.min_top1_agreement:
        misses.append(f"measured {q.top1_agreement:.1%} top-1 agreement with the source < quality.min_top1_agreement "
                      f"{floor.min_top1_agreement:.1%}")
    if floor.max_kl_divergence is not None and q.kl_divergence is not None \
            and q.kl_divergence > floor.max_kl_divergence:
        misses.append(f"measured KL divergence {q.kl_divergence:.3f} from the source > quality.max_kl_divergence "
                      f"{floor.max_kl_divergence:g}")
    return "; ".join(misses)


def explain_below_floor(dp: DeploymentPlan, dep: Deployment, poor: list[Candidate]) -> None:
    best = max(poor, key=lambda c: c.quality.top1_agreement)
    dp.unfit = (f"nothing that fits meets the deployment's quality floor: the closest to its source, "
                f"{recipe_label(best.recipe)}, {below_floor(dep, best)} ({best.quality.summary()})")
    dp.hint = ("lower quality.min_top1_agreement / quality.max_kl_divergence, allow a higher-precision quant type "
               "(quantization.allow), or deploy to a device with more memory")


def explain_too_slow(dp: DeploymentPlan, dep: Deployment, slow: list[Candidate]) -> None:
    fastest = max(slow, key=lambda c: c.speed.decode_tokens_per_s)
    dp.unfit = (f"nothing that fits is fast enough: the fastest, {recipe_label(fastest.recipe)}, "
                f"{too_slow(dep, fastest)} ({fastest.speed.basis})")
    dp.hint = ("lower speed.min_tokens_per_s / speed.max_ttft_ms, choose a smaller model, or deploy to a faster "
               "device")


def explain_unfit(dp: DeploymentPlan, dep: Deployment, model: Model, too_big: list[Candidate], budget: int) -> None:
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


def missing_sources(model: Model, available: frozenset[int] | None) -> str:
    """How to make each of the model's sources that is not on this machine available."""
    from edgectl.builders.sources import how_to_get

    return "; ".join(how_to_get(s) for i, s in enumerate(model.spec.sources) if available is None or i not in available)


def why(c: Candidate, budget: int, preferred: list[str], fitting: list[Candidate] = (), missing: str = "") -> str:
    fmt = FORMAT_NAMES.get(c.recipe.format, c.recipe.format)
    outranked = [o for o in fitting if o.quality_rank > c.quality_rank and o.recipe.quant not in preferred]
    beaten = [o for o in outranked if comparable(o, c) and not is_poor(o)]
    poor = [o for o in outranked if is_poor(o)]
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
        f"(best known: {c.recipe.source_precision})" + (f": {missing}" if missing else ""))
    ram = c.ram_bytes or c.estimate.total_bytes
    gpu = ("; all layers on the GPU (it shares system RAM: counted in the RAM budget)"
           if c.gpu_layers == -1 and not c.ram_bytes else
           "; all layers on the GPU" if c.gpu_layers == -1 else
           f"; {c.gpu_layers} layers on the GPU" if c.gpu_layers > 0 else "")
    if c.device:
        gpu += f"; on OpenVINO device {c.device} (runtime_options.device, else the profile's accelerators)"
    return f"{what}: {gib(ram)} of {gib(budget)} budget; {how}{gpu}"


def lost_to(other: Candidate, best: Candidate, preferred: list[str]) -> str:
    if best.recipe.quant in preferred and other.recipe.quant not in preferred:
        return f"fits, but the device's profile prefers {best.recipe.quant}"
    if is_poor(other):
        return (f"fits, but measured {other.quality.top1_agreement:.1%} top-1 agreement with the source, below the "
                f"{QUALITY_FLOOR:.0%} floor")
    if comparable(other, best) and other.quality.top1_agreement < best.quality.top1_agreement:
        return (f"fits, but measured further from the source than {best.recipe.quant} "
                f"({other.quality.top1_agreement:.1%} vs {best.quality.top1_agreement:.1%} top-1 agreement)")
    if other.quality_rank < best.quality_rank:
        return f"fits, but lower quality than {best.recipe.quant}"
    if other.quality_rank == best.quality_rank and best.as_shipped:
        return f"same quality as {best.recipe.quant}, which ships as is"
    return f"same quality as {best.recipe.quant}, larger"

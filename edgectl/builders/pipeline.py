"""Build artifacts into the content-addressed store: resolve the source, look up the cache key, build only on a miss.

    artifact, built_now = build(recipe, model, ArtifactStore())

The library never prints: pass ``progress`` (a callback ``(stage, done, total)`` or a ``rich.progress.Progress``)
and let the CLI render it (edgectl.progress).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgectl.builders.convert import (
    Conversion, build_tool_version, check_source, convert_source, resolve_build_source,
)
from edgectl.builders.gguf import check_gguf_file
from edgectl.builders.registry import check_buildable, is_as_shipped, load_builder
from edgectl.builders.sources import ResolvedSource
from edgectl.builders.store import ArtifactStore, copy_and_hash
from edgectl.errors import BuildError
from edgectl.plan.compat import artifact_facts
from edgectl.progress import StageProgress, stage_callback
from edgectl.spec.artifact import BuiltArtifact, Quality, Recipe
from edgectl.spec.model import Model

# LLM formats whose runtime gives logits, so a fresh artifact's quality is measured against its source
# (edgectl.builders.quality) -> the modules that needs on this machine (none known: the vLLM venv's own check)
MEASURED_FORMATS: dict[str, tuple[str, ...]] = {
    "gguf": ("llama_cpp",), "openvino": ("openvino", "transformers"), "gptq": (),
    "onnx": ("onnxruntime_genai", "transformers"), "mlx": ("mlx_lm", "transformers"),
    "bnb": ("bitsandbytes", "transformers"),
}


class QualityWarning(UserWarning):
    """Measuring a fresh artifact's quality failed; the artifact was built and stored, without a quality record."""


# Each builder (registry.BUILDERS[...].builder) is function(recipe, source_path, out_path, *, threads, progress,
# quiet): it writes out_path (a file, or a folder for layout "tree") and only converts/quantizes: copies as shipped,
# storing, and cleaning up after failures are done here.
# format -> cheap source check for as-shipped copies, needing no optional tool
_COPY_CHECKS: dict[str, Callable[[Path], None]] = {"gguf": check_gguf_file}


def _cache_key(recipe: Recipe, model: Model, store: ArtifactStore, base_dir: Path | None,
               progress: Callable[[int, int], None] | None = None) -> tuple[ResolvedSource, Conversion | None, str]:
    """The source, the conversion it needs first (edgectl.builders.convert; None for most builds) and the cache key:
    the original source's digest, the recipe and the builder's tools, plus the converter's when it converts, plus
    the calibration file's digest when the recipe has one."""
    source, conversion = resolve_build_source(model, store, recipe=recipe, base_dir=base_dir, progress=progress)
    calibration = calibration_path(recipe, base_dir)
    calibration_digest = store.source_digest(calibration) if calibration else None
    return source, conversion, recipe.cache_key(source.digest, build_tool_version(recipe, conversion),
                                                calibration_digest)


def calibration_path(recipe: Recipe, base_dir: Path | None) -> Path | None:
    """The recipe's calibration file, resolved against the manifest's folder; BuildError when it is missing."""
    if recipe.calibration is None:
        return None
    path = Path(recipe.calibration).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise BuildError(f"calibration file {recipe.calibration} not found (looked at {path})",
                         hint="fix quantization.calibration.path (relative to the manifest), or remove it to "
                              "calibrate on generated samples")
    return path


def lookup(recipe: Recipe, model: Model, store: ArtifactStore, *,
           base_dir: Path | None = None) -> BuiltArtifact | None:
    """The artifact ``recipe`` describes if the store already has it (a cache hit), else None. Builds nothing;
    hashes the source only when its path/size/mtime changed since the last time."""
    check_buildable(recipe)
    _, _, key = _cache_key(recipe, model, store, base_dir)
    return store.get(key)


def build(recipe: Recipe, model: Model, store: ArtifactStore, *, base_dir: Path | None = None,
          threads: int | None = None, progress: Any = None, quiet: bool | None = None,
          measure_quality: bool = True) -> tuple[BuiltArtifact, bool]:
    """Ensure the artifact ``recipe`` describes is in ``store``; returns ``(artifact, built_now)``.

    Cache key = source digest + recipe + tool version. A hit returns the stored artifact without work (the
    source digest itself is remembered by path/size/mtime). A miss builds into the store's tmp/ and lands
    atomically; a failed or interrupted build leaves no artifact and no index entry.

    ``quiet`` silences llama.cpp's output (still quoted in errors); by default it is on unless EDGECTL_DEBUG=1.

    A source the builder cannot read directly is converted first (edgectl.builders.convert: a Hugging Face folder to
    GGUF, a GGUF to a Hugging Face folder; progress stage "convert to ..."), once: the conversion is kept in the
    store. Hugging Face folders are checked first (config, tokenizer, safetensors weights, supported architecture).

    After a fresh build (not on a hit) the artifact's quality is measured against its source on a small fixed text
    (edgectl.builders.quality; progress stage "measure quality") and recorded with it, so a hit returns it for free.
    ``measure_quality=False`` skips that. A failed measurement does not fail the build: the artifact is recorded
    without quality and a :class:`QualityWarning` is issued (``warnings``; the CLI shows it). Without llama-cpp-python
    (an as-shipped copy can be built without it) nothing is measured; OpenVINO, ONNX GenAI and MLX LLM folders are
    measured against their Hugging Face source; tensor models (onnx graphs) are not measured.
    """
    if quiet is None:
        quiet = os.environ.get("EDGECTL_DEBUG", "") != "1"
    info = check_buildable(recipe)
    if recipe.model != model.name:
        raise BuildError(f"recipe is for model {recipe.model!r} but was given model {model.name!r}",
                         hint="pass the catalog entry the recipe names")
    report = stage_callback(progress, f"{recipe.model} {recipe.quant}")

    def bytes_progress(stage: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: report(stage, done, total)) if report else None

    source, conversion, key = _cache_key(recipe, model, store, base_dir, bytes_progress("hash source"))
    cached = store.get(key)
    if cached is not None:
        return cached, False

    check_source(source, conversion, recipe)  # missing files, pickles, unsupported architecture: before any work
    store.clean_tmp()
    as_shipped = is_as_shipped(recipe) and conversion is None
    if conversion is not None:  # e.g. GGUF -> HF folder for openvino, HF folder -> GGUF for gguf; cached in the store
        source = convert_source(source, conversion, store, progress=report, quiet=quiet)
    with store.tmp_file(f".{info.format}") as tmp:  # removed on any failure: no half-built artifact
        if as_shipped:
            if info.format in _COPY_CHECKS:
                _COPY_CHECKS[info.format](source.path)
            copy_and_hash(source.path, tmp, progress=bytes_progress("copy"))
        else:
            calibration = calibration_path(recipe, base_dir)
            if calibration is not None:  # the builder gets the resolved path
                recipe = recipe.model_copy(update={"calibration": str(calibration.resolve())})
            load_builder(info)(recipe, source.path, tmp, threads=threads or os.cpu_count() or 1, progress=report,
                               quiet=quiet)
        if info.layout == "tree" and not as_shipped:
            digest, size = store.put_tree(tmp, progress=bytes_progress("hash artifact"))
        else:
            # An as-shipped copy must be byte-identical to the source; put_file refuses it otherwise.
            expected = source.digest if as_shipped else None
            digest, size = store.put_file(tmp, expected_digest=expected, progress=bytes_progress("hash artifact"))
    artifact = BuiltArtifact(
        digest=digest, model=recipe.model, format=recipe.format, quant=recipe.quant, size_bytes=size,
        layout="tree" if info.layout == "tree" and not as_shipped else "file",
        source_digest=source.digest, tool_version=build_tool_version(recipe, conversion), cache_key=key,
    )
    facts = artifact_facts(recipe.format, store.local_path(artifact), artifact.tool_version)
    if facts:
        artifact = artifact.model_copy(update={"compat": facts})
    store.record(artifact)  # stored and indexed before measuring: an interrupted measurement loses only the figure
    if measure_quality and recipe.kind == "llm" and recipe.format in MEASURED_FORMATS:  # logits
        quality = _measure(recipe.format, source.path, store.local_path(artifact), as_shipped=as_shipped,
                           threads=threads or os.cpu_count() or 1, quiet=quiet, report=report,
                           label=f"{recipe.model} {recipe.format} {recipe.quant}", quant=recipe.quant)
        if quality is not None:
            artifact = artifact.model_copy(update={"quality": quality})
            store.record(artifact)
    return artifact, True


def _measure(format: str, source_path: Path, artifact_path: Path, *, as_shipped: bool, threads: int, quiet: bool,
             report: StageProgress | None, label: str, quant: str = "") -> Quality | None:
    """GGUF: both read by llama.cpp; OpenVINO, ONNX GenAI, MLX: the artifact folder by its runtime against its
    Hugging Face folder by transformers; GPTQ: both folders by transformers in the vLLM venv
    (edgectl.builders.quality); bnb: NF4 by bitsandbytes on the CPU against the float32 source. None without the
    tools (an as-shipped GGUF copy needs no llama-cpp-python)."""
    import importlib.util

    from edgectl.builders.quality import measure, measure_hf, measure_mlx, measure_onnx_genai, measure_openvino

    needs = MEASURED_FORMATS[format]
    if any(importlib.util.find_spec(module) is None for module in needs):
        return None

    if report:
        report("measure quality", 0, 1)
    try:
        # An as-shipped copy is the source's own bytes: the source is evaluated once (agreement 1.0 by definition).
        if format == "openvino":
            quality = measure_openvino(source_path, artifact_path, threads=threads, quiet=quiet)
        elif format == "onnx":
            quality = measure_onnx_genai(source_path, artifact_path, threads=threads)
        elif format == "mlx":
            quality = measure_mlx(source_path, artifact_path, threads=threads)
        elif format == "gptq":
            quality = measure_hf(source_path, artifact_path, threads=threads)
        elif format == "bnb":  # NF4 loaded by bitsandbytes on the CPU vs the float32 source (edgectl.builders.bnb)
            from edgectl.builders.bnb import measure_nf4

            quality = measure_nf4(source_path, artifact_path, quant, threads=threads)
        else:
            quality = measure(source_path, None if as_shipped else artifact_path, threads=threads, quiet=quiet)
    except Exception as e:  # noqa: BLE001  (the artifact is good; only the figure is missing)
        warnings.warn(f"could not measure the quality of {label}: {type(e).__name__}: {e}; "
                      f"it is stored without a quality record", QualityWarning, stacklevel=3)
        quality = None
    if report:
        report("measure quality", 1, 1)
    return quality

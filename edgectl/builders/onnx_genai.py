"""ONNX LLM builder: a local Hugging Face model folder -> an onnxruntime-genai folder (the ``[onnx-genai]`` extra).

The onnxruntime-genai model builder writes ``model.onnx`` + ``model.onnx.data`` + ``genai_config.json`` + the
tokenizer files; INT4 = weight-only MatMulNBits (block 32, round to nearest), INT8 = weight-only 8 bits, FP16/FP32 =
the weights cast. It runs in a child process (it loads the whole model with torch), offline: the input is a local
folder and HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE are set, so it can never reach the hub. Its cache directory lies
beside the output folder, never inside it, and the output is checked against the tree artifact rules.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgectl.progress import StageProgress
from edgectl.builders.onnx import check_external_locations, is_pickle_file
from edgectl.builders.registry import check_buildable
from edgectl.errors import BuildError, require_module
from edgectl.spec.artifact import Recipe

# edgectl quant -> the builder's --precision
GENAI_PRECISIONS = {"FP32": "fp32", "FP16": "fp16", "INT8": "int8", "INT4": "int4"}
# Text decoders the builder maps (onnxruntime_genai.models.builder.create_model); multimodal ones need transformers 5.
# Others fail there with a less helpful message, so they are refused up front. Tested here: LlamaForCausalLM.
GENAI_ARCHITECTURES = frozenset({
    "ChatGLMForConditionalGeneration", "ChatGLMModel", "Ernie4_5ForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
    "GemmaForCausalLM", "GptOssForCausalLM", "GraniteForCausalLM", "InternLM2ForCausalLM", "Lfm2ForCausalLM",
    "LlamaForCausalLM", "MistralForCausalLM", "NemotronForCausalLM", "OlmoForCausalLM", "Phi3ForCausalLM",
    "Phi3SmallForCausalLM", "PhiForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM",
})
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_DATASETS_OFFLINE": "1"}
REQUIRED_OUTPUTS = ("genai_config.json", "model.onnx")
OUTPUT_TAIL_CHARS = 3000


def read_hf_config(source: Path) -> dict:
    """config.json of a local HF model folder, checked for what the builder needs; BuildError naming the fix."""
    config_path = source / "config.json"
    if not source.is_dir() or not config_path.is_file():
        raise BuildError(f"source {source} is not a Hugging Face model folder (no config.json)",
                         hint="point the huggingface source's path at a folder with config.json, *.safetensors and "
                              "the tokenizer files")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot read {config_path}: {e}", hint="fix or re-download the model's config.json") from e
    pickles = sorted(p.name for p in source.iterdir() if p.is_file() and (p.suffix == ".bin" or is_pickle_file(p)))
    if pickles:
        raise BuildError(f"source {source} holds pickle-based weight files ({', '.join(pickles)}), which edgectl "
                         f"never loads: unpickling runs code",
                         hint="keep only *.safetensors weights in the folder (convert with safetensors' "
                              "convert script or model.save_pretrained(safe_serialization=True))")
    if not any(source.glob("*.safetensors")):
        raise BuildError(f"source {source} has no *.safetensors weights",
                         hint="save the model with model.save_pretrained(folder, safe_serialization=True)")
    architectures = config.get("architectures") or []
    if not any(a in GENAI_ARCHITECTURES for a in architectures):
        raise BuildError(f"the onnxruntime-genai model builder cannot build architecture {architectures} "
                         f"({config_path})",
                         hint=f"build another format (gguf, openvino) for it; onnx LLMs support: "
                              f"{', '.join(sorted(GENAI_ARCHITECTURES))}")
    # The builder finds the LM head as "any Linear whose out_features == vocab_size"; a projection of the same
    # width would be taken for it and the graph silently wired wrong.
    vocab = config.get("vocab_size")
    widths = {"intermediate_size": config.get("intermediate_size"), "hidden_size": config.get("hidden_size")}
    clash = [name for name, width in widths.items() if width is not None and width == vocab]
    if clash:
        raise BuildError(f"{config_path}: vocab_size {vocab} equals {', '.join(clash)}; the onnxruntime-genai builder "
                         f"would mistake that projection for the LM head and write a wrong graph",
                         hint="build another format (gguf, openvino, mlx) for this model")
    return config


def builder_argv(source: Path, out: Path, quant: str, cache_dir: Path) -> list[str]:
    """The model builder's command line (run through edgectl.builders.onnx_genai_compat, see there why)."""
    return [sys.executable, "-m", "edgectl.builders.onnx_genai_compat", "-i", str(source), "-o", str(out),
            "-p", GENAI_PRECISIONS[quant], "-e", "cpu", "-c", str(cache_dir)]


def builder_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: offline, and torch/onnxruntime limited to ``threads``."""
    env = dict(os.environ if base is None else base)
    env.update(OFFLINE_ENV)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def check_output(out: Path) -> None:
    """The builder's folder must be a valid tree artifact: required files, safe names, no links, and external
    data only inside the folder."""
    from edgectl_agent.tree import TreeError, check_relpath

    missing = [f for f in REQUIRED_OUTPUTS if not (out / f).is_file()]
    if missing:
        raise BuildError(f"the onnxruntime-genai builder wrote no {', '.join(missing)} in {out}",
                         hint="rerun with EDGECTL_DEBUG=1 to see the builder's output")
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out).as_posix()
        if p.is_symlink():
            raise BuildError(f"the onnxruntime-genai builder wrote a symbolic link {rel}",
                             hint="report it: artifacts must hold plain files only")
        if p.is_file():
            try:
                check_relpath(rel)
            except TreeError as e:
                raise BuildError(f"the onnxruntime-genai builder wrote {rel}, a name artifacts cannot hold: {e}",
                                 hint="report it; as a workaround build another format") from e
    check_external_locations(out / "model.onnx")


def build_onnx_genai(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
                     progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Build the onnxruntime-genai folder ``out_path`` (created here) from the HF folder ``source_path``."""
    check_buildable(recipe)
    source_path, out_path = Path(source_path), Path(out_path)
    if recipe.quant not in GENAI_PRECISIONS:
        raise BuildError(f"cannot build onnx {recipe.quant} LLMs", hint=f"use one of: {', '.join(GENAI_PRECISIONS)}")
    read_hf_config(source_path)
    require_module("onnxruntime_genai", "onnx-genai")
    require_module("onnx_ir", "onnx-genai")
    require_module("torch", "onnx-genai")
    cache_dir = out_path.with_name(out_path.name + ".cache")  # beside, not inside: never part of the artifact
    argv = builder_argv(source_path, out_path, recipe.quant, cache_dir)
    if progress:
        progress("convert", 0, None)
    try:
        result = subprocess.run(argv, env=builder_env(threads or os.cpu_count() or 1), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None,
                                text=True, errors="replace", check=False)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    if result.returncode != 0:
        tail = (result.stdout or "")[-OUTPUT_TAIL_CHARS:]
        raise BuildError(f"the onnxruntime-genai model builder failed on {source_path} "
                         f"(exit {result.returncode}):\n{tail}",
                         hint="check the folder loads with transformers.AutoModelForCausalLM; rerun with "
                              "EDGECTL_DEBUG=1 for the full output")
    check_output(out_path)
    if progress:
        progress("convert", 1, 1)

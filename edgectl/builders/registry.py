"""Builders as data: which formats can be built, at which quant levels, with which tool and extra.

Adding a builder = one entry here plus its module. Nothing in this file imports a heavy tool.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgectl_agent.runtimes.catalog import runtime_for

from edgectl.errors import BuildError, require_module
from edgectl.spec.artifact import Recipe

# GGUF quant type -> name of the llama.cpp ``llama_ftype`` constant (resolved lazily from llama_cpp).
# The i-quants below IQ4 need an importance matrix, which edgectl does not compute, so they are left out.
# NOTE: the planner keeps bits-per-weight and quality rank per quant (edgectl.plan); this table only says what
# the builder can make and how.
GGUF_FTYPES: dict[str, str] = {
    "F32": "LLAMA_FTYPE_ALL_F32",
    "F16": "LLAMA_FTYPE_MOSTLY_F16",
    "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q6_K": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "Q5_K_M": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "Q5_K_S": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "Q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
    "Q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q4_K_S": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "IQ4_NL": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    "IQ4_XS": "LLAMA_FTYPE_MOSTLY_IQ4_XS",
    "Q3_K_L": "LLAMA_FTYPE_MOSTLY_Q3_K_L",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K_S": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
}

# Precisions that are not quantized: building from them is a plain quantization, not a requantization.
UNQUANTIZED_PRECISIONS = frozenset({"F32", "F16", "BF16", "FP32", "FP16"})

Kind = str  # "llm" (text generation: OpenAI API) or "tensor" (KServe v2)


@dataclass(frozen=True)
class BuilderInfo:
    """What one builder can make and what it needs. One builder = one (format, kind) = one module."""

    format: str
    kind: Kind
    quants: tuple[str, ...]  # best quality first
    extra: str  # pip install 'edgectl[<extra>]'
    module: str  # the Python module whose import proves the tool is installed (imported lazily)
    tools: tuple[str, ...]  # distributions whose versions go into the cache key
    source_types: tuple[str, ...]  # ModelSource.type values it builds from (after conversion, see sources.py)
    builder: str  # "module:function" doing the build, imported only when building
    layout: str = "file"  # "file" or "tree" (a folder: edgectl_agent.tree)
    # "module:function" returning the cache key's tool versions, for a builder whose tools live in another Python
    # (the vLLM venv); None: the versions of ``tools`` installed here
    versions: str | None = None
    backend: str | None = None  # an alternative builder of (format, kind), chosen by quantization.backend

    @property
    def runtime(self) -> str:
        """The agent runtime that serves its artifacts: the catalog's runtime for this (format, kind)."""
        runtime = runtime_for(self.format, self.kind)
        if runtime is None:
            raise BuildError(f"no agent runtime serves {self.format} {self.kind} models",
                             hint="add the runtime to edgectl_agent.runtimes.catalog")
        return runtime

    @property
    def key(self) -> tuple[str, Kind]:
        return (self.format, self.kind)


BUILDERS: dict[tuple[str, Kind], BuilderInfo] = {b.key: b for b in (
    BuilderInfo(format="gguf", kind="llm", quants=tuple(GGUF_FTYPES), extra="gguf", module="llama_cpp",
                tools=("llama-cpp-python",), source_types=("gguf",), builder="edgectl.builders.gguf:build_gguf"),
    # Tensor models: INT8 = quantize_dynamic (weights int8, activations at run time); INT8_STATIC = quantize_static
    # with calibration samples; INT4 = weight-only MatMulNBits; FP32 = the source graph as is.
    BuilderInfo(format="onnx", kind="tensor", quants=("FP32", "INT8", "INT8_STATIC", "INT4"), extra="onnx",
                module="onnxruntime", tools=("onnxruntime",), source_types=("onnx",),
                builder="edgectl.builders.onnx:build_onnx"),
    # LLMs: the onnxruntime-genai model builder -> a genai folder (model.onnx + genai_config.json + tokenizer).
    BuilderInfo(format="onnx", kind="llm", quants=("FP32", "FP16", "INT8", "INT4"), extra="onnx-genai",
                module="onnxruntime_genai", tools=("onnxruntime-genai", "onnxruntime"), source_types=("huggingface",),
                builder="edgectl.builders.onnx_genai:build_onnx_genai", layout="tree"),
    # LLMs: optimum-intel export + NNCF weight compression -> an OpenVINO IR folder with tokenizers for openvino-genai.
    # INT4_SYM_CW (symmetric, channel-wise) is the recipe an Intel NPU runs; the planner picks it for NPU targets.
    BuilderInfo(format="openvino", kind="llm", quants=("FP16", "INT8", "INT4", "INT4_SYM_CW"), extra="openvino",
                module="optimum.intel",
                tools=("optimum-intel", "openvino", "nncf", "openvino-tokenizers", "transformers"),
                source_types=("huggingface",), builder="edgectl.builders.openvino:build_openvino_llm", layout="tree"),
    # Tensor models: ONNX -> OpenVINO IR (model.xml + model.bin), FP32/FP16, or INT8 by NNCF post-training quantization.
    BuilderInfo(format="openvino", kind="tensor", quants=("FP32", "FP16", "INT8"), extra="openvino",
                module="openvino", tools=("openvino", "nncf"), source_types=("onnx",),
                builder="edgectl.builders.openvino:build_openvino_tensor", layout="tree"),
    # LLMs: mlx_lm convert (-q, group size 64) -> an MLX folder (safetensors + config + tokenizer).
    BuilderInfo(format="mlx", kind="llm", quants=("FP16", "INT8", "INT4"), extra="mlx", module="mlx_lm",
                tools=("mlx-lm", "mlx"), source_types=("huggingface",), builder="edgectl.builders.mlx:build_mlx",
                layout="tree"),
    # LLMs for vLLM: llmcompressor's one-shot GPTQ (W4A16 / W8A16) -> a compressed-tensors folder. Runs in the vLLM
    # venv (transformers 5); ``module`` only proves edgectl's side is importable, the venv is checked by ``versions``.
    # LLMs for the transformers runtime: the source saved as a 16-bit Hugging Face folder, quantized to bitsandbytes
    # NF4 when the agent loads it (edgectl.builders.bnb). NF4_DQ: with double quantization.
    BuilderInfo(format="bnb", kind="llm", quants=("NF4", "NF4_DQ"), extra="bnb", module="transformers",
                tools=("transformers", "torch", "safetensors"), source_types=("huggingface",),
                builder="edgectl.builders.bnb:build_bnb", layout="tree"),
    BuilderInfo(format="gptq", kind="llm", quants=("W8A16", "W4A16"), extra="gptq", module="edgectl.builders.gptq",
                tools=(), source_types=("huggingface",), builder="edgectl.builders.gptq:build_gptq", layout="tree",
                versions="edgectl.builders.gptq:gptq_tool_versions"),
)}


# Alternative builders of a (format, kind) that a deployment picks with quantization.backend; they make artifacts the
# same runtime serves. Olive: Microsoft's optimization workflow (ModelBuilder pass, CPU target), run from its overlay.
BACKENDS: dict[tuple[str, Kind, str], BuilderInfo] = {(b.format, b.kind, b.backend): b for b in (
    BuilderInfo(format="onnx", kind="llm", quants=("INT8", "INT4"), extra="olive", module="edgectl.builders.olive",
                tools=(), source_types=("huggingface",), builder="edgectl.builders.olive:build_olive", layout="tree",
                versions="edgectl.builders.olive:olive_tool_versions", backend="olive"),
    # AWQ: llmcompressor's one-shot AWQ W4A16 (edgectl.builders.gptq, same worker and venv): the folder vLLM serves.
    BuilderInfo(format="gptq", kind="llm", quants=("W4A16",), extra="gptq", module="edgectl.builders.gptq",
                tools=(), source_types=("huggingface",), builder="edgectl.builders.gptq:build_gptq", layout="tree",
                versions="edgectl.builders.gptq:awq_tool_versions", backend="awq"),
) if b.backend}


def builder_for(format: str, kind: Kind = "llm", backend: str | None = None) -> BuilderInfo:
    """The builder of a format for a kind of model (or its ``backend`` alternative), or BuildError listing what can
    be built."""
    if backend is not None:
        try:
            return BACKENDS[(format, kind, backend)]
        except KeyError:
            have = ", ".join(sorted(f"{b} ({f} {k})" for f, k, b in BACKENDS))
            raise BuildError(f"no {backend!r} backend builds {format} {kind} models",
                             hint=f"backends: {have}; or remove quantization.backend for the default builder") from None
    try:
        return BUILDERS[(format, kind)]
    except KeyError:
        have = ", ".join(sorted(f"{f} ({k})" for f, k in BUILDERS))
        raise BuildError(f"no builder for format {format!r} for {kind} models",
                         hint=f"buildable: {have}") from None


def quants_for(format: str, kind: Kind = "llm", backend: str | None = None) -> tuple[str, ...]:
    """Quant types a format offers for a kind of model (empty when it has no builder)."""
    info = BUILDERS.get((format, kind)) if backend is None else BACKENDS.get((format, kind, backend))
    return info.quants if info else ()


def check_buildable(recipe: Recipe) -> BuilderInfo:
    """Check a recipe names a known format and one of its quant types; returns the builder.

    Copying a source as shipped (quant == source precision) is always buildable, whatever the precision is.
    """
    info = builder_for(recipe.format, recipe.kind, recipe.backend)
    if is_as_shipped(recipe):
        return info
    if recipe.quant not in info.quants:
        raise BuildError(
            f"cannot build {recipe.format} quant {recipe.quant!r} for model {recipe.model!r}",
            hint=f"use one of: {', '.join(info.quants)} (or {recipe.source_precision!r} to ship the source as is)",
        )
    return info


def load_builder(info: BuilderInfo):
    """The build function of a builder (its module is imported now, not before)."""
    import importlib

    module, _, function = info.builder.partition(":")
    return getattr(importlib.import_module(module), function)


COPY_TOOL_VERSION = "edgectl copy"  # as-shipped artifacts: the bytes do not depend on any tool version


def tool_version(recipe: Recipe) -> str:
    """The tool version that goes into a recipe's cache key: the builder's tool and its installed version, or a
    fixed one for as-shipped copies. A missing tool names the pip install."""
    if is_as_shipped(recipe):
        return COPY_TOOL_VERSION
    return builder_tool_versions(builder_for(recipe.format, recipe.kind, recipe.backend))


def builder_tool_versions(info: BuilderInfo) -> str:
    """A builder's tool versions for the cache key (its ``versions`` function when its tools live elsewhere)."""
    if info.versions is not None:
        import importlib

        require_module(info.module, info.extra)  # edgectl's side of the builder
        module, _, function = info.versions.partition(":")
        return getattr(importlib.import_module(module), function)()
    return tool_versions(info.module, info.extra, info.tools)


def tool_versions(module: str, extra: str, tools: tuple[str, ...]) -> str:
    """'dist version, ...' of a tool's distributions, read from their installed metadata. Only when one of them is
    not installed is ``module`` imported, so that a missing tool names the pip install of ``extra``
    (MissingExtraError); importing every builder's tools just to read versions cost each plan seconds."""
    from importlib import metadata

    versions = []
    missing = not tools
    for dist in tools:
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
            missing = True
    if missing:
        require_module(module, extra)  # a missing tool names the exact pip install
    return ", ".join(versions)


def is_as_shipped(recipe: Recipe) -> bool:
    """The recipe asks for the source's own format and precision: the build is a verified copy, not a quantization.
    (A folder-format build from a Hugging Face source at the same precision is still a conversion.)"""
    if recipe.backend is not None:  # a backend always builds
        return False
    info = BUILDERS.get((recipe.format, recipe.kind))
    return recipe.quant == recipe.source_precision and (info is None or recipe.format in info.source_types)

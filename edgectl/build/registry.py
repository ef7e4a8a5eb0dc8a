"""Builders as data: which formats can be built, at which quant levels, with which tool and extra.

Adding a builder = one entry here plus its module. Nothing in this file imports a heavy tool.
"""

from __future__ import annotations

from dataclasses import dataclass

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

# ONNX quant types, best quality first: FP32 (the source graph) and INT8 (dynamic quantization).
ONNX_QUANTS: tuple[str, ...] = ("FP32", "INT8")

# Precisions that are not quantized: building from them is a plain quantization, not a requantization.
UNQUANTIZED_PRECISIONS = frozenset({"F32", "F16", "BF16"})


@dataclass(frozen=True)
class BuilderInfo:
    """What one builder can make and what it needs."""

    format: str
    quants: tuple[str, ...]
    extra: str  # pip install 'edgectl[<extra>]'
    module: str  # the Python module imported lazily to build
    tool: str  # distribution name used in the tool version string
    source_types: tuple[str, ...]  # ModelSource.type values it can build from


BUILDERS: dict[str, BuilderInfo] = {
    "gguf": BuilderInfo(
        format="gguf",
        quants=tuple(GGUF_FTYPES),
        extra="gguf",
        module="llama_cpp",
        tool="llama-cpp-python",
        source_types=("gguf",),
    ),
    # Tensor models (task: tensor): INT8 = onnxruntime.quantization.quantize_dynamic (MatMul/Gemm weights to int8,
    # activations quantized at run time); FP32 = the source graph as is.
    "onnx": BuilderInfo(
        format="onnx",
        quants=ONNX_QUANTS,
        extra="onnx",
        module="onnxruntime",
        tool="onnxruntime",
        source_types=("onnx",),
    ),
}


def builder_for(format: str) -> BuilderInfo:
    """The builder of a format, or BuildError listing the formats that can be built."""
    try:
        return BUILDERS[format]
    except KeyError:
        raise BuildError(f"no builder for format {format!r}",
                         hint=f"buildable formats: {', '.join(sorted(BUILDERS))}") from None


def check_buildable(recipe: Recipe) -> BuilderInfo:
    """Check a recipe names a known format and one of its quant types; returns the builder.

    Copying a source as shipped (quant == source precision) is always buildable, whatever the precision is.
    """
    info = builder_for(recipe.format)
    if recipe.quant == recipe.source_precision:
        return info
    if recipe.quant not in info.quants:
        raise BuildError(
            f"cannot build {recipe.format} quant {recipe.quant!r} for model {recipe.model!r}",
            hint=f"use one of: {', '.join(info.quants)} (or {recipe.source_precision!r} to ship the source as is)",
        )
    return info


COPY_TOOL_VERSION = "edgectl copy"  # as-shipped artifacts: the bytes do not depend on any tool version


def tool_version(recipe: Recipe) -> str:
    """The tool version that goes into a recipe's cache key: the builder's tool and its installed version, or a
    fixed one for as-shipped copies. A missing tool names the pip install."""
    if is_as_shipped(recipe):
        return COPY_TOOL_VERSION
    info = builder_for(recipe.format)
    return f"{info.tool} {require_module(info.module, info.extra).__version__}"


def is_as_shipped(recipe: Recipe) -> bool:
    """The recipe asks for the source's own precision: the build is a verified copy, not a quantization."""
    return recipe.quant == recipe.source_precision

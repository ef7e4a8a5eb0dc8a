"""OpenVINO builders: Hugging Face LLM folders -> an openvino-genai folder; ONNX tensor models -> OpenVINO IR.

The tools are the ``[openvino]`` extra (openvino, nncf, openvino-tokenizers, optimum-intel), imported lazily.

LLMs: optimum-intel exports the model to IR (FP32, stateful KV cache), NNCF compresses its weights (INT4 = INT4_ASYM
in groups, INT8 = INT8_ASYM per channel, INT4_SYM_CW = INT4_SYM per output channel) or ``save_model`` halves them
(FP16), and openvino-tokenizers converts the tokenizer
and detokenizer, so ``openvino_genai.LLMPipeline(folder)`` loads the folder as is. The Hugging Face config,
generation config and tokenizer files (with the chat template) are kept beside: the agent renders the template.

Tensor models: ``openvino.convert_model`` reads the ONNX graph; FP16 compresses its constants, INT8 is NNCF
post-training quantization calibrated on generated samples (see :func:`calibration_samples`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from edgectl.progress import StageProgress
from edgectl.builders.onnx import check_onnx_file
from edgectl.builders.registry import check_buildable
from edgectl.errors import BuildError, require_module
from edgectl.spec.artifact import Recipe

EXTRA = "openvino"
LLM_MODEL_XML = "openvino_model.xml"
TENSOR_MODEL_XML = "model.xml"
# NNCF weight-compression mode per quant; FP16 is no compression, only constants stored as f16.
# INT4_SYM_CW is the Intel NPU recipe of OpenVINO GenAI's NPU guide: symmetric INT4, one scale per output channel
# (group_size -1), every eligible layer in 4 bits (ratio 1.0); the embedding and output layer keep NNCF's INT8
# backup precision, as in INT4. CPU and GPU run it too, but the grouped INT4 is closer to the source there.
LLM_WEIGHT_MODES = {"INT4": "INT4_ASYM", "INT8": "INT8_ASYM", "INT4_SYM_CW": "INT4_SYM"}
CHANNEL_WISE = -1  # NNCF's group_size for one scale per output channel
INT4_GROUP_SIZES = (128, 64, 32, 16)  # preferred first; 128 is optimum-intel's default for INT4
CALIBRATION_SAMPLES = 32
CALIBRATION_SEED = 0
# Files of the exported folder that are not copied: the IR is rewritten compressed.
_NOT_COPIED = {"openvino_model.xml", "openvino_model.bin"}
_TREE_NAME = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9._+\-]{0,127}")  # edgectl_agent.tree's rule for a file name
_NOISY_LOGGERS = ("nncf", "optimum", "transformers", "torch")


def int4_group_size(config: dict[str, Any], preferred: Sequence[int] = INT4_GROUP_SIZES) -> int:
    """The INT4 group size for a model: the first of ``preferred`` that divides every weight's input width
    (hidden size, MLP width, attention width), so every matrix is compressed in whole groups.

    Tiny test models (hidden 64, ...) get a smaller group than 128; -1 (per channel) when none divides.
    """
    hidden = config.get("hidden_size")
    if not isinstance(hidden, int) or hidden <= 0:
        raise BuildError("config.json has no positive integer hidden_size",
                         hint="point the huggingface source at a transformers model folder (config.json from "
                              "save_pretrained)")
    widths = [hidden]
    if isinstance(config.get("intermediate_size"), int):
        widths.append(config["intermediate_size"])
    heads, head_dim = config.get("num_attention_heads"), config.get("head_dim")
    if isinstance(heads, int) and isinstance(head_dim, int):
        widths.append(heads * head_dim)
    for size in preferred:
        if all(w % size == 0 for w in widths):
            return size
    return -1


def _check_llm_source(source_path: Path) -> dict[str, Any]:
    config = source_path / "config.json"
    if not source_path.is_dir() or not config.is_file():
        raise BuildError(f"source {source_path} is not a Hugging Face model folder (no config.json)",
                         hint="set the model source's path to a folder written by save_pretrained (config.json, "
                              "*.safetensors, tokenizer files)")
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:
        raise BuildError(f"cannot read {config}: {e}", hint="fix or re-download the model's config.json") from e


@contextlib.contextmanager
def _tool_output(quiet: bool) -> Iterator[io.StringIO]:
    """Silence the tools' prints, progress bars, warnings and logs when ``quiet``; the captured text is yielded
    so an error can quote it."""
    captured = io.StringIO()
    if not quiet:
        yield captured
        return
    levels = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _tail(captured: io.StringIO, limit: int = 1500) -> str:
    text = captured.getvalue().strip()
    return f"\n--- tool output (last {limit} chars) ---\n{text[-limit:]}" if text else ""


def build_openvino_llm(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
                       progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Export the Hugging Face model folder ``source_path`` to an openvino-genai folder ``out_path`` (created here)
    with weights in ``recipe.quant`` (FP16, INT8, INT4, or INT4_SYM_CW for an Intel NPU)."""
    check_buildable(recipe)
    source_path, out_path = Path(source_path), Path(out_path)
    if recipe.quant not in ("FP16", *LLM_WEIGHT_MODES):
        raise BuildError(f"cannot build openvino {recipe.quant} for model {recipe.model!r}",
                         hint=f"openvino LLM artifacts are FP16, {', '.join(LLM_WEIGHT_MODES)}")
    config = _check_llm_source(source_path)
    group_size = int4_group_size(config) if recipe.quant == "INT4" else \
        CHANNEL_WISE if recipe.quant == "INT4_SYM_CW" else None
    require_module("optimum.intel", EXTRA)
    nncf = require_module("nncf", EXTRA)
    ov = require_module("openvino", EXTRA)
    openvino_tokenizers = require_module("openvino_tokenizers", EXTRA)
    from optimum.exporters.openvino import main_export
    from transformers import AutoTokenizer

    out_path.mkdir()
    # The FP32 export goes beside out_path (in the store's tmp/), never into the artifact.
    with tempfile.TemporaryDirectory(prefix="ov-export-", dir=out_path.parent) as tmp, _tool_output(quiet) as log:
        export = Path(tmp)
        if progress:
            progress("export", 0, None)
        try:
            with _torch_threads(threads):
                main_export(str(source_path), output=str(export), task="text-generation-with-past",
                            library_name="transformers", convert_tokenizer=False, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001  (torch tracing, transformers and openvino raise many types)
            raise BuildError(f"optimum-intel could not export {source_path} to OpenVINO: {type(e).__name__}: {e}"
                             f"{_tail(log)}",
                             hint="check the folder loads with transformers.AutoModelForCausalLM and that "
                                  "optimum-intel supports its architecture (config.json model_type)") from e
        if progress:
            progress("export", 1, 1)
            progress("quantize", 0, 1)
        try:
            model = ov.Core().read_model(export / LLM_MODEL_XML)
            if recipe.quant in LLM_WEIGHT_MODES:
                mode = getattr(nncf.CompressWeightsMode, LLM_WEIGHT_MODES[recipe.quant])
                kwargs: dict[str, Any] = {"mode": mode}
                if group_size is not None:
                    kwargs.update(group_size=group_size, ratio=1.0)
                model = nncf.compress_weights(model, **kwargs)
            ov.save_model(model, out_path / LLM_MODEL_XML, compress_to_fp16=recipe.quant == "FP16")
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"NNCF could not compress {recipe.model} to {recipe.quant}: {type(e).__name__}: {e}"
                             f"{_tail(log)}", hint="try INT8 or FP16 (quantization.allow)") from e
        if progress:
            progress("quantize", 1, 1)
            progress("convert tokenizer", 0, 1)
        try:
            hf_tokenizer = AutoTokenizer.from_pretrained(str(source_path), trust_remote_code=False)
            tokenizer, detokenizer = openvino_tokenizers.convert_tokenizer(hf_tokenizer, with_detokenizer=True)
            ov.save_model(tokenizer, out_path / "openvino_tokenizer.xml")
            ov.save_model(detokenizer, out_path / "openvino_detokenizer.xml")
        except Exception as e:  # noqa: BLE001
            raise BuildError(f"openvino-tokenizers could not convert the tokenizer of {source_path}: "
                             f"{type(e).__name__}: {e}{_tail(log)}",
                             hint="the folder needs a fast tokenizer (tokenizer.json) that transformers loads") from e
        for f in sorted(export.iterdir()):  # config, generation config, tokenizer files, chat template
            if f.is_file() and f.name not in _NOT_COPIED and _TREE_NAME.fullmatch(f.name):
                shutil.copyfile(f, out_path / f.name)
        if progress:
            progress("convert tokenizer", 1, 1)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Export with the build's thread count (torch tracing is the slow part), restored afterwards."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def calibration_samples(inputs: Sequence[tuple[str, str, Sequence[int]]], *, count: int = CALIBRATION_SAMPLES,
                        seed: int = CALIBRATION_SEED) -> list[dict[str, Any]]:
    """``count`` seeded random input dicts for post-training quantization, from ``(name, numpy dtype, shape)``
    specs (dynamic dims = -1 become 1).

    Floats are standard normal (the range of normalized inputs); integers are uniform in [0, 16) (small enough to
    be valid indices for embeddings); bools are fair coins. Real data calibrates better: these samples only make
    INT8 buildable without any.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        sample = {}
        for name, dtype, shape in inputs:
            dims = [d if d >= 0 else 1 for d in shape]
            kind = np.dtype(dtype).kind
            if kind == "f":
                sample[name] = rng.standard_normal(dims).astype(dtype)
            elif kind in "iu":
                sample[name] = rng.integers(0, 16, size=dims).astype(dtype)
            elif kind == "b":
                sample[name] = rng.integers(0, 2, size=dims).astype(bool)
            else:
                raise BuildError(f"cannot generate calibration data for input {name!r} of type {dtype}",
                                 hint="build this model as FP16 or FP32 (quantization.allow)")
        samples.append(sample)
    return samples


def _ptq_parameters(nncf: Any) -> Any:
    """NNCF post-training settings for generated calibration data and any target CPU.

    Activation ranges are the samples' min/max: generated samples hold no outliers worth clipping, and the default
    (mean of per-sample extremes) clipped N(0, 1) inputs at about 2.4 sigma (8.7% error on the test MLP; min/max
    4.3%). The overflow fix (7-bit weights) is on for every layer, not only the first: the artifact may run on a CPU
    without VNNI, whose int8 dot products saturate with full 8-bit weights (on AVX2 it brought the error to 2.2%).
    """
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    return AdvancedQuantizationParameters(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
                                          overflow_fix=OverflowFix.ENABLE)


def _input_specs(model: Any) -> list[tuple[str, str, list[int]]]:
    specs = []
    for port in model.inputs:
        shape = [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]
        specs.append((port.get_any_name(), port.get_element_type().to_dtype().name, shape))
    return specs


def build_openvino_tensor(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
                          progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Convert the ONNX graph ``source_path`` to OpenVINO IR in the folder ``out_path`` (``model.xml`` +
    ``model.bin``, created here): FP32, FP16 (constants halved) or INT8 (NNCF post-training quantization)."""
    check_buildable(recipe)
    source_path, out_path = Path(source_path), Path(out_path)
    if recipe.quant not in ("FP32", "FP16", "INT8"):
        raise BuildError(f"cannot build openvino {recipe.quant} for tensor model {recipe.model!r}",
                         hint="openvino tensor artifacts are FP32, FP16 or INT8")
    if not source_path.is_file():
        raise BuildError(f"source {source_path} is not a file", hint="point the model source at a .onnx file")
    # OpenVINO's ONNX frontend follows external_data locations as given: the same refusals as the ONNX builder
    # (no data outside the source's folder, no pickle-based file) before it reads anything.
    check_onnx_file(source_path, extra=EXTRA)
    ov = require_module("openvino", EXTRA)
    if progress:
        progress("convert", 0, 1)
    with _tool_output(quiet) as log:
        try:
            model = ov.convert_model(str(source_path))
        except Exception as e:  # noqa: BLE001  (the frontends raise OpConversionFailure, GeneralFailure, ...)
            raise BuildError(f"openvino could not convert {source_path}: {type(e).__name__}: {e}",
                             hint="check the file is an ONNX model whose operators OpenVINO supports") from e
        if progress:
            progress("convert", 1, 1)
        if recipe.quant == "INT8":
            nncf = require_module("nncf", EXTRA)
            if progress:
                progress("quantize", 0, 1)
            samples = calibration_samples(_input_specs(model))
            try:
                model = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples),
                                      advanced_parameters=_ptq_parameters(nncf))
            except Exception as e:  # noqa: BLE001
                raise BuildError(f"NNCF could not quantize {source_path} to INT8: {type(e).__name__}: {e}"
                                 f"{_tail(log)}", hint="build it as FP16 or FP32 (quantization.allow)") from e
            if progress:
                progress("quantize", 1, 1)
        out_path.mkdir()
        ov.save_model(model, out_path / TENSOR_MODEL_XML, compress_to_fp16=recipe.quant == "FP16")

"""ONNX builder (tensor models): INT8 by onnxruntime's dynamic quantization, or FP32 = the source graph copied as is.

onnxruntime is imported lazily (the ``[onnx]`` extra); without it only as-shipped copies (done by
edgectl.build.build) can be built.
Dynamic quantization stores MatMul/Gemm weights as int8 and quantizes activations at run time, so it needs no
calibration data. Graphs with external data files are not supported: the artifact is one self-contained file.
"""

from __future__ import annotations

from pathlib import Path

from edgectl.build.gguf import StageProgress
from edgectl.build.registry import check_buildable
from edgectl.errors import BuildError, require_module
from edgectl.spec.artifact import Recipe


def _onnxruntime():
    return require_module("onnxruntime", "onnx")


def check_onnx_file(path: Path) -> None:
    """Fail early, with the path, when a source is not a loadable, self-contained ONNX graph."""
    onnx = require_module("onnx", "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf raises several types)
        raise BuildError(f"source {path} is not an ONNX model: {type(e).__name__}: {e}",
                         hint="point the model source at a .onnx file") from e
    from onnx.external_data_helper import uses_external_data

    if any(uses_external_data(t) for t in model.graph.initializer):
        raise BuildError(f"source {path} keeps weights in external data files, which edgectl does not build yet",
                         hint="save the model as one file: onnx.save(model, path, save_as_external_data=False)")


def build_onnx(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
               progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Quantize the ONNX graph at ``source_path`` to INT8 (``quantize_dynamic``) into ``out_path``.

    Copies as shipped (FP32) and removing ``out_path`` on failure are the caller's (edgectl.build.build).
    """
    check_buildable(recipe)
    source_path, out_path = Path(source_path), Path(out_path)
    if recipe.quant != "INT8":
        raise BuildError(f"cannot build onnx {recipe.quant} from {recipe.source_precision}",
                         hint="onnx artifacts are INT8 (dynamic quantization) or the source as shipped")
    check_onnx_file(source_path)
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if progress:
        progress("quantize", 0, None)
    try:
        quantize_dynamic(str(source_path), str(out_path), weight_type=QuantType.QInt8)
    except Exception as e:  # noqa: BLE001
        raise BuildError(f"onnxruntime failed to quantize {source_path} to INT8: {type(e).__name__}: {e}",
                         hint="check the graph loads in onnxruntime; or allow FP32 (quantization.allow)") from e
    if not out_path.is_file() or out_path.stat().st_size == 0:
        raise BuildError(f"onnxruntime reported success but wrote no file at {out_path}",
                         hint="check free disk space in the artifact store (EDGECTL_CACHE_DIR)")
    if progress:
        progress("quantize", 1, 1)

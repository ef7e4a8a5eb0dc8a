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


# Source weights must come in formats that are read as data. Pickle-based files (torch .pt/.bin checkpoints, .pkl)
# run code when loaded, so none is built from, and none may sit where the ONNX graph points for external data.
PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy_pickle"})
ONNX_SUFFIXES = frozenset({".onnx"})


def is_pickle_file(path: Path) -> bool:
    """A pickle (protocol 2+ starts with 0x80) or a torch zip checkpoint (data.pkl inside), by suffix or content."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if head.startswith(b"PK\x03\x04"):
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(".pkl") for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def check_external_locations(path: Path) -> list[str]:
    """External-data locations of the ONNX graph at ``path``; BuildError if one escapes its directory (absolute,
    ``..``, or a symlink out) or names a pickle file. Reads the graph without its external data."""
    from edgectl_agent.errors import RuntimeFailure
    from edgectl_agent.runtimes.onnxruntime import check_external_data

    require_module("onnx", "onnx")
    try:
        locations = check_external_data(path)
    except RuntimeFailure as e:
        raise BuildError(f"source {path} refused: {e.message}",
                         hint="keep every external data file inside the model's folder, or save the model as one "
                              "file: onnx.save(model, path, save_as_external_data=False)") from e
    for location in locations:
        if is_pickle_file(path.parent / location):
            raise BuildError(f"source {path} keeps tensor data in {location!r}, a pickle-based file",
                             hint="store external data as raw tensor files (onnx.save(..., save_as_external_data=True))"
                                  " or save the model as one file")
    return locations


def check_onnx_file(path: Path) -> None:
    """Fail early, with the path, when a source is not a loadable ONNX graph whose data stays beside it."""
    onnx = require_module("onnx", "onnx")
    if path.suffix.lower() not in ONNX_SUFFIXES or is_pickle_file(path):
        raise BuildError(f"source {path} is not an .onnx file",
                         hint="export the model to ONNX (torch.onnx.export) and point the source at the .onnx file;"
                              " pickle checkpoints (.pt, .pth, .bin, .pkl) are never loaded")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf raises several types)
        raise BuildError(f"source {path} is not an ONNX model: {type(e).__name__}: {e}",
                         hint="point the model source at a .onnx file") from e
    check_external_locations(path)


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

"""ONNX builder (tensor models): INT8 (dynamic), INT8_STATIC (calibrated), INT4 (weight-only), or FP32 as shipped.

onnxruntime is imported lazily (the ``[onnx]`` extra); without it only as-shipped copies (done by
edgectl.builders.build) can be built.
Dynamic quantization stores MatMul/Gemm weights as int8 and quantizes activations at run time, so it needs no
calibration data; static quantization fixes activation ranges from calibration samples (QDQ graph); INT4 stores
MatMul weights in 4 bits, blocks of 32. The artifact is one self-contained file; a source's external data must lie
in its own folder and no pickle-based file is ever read.
"""

from __future__ import annotations

from pathlib import Path

from edgectl.progress import StageProgress
from edgectl.builders.registry import check_buildable
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


def check_external_locations(path: Path, *, extra: str = "onnx") -> list[str]:
    """External-data locations of the ONNX graph at ``path``; BuildError if one escapes its directory (absolute,
    ``..``, or a symlink out) or names a pickle file. Reads the graph without its external data. ``extra``: the
    builder's extra, named when the onnx package is missing."""
    from edgectl_agent.errors import RuntimeFailure
    from edgectl_agent.runtimes.onnxruntime import check_external_data

    require_module("onnx", extra)
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


def check_onnx_file(path: Path, *, extra: str = "onnx") -> None:
    """Fail early, with the path, when a source is not a loadable ONNX graph whose data stays beside it. Every
    builder that reads an ONNX source (onnxruntime quantization, OpenVINO's converter) calls it first."""
    onnx = require_module("onnx", extra)
    if path.suffix.lower() not in ONNX_SUFFIXES or is_pickle_file(path):
        raise BuildError(f"source {path} is not an .onnx file",
                         hint="export the model to ONNX (torch.onnx.export) and point the source at the .onnx file;"
                              " pickle checkpoints (.pt, .pth, .bin, .pkl) are never loaded")
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001  (protobuf raises several types)
        raise BuildError(f"source {path} is not an ONNX model: {type(e).__name__}: {e}",
                         hint="point the model source at a .onnx file") from e
    check_external_locations(path, extra=extra)


CALIBRATION_SAMPLES = 16  # generated samples when no calibration file is given
CALIBRATION_SEED = 0
INT4_BLOCK_SIZE = 32


def calibration_samples(session_inputs, path: Path | None) -> list[dict]:
    """Feeds for ``quantize_static``: one dict per sample. From an .npz (no pickle; arrays named like the graph's
    inputs, samples along the first axis) or, without one, generated from the input spec with a fixed seed
    (floats standard normal, integers 0, dynamic dimensions 1)."""
    import numpy as np

    names = [i.name for i in session_inputs]
    if path is None:
        rng = np.random.default_rng(CALIBRATION_SEED)
        samples = []
        for _ in range(CALIBRATION_SAMPLES):
            feed = {}
            for i in session_inputs:
                shape = [d if isinstance(d, int) and d > 0 else 1 for d in (i.shape or [])]
                if "float" in i.type:
                    dtype = "float16" if "float16" in i.type else "float64" if "double" in i.type else "float32"
                    feed[i.name] = rng.standard_normal(shape).astype(dtype)
                else:
                    dtype = i.type.removeprefix("tensor(").removesuffix(")").replace("bool", "bool_")
                    feed[i.name] = np.zeros(shape, dtype=getattr(np, dtype, np.int64))
            samples.append(feed)
        return samples
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise BuildError(f"calibration file {path} is not a readable .npz without pickled objects: {e}",
                         hint="write it with numpy.savez(path, **{input_name: samples}) from numeric arrays") from e
    missing = [n for n in names if n not in arrays]
    if missing:
        raise BuildError(f"calibration file {path} has no samples for graph input(s) {missing} "
                         f"(it has {sorted(arrays)})",
                         hint=f"save one array per input, named {names}, samples along the first axis")
    counts = {arrays[n].shape[0] if arrays[n].ndim else 0 for n in names}
    if len(counts) != 1 or 0 in counts:
        raise BuildError(f"calibration file {path}: inputs hold different or zero sample counts ({sorted(counts)})",
                         hint="give every input the same number of samples along the first axis")
    return [{n: arrays[n][i:i + 1] for n in names} for i in range(counts.pop())]


class _Samples:
    """onnxruntime's CalibrationDataReader over a list of feeds (duck-typed: get_next / rewind)."""

    def __init__(self, samples: list[dict]) -> None:
        self._samples, self._i = samples, 0

    def get_next(self) -> dict | None:
        if self._i >= len(self._samples):
            return None
        self._i += 1
        return self._samples[self._i - 1]

    def rewind(self) -> None:
        self._i = 0


def _quantize_static(source: Path, out: Path, calibration: Path | None) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    inputs = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()
    reader = type("EdgectlSamples", (_Samples, CalibrationDataReader), {})(calibration_samples(inputs, calibration))
    quantize_static(str(source), str(out), reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, extra_options={"ActivationSymmetric": True})


def _quantize_int4(source: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(str(source)), bits=4, block_size=INT4_BLOCK_SIZE, is_symmetric=True)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=False)


def build_onnx(recipe: Recipe, source_path: Path, out_path: Path, *, threads: int | None = None,
               progress: StageProgress | None = None, quiet: bool = True) -> None:
    """Quantize the ONNX graph at ``source_path`` into the single file ``out_path``: INT8 (``quantize_dynamic``),
    INT8_STATIC (``quantize_static``, QDQ, calibrated on ``recipe.calibration`` or generated samples) or INT4
    (weight-only MatMulNBits, block 32). External data of the source is read from its folder and folded in.

    Copies as shipped (FP32) and removing ``out_path`` on failure are the caller's (edgectl.builders.build).
    """
    check_buildable(recipe)
    source_path, out_path = Path(source_path), Path(out_path)
    if recipe.quant not in ("INT8", "INT8_STATIC", "INT4"):
        raise BuildError(f"cannot build onnx {recipe.quant} from {recipe.source_precision}",
                         hint="onnx tensor artifacts are INT8, INT8_STATIC, INT4 or the source as shipped")
    if recipe.calibration is not None and recipe.quant != "INT8_STATIC":
        raise BuildError(f"quantization.calibration is set but {recipe.quant} does not calibrate",
                         hint="allow INT8_STATIC, or remove quantization.calibration")
    check_onnx_file(source_path)
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if progress:
        progress("quantize", 0, None)
    try:
        if recipe.quant == "INT8":
            quantize_dynamic(str(source_path), str(out_path), weight_type=QuantType.QInt8)
        elif recipe.quant == "INT8_STATIC":
            _quantize_static(source_path, out_path, Path(recipe.calibration) if recipe.calibration else None)
        else:
            _quantize_int4(source_path, out_path)
    except BuildError:
        raise
    except Exception as e:  # noqa: BLE001
        raise BuildError(f"onnxruntime failed to quantize {source_path} to {recipe.quant}: {type(e).__name__}: {e}",
                         hint="check the graph loads in onnxruntime; or allow FP32 (quantization.allow)") from e
    if not out_path.is_file() or out_path.stat().st_size == 0:
        raise BuildError(f"onnxruntime reported success but wrote no file at {out_path}",
                         hint="check free disk space in the artifact store (EDGECTL_CACHE_DIR)")
    if progress:
        progress("quantize", 1, 1)

"""OpenVINO IR tensor models (the ``[openvino]`` extra), imported only when a model is loaded; served over KServe v2.

An artifact is a folder holding ``model.xml`` + ``model.bin`` (edgectl.builders.openvino:build_openvino_tensor). The
device comes from ``runtime_options.device`` (CPU by default; GPU, GPU.1, NPU, AUTO:GPU,CPU ... passed through to
OpenVINO); a few OpenVINO properties may be set by name (``OPENVINO_PROPERTIES``), everything else is refused.
``cache_dir`` (OpenVINO's compiled-model cache) is a name, not a path: the cache goes to ``<agent root>/cache/<name>``
so no deployment makes OpenVINO write outside the agent's root.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes.base import Runtime, RuntimeCapabilities, TensorSpec, import_library
from edgectl_agent.runtimes.tensor import NUMPY_TO_KSERVE, ArrayTensorModel
from edgectl_agent.tree import TreeError, check_relpath

PLATFORM = "openvino_ir"
MODEL_XML = "model.xml"
DEFAULT_DEVICE = "CPU"
# runtime_options key -> OpenVINO property name (the value is passed as given).
OPENVINO_PROPERTIES = {"performance_hint": "PERFORMANCE_HINT", "inference_precision": "INFERENCE_PRECISION_HINT",
                       "num_streams": "NUM_STREAMS", "cache_dir": "CACHE_DIR"}
_DEVICE = re.compile(r"[A-Z][A-Z0-9_]*(\.[0-9]+)?(:[A-Z0-9_.,]+)?")  # CPU, GPU.1, NPU, AUTO:GPU,CPU, HETERO:...


def cache_root(artifact_path: Path) -> Path:
    """``<agent root>/cache``: artifacts are ``<root>/artifacts/<hex>`` and folders ``<root>/trees/<hex>``."""
    return Path(artifact_path).parent.parent / "cache"


def openvino_config(desired: DesiredDeployment, properties: Mapping[str, str] = OPENVINO_PROPERTIES, *,
                    cache: Path | None = None) -> tuple[str, dict[str, Any]]:
    """``(device, OpenVINO properties)`` for a deployment (pure; unit-tested). ``threads`` becomes
    INFERENCE_NUM_THREADS on CPU, the only device it means something to; ``cache_dir`` a folder below ``cache``."""
    options = dict(desired.runtime_options)
    device = options.pop("device", DEFAULT_DEVICE)
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise RuntimeFailure(f"deployment '{desired.name}': runtime_options.device {device!r} is not an OpenVINO "
                             f"device name", hint="use e.g. CPU, GPU, GPU.1, NPU or AUTO:GPU,CPU")
    unknown = sorted(set(options) - set(properties))
    if unknown:
        raise RuntimeFailure(f"deployment '{desired.name}': unknown openvino runtime_options {unknown}",
                             hint=f"use only: {', '.join(sorted({'device', *properties}))}")
    config: dict[str, Any] = {properties[k]: v for k, v in options.items()}
    if "cache_dir" in options:
        name = options["cache_dir"]
        try:
            if not isinstance(name, str) or cache is None:
                raise TreeError(f"{name!r} is not a folder name")
            check_relpath(name)
        except TreeError as e:
            raise RuntimeFailure(f"deployment '{desired.name}': runtime_options.cache_dir {str(name)[:80]!r} is "
                                 f"refused: {e}", hint="give a folder name such as 'ov-cache': the cache is kept "
                                 "under the agent's root (<root>/cache/<name>), never elsewhere") from None
        config["CACHE_DIR"] = str(cache / name)
    if desired.threads is not None and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = desired.threads
    return device, config


def tensor_config(desired: DesiredDeployment, *, cache: Path | None = None) -> tuple[str, dict[str, Any]]:
    """``openvino_config`` for a tensor model: an FP32/FP16 artifact computes in f32 on the CPU unless the deployment
    sets ``inference_precision``. OpenVINO's CPU plugin otherwise picks bf16 on CPUs that have it (AVX512-BF16,
    AMX), which silently moves outputs by ~0.3% - not what a full-precision artifact promises."""
    device, config = openvino_config(desired, cache=cache)
    if device == "CPU" and desired.artifact.quant in ("FP32", "FP16"):
        config.setdefault("INFERENCE_PRECISION_HINT", "f32")
    return device, config


def load_failure(library: str, desired: DesiredDeployment, device: str, error: Exception, core: Any) -> RuntimeFailure:
    """A load error that names the devices this machine has, since a wrong device is the usual cause."""
    try:
        devices = ", ".join(core.available_devices) or "none"
    except Exception:  # noqa: BLE001  (the error itself matters more than the device list)
        devices = "unknown"
    return RuntimeFailure(f"{library} could not load {desired.artifact.digest} ({desired.artifact.model} "
                          f"{desired.artifact.quant}) on device {device} for deployment '{desired.name}': {error}",
                          hint=f"devices here: {devices}; set runtime_options.device to one of them, and check the "
                               f"artifact was built by this OpenVINO version's tools; see the agent log")


def _spec(port: Any) -> TensorSpec:
    name = port.get_any_name()
    dtype = port.get_element_type().to_dtype()
    datatype = NUMPY_TO_KSERVE.get(getattr(dtype, "name", str(dtype)))
    if datatype is None or datatype == "BYTES":
        raise RuntimeFailure(f"OpenVINO input/output '{name}' has type {port.get_element_type()}, which this "
                             f"runtime cannot carry over KServe v2",
                             hint="export the model with numeric or bool tensor inputs and outputs")
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    return TensorSpec(name=name, datatype=datatype, shape=shape)


class OpenVinoRuntime(Runtime):
    name = "openvino"
    capabilities = RuntimeCapabilities(name)

    def load(self, path: Path, desired: DesiredDeployment) -> OpenVinoModel:
        device, config = tensor_config(desired, cache=cache_root(path))
        xml = Path(path) / MODEL_XML
        if not xml.is_file():
            raise RuntimeFailure(f"artifact {desired.artifact.digest} has no {MODEL_XML}",
                                 hint="build the model with edgectl as format openvino (kind tensor): a folder of "
                                      "model.xml and model.bin")
        ov = import_library(self.name, "openvino")
        core = ov.Core()
        try:
            compiled = core.compile_model(str(xml), device, config)
        except Exception as e:  # noqa: BLE001  (OpenVINO raises RuntimeError and its own exception classes)
            raise load_failure("openvino", desired, device, e, core) from e
        return OpenVinoModel(compiled, name=desired.name)


class OpenVinoModel(ArrayTensorModel):
    platform = PLATFORM
    library = "openvino"

    def __init__(self, compiled: Any, *, name: str) -> None:
        super().__init__(compiled, name=name)
        self.inputs = tuple(_spec(p) for p in compiled.inputs)
        self.outputs = tuple(_spec(p) for p in compiled.outputs)

    def _execute(self, compiled: Any, feeds: dict[str, Any], names: list[str]) -> list[Any]:
        request = compiled.create_infer_request()  # one per call: infer requests are not shared across threads
        results = request.infer(feeds)
        return [results[compiled.output(n)].copy() for n in names]


__all__ = ["OpenVinoRuntime", "OpenVinoModel", "openvino_config", "tensor_config", "PLATFORM"]

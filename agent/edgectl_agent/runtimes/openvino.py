"""OpenVINO IR tensor models (the ``[openvino]`` extra), imported only when a model is loaded; served over KServe v2.

An artifact is a folder holding ``model.xml`` + ``model.bin`` (edgectl.build.openvino:build_openvino_tensor). The
device comes from ``runtime_options.device`` (CPU by default; GPU, GPU.1, NPU, AUTO:GPU,CPU ... passed through to
OpenVINO); a few OpenVINO properties may be set by name (``OPENVINO_PROPERTIES``), everything else is refused.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import BadRequest, ModelUnavailable, RuntimeFailure
from edgectl_agent.runtimes.base import Runtime, RuntimeCapabilities, TensorModel, TensorSpec
from edgectl_agent.runtimes.onnxruntime import KSERVE_TO_NUMPY, NUMPY_TO_KSERVE

INSTALL_HINT = "pip install 'edgectl-agent[openvino]'"
PLATFORM = "openvino_ir"
MODEL_XML = "model.xml"
DEFAULT_DEVICE = "CPU"
# runtime_options key -> OpenVINO property name (the value is passed as given).
OPENVINO_PROPERTIES = {"performance_hint": "PERFORMANCE_HINT", "inference_precision": "INFERENCE_PRECISION_HINT",
                       "num_streams": "NUM_STREAMS", "cache_dir": "CACHE_DIR"}
_DEVICE = re.compile(r"[A-Z][A-Z0-9_]*(\.[0-9]+)?(:[A-Z0-9_.,]+)?")  # CPU, GPU.1, NPU, AUTO:GPU,CPU, HETERO:...


def openvino_config(desired: DesiredDeployment, properties: Mapping[str, str] = OPENVINO_PROPERTIES,
                    ) -> tuple[str, dict[str, Any]]:
    """``(device, OpenVINO properties)`` for a deployment (pure; unit-tested). ``threads`` becomes
    INFERENCE_NUM_THREADS on CPU, the only device it means something to."""
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
    if desired.threads is not None and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = desired.threads
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
    capabilities = RuntimeCapabilities(formats=("openvino",), chat=False, completion=False, embeddings=False,
                                       streaming=False, extra="openvino")

    def load(self, path: Path, desired: DesiredDeployment) -> OpenVinoModel:
        device, config = openvino_config(desired)
        xml = Path(path) / MODEL_XML
        if not xml.is_file():
            raise RuntimeFailure(f"artifact {desired.artifact.digest} has no {MODEL_XML}",
                                 hint="build the model with edgectl as format openvino (kind tensor): a folder of "
                                      "model.xml and model.bin")
        try:
            import openvino as ov
        except ImportError as e:
            raise RuntimeFailure(f"the openvino runtime is not installed on this device ({e})",
                                 hint=f"install it: {INSTALL_HINT}", status=422) from e
        core = ov.Core()
        try:
            compiled = core.compile_model(str(xml), device, config)
        except Exception as e:  # noqa: BLE001  (OpenVINO raises RuntimeError and its own exception classes)
            raise load_failure("openvino", desired, device, e, core) from e
        return OpenVinoModel(compiled, name=desired.name)


class OpenVinoModel(TensorModel):
    platform = PLATFORM

    def __init__(self, compiled: Any, *, name: str) -> None:
        self._compiled = compiled
        self.name = name
        self.inputs = tuple(_spec(p) for p in compiled.inputs)
        self.outputs = tuple(_spec(p) for p in compiled.outputs)
        self._lock = threading.Lock()  # guards close against running inferences (each has its own request)
        self._running = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False

    def _run(self, feeds: dict[str, Any], names: list[str]) -> list[Any]:
        with self._lock:
            if self._closed:
                raise ModelUnavailable(f"model '{self.name}' was unloaded while this request waited",
                                       hint="retry the request; it is answered by the model now active")
            self._running += 1
            compiled = self._compiled
        try:
            request = compiled.create_infer_request()  # one per call: infer requests are not shared across threads
            results = request.infer(feeds)
            return [results[compiled.output(n)].copy() for n in names]
        except Exception as e:  # noqa: BLE001  (OpenVINO's errors carry the reason)
            raise BadRequest(f"openvino rejected the request: {e}",
                             hint="check the input shapes and values against GET /v2/models/" + self.name) from e
        finally:
            with self._lock:
                self._running -= 1
                self._idle.notify_all()

    def infer(self, inputs, outputs=None):
        import numpy as np

        feeds = {}
        for name, (datatype, shape, data) in inputs.items():
            try:
                feeds[name] = np.asarray(data, dtype=KSERVE_TO_NUMPY[datatype]).reshape(shape)
            except (ValueError, TypeError, OverflowError) as e:
                raise BadRequest(f"input '{name}': data does not fit {datatype}: {e}",
                                 hint=f"send {datatype} values") from e
        names = list(outputs) if outputs else [o.name for o in self.outputs]
        result = []
        for name, arr in zip(names, self._run(feeds, names)):
            datatype = NUMPY_TO_KSERVE[arr.dtype.name]
            result.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                           "data": arr.reshape(-1).tolist()})
        return result

    def smoke(self, prompt: str, max_tokens: int) -> None:
        import numpy as np

        feeds = {s.name: np.zeros([d if d >= 0 else 1 for d in s.shape], dtype=KSERVE_TO_NUMPY[s.datatype])
                 for s in self.inputs}
        try:
            outs = self._run(feeds, [o.name for o in self.outputs])
        except BadRequest as e:
            raise RuntimeFailure(f"openvino smoke inference on zeros failed: {e.message}",
                                 hint="the model loads but does not run on zeros of its declared input shapes "
                                      "(dynamic dims = 1); check it with openvino before pushing") from e
        if len(outs) != len(self.outputs):
            raise RuntimeFailure(f"openvino smoke inference returned {len(outs)} outputs, the model declares "
                                 f"{len(self.outputs)}", hint="rebuild the model")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            while self._running:
                self._idle.wait()
            self._compiled = None


__all__ = ["OpenVinoRuntime", "OpenVinoModel", "openvino_config", "INSTALL_HINT", "PLATFORM"]

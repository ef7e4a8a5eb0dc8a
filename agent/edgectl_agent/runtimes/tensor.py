"""What the numpy-backed tensor runtimes (onnxruntime, OpenVINO) share: KServe v2 <-> numpy conversion, the smoke
inference on zeros, and closing a model only once the inferences running on it are done."""

from __future__ import annotations

import threading
from typing import Any

from edgectl_agent.errors import BadRequest, ModelUnavailable, RuntimeFailure
from edgectl_agent.runtimes.base import TensorModel

# KServe v2 datatype -> numpy dtype name
KSERVE_TO_NUMPY = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "INT8": "int8",
    "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
    "BYTES": "object",
}
NUMPY_TO_KSERVE = {v: k for k, v in KSERVE_TO_NUMPY.items()}


class ArrayTensorModel(TensorModel):
    """A tensor model whose library takes and returns numpy arrays. Subclasses set ``library`` (for messages) and
    implement ``_execute(handle, feeds, names)`` on the handle given to ``__init__``; inferences run in parallel."""

    library = "the runtime"

    def __init__(self, handle: Any, *, name: str) -> None:
        self._handle = handle
        self.name = name
        self._lock = threading.Lock()  # guards close against running inferences
        self._running = 0
        self._idle = threading.Condition(self._lock)
        self._closed = False

    def _execute(self, handle: Any, feeds: dict[str, Any], names: list[str]) -> list[Any]:
        raise NotImplementedError

    def _run(self, feeds: dict[str, Any], names: list[str]) -> list[Any]:
        with self._lock:
            if self._closed:
                raise ModelUnavailable(f"model '{self.name}' was unloaded while this request waited",
                                       hint="retry the request; it is answered by the model now active")
            self._running += 1
            handle = self._handle
        try:
            return self._execute(handle, feeds, names)
        except Exception as e:  # noqa: BLE001 - the library's errors carry the reason
            raise BadRequest(f"{self.library} rejected the request: {e}",
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
        by_name = {o.name: o for o in self.outputs}
        result = []
        for name, arr in zip(names, self._run(feeds, names)):
            arr = np.asarray(arr)
            datatype = NUMPY_TO_KSERVE.get(arr.dtype.name, by_name[name].datatype)
            flat = arr.reshape(-1)
            data = [x.decode() if isinstance(x, bytes) else str(x) for x in flat] if datatype == "BYTES" \
                else flat.tolist()
            result.append({"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data})
        return result

    def smoke(self, prompt: str, max_tokens: int) -> None:
        import numpy as np

        feeds = {}
        for spec in self.inputs:
            shape = [d if d >= 0 else 1 for d in spec.shape]
            feeds[spec.name] = np.full(shape, "", dtype=object) if spec.datatype == "BYTES" else \
                np.zeros(shape, dtype=KSERVE_TO_NUMPY[spec.datatype])
        try:
            outs = self._run(feeds, [o.name for o in self.outputs])
        except BadRequest as e:
            raise RuntimeFailure(f"{self.library} smoke inference on zeros failed: {e.message}",
                                 hint="the model loads but does not run on zeros of its declared input shapes "
                                      f"(dynamic dims = 1); check it with {self.library} before pushing") from e
        if len(outs) != len(self.outputs):
            raise RuntimeFailure(f"{self.library} smoke inference returned {len(outs)} outputs, the model declares "
                                 f"{len(self.outputs)}", hint="rebuild the model")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            while self._running:
                self._idle.wait()
            self._handle = None


__all__ = ["ArrayTensorModel", "KSERVE_TO_NUMPY", "NUMPY_TO_KSERVE"]

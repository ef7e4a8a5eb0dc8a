"""ONNX tensor models through onnxruntime (the ``[onnx]`` extra), imported only when a model is loaded.

An artifact is one ``.onnx`` file. Before onnxruntime sees it, the graph is read without its external data and
every tensor stored outside the file must lie inside the artifact directory (no absolute path, no ``..``, no
symlink out): a model must not make the agent read arbitrary files of the device. Served over KServe v2 (/v2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes.base import Runtime, RuntimeCapabilities, TensorSpec, import_library
from edgectl_agent.runtimes.tensor import KSERVE_TO_NUMPY, NUMPY_TO_KSERVE, ArrayTensorModel

log = logging.getLogger(__name__)

PLATFORM = "onnxruntime_onnx"
ONNX_OPTIONS = frozenset({"inter_op_threads", "graph_optimization_level"})
OPT_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}

# onnxruntime type string -> KServe v2 datatype
ORT_TO_KSERVE = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16", "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64", "tensor(int8)": "INT8", "tensor(int16)": "INT16", "tensor(int32)": "INT32",
    "tensor(int64)": "INT64", "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _location_escapes(location: str, base: Path) -> bool:
    if not location or "\x00" in location:
        return True
    for flavour in (PurePosixPath, PureWindowsPath):
        p = flavour(location)
        if p.is_absolute() or p.anchor or ".." in p.parts:
            return True
    resolved = (base / location).resolve()
    return resolved != base.resolve() and base.resolve() not in resolved.parents


def _all_tensors(graph) -> Iterator[Any]:
    """Every TensorProto of a graph, its nodes' attributes and subgraphs (If/Loop/Scan bodies), recursively."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def check_external_data(path: Path) -> list[str]:
    """The external-data locations of the model at ``path`` (all inside its directory); RuntimeFailure if one
    escapes it or the file is not an ONNX model."""
    onnx = import_library("onnxruntime", "onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 — protobuf raises DecodeError and friends
        raise RuntimeFailure(f"{path.name} is not a readable ONNX model: {type(e).__name__}: {e}",
                             hint="upload a .onnx file (onnx.save) as the artifact") from e
    graphs = [model.graph] + [f for f in getattr(model, "functions", [])]
    locations = []
    for g in graphs:
        tensors = _all_tensors(g) if hasattr(g, "initializer") else (
            a.t for n in g.node for a in n.attribute if a.HasField("t"))
        for t in tensors:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((e.value for e in t.external_data if e.key == "location"), "")
            if _location_escapes(location, path.parent):
                raise RuntimeFailure(
                    f"ONNX model refused: tensor '{t.name}' keeps its data at external location {location!r}, "
                    f"outside the artifact directory",
                    hint="save the model as a single file (onnx.save(model, path, save_as_external_data=False)) "
                         "and push it again")
            locations.append(location)
    return locations


def _spec(arg) -> TensorSpec:
    datatype = ORT_TO_KSERVE.get(arg.type)
    if datatype is None:
        raise RuntimeFailure(f"ONNX input/output '{arg.name}' has type {arg.type}, which KServe v2 cannot carry",
                             hint="export the model with tensor inputs and outputs of numeric, bool or string type")
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
    return TensorSpec(name=arg.name, datatype=datatype, shape=shape)


def session_options(desired: DesiredDeployment, ort: Any) -> Any:
    unknown = sorted(set(desired.runtime_options) - ONNX_OPTIONS)
    if unknown:
        raise RuntimeFailure(f"deployment '{desired.name}': unknown onnxruntime runtime_options {unknown}",
                             hint=f"use only: {', '.join(sorted(ONNX_OPTIONS))}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = desired.threads or 0
    so.inter_op_num_threads = int(desired.runtime_options.get("inter_op_threads", 1))
    level = desired.runtime_options.get("graph_optimization_level")
    if level is not None:
        if level not in OPT_LEVELS:
            raise RuntimeFailure(f"deployment '{desired.name}': graph_optimization_level {level!r} is unknown",
                                 hint=f"use one of: {', '.join(OPT_LEVELS)}")
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[level])
    return so


class OnnxRuntime(Runtime):
    name = "onnxruntime"
    capabilities = RuntimeCapabilities(name)

    def load(self, path: Path, desired: DesiredDeployment) -> OnnxModel:
        ort = import_library(self.name, "onnxruntime")
        options = session_options(desired, ort)
        check_external_data(path)
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 — onnxruntime raises its own Fail/InvalidGraph/... classes
            raise RuntimeFailure(f"onnxruntime could not load {desired.artifact.digest} ({desired.artifact.model}) "
                                 f"for deployment '{desired.name}': {e}",
                                 hint="check the artifact is a valid ONNX model for this onnxruntime version "
                                      f"({ort.__version__}); see the agent log") from e
        return OnnxModel(session, name=desired.name)


class OnnxModel(ArrayTensorModel):
    platform = PLATFORM
    library = "onnxruntime"

    def __init__(self, session: Any, *, name: str) -> None:
        super().__init__(session, name=name)
        self.inputs = tuple(_spec(a) for a in session.get_inputs())
        self.outputs = tuple(_spec(a) for a in session.get_outputs())

    def _execute(self, session: Any, feeds: dict[str, Any], names: list[str]) -> list[Any]:
        return session.run(names, feeds)


__all__ = ["OnnxRuntime", "OnnxModel", "check_external_data", "PLATFORM", "KSERVE_TO_NUMPY",
           "NUMPY_TO_KSERVE"]

"""Tiny ONNX graphs built with onnx.helper, for the KServe v2 / onnxruntime tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

W = (np.arange(12, dtype=np.float32).reshape(4, 3) / 7.0 - 0.5).astype(np.float32)
B = np.array([0.25, -1.0, 3.5], dtype=np.float32)


def linear_model_bytes(*, external_location: str | None = None) -> bytes:
    """Y = MatMul(X[?, 4], W[4, 3]) + B, FP32, dynamic batch. ``external_location`` marks W as stored outside
    the file at that location (for the escape checks; the data is not written)."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])
    w = numpy_helper.from_array(W, "W")
    if external_location is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external_location), ("offset", "0"), ("length", str(W.nbytes))):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
    b = numpy_helper.from_array(B, "B")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["XW"]),
                               helper.make_node("Add", ["XW", "B"], ["Y"])], "linear", [x], [y], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def write_linear_model(path: Path) -> Path:
    path.write_bytes(linear_model_bytes())
    return path


def expected(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) @ W + B

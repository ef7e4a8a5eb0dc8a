"""OpenVINO tensor models end to end: a tiny ONNX graph -> the real builder (openvino.convert_model, FP16 constants
or NNCF INT8 post-training quantization) -> a real agent's openvino runtime -> KServe v2 infer over HTTP, compared
with onnxruntime running the FP32 source."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.conftest import build_from, serve_artifact

pytestmark = pytest.mark.integration
pytest.importorskip("openvino")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(0)
W1 = (RNG.standard_normal((64, 128)) / 8).astype(np.float32)
B1 = RNG.standard_normal(128).astype(np.float32) / 8
W2 = (RNG.standard_normal((128, 16)) / 8).astype(np.float32)
# Relative L2 error against onnxruntime FP32: FP16 constants round at 2^-11 relative (measured 3e-4), so 1e-3; INT8
# (7-bit per-channel weights, per-tensor activations calibrated on generated N(0, 1) samples) measures 2.2% on an
# AVX2 CPU, so 5%.
TOLERANCE = {"FP32": 1e-5, "FP16": 1e-3, "INT8": 0.05}


def write_mlp(path: Path) -> Path:
    """Y = relu(X @ W1 + B1) @ W2, X: FP32 [batch, 64]."""
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 16])
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h0"]), helper.make_node("Add", ["h0", "B1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]), helper.make_node("MatMul", ["h2", "W2"], ["Y"])]
    inits = [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(B1, "B1"), numpy_helper.from_array(W2, "W2")]
    model = helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("quant", ["FP16", "INT8"])
def test_onnx_to_ir_serves_kserve(tmp_path, start_agent, quant):
    src = write_mlp(tmp_path / "mlp.onnx")
    artifact, store = build_from(tmp_path, {"type": "onnx", "path": str(src), "precision": "FP32"},
                                 format="openvino", quant=quant, kind="tensor", task="tensor", name="mlp")
    folder = store.local_path(artifact)
    assert {p.name for p in folder.iterdir()} == {"model.xml", "model.bin"}
    xml = (folder / "model.xml").read_bytes()
    assert re.search(rb'<net name="[^"]*" version="11"', xml)
    if quant == "FP16":
        assert b'element_type="f16"' in xml
    else:
        assert b"FakeQuantize" in xml or b'element_type="i8"' in xml  # NNCF inserted quantization
    weights = W1.nbytes + B1.nbytes + W2.nbytes
    assert (folder / "model.bin").stat().st_size < weights * (0.55 if quant == "FP16" else 0.3)

    agent = start_agent()
    serve_artifact(agent, store, artifact, name="mlp", kind="tensor")
    meta = httpx.get(f"{agent.url}/v2/models/mlp", timeout=10).json()
    assert meta["platform"] == "openvino_ir" and meta["inputs"] == [{"name": "X", "datatype": "FP32",
                                                                    "shape": [-1, 64]}], meta

    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    url = f"{agent.url}/v2/models/mlp/infer"
    r = httpx.post(url, json={"inputs": [{"name": "X", "shape": [64, 64], "datatype": "FP32",
                                          "data": x.ravel().tolist()}]}, timeout=30)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["name"] == "Y" and out["shape"] == [64, 16] and out["datatype"] == "FP32"
    got = np.array(out["data"], dtype=np.float32).reshape(64, 16)
    assert rel_err(got, want) < TOLERANCE[quant], rel_err(got, want)

    bad_shape = httpx.post(url, json={"inputs": [{"name": "X", "shape": [4, 63], "datatype": "FP32",
                                                  "data": [0.0] * 252}]}, timeout=30)
    assert bad_shape.status_code == 400 and "FP32 [-1, 64]" in bad_shape.json()["error"], bad_shape.text
    bad_type = httpx.post(url, json={"inputs": [{"name": "X", "shape": [1, 64], "datatype": "INT64",
                                                 "data": [0] * 64}]}, timeout=30)
    assert bad_type.status_code == 400 and "FP32" in bad_type.json()["error"], bad_type.text
    again = httpx.post(url, json={"inputs": [{"name": "X", "shape": [64, 64], "datatype": "FP32",
                                              "data": x.ravel().tolist()}]}, timeout=30)
    assert again.status_code == 200 and again.json()["outputs"][0]["data"] == out["data"]


def test_fp32_ir_matches_onnxruntime(tmp_path):
    import openvino as ov

    src = write_mlp(tmp_path / "mlp.onnx")
    artifact, store = build_from(tmp_path, {"type": "onnx", "path": str(src), "precision": "FP32"},
                                 format="openvino", quant="FP32", kind="tensor", task="tensor", name="mlp")
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    # f32 as the agent asks for it (tensor_config): the CPU plugin would compute in bf16 where the CPU has it
    compiled = ov.Core().compile_model(str(store.local_path(artifact) / "model.xml"), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"X": x})[0]
    assert rel_err(compiled({"X": x})[0], want) < TOLERANCE["FP32"]

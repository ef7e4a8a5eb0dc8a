"""Tensor models, the calibrated and 4-bit quantizations: ONNX source -> INT8_STATIC (generated or user samples) /
INT4 (MatMulNBits, block 32) with the real onnxruntime quantizers -> a real agent -> KServe v2 infer, compared with
the FP32 graph's own output."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.integration.conftest import build_from, serve_artifact
from tests.integration.test_tensor_onnx import B, W, write_model

pytestmark = pytest.mark.integration
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# Relative L2 error against FP32 on standard normal inputs. Measured: INT8_STATIC 0.037, INT4 0.081.
TOLERANCE = {"INT8_STATIC": 0.06, "INT4": 0.2}


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def infer(agent, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = httpx.post(f"{agent.url}/v2/models/tiny/infer", json=body, headers=agent.auth, timeout=30)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.mark.parametrize("quant, ops", [("INT8_STATIC", {"QuantizeLinear", "DequantizeLinear"}),
                                        ("INT4", {"MatMulNBits"})])
def test_quantized_tensor_model_serves_within_tolerance(tmp_path, start_agent, quant, ops):
    src = write_model(tmp_path / "linear.onnx")
    art, store = build_from(tmp_path, {"type": "onnx", "path": str(src), "precision": "FP32"}, format="onnx",
                            quant=quant, kind="tensor", task="tensor")
    graph = onnx.load(str(store.path(art.digest)))
    assert ops <= {n.op_type for n in graph.graph.node}
    assert art.size_bytes < src.stat().st_size / 2

    agent = start_agent()
    serve_artifact(agent, store, art, kind="tensor")
    x = np.random.default_rng(7).standard_normal((4, 64)).astype(np.float32)
    err = rel_error(infer(agent, x), x @ W + B)
    assert err < TOLERANCE[quant]


def test_static_int8_calibrates_on_user_samples(tmp_path):
    """Samples from a narrow range give a different (finer) graph than generated ones, and land in the cache key."""
    src = write_model(tmp_path / "linear.onnx")
    samples = tmp_path / "samples.npz"
    rng = np.random.default_rng(3)
    np.savez(samples, X=(rng.standard_normal((32, 64)) * 0.1).astype(np.float32))
    source = {"type": "onnx", "path": str(src), "precision": "FP32"}
    user, store = build_from(tmp_path / "a", source, format="onnx", quant="INT8_STATIC", kind="tensor", task="tensor",
                             calibration=str(samples))
    generated, _ = build_from(tmp_path / "b", source, format="onnx", quant="INT8_STATIC", kind="tensor",
                              task="tensor")
    assert user.digest != generated.digest and user.cache_key != generated.cache_key
    x = (rng.standard_normal((8, 64)) * 0.1).astype(np.float32)
    sess = ort.InferenceSession(str(store.path(user.digest)), providers=["CPUExecutionProvider"])
    assert rel_error(sess.run(None, {"X": x})[0], x @ W + B) < TOLERANCE["INT8_STATIC"]

"""Tensor models end to end: ONNX source -> INT8 by dynamic quantization -> `edgectl apply` -> KServe v2 infer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.test_apply_local import edgectl, free_port, home  # noqa: F401  (home is a fixture)

pytestmark = pytest.mark.integration
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(0)
W = RNG.standard_normal((64, 64)).astype(np.float32)
B = RNG.standard_normal(64).astype(np.float32)

MANIFEST = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-linear}}
spec:
  task: tensor
  parameters: 4160
  sources:
    - {{type: onnx, path: linear.onnx, precision: FP32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: local}}
spec:
  devices:
    - name: this-machine
      profile: auto
      transport: {{type: local}}
      agent: {{port: {port}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: linear}}
spec:
  model: tiny-linear
  selector: {{devices: [this-machine]}}
  quantization: {{format: onnx}}   # this machine also has OpenVINO, which the auto profile would put first
"""


def write_model(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 64])
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["XW"]),
                               helper.make_node("Add", ["XW", "B"], ["Y"])], "linear", [x], [y],
                              [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def close(got: np.ndarray, want: np.ndarray) -> bool:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want)) < 0.05


def test_build_int8(tmp_path):
    from edgectl.builders import ArtifactStore, build
    from edgectl.spec import Model, Recipe

    src = write_model(tmp_path / "linear.onnx")
    model = Model.model_validate({"apiVersion": "edgectl.dev/v1alpha1", "kind": "Model",
                                  "metadata": {"name": "tiny-linear"},
                                  "spec": {"task": "tensor", "parameters": 4160,
                                           "sources": [{"type": "onnx", "path": str(src), "precision": "FP32"}]}})
    store = ArtifactStore(tmp_path / "store")
    recipe = Recipe(model="tiny-linear", format="onnx", kind="tensor", quant="INT8", source_precision="FP32")
    art, fresh = build(recipe, model, store)
    assert fresh and art.format == "onnx" and art.quality is None
    assert art.size_bytes < src.stat().st_size / 2
    ops = {n.op_type for n in onnx.load(str(store.path(art.digest))).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, ops
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    sess = ort.InferenceSession(str(store.path(art.digest)), providers=["CPUExecutionProvider"])
    assert close(sess.run(None, {"X": x})[0], x @ W + B)
    again, fresh2 = build(recipe, model, store)
    assert not fresh2 and again.digest == art.digest


def test_apply_serves_kserve(tmp_path, home):  # noqa: F811
    import httpx

    mdir = tmp_path / "manifests"
    mdir.mkdir()
    write_model(mdir / "linear.onnx")
    port = free_port()
    (mdir / "fleet.yaml").write_text(MANIFEST.format(port=port))

    plan = json.loads(edgectl("plan", str(mdir), "--json", env=home).stdout)
    (dep,) = plan["devices"][0]["deployments"]
    assert dep["chosen"]["recipe"]["format"] == "onnx" and dep["chosen"]["recipe"]["quant"] == "INT8"

    edgectl("apply", str(mdir), env=home)
    x = RNG.standard_normal((2, 64)).astype(np.float32)
    body = {"inputs": [{"name": "X", "shape": [2, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = httpx.post(f"http://127.0.0.1:{port}/v2/models/linear/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
    assert close(got, x @ W + B)

    assert "no changes" in edgectl("apply", str(mdir), env=home).stdout

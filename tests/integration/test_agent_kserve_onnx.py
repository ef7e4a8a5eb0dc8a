"""A real `edgectl-agent serve` process with real onnxruntime: a tiny ONNX graph pushed through the control API,
then one KServe v2 inference over HTTP; a bad shape is a 400 and the server keeps serving."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest

from edgectl_agent.api import CONTROL_PREFIX

pytestmark = pytest.mark.integration
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tests.unit.agent.tiny_onnx import expected, linear_model_bytes  # noqa: E402


def test_real_agent_serves_kserve_v2_infer(start_agent):
    agent = start_agent()
    data = linear_model_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.put(f"{agent.url}{CONTROL_PREFIX}/artifacts/{digest}", params={"offset": 0}, content=data,
                  headers={**agent.auth, "X-Edgectl-Size": str(len(data))}, timeout=30)
    assert r.status_code == 200 and r.json()["complete"], r.text
    desired = {"name": "lin", "runtime": "onnxruntime", "threads": 1,
               "artifact": {"digest": digest, "format": "onnx", "quant": "F32", "size_bytes": len(data),
                            "model": "tiny-linear"}}
    r = httpx.put(f"{agent.url}{CONTROL_PREFIX}/deployments/lin", json=desired, headers=agent.auth, timeout=120)
    assert r.status_code == 200 and r.json()["state"] == "serving", r.text

    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    url = f"{agent.url}/v2/models/lin/infer"
    r = httpx.post(url, json={"inputs": [{"name": "X", "shape": [3, 4], "datatype": "FP32",
                                          "data": x.reshape(-1).tolist()}]}, timeout=30)
    assert r.status_code == 200, r.text
    [out] = r.json()["outputs"]
    assert out["name"] == "Y" and out["shape"] == [3, 3] and r.json()["model_version"] == digest
    np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(3, 3), expected(x), atol=1e-5)

    bad = httpx.post(url, json={"inputs": [{"name": "X", "shape": [3, 5], "datatype": "FP32",
                                            "data": [0.0] * 15}]}, timeout=30)
    assert bad.status_code == 400 and "FP32 [-1, 4]" in bad.json()["error"], bad.text
    assert httpx.get(f"{agent.url}/v2/models/lin/ready", timeout=10).json()["ready"] is True
    assert httpx.get(f"{agent.url}/v2/health/ready", timeout=10).status_code == 200

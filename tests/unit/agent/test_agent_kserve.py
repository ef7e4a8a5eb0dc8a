"""KServe v2 (/v2) on the onnxruntime runtime: a tiny ONNX graph uploaded through the control API, then inferred."""

from __future__ import annotations

import numpy as np
import pytest

from edgectl_agent.api import CONTROL_PREFIX, ArtifactRef, DesiredDeployment

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from tests.unit.agent.tiny_onnx import expected, linear_model_bytes  # noqa: E402

MODEL = linear_model_bytes()


def onnx_desired(agent, name: str, data: bytes, **kw) -> dict:
    return {"name": name, "runtime": "onnxruntime", "threads": 1,
            "artifact": {"digest": agent.digest_of(data), "format": "onnx", "quant": "F32", "size_bytes": len(data),
                         "model": "tiny-linear"}, **kw}


def deploy(agent, name: str = "lin", data: bytes = MODEL, **kw):
    agent.upload(data)
    return agent.client.put(f"{CONTROL_PREFIX}/deployments/{name}", json=onnx_desired(agent, name, data, **kw),
                            headers=agent.auth)


def infer(agent, body: dict, name: str = "lin"):
    return agent.client.post(f"/v2/models/{name}/infer", json=body, headers=agent.auth)


def x_tensor(x: np.ndarray, **over) -> dict:
    return {"name": "X", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist(), **over}


@pytest.fixture
def served(agent):
    r = deploy(agent)
    assert r.status_code == 200 and r.json()["state"] == "serving", r.text
    return agent


def test_wire_schemas_accept_onnx_and_stay_backwards_compatible():
    d = DesiredDeployment(name="lin", artifact=ArtifactRef(digest="sha256:" + "a" * 64, format="onnx", quant="F32",
                                                           size_bytes=1, model="m"), runtime="onnxruntime")
    assert d.runtime == "onnxruntime" and d.artifact.format == "onnx"
    old = DesiredDeployment(name="chat", artifact=ArtifactRef(digest="sha256:" + "a" * 64, format="gguf",
                                                              quant="Q4_K_M", size_bytes=1, model="m"))
    assert old.runtime == "llamacpp"


def test_infer_matches_numpy(served):
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    r = infer(served, {"id": "req-1", "inputs": [x_tensor(x)]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "lin" and body["id"] == "req-1"
    assert r.headers["X-Edgectl-Artifact"] == served.digest_of(MODEL) == body["model_version"]
    [out] = body["outputs"]
    assert out["name"] == "Y" and out["datatype"] == "FP32" and out["shape"] == [5, 3]
    np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(5, 3), expected(x), atol=1e-5)
    # nested data is accepted too; a requested output subset by name
    r = infer(served, {"inputs": [x_tensor(x[:1], data=x[:1].tolist())], "outputs": [{"name": "Y"}]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected(x[:1]).reshape(-1), atol=1e-5)


@pytest.mark.parametrize("tensor, words", [
    ({"name": "X", "shape": [2, 5], "datatype": "FP32", "data": [0.0] * 10}, ["shape [2, 5]", "FP32 [-1, 4]"]),
    ({"name": "X", "shape": [2], "datatype": "FP32", "data": [0.0] * 2}, ["shape [2]", "FP32 [-1, 4]"]),
    ({"name": "X", "shape": [1, 4], "datatype": "INT64", "data": [0] * 4}, ["INT64", "FP32 [-1, 4]"]),
    ({"name": "Z", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4}, ["'X': FP32 [-1, 4]"]),
    ({"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 7}, ["7 values", "needs 8", "FP32 [-1, 4]"]),
    ({"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [0.0, "a", 1.0, 2.0]}, ["data[1]", "FP32 [-1, 4]"]),
    ({"name": "X", "shape": [1, 4], "datatype": "FP32"}, ["no \"data\"", "FP32 [-1, 4]"]),
])
def test_bad_requests_are_400_naming_the_expected_tensor(served, tensor, words):
    r = infer(served, {"inputs": [tensor]})
    assert r.status_code == 400, r.text
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str)
    for w in words:
        assert w in body["error"], body["error"]
    x = np.ones((1, 4), dtype=np.float32)  # the server keeps serving
    assert infer(served, {"inputs": [x_tensor(x)]}).status_code == 200


def test_other_bad_bodies(served):
    for body, word in (({}, "\"inputs\""), ({"inputs": [x_tensor(np.ones((1, 4)))], "outputs": [{"name": "Q"}]},
                                                     "unknown output"),
                       ({"inputs": [x_tensor(np.ones((1, 4))), x_tensor(np.ones((1, 4)))]}, "twice")):
        r = infer(served, body)
        assert r.status_code == 400 and word in r.json()["error"], r.text
    r = served.client.post("/v2/models/lin/infer", content=b"{not json", headers=served.auth)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]


def test_metadata_health_and_metrics(served):
    meta = served.client.get("/v2/models/lin", headers=served.auth)
    assert meta.status_code == 200
    assert meta.json() == {"name": "lin", "versions": [served.digest_of(MODEL)], "platform": "onnxruntime_onnx",
                           "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
                           "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1, 3]}]}
    assert served.client.get("/v2/models/lin/ready").json() == {"name": "lin", "ready": True}
    assert served.client.get("/v2").json()["name"] == "edgectl-agent"
    assert served.client.get("/v2/health/live").status_code == 200
    assert served.client.get("/v2/health/ready").json()["ready"] is True
    infer(served, {"inputs": [x_tensor(np.ones((1, 4), dtype=np.float32))]})
    metrics = served.client.get("/metrics").text
    assert 'edgectl_agent_requests_total{endpoint="/v2/models/{name}/infer",status="200"} 1.0' in metrics
    assert 'edgectl_agent_request_duration_seconds_count{endpoint="/v2/models/{name}/infer"} 1.0' in metrics
    assert 'format="onnx"' in metrics


def test_unknown_model_and_llm_vs_tensor_separation(served):
    r = served.client.get("/v2/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert infer(served, {"inputs": []}, name="nope").status_code == 404
    served.upload(served.A)
    assert served.activate("chat", served.A).status_code == 200  # an LLM (fake runtime)
    r = served.client.get("/v2/models/chat")
    assert r.status_code == 404 and "/v1" in r.json()["error"]
    r = served.chat("lin")
    assert r.status_code == 404 and "/v2/models/lin/infer" in r.json()["error"]["hint"]
    assert [m["id"] for m in served.client.get("/v1/models").json()["data"]] == ["chat"]


def test_onnxruntime_refuses_gguf_and_not_onnx(agent):
    agent.upload(agent.A)
    r = agent.client.put(f"{CONTROL_PREFIX}/deployments/lin", headers=agent.auth,
                         json={**onnx_desired(agent, "lin", agent.A), "artifact": {
                             **onnx_desired(agent, "lin", agent.A)["artifact"], "format": "gguf"}})
    assert r.status_code == 422 and "cannot load gguf" in r.json()["error"]["message"]
    r = deploy(agent, data=agent.JUNK)
    assert r.status_code == 422 and "not a readable ONNX model" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("location", ["/etc/passwd", "../token", "sub/../../token", "..\\token", "C:\\x.bin"])
def test_external_data_escaping_the_artifact_dir_is_refused_and_old_keeps_serving(served, location):
    bad = linear_model_bytes(external_location=location)
    r = deploy(served, data=bad)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "outside the artifact directory" in message and repr(location) in message
    assert "save_as_external_data=False" in r.json()["error"]["hint"]
    state = served.deployment("lin")
    assert state["state"] == "failed" and state["active"]["digest"] == served.digest_of(MODEL)
    r = infer(served, {"inputs": [x_tensor(np.ones((2, 4), dtype=np.float32))]})
    assert r.status_code == 200 and r.json()["model_version"] == served.digest_of(MODEL)


def test_external_data_inside_the_dir_passes_the_check_but_fails_to_load(agent):
    r = deploy(agent, data=linear_model_bytes(external_location="weights.bin"))
    assert r.status_code == 422
    assert "onnxruntime could not load" in r.json()["error"]["message"], r.text


def test_unknown_runtime_options_are_refused(agent):
    r = deploy(agent, runtime_options={"n_gpu_layers": 3})
    assert r.status_code == 422 and "unknown onnxruntime runtime_options" in r.json()["error"]["message"]


def test_restart_recovers_the_tensor_model(make_agent, tmp_path):
    a = make_agent(tmp_path / "root")
    a.wait_recovered()
    assert deploy(a).status_code == 200
    a.close()
    b = make_agent(tmp_path / "root")
    b.wait_recovered()
    x = np.ones((3, 4), dtype=np.float32)
    r = infer(b, {"inputs": [x_tensor(x)]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"][0]["data"], expected(x).reshape(-1), atol=1e-5)


def test_runtime_is_reported_in_facts(agent):
    facts = agent.client.get(f"{CONTROL_PREFIX}/facts", headers=agent.auth).json()
    assert "onnxruntime" in facts["runtimes"]


def test_non_finite_outputs_do_not_fail_the_request(served):
    body = '{"inputs": [{"name": "X", "shape": [1, 4], "datatype": "FP32", "data": [Infinity, 0, 0, 0]}]}'
    r = served.client.post("/v2/models/lin/infer", content=body, headers=served.auth)
    assert r.status_code == 200, r.text
    assert "Infinity" in r.text or "NaN" in r.text

"""Blue-green activation: load beside the old, smoke-test, switch; failures keep the old serving; restart recovers."""

from __future__ import annotations

import json

from edgectl_agent.api import CONTROL_PREFIX


def served_digest(agent, name="chat") -> str:
    r = agent.chat(name, max_tokens=2)
    assert r.status_code == 200, r.text
    return r.headers["X-Edgectl-Artifact"]


def test_activate_serves_and_is_ready(agent):
    agent.upload(agent.A)
    assert agent.client.get("/readyz").status_code == 200  # nothing desired yet: ready
    r = agent.activate("chat", agent.A)
    assert r.status_code == 200, r.text
    state = r.json()
    assert state["state"] == "serving" and state["active"]["digest"] == agent.digest_of(agent.A)
    assert state["previous"] is None and state["last_error"] is None
    assert served_digest(agent) == agent.digest_of(agent.A)
    assert agent.client.get("/readyz").json() == {"status": "ready", "reasons": []}
    models = agent.client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["chat"]


def test_same_desired_again_does_not_reload(agent):
    agent.upload(agent.A)
    first = agent.activate("chat", agent.A).json()
    second = agent.activate("chat", agent.A)
    assert second.status_code == 200 and second.json() == first
    assert agent.fake.loads == [agent.digest_of(agent.A)]
    changed = agent.activate("chat", agent.A, context_length=512)  # same artifact, new settings: reload
    assert changed.status_code == 200 and len(agent.fake.loads) == 2
    assert changed.json()["previous"] is None


def test_swap_keeps_previous_and_collects_older_artifacts(agent):
    a, b, c = (agent.upload(x) for x in (agent.A, agent.B, agent.C))
    agent.activate("chat", agent.A)
    s = agent.activate("chat", agent.B).json()
    assert (s["active"]["digest"], s["previous"]["digest"]) == (b, a)
    assert served_digest(agent) == b
    s = agent.activate("chat", agent.C).json()
    assert (s["active"]["digest"], s["previous"]["digest"]) == (c, b)
    assert agent.state()["artifacts"] == sorted([b, c])  # a is neither active nor previous: deleted
    metrics = agent.client.get("/metrics").text
    assert 'edgectl_agent_swaps_total{deployment="chat"} 2.0' in metrics


def test_failed_load_keeps_the_old_serving(agent):
    agent.upload(agent.A)
    junk = agent.upload(agent.JUNK)
    agent.activate("chat", agent.A)
    r = agent.activate("chat", agent.JUNK)
    assert r.status_code == 422
    assert "not a GGUF file" in r.json()["error"]["message"]
    d = agent.deployment("chat")
    assert d["state"] == "failed" and d["active"]["digest"] == agent.digest_of(agent.A)
    assert d["desired"]["artifact"]["digest"] == junk and "not a GGUF file" in d["last_error"]
    assert served_digest(agent) == agent.digest_of(agent.A)
    ready = agent.client.get("/readyz")
    assert ready.status_code == 503 and "not a GGUF file" in ready.json()["reasons"][0]
    assert 'edgectl_agent_failed_activations_total{deployment="chat"} 1.0' in agent.client.get("/metrics").text
    # Re-sending the good desired state heals it.
    assert agent.activate("chat", agent.A).json()["state"] == "serving"


def test_failed_smoke_inference_keeps_the_old_serving(agent):
    agent.upload(agent.A)
    agent.upload(agent.B)
    agent.activate("chat", agent.A)
    r = agent.activate("chat", agent.B, runtime_options={"fail_smoke": True})
    assert r.status_code == 422 and "smoke inference" in r.json()["error"]["message"]
    assert served_digest(agent) == agent.digest_of(agent.A)


def test_activation_needs_the_artifact_uploaded_first(agent):
    r = agent.activate("chat", agent.A)
    assert r.status_code == 409
    err = r.json()["error"]
    assert agent.digest_of(agent.A) in err["message"] and "upload" in err["hint"]
    assert agent.state()["deployments"] == []  # refused before anything changed
    agent.upload(agent.A)
    r = agent.activate("chat", agent.A, runtime="llamacpp", runtime_options={"n_batch": "many"})
    assert r.status_code == 422 and agent.deployment("chat")["state"] == "failed"


def test_sha_mismatch_upload_leaves_the_serving_model_alone(agent):
    agent.upload(agent.A)
    agent.activate("chat", agent.A)
    assert agent.put_bytes(agent.digest_of(agent.B), agent.C).status_code == 422
    assert agent.activate("chat", agent.B).status_code == 409
    assert served_digest(agent) == agent.digest_of(agent.A)


def test_bad_desired_bodies_are_400(agent):
    agent.upload(agent.A)
    body = agent.desired("chat", agent.A)
    mismatch = agent.client.put(f"{CONTROL_PREFIX}/deployments/other", json=body, headers=agent.auth)
    assert mismatch.status_code == 400 and "'other'" in mismatch.json()["error"]["message"]
    bad = agent.client.put(f"{CONTROL_PREFIX}/deployments/chat", headers=agent.auth,
                           json={**body, "artifact": {**body["artifact"], "digest": "sha256:../../etc/passwd"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "artifact.digest"
    unknown = agent.activate("chat", agent.A, runtime_options={"n_gpu_layer": 1})
    assert unknown.status_code == 422 and "n_gpu_layer" in unknown.json()["error"]["message"]


def test_delete_unloads_and_forgets(agent):
    a = agent.upload(agent.A)
    agent.activate("chat", agent.A)
    r = agent.client.delete(f"{CONTROL_PREFIX}/deployments/chat", headers=agent.auth)
    assert r.status_code == 200 and r.json()["state"] == "removed"
    assert agent.chat("chat").status_code == 404
    assert agent.state()["deployments"] == [] and a not in agent.state()["artifacts"]
    assert json.loads((agent.root / "state.json").read_text())["deployments"] == []
    assert agent.client.delete(f"{CONTROL_PREFIX}/deployments/chat", headers=agent.auth).status_code == 404


def test_restart_serves_the_same_digest_without_control_calls(make_agent, tmp_path):
    first = make_agent(tmp_path / "root")
    first.wait_recovered()
    first.upload(first.A)
    first.upload(first.B)
    first.activate("chat", first.A)
    first.activate("chat", first.B)
    first.close()

    second = make_agent(tmp_path / "root")
    second.wait_recovered()
    assert served_digest(second) == second.digest_of(second.B)
    d = second.deployment("chat")
    assert d["state"] == "serving" and d["previous"]["digest"] == second.digest_of(second.A)
    assert second.client.get("/readyz").status_code == 200


def test_restart_falls_back_to_previous_when_active_is_gone(make_agent, tmp_path):
    first = make_agent(tmp_path / "root")
    first.wait_recovered()
    first.upload(first.A)
    b = first.upload(first.B)
    first.activate("chat", first.A)
    first.activate("chat", first.B)
    first.close()
    (tmp_path / "root" / "artifacts" / b[7:]).unlink()

    second = make_agent(tmp_path / "root")
    second.wait_recovered()
    assert served_digest(second) == second.digest_of(second.A)
    d = second.deployment("chat")
    assert d["state"] == "failed" and "previous" in d["last_error"] and b in d["last_error"]


def test_restart_after_failed_activation_serves_the_old_and_stays_failed(make_agent, tmp_path):
    first = make_agent(tmp_path / "root")
    first.wait_recovered()
    first.upload(first.A)
    first.upload(first.JUNK)
    first.activate("chat", first.A, context_length=512)
    assert first.activate("chat", first.JUNK).status_code == 422
    first.close()

    second = make_agent(tmp_path / "root")
    second.wait_recovered()
    assert served_digest(second) == second.digest_of(second.A)
    assert second.fake.loads == [second.digest_of(second.A)]
    d = second.deployment("chat")
    assert d["state"] == "failed" and "not a GGUF file" in d["last_error"]

"""The control plane's AgentClient against a real agent process (fake runtime, so it takes a second):
the wire contract of edgectl_agent.api, exercised from both sides."""

from __future__ import annotations

import hashlib

import pytest

from edgectl_agent.api import ArtifactRef, DesiredDeployment

pytestmark = pytest.mark.integration
agent_client = pytest.importorskip("edgectl.agent_client")


def test_agent_client_uploads_activates_and_removes(tmp_path, start_agent):
    agent = start_agent()
    blob = b"GGUF" + bytes(range(256)) * 20_000
    path = tmp_path / "a.gguf"
    path.write_bytes(blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    with agent_client.AgentClient(agent.url, agent.token, device="d1") as client:
        assert client.health()["status"] == "ok"
        facts = client.facts()
        assert facts.cpu_count >= 1 and facts.disk_free_bytes > 0
        assert client.upload(digest, path).complete
        assert digest in client.state().artifacts
        desired = DesiredDeployment(name="chat", runtime="fake",
                                    artifact=ArtifactRef(digest=digest, format="gguf", quant="F32",
                                                         size_bytes=len(blob), model="m"))
        state = client.put_deployment(desired)
        assert state.state == "serving" and state.active.digest == digest
        assert client.put_deployment(desired) == state  # idempotent
        assert client.delete_deployment("chat").state == "removed"
        assert client.state().deployments == []

        with pytest.raises(agent_client.AgentError) as e:
            client.upload("sha256:" + "0" * 64, path)
        assert e.value.status == 422 and "sha256 mismatch" in str(e.value)
    with agent_client.AgentClient(agent.url, "wrong", device="d1") as client:
        with pytest.raises(agent_client.AgentError) as e:
            client.state()
        assert e.value.status == 401

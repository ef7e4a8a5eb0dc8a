"""The agent SIGKILLed while it activates a new artifact (real agent process, real llama.cpp, tiny GGUFs): after a
restart on the same root it serves the old digest or the new one, never neither.

Kill points sweep the activation: right after the request is sent, while the state reads "loading", and at
several delays through load, smoke inference, switch, state write and garbage collection.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.integration.conftest import free_port
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
KILL_POINTS = ["sent", "loading", 0.02, 0.05, 0.1, 0.2, 0.4]


def test_sigkill_during_activation_leaves_the_old_or_the_new_digest_serving(tmp_path, start_agent):
    from edgectl.agent_client import AgentClient
    from edgectl.errors import EdgectlError
    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from edgectl_agent.store import sha256_file

    blobs = [write_tiny_llama_gguf(tmp_path / f"m{seed}.gguf", seed=seed) for seed in (1, 2)]
    digests = [sha256_file(p) for p in blobs]

    def desired(i: int) -> DesiredDeployment:
        return DesiredDeployment(name="tiny", runtime="llamacpp", context_length=256, threads=1, artifact=ArtifactRef(
            digest=digests[i], format="gguf", quant="F32", size_bytes=blobs[i].stat().st_size, model="tiny"))

    root, port = tmp_path / "agent-root", free_port()
    agent = start_agent(root, port)
    with AgentClient(agent.url, agent.token, device="crash") as c:
        for d, p in zip(digests, blobs):
            c.upload(d, p)
        assert c.put_deployment(desired(0)).state == "serving"
    current, outcomes = 0, []
    for point in KILL_POINTS:
        new = 1 - current
        client = AgentClient(agent.url, agent.token, device="crash")
        done: dict = {}

        def activate(client: AgentClient, want: DesiredDeployment, done: dict) -> None:
            try:
                done["state"] = client.put_deployment(want).state
            except EdgectlError as e:  # the agent died under the request
                done["error"] = e.message

        worker = threading.Thread(target=activate, args=(client, desired(new), done))
        worker.start()
        if point == "sent":
            time.sleep(0.001)
        elif point == "loading":
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not done:
                if any(s["state"] == "loading" for s in httpx.get(
                        f"{agent.url}/control/v1/state", headers=agent.auth).json()["deployments"]):
                    break
        else:
            time.sleep(point)
        agent.kill()
        worker.join(30)
        client.close()

        agent = start_agent(root, port)
        agent.wait_ready()  # fails when the deployment recovered to "failed": neither digest serving
        with AgentClient(agent.url, agent.token, device="crash") as c:
            (dep,) = c.state().deployments
        assert dep.state == "serving" and dep.active.digest in (digests[current], digests[new]), (point, dep)
        r = httpx.post(f"{agent.url}/v1/chat/completions", headers=agent.auth, timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0, r.text
        outcomes.append((point, "new" if dep.active.digest == digests[new] else "old", "error" in done))
        current = digests.index(dep.active.digest)
    print("kill point, digest serving after restart, request cut:", outcomes)

"""In-process agent fixtures: a real app (create_app) on a temp root with the fake runtime, driven by TestClient."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from edgectl_agent.api import CONTROL_PREFIX
from edgectl_agent.app import create_app
from edgectl_agent.runtimes import FakeRuntime, LlamaCppRuntime, OnnxRuntime
from edgectl_agent.settings import AgentSettings

GGUF_A = b"GGUF" + b"model-a" * 1000
GGUF_B = b"GGUF" + b"model-b" * 1000
GGUF_C = b"GGUF" + b"model-c" * 1000
NOT_GGUF = b"this is not a model" * 100


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class AgentHarness:
    """One agent app on ``root``; ``client`` sends the device token unless told otherwise."""

    A, B, C, JUNK = GGUF_A, GGUF_B, GGUF_C, NOT_GGUF
    digest_of = staticmethod(digest_of)

    def __init__(self, root: Path, **settings) -> None:
        self.root = root
        self.fake = FakeRuntime()
        self.settings = AgentSettings(root=root, **settings)
        self.app = create_app(self.settings, runtimes={"fake": self.fake, "llamacpp": LlamaCppRuntime(),
                                                                   "onnxruntime": OnnxRuntime()})
        # Addressed as 127.0.0.1, like edgectl's clients: a loopback agent refuses other Host names (DNS rebinding).
        self.client = TestClient(self.app, base_url="http://127.0.0.1:8088")
        self.client.__enter__()  # runs the lifespan: recovery of state.json starts
        self.token = (root / "token").read_text().strip()
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def close(self) -> None:
        self.client.__exit__(None, None, None)

    # -- control helpers --------------------------------------------------------------------------------------
    def put_bytes(self, digest: str, data: bytes, *, offset: int = 0, size: int | None = None):
        return self.client.put(f"{CONTROL_PREFIX}/artifacts/{digest}", params={"offset": offset}, content=data,
                               headers={**self.auth, "X-Edgectl-Size": str(size if size is not None else len(data))})

    def upload(self, data: bytes) -> str:
        digest = digest_of(data)
        r = self.put_bytes(digest, data)
        assert r.status_code == 200, r.text
        assert r.json()["complete"] is True
        return digest

    def desired(self, name: str, data: bytes, **kw) -> dict:
        return {"name": name, "runtime": "fake", "context_length": 256,
                "artifact": {"digest": digest_of(data), "format": "gguf", "quant": "F32", "size_bytes": len(data),
                             "model": "tiny"}, **kw}

    def activate(self, name: str, data: bytes, **kw):
        return self.client.put(f"{CONTROL_PREFIX}/deployments/{name}", json=self.desired(name, data, **kw),
                               headers=self.auth)

    def state(self) -> dict:
        r = self.client.get(f"{CONTROL_PREFIX}/state", headers=self.auth)
        assert r.status_code == 200, r.text
        return r.json()

    def deployment(self, name: str) -> dict:
        return next(d for d in self.state()["deployments"] if d["name"] == name)

    def chat(self, model: str, content: str = "hello", **kw):
        return self.client.post("/v1/chat/completions", headers=self.auth,
                                json={"model": model, "messages": [{"role": "user", "content": content}], **kw})

    def wait_recovered(self) -> None:
        """Wait for the background recovery of state.json (bounded; not a timing assertion)."""
        for _ in range(1000):
            if self.app.state.agent.recovery is not None and self.app.state.agent.recovery.done():
                return
            time.sleep(0.01)
        raise AssertionError("recovery did not finish")


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator:
    made: list[AgentHarness] = []

    def make(root: Path | None = None, **settings) -> AgentHarness:
        h = AgentHarness(root or tmp_path / "agent", **settings)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def agent(make_agent) -> AgentHarness:
    h = make_agent()
    h.wait_recovered()
    return h

"""AgentClient against an in-memory agent (httpx.MockTransport): resumable upload, error translation."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from edgectl.agent_client import AgentClient
from edgectl.errors import AgentError, TransportError

TOKEN = "t0k"


class MemoryAgent:
    """Speaks the upload part of the control API; can cut the connection after ``cut_after`` bytes once."""

    def __init__(self, cut_after: int | None = None) -> None:
        self.data = bytearray()
        self.cut_after = cut_after
        self.puts: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(401, json={"error": {"message": "bad token", "type": "unauthorized"}})
        digest = request.url.path.rsplit("/", 1)[1]
        if request.method == "GET":
            complete = "sha256:" + hashlib.sha256(self.data).hexdigest() == digest
            return httpx.Response(200, json={"digest": digest, "received_bytes": len(self.data),
                                             "complete": complete, "size_bytes": None})
        offset = int(request.url.params["offset"])
        self.puts.append(offset)
        assert offset == len(self.data)
        body = request.read()
        if self.cut_after is not None:
            self.data += body[: self.cut_after]
            self.cut_after = None
            raise httpx.ReadError("connection reset by peer")
        self.data += body
        ok = "sha256:" + hashlib.sha256(self.data).hexdigest() == digest
        if not ok:
            self.data.clear()
            return httpx.Response(422, json={"error": {"message": "sha256 mismatch", "type": "digest_mismatch",
                                                       "hint": "rebuild"}})
        return httpx.Response(200, json={"digest": digest, "received_bytes": len(self.data), "complete": True,
                                         "size_bytes": len(self.data)})


def client_for(agent, token=TOKEN) -> AgentClient:
    return AgentClient("http://agent", token, device="d1", transport=httpx.MockTransport(agent))


def test_upload_resumes_from_cut_and_sends_each_byte_once(tmp_path):
    blob = bytes(range(256)) * 40_000
    path = tmp_path / "a.gguf"
    path.write_bytes(blob)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    agent = MemoryAgent(cut_after=3_000_000)
    seen = []
    status = client_for(agent).upload(digest, path, progress=lambda d, t: seen.append((d, t)))
    assert status.complete and bytes(agent.data) == blob
    assert agent.puts == [0, 3_000_000]
    assert seen[-1] == (len(blob), len(blob))


def test_upload_of_complete_artifact_sends_nothing(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"hello")
    agent = MemoryAgent()
    agent.data += b"hello"
    client_for(agent).upload("sha256:" + hashlib.sha256(b"hello").hexdigest(), path)
    assert agent.puts == []


def test_digest_mismatch_is_an_agent_error_with_hint(tmp_path):
    path = tmp_path / "a"
    path.write_bytes(b"hello")
    with pytest.raises(AgentError) as e:
        client_for(MemoryAgent()).upload("sha256:" + "0" * 64, path)
    assert e.value.status == 422 and "sha256 mismatch" in str(e.value) and e.value.hint == "rebuild"


def test_wrong_token_says_so():
    with pytest.raises(AgentError) as e:
        client_for(MemoryAgent(), token="nope").upload_status("sha256:" + "0" * 64)
    assert e.value.status == 401 and "token" in e.value.hint


def test_unreachable_agent_is_a_transport_error():
    def refuse(request):
        raise httpx.ConnectError("connection refused")

    with pytest.raises(TransportError) as e:
        client_for(refuse).state()
    assert "cannot reach the agent" in str(e.value)

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


def test_smoke_takes_the_agents_own_timings_not_the_links(monkeypatch):
    """The link to the agent is slow here (an SSH hop): the figures are still the agent's."""
    import json
    import time

    from edgectl_agent.api import TIMINGS_HEADER

    seen = {}

    def agent(request: httpx.Request) -> httpx.Response:
        seen["timings_asked"] = request.headers.get(TIMINGS_HEADER)
        seen["body"] = json.loads(request.read())
        time.sleep(0.2)
        chunks = [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in ("a", " b", " c")]
        chunks.append({"choices": [], "timings": {"ttft_s": 0.002, "tokens": 3, "decode_s": 0.01}})
        sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
        return httpx.Response(200, text=sse, headers={"content-type": "text/event-stream"})

    r = client_for(agent).smoke("chat", max_tokens=3)
    assert seen["timings_asked"] and seen["body"]["stream"] is True and seen["body"]["max_tokens"] == 3
    assert (r.ttft_s, r.tokens, r.decode_s) == (0.002, 3, 0.01) and r.tokens_per_s == pytest.approx(200.0)


def test_smoke_without_timings_from_an_old_agent_has_none():
    def agent(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text='data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n')

    r = client_for(agent).smoke("chat")
    assert r.ttft_s is None and r.tokens is None and r.tokens_per_s is None


def test_smoke_with_no_text_is_an_agent_error():
    def agent(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text='data: {"choices": [], "timings": {"ttft_s": null, "tokens": 0, '
                                        '"decode_s": 0}}\n\ndata: [DONE]\n\n')

    with pytest.raises(AgentError) as e:
        client_for(agent).smoke("chat")
    assert "produced no text" in e.value.message


def test_an_agent_refusing_our_token_is_named_as_not_ours():
    """401 from the agent's port: another agent (another edgectl home's) answers there; say so and how to fix it."""
    def foreign(request):
        return httpx.Response(401, json={"error": {"message": "bad token", "type": "unauthorized"}})

    client = AgentClient("http://127.0.0.1:18088", TOKEN, device="d1", transport=httpx.MockTransport(foreign))
    with pytest.raises(AgentError) as e:
        client.facts()
    assert e.value.status == 401
    assert "device 'd1': the agent on port 18088 is not this edgectl's: its token differs" in e.value.message
    assert "401 to GET /control/v1/facts" in e.value.message
    assert "To fix: stop it, or give this device another port" in e.value.hint

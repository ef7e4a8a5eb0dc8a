"""Security suite fixtures: the in-process agent harness of tests/unit/agent on a temp root (loopback by default,
``make_agent(host="0.0.0.0", allow_remote=True)`` for one that listens beyond it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.agent.conftest import AgentHarness


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator:
    made: list[AgentHarness] = []

    def make(root: Path | None = None, **settings) -> AgentHarness:
        h = AgentHarness(root or tmp_path / "agent", **settings)
        made.append(h)
        h.wait_recovered()
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def agent(make_agent) -> AgentHarness:
    return make_agent()


def asgi_request(agent: AgentHarness, method: str, raw_path: bytes, *, headers: dict[str, str] | None = None,
                 body: bytes = b"", raw_headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
    """One request straight into the agent's ASGI app (on its TestClient's event loop), with the path exactly as
    given (no client normalizes '..' or refuses a NUL): ``path`` is the percent-decoded ``raw_path``, as uvicorn
    passes it (invalid UTF-8 becomes U+FFFD). ``raw_headers`` replaces the headers entirely (no Host unless given). Returns (status, body)."""
    from urllib.parse import unquote

    sent: list[dict] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return pending.pop() if pending else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    path, _, query = raw_path.partition(b"?")
    hdrs = {"host": "127.0.0.1:8088", **{k.lower(): v for k, v in (headers or {}).items()}}
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": unquote(path.decode("ascii")),  # as uvicorn does "raw_path": path,
             "query_string": query, "root_path": "", "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 8088),
             "headers": raw_headers if raw_headers is not None else [(k.encode(), v.encode())
                                                                      for k, v in hdrs.items()]}
    agent.client.portal.call(agent.app, scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

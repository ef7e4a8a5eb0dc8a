"""Exposure (issue 06, case 9) on a real ``edgectl-agent serve`` process: what a default install listens on, and the
DNS-rebinding guard and the token over real HTTP."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys

import psutil
import pytest

from edgectl_agent.api import CONTROL_PREFIX
from tests.integration.conftest import AgentProcess, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def agent_process(tmp_path):
    a = AgentProcess(tmp_path / "agent-root", free_port())  # no --host: the default
    yield a
    a.stop()


def listening(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening inet socket of ``pid`` and its children."""
    out = []
    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") else p.connections(kind="inet")
        out += [(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


def raw_get(port: int, path: str, host: str | None, token: str | None = None, *, version: str = "1.1"
            ) -> tuple[int, str]:
    """One HTTP request written by hand, so the Host header is exactly what a rebinding browser would send."""
    lines = [f"GET {path} HTTP/{version}"] + ([f"Host: {host}"] if host is not None else [])
    lines += [f"Authorization: Bearer {token}"] if token else []
    lines += ["Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall("\r\n".join(lines).encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


def test_a_default_agent_listens_on_loopback_only(agent_process):
    socks = listening(agent_process.proc.pid)
    assert (("127.0.0.1", agent_process.port) in socks), socks
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _ in socks), socks


def test_a_foreign_host_is_refused_and_loopback_hosts_are_served(agent_process):
    port, token = agent_process.port, agent_process.token
    for path, tok in (("/v1/models", None), (f"{CONTROL_PREFIX}/state", token), ("/healthz", None)):
        status, body = raw_get(port, path, f"rebind.example:{port}", tok)
        assert status == 421 and "misdirected_request" in body and "DNS rebinding" in body, (path, status, body)
    # HTTP/1.1 without Host: refused, by h11's parser (400) or, on httptools (extra fast-http), which lets it through,
    # by the agent's Host guard (421 with its error body)
    status, body = raw_get(port, "/v1/models", None)
    assert status == 400 or (status == 421 and "misdirected_request" in body), (status, body)
    assert raw_get(port, "/v1/models", None, version="1.0")[0] == 421  # HTTP/1.0 may omit it: the guard refuses
    assert raw_get(port, "/v1/models", f"127.0.0.1:{port}")[0] == 200
    assert raw_get(port, "/v1/models", f"localhost:{port}")[0] == 200
    assert raw_get(port, f"{CONTROL_PREFIX}/state", f"127.0.0.1:{port}")[0] == 401  # control: token always
    assert raw_get(port, f"{CONTROL_PREFIX}/state", f"127.0.0.1:{port}", token)[0] == 200
    # edgectl's client (httpx, URL http://127.0.0.1:PORT) passes as is
    from edgectl.agent_client import AgentClient

    with AgentClient(agent_process.url, token, device="this") as client:
        assert client.state().deployments == []


def test_a_non_loopback_bind_is_refused_without_allow_remote(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgectl_agent", "serve", "--root", str(tmp_path / "r"),
                        "--host", "0.0.0.0", "--port", str(free_port())], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "refusing to listen on non-loopback address 0.0.0.0" in r.stderr and "--allow-remote" in r.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was created


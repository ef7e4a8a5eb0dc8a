"""The one agent lifecycle (edgectl.agents.lifecycle) over the shipped fake transport: an in-process agent (the fake
runtime) on a loopback port, so every case runs in well under a second. The real transports' lifecycles are tested
for real in tests/integration (local, sshd, dockerd)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from edgectl.agents import link
from edgectl.agents.install_inprocess import _SERVED
from edgectl.errors import TransportError
from edgectl.signing import Signer, generate_key, public_key_path
from edgectl.spec import Device
from edgectl.transport.fake import FakeTransport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def device() -> Device:
    return Device(name="fake1", profile="x86-cpu-server", agent={"port": free_port()}, transport={"type": "local"})


@pytest.fixture
def fake(device, tmp_path):
    """A link maker for the fake device at tmp_path/device; every agent it started is stopped afterwards."""
    links = []

    def make(verify_key: bytes | None = None):
        lk = link(FakeTransport(device, root=tmp_path / "device"), verify_key=verify_key)
        links.append(lk)
        return lk

    yield make
    for lk in links:
        lk.stop()
        lk.close()


@pytest.fixture
def fleet_key(tmp_path) -> Signer:
    generate_key(tmp_path / "fleet.key")
    return Signer.load(tmp_path / "fleet.key")


def test_nothing_there_is_none_until_asked_to_start_then_one_agent_is_reused(fake):
    first = fake()
    assert first.agent(start=False) is None
    client = first.agent(start=True, runtimes={"fake"})
    assert client.health()["status"] == "ok" and client.state().deployments == []
    served = _SERVED[first.installer.root]
    again = fake().agent(start=True, runtimes={"fake"})  # a later edgectl run finds it: no second start
    assert again.facts().verify_key_id is None
    assert _SERVED[first.installer.root] is served
    assert fake().agent(start=False) is not None
    assert first.stop() is True and first.stop() is False
    assert fake().agent(start=False) is None


def test_the_fleet_key_is_pinned_at_the_first_start_through_the_transport(fake, fleet_key):
    lk = fake(verify_key=fleet_key.public_pem)
    client = lk.agent(start=True)
    assert client.facts().verify_key_id == fleet_key.key_id
    pinned = lk.installer.root / "verify-key.pub"
    assert pinned.read_bytes() == fleet_key.public_pem
    assert str(pinned) in lk.transport.puts  # written with put_file, as on every target


def test_an_agent_running_unverified_is_replaced_by_a_pinned_one_when_signing_is_turned_on(fake, fleet_key):
    unsigned = fake().agent(start=True)
    assert unsigned.facts().verify_key_id is None
    before = _SERVED[fake().installer.root]
    assert fake(verify_key=fleet_key.public_pem).agent(start=False).facts().verify_key_id is None  # read-only
    signed = fake(verify_key=fleet_key.public_pem).agent(start=True)
    assert signed.facts().verify_key_id == fleet_key.key_id
    assert _SERVED[fake().installer.root] is not before  # restarted, pinned


def test_a_pinned_root_is_never_repinned_to_another_key(fake, fleet_key, tmp_path):
    fake(verify_key=fleet_key.public_pem).agent(start=True)
    other = tmp_path / "other.key"
    generate_key(other)
    lk = fake(verify_key=public_key_path(other).read_bytes())
    assert lk.agent(start=True).facts().verify_key_id == fleet_key.key_id  # the first key stays
    assert (lk.installer.root / "verify-key.pub").read_bytes() == fleet_key.public_pem


class _Foreign(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps({"status": "ok", "version": "0.0.1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_foreign_process_on_the_agent_port_is_an_error_that_says_what_to_do(fake, device):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", device.agent.port), _Foreign)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for start in (False, True):
            with pytest.raises(TransportError) as e:
                fake().agent(start=start)
            assert f"port {device.agent.port}" in e.value.message and "fake1" in e.value.message
            assert e.value.hint
    finally:
        server.shutdown()
        server.server_close()


def test_the_fake_transport_is_a_pipe_like_the_others(fake, tmp_path: Path):
    t = fake().transport
    with pytest.raises(TypeError):
        t.run("echo hi; rm -rf /")
    assert t.run(["printf", "%s", "a;b"]).stdout == "a;b" and t.commands[-1] == ["printf", "%s", "a;b"]
    src = tmp_path / "src.bin"
    src.write_bytes(b"x" * 1000)
    t.put_file(src, tmp_path / "in dir" / "dst.bin")
    assert (tmp_path / "in dir" / "dst.bin").read_bytes() == b"x" * 1000
    assert not (tmp_path / "in dir" / "dst.bin.part").exists()

"""DNS rebinding (issue 06, case 9): an agent bound to loopback refuses requests whose Host is not a loopback name.

A page of another site that rebinds its name to 127.0.0.1 makes the browser send ``Host: <that name>``; the agent
answers 421 with its error body on every path, before authentication or routing. edgectl's own clients address the
agent as 127.0.0.1 and pass (checked here for the URLs they build).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgectl_agent.api import CONTROL_PREFIX
from edgectl_agent.hosts import is_loopback_host
from tests.security.conftest import asgi_request

LOOPBACK = ["127.0.0.1", "127.0.0.1:8088", "127.3.4.5:1", "localhost", "LOCALHOST:8088", "[::1]", "[::1]:8088",
            "[0:0:0:0:0:0:0:1]:80"]
FOREIGN = ["evil.example", "evil.example:8088", "attacker.com:80", "127.0.0.1.nip.io", "localhost.evil.example",
           "localhost.", "10.0.0.5:8088", "0.0.0.0", "192.168.1.2", "[::]", "[fe80::1]", "[::ffff:7f00:1]:8088",
           "127.1", "0x7f.0.0.1", "2130706433", "127.0.0.1:", "127.0.0.1:8088:1", "127.0.0.1 ", "127.0.0.1@evil",
           "[::1", "::1", "", "localhost:80x", "\u0131ocalhost", "127.0.0.1\x00.evil.example"]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_names_pass(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", FOREIGN)
def test_other_names_and_malformed_hosts_are_foreign(host):
    assert not is_loopback_host(host)


def test_every_path_refuses_a_foreign_host_before_auth_and_routing(agent):
    paths = ["/healthz", "/v1/models", "/metrics", "/readyz", "/openapi.json", f"{CONTROL_PREFIX}/state",
             "/no/such/path"]
    for path in paths:
        for headers in ({}, agent.auth):
            r = agent.client.get(path, headers={**headers, "Host": "evil.example:8088"})
            assert r.status_code == 421, (path, r.text)
            error = r.json()["error"]
            assert error["type"] == "misdirected_request" and error["param"] == "Host"
            assert "'evil.example:8088'" in error["message"] and "DNS rebinding" in error["message"]
            assert "http://127.0.0.1:<port>" in error["hint"] and "--allow-remote" in error["hint"]
    r = agent.client.post("/v1/chat/completions", headers={"Host": "rebound.example"},
                          json={"model": "x", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 421


def test_loopback_hosts_are_served(agent):
    for host in ("127.0.0.1:8088", "localhost:8088", "[::1]:8088", "localhost"):
        assert agent.client.get("/v1/models", headers={"Host": host}).status_code == 200, host


def test_no_host_or_two_hosts_are_refused(agent):
    status, body = asgi_request(agent, "GET", b"/v1/models", raw_headers=[])
    assert status == 421 and b"no Host header" in body
    status, body = asgi_request(agent, "GET", b"/v1/models",
                                raw_headers=[(b"host", b"127.0.0.1"), (b"host", b"evil.example")])
    assert status == 421 and b"2 Host headers" in body
    assert asgi_request(agent, "GET", b"/v1/models", raw_headers=[(b"host", b"127.0.0.1:8088")])[0] == 200


def test_beyond_loopback_the_host_guard_is_off_and_the_token_rules(make_agent, tmp_path):
    remote = make_agent(tmp_path / "remote", host="0.0.0.0", allow_remote=True)
    r = remote.client.get("/v1/models", headers={"Host": "device.lan:8088"})
    assert r.status_code == 401  # reached the app: auth decides there
    assert remote.client.get("/v1/models", headers={**remote.auth, "Host": "device.lan:8088"}).status_code == 200


def test_edgectl_clients_address_the_agent_by_a_loopback_host(tmp_path):
    """The URLs edgectl's transports and the Ansible role build: their Host header passes the guard."""
    import httpx

    from edgectl.spec import Device
    from edgectl.transport import transport_for

    devices = [
        Device(name="here", profile="x86-cpu-server", agent={"port": 18088}, transport={"type": "local"}),
        Device(name="pi", profile="x86-cpu-server", agent={"port": 18089},
               transport={"type": "ssh", "host": "pi.lan"}),
        Device(name="box", profile="x86-cpu-server", agent={"port": 18090},
               transport={"type": "docker", "control": "exec"}),
        Device(name="boxp", profile="x86-cpu-server", agent={"port": 18091},
               transport={"type": "docker", "control": "port"}),
    ]
    for d in devices:
        url = httpx.URL(transport_for(d).base_url)
        host = httpx.Request("GET", url.join("/v1/models")).headers["host"]
        assert is_loopback_host(host), (d.name, host)

    # The Ansible role's uri tasks all call "{{ edgectl_api }}/...", set once to the device's loopback address.
    roles = Path(__file__).resolve().parents[2] / "deploy/ansible/roles/edgectl_agent/tasks"
    assert 'edgectl_api: "http://127.0.0.1:{{ edgectl_agent_port }}"' in (roles / "main.yml").read_text()
    urls = [line.split("url:", 1)[1].strip() for f in roles.glob("*.yml") for line in f.read_text().splitlines()
            if line.strip().startswith("url:")]
    assert urls and all(u.strip('"').startswith("{{ edgectl_api }}/") for u in urls), urls

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edgectl.agents import link
from edgectl.agents.install_local import agent_argv
from edgectl.spec import Device
from edgectl.transport.local import LocalTransport


def test_agent_argv_is_a_list_binding_loopback():
    argv = agent_argv(Path("/r oot"), 9000)
    assert argv == [sys.executable, "-m", "edgectl_agent", "serve", "--root", "/r oot", "--host", "127.0.0.1",
                    "--port", "9000"]


def test_run_refuses_shell_strings(tmp_path):
    t = LocalTransport(Device(name="d", profile="auto", transport={"type": "local"}), root=tmp_path)
    with pytest.raises(TypeError):
        t.run("echo hi; rm -rf /")
    assert t.run(["echo", "a;b"]).stdout == "a;b\n"


def test_agent_not_running_is_none_without_start(tmp_path):
    d = Device(name="d", profile="auto", transport={"type": "local"}, agent={"port": 1})
    assert link(LocalTransport(d, root=tmp_path)).agent(start=False) is None


def test_a_foreign_process_on_the_port_is_refused_with_the_fix(tmp_path):
    import http.server
    import threading

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", "15")
            self.end_headers()
            self.wfile.write(b'{"status":"ok"}')

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    d = Device(name="d", profile="auto", transport={"type": "local"}, agent={"port": port})
    try:
        from edgectl.errors import TransportError

        for start in (False, True):
            with pytest.raises(TransportError) as e:
                link(LocalTransport(d, root=tmp_path)).agent(start=start)
            assert f"port {port}" in e.value.message and "did not start" in e.value.message
            assert f"port: {port + 1}" in e.value.hint
    finally:
        server.shutdown()
        server.server_close()

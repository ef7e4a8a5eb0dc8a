"""The command line, settings, facts and llama.cpp arguments (no model loaded)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.facts import collect_facts, parse_cpu_flags
from edgectl_agent.runtimes.llamacpp import llama_kwargs
from edgectl_agent.settings import AgentSettings, is_loopback


def run_agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgectl_agent", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_port_in_use_is_one_clear_line_and_exit_2(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_agent("serve", "--root", str(tmp_path), "--port", str(port))
    assert r.returncode == 2
    line = r.stderr.strip()
    assert "\n" not in line and f"port {port}" in line and "--port" in line


def test_non_loopback_bind_needs_allow_remote(tmp_path):
    r = run_agent("serve", "--root", str(tmp_path), "--host", "0.0.0.0")
    assert r.returncode == 2 and "--allow-remote" in r.stderr
    assert not (tmp_path / "token").exists()


def test_token_command_creates_once_and_prints(tmp_path):
    first = run_agent("token", "--root", str(tmp_path))
    second = run_agent("token", "--root", str(tmp_path))
    assert first.returncode == 0 and first.stdout == second.stdout and len(first.stdout.strip()) >= 40
    assert (tmp_path / "token").stat().st_mode & 0o777 == 0o600


def test_settings_defaults_and_env(tmp_path, monkeypatch):
    s = AgentSettings(root=tmp_path)
    assert s.host == "127.0.0.1" and s.loopback and s.port == 8088 and s.token_path == tmp_path / "token"
    monkeypatch.setenv("EDGECTL_AGENT_PORT", "9001")
    monkeypatch.setenv("EDGECTL_AGENT_ROOT", str(tmp_path / "x"))
    s = AgentSettings()
    assert s.port == 9001 and s.token_path == tmp_path / "x" / "token"
    assert all(f.description for f in AgentSettings.model_fields.values())
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "localhost", "0.0.0.0", "10.0.0.1", "example")] == [
        True, True, True, False, False, False]


def test_facts_are_real_and_filtered(tmp_path):
    f = collect_facts(tmp_path)
    assert f.cpu_count >= 1 and f.ram_total_bytes > f.ram_available_bytes > 0 and f.disk_free_bytes > 0
    assert set(f.cpu_flags) <= {"neon", "asimd", "dotprod", "asimddp", "i8mm", "sve", "sve2", "avx", "avx2",
                                "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                                "f16c", "fma", "fphp", "asimdhp"}
    assert parse_cpu_flags({"fpu", "avx2", "sse4_2", "fma"}) == ["avx2", "fma"]
    assert parse_cpu_flags({"asimd", "asimddp", "i8mm"}) == ["asimd", "asimddp", "dotprod", "i8mm", "neon"]


def test_runtime_versions_are_read_again_when_a_sys_path_folder_changes(tmp_path, monkeypatch):
    """Cached between facts requests, but an install or removal (it touches site-packages) is seen at once."""
    import os

    from edgectl_agent.facts import runtime_versions

    def install(version: str) -> None:
        for old in tmp_path.glob("mlx_lm-*.dist-info"):
            (old / "METADATA").unlink()
            old.rmdir()
        info = tmp_path / f"mlx_lm-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: mlx-lm\nVersion: {version}\n")
        os.utime(tmp_path, ns=(0, os.stat(tmp_path).st_mtime_ns + 10**9))  # a coarse clock must still see a change

    install("9.9.1")
    monkeypatch.syspath_prepend(str(tmp_path))  # shadows an installed mlx-lm, if any
    assert runtime_versions()["mlx"] == "9.9.1"
    install("9.9.2")
    assert runtime_versions()["mlx"] == "9.9.2"
    assert runtime_versions() is not runtime_versions()  # callers get copies of the cached mapping


def desired(**kw) -> DesiredDeployment:
    return DesiredDeployment.model_validate({
        "name": "chat", "artifact": {"digest": "sha256:" + "0" * 64, "format": "gguf", "quant": "Q4_K_M",
                                     "size_bytes": 1, "model": "m"}, **kw})


def test_llama_kwargs_size_context_for_every_slot():
    kw = llama_kwargs(desired(context_length=1024, parallel=4, threads=3, runtime_options={"n_batch": 256}))
    assert kw == {"n_ctx": 4096, "n_threads": 3, "n_batch": 256, "verbose": False}
    assert "n_threads" not in llama_kwargs(desired())
    with pytest.raises(RuntimeFailure) as e:
        llama_kwargs(desired(runtime_options={"model_path": "/etc/passwd"}))
    assert "model_path" in e.value.message and "n_batch" in e.value.hint


def test_accepted_connections_get_tcp_nodelay():
    """asyncio sets TCP_NODELAY only on sockets whose proto is TCP; without it each keep-alive response (a
    Prometheus scrape of /metrics) stalls ~40 ms on Nagle + delayed ACK."""
    from edgectl_agent.cli import bind_socket

    server = bind_socket("127.0.0.1", 0)
    try:
        server.listen()
        client = socket.create_connection(server.getsockname())
        conn, _ = server.accept()
        assert conn.proto == socket.IPPROTO_TCP
        conn.close()
        client.close()
    finally:
        server.close()


def test_server_takes_httptools_and_uvloop_where_installed_and_h11_when_asked(tmp_path, monkeypatch):
    """The agent's uvicorn: auto takes httptools and uvloop (the extra fast-http, which setup.sh installs: a test
    environment without them fails here); the settings name h11 and asyncio, the fallback where they are absent."""
    from types import SimpleNamespace

    import uvloop
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from edgectl_agent.cli import UsageError, server_config, settings_from_args

    async def app(scope, receive, send) -> None:  # pragma: no cover - never called
        pass

    args = SimpleNamespace(root=tmp_path)
    config = server_config(app, settings_from_args(args))
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol and config.loop == "auto"
    assert config.get_loop_factory() is uvloop.new_event_loop
    monkeypatch.setenv("EDGECTL_AGENT_HTTP_PARSER", "h11")
    monkeypatch.setenv("EDGECTL_AGENT_EVENT_LOOP", "asyncio")
    config = server_config(app, settings_from_args(args))
    config.load()
    assert config.http_protocol_class is H11Protocol and config.get_loop_factory() is not uvloop.new_event_loop
    monkeypatch.setenv("EDGECTL_AGENT_HTTP_PARSER", "fast")
    with pytest.raises(UsageError, match="http_parser") as e:
        settings_from_args(args)
    assert "EDGECTL_AGENT_HTTP_PARSER" in e.value.hint

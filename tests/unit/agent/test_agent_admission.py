"""The bounded queue of edgectl_agent.admission (counts, refusal, Retry-After, tickets), and the app's 503 for a
full queue, with the fake runtime. The real counterpart, with llama.cpp, real HTTP clients and disconnects:
tests/integration/test_admission.py."""

from __future__ import annotations

import gc

import pytest
from edgectl_agent.admission import Admission, Overloaded, RequestQueue


def test_a_queue_runs_slots_keeps_its_limit_waiting_and_refuses_the_next():
    q = RequestQueue("chat")
    tickets = [q.admit(slots=1, queue_limit=2) for _ in range(3)]  # one to run, two to wait
    tickets[0].start()
    assert (q.running, q.waiting) == (1, 2)
    with pytest.raises(Overloaded) as refused:
        q.admit(slots=1, queue_limit=2)
    e = refused.value
    assert e.status == 503 and e.code == "queue_full" and int(e.headers["Retry-After"]) >= 1
    assert "1 request(s) running and 2 waiting" in e.message and "queue_per_slot" in e.hint
    assert q.rejected == 1
    tickets[0].end()
    tickets[0].end()  # once only
    assert (q.running, q.waiting) == (0, 2)
    assert q.admit(slots=1, queue_limit=2)  # room again


def test_a_queue_of_zero_admits_only_what_the_slots_run():
    q = RequestQueue("chat")
    held = [q.admit(slots=2, queue_limit=0), q.admit(slots=2, queue_limit=0)]  # a dropped ticket ends
    with pytest.raises(Overloaded):
        q.admit(slots=2, queue_limit=0)
    assert len(held) == 2


def test_tickets_record_queue_wait_and_duration_and_end_when_dropped():
    q = RequestQueue("chat")
    seen: list[str] = []
    t = q.admit(slots=1, queue_limit=1)
    t.on_start = lambda ticket: seen.append(f"wait {ticket.queue_wait_s >= 0}")
    t.on_end = lambda ticket: seen.append(f"took {ticket.duration_s >= ticket.queue_wait_s}")
    t.start()
    t.start()
    assert q.running == 1
    del t
    gc.collect()
    assert seen == ["wait True", "took True"] and (q.running, q.admitted) == (0, 0)
    never_started = q.admit(slots=1, queue_limit=1)
    never_started.end()
    never_started.start()  # too late: not counted as running
    assert (q.running, q.admitted) == (0, 0)


def test_retry_after_grows_with_the_queue_and_the_recent_duration():
    q = RequestQueue("chat")
    for _ in range(5):
        t = q.admit(slots=1, queue_limit=10)
        t.start()
        t.queue._recent_duration_s = 3.0  # as if requests took 3 s
        t.end()
    q._recent_duration_s = 3.0
    held = [q.admit(slots=1, queue_limit=3) for _ in range(4)]
    with pytest.raises(Overloaded) as refused:
        q.admit(slots=1, queue_limit=3)
    assert int(refused.value.headers["Retry-After"]) == 15  # 4 waiting + this one, 3 s each, one slot
    assert len(held) == 4


def test_the_queue_limit_is_parallel_times_queue_per_slot():
    admission = Admission(queue_per_slot=2)
    admitted = [admission.admit("chat", parallel=2, slots=1) for _ in range(5)]  # 1 running + 4 waiting
    with pytest.raises(Overloaded):
        admission.admit("chat", parallel=2, slots=1)
    assert admission.admit("other", parallel=1, slots=1)  # per deployment
    assert len(admitted) == 5


def test_the_app_answers_503_with_retry_after_when_the_queue_is_full(agent):
    agent.upload(agent.A)
    assert agent.activate("chat", agent.A).status_code == 200
    queue = agent.app.state.agent.admission.queue("chat")
    held = [queue.admit(slots=1, queue_limit=100) for _ in range(1 + agent.settings.queue_per_slot)]
    r = agent.chat("chat")
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "queue_full"
    metrics = agent.client.get("/metrics", headers=agent.auth).text
    assert f'edgectl_agent_requests_waiting{{deployment="chat"}} {len(held)}.0' in metrics
    assert 'edgectl_agent_requests_rejected_total{deployment="chat"} 1.0' in metrics
    for t in held:
        t.end()
    r = agent.chat("chat")
    assert r.status_code == 200
    metrics = agent.client.get("/metrics", headers=agent.auth).text
    assert 'edgectl_agent_requests_waiting{deployment="chat"} 0.0' in metrics
    assert 'edgectl_agent_queue_wait_seconds_count{deployment="chat"} 1.0' in metrics
    assert 'edgectl_agent_generation_duration_seconds_count{deployment="chat"} 1.0' in metrics

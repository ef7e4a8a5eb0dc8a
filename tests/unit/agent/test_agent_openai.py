"""The OpenAI-compatible API: response and error shapes, SSE streaming, embeddings, metrics, remote auth."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def serving(agent):
    agent.upload(agent.A)
    assert agent.activate("chat", agent.A).status_code == 200
    return agent


def openai_error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    return err


def test_chat_completion_shape(serving):
    r = serving.chat("chat", "hello there", max_tokens=3, temperature=0)
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "chat"
    assert body["system_fingerprint"] == serving.digest_of(serving.A)
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"].split()) == 3
    assert choice["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_chat_streaming_is_server_sent_events(serving):
    with serving.client.stream("POST", "/v1/chat/completions", headers=serving.auth,
                               json={"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                                     "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "chat" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert len(text.split()) == 4 and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_streamed_timings_on_request_are_the_figures_the_metrics_record(serving):
    from edgectl_agent.api import TIMINGS_HEADER

    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    plain = serving.client.post("/v1/chat/completions", headers=serving.auth, json=body).text
    assert "timings" not in plain  # only asked-for: other clients see plain OpenAI chunks
    raw = serving.client.post("/v1/chat/completions", headers={**serving.auth, TIMINGS_HEADER: "1"}, json=body).text
    events = raw.split("\n\n")
    assert events[-2] == "data: [DONE]"
    last = json.loads(events[-3].removeprefix("data: "))
    assert last["choices"] == [] and last["model"] == "chat" and last["object"] == "chat.completion.chunk"
    t = last["timings"]
    assert t["tokens"] == 4 and t["ttft_s"] > 0 and t["decode_s"] > 0
    metrics = {line.split(" ")[0]: float(line.split(" ")[1]) for line in serving.client.get("/metrics").text
               .splitlines() if 'deployment="chat"' in line and not line.startswith("#")}
    ttft = 'edgectl_agent_time_to_first_token_seconds_{}{{deployment="chat"}}'
    assert metrics[ttft.format("count")] == 2
    assert metrics[ttft.format("sum")] >= t["ttft_s"]  # the first request's ttft plus exactly this one's
    assert metrics['edgectl_agent_decode_tokens_per_second{deployment="chat"}'] == pytest.approx(3 / t["decode_s"])


def test_completions_plain_and_streaming(serving):
    r = serving.client.post("/v1/completions", json={"model": "chat", "prompt": "the", "max_tokens": 2})
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
    assert len(r.json()["choices"][0]["text"].split()) == 2
    r = serving.client.post("/v1/completions", json={"model": "chat", "prompt": ["the"], "max_tokens": 2,
                                                     "stream": True})
    assert r.text.endswith("data: [DONE]\n\n") and r.text.count("data: ") == 3


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, "temperature"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools.0.function"),
])
def test_invalid_fields_are_openai_400s(serving, body, param):
    err = openai_error(serving.client.post("/v1/chat/completions", json={"model": "chat", **body}), 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_bad_json_is_a_400_and_the_server_keeps_serving(serving):
    err = openai_error(serving.client.post("/v1/chat/completions", content=b'{"model": "chat", ',
                                           headers={"Content-Type": "application/json"}), 400)
    assert "not valid JSON" in err["message"]
    err = openai_error(serving.client.post("/v1/chat/completions", content=b"[1, 2]",
                                           headers={"Content-Type": "application/json"}), 400)
    assert "JSON object" in err["hint"]
    assert serving.chat("chat").status_code == 200


def test_unknown_model_is_an_openai_404(serving):
    err = openai_error(serving.chat("nope"), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model" and "serving: chat" in err["message"]
    err = openai_error(serving.client.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404)
    assert err["code"] == "model_not_found"


def test_embeddings_only_when_loaded_for_them(serving):
    err = openai_error(serving.client.post("/v1/embeddings", json={"model": "chat", "input": "hi"}), 400)
    assert err["message"] == "model 'chat' does not support embeddings"
    serving.upload(serving.B)
    serving.activate("embed", serving.B, runtime_options={"embedding": True})
    r = serving.client.post("/v1/embeddings", json={"model": "embed", "input": ["a", "b"]})
    assert r.status_code == 200
    assert [d["index"] for d in r.json()["data"]] == [0, 1] and r.json()["model"] == "embed"


def test_metrics_cover_requests_tokens_ttft_and_active_artifact(serving):
    serving.chat("chat", max_tokens=3)
    serving.client.post("/v1/chat/completions", json={"model": "chat", "stream": True, "max_tokens": 2,
                                                      "messages": [{"role": "user", "content": "x"}]})
    serving.chat("no-such-model-" + "x" * 20)
    text = serving.client.get("/metrics").text
    assert 'edgectl_agent_requests_total{endpoint="/v1/chat/completions",status="200"} 2.0' in text
    assert 'edgectl_agent_requests_total{endpoint="/v1/chat/completions",status="404"} 1.0' in text
    assert 'edgectl_agent_completion_tokens_total{deployment="chat"} 5.0' in text
    assert 'edgectl_agent_time_to_first_token_seconds_count{deployment="chat"} 1.0' in text
    assert 'edgectl_agent_model_load_seconds{deployment="chat"}' in text
    assert ('edgectl_agent_active_artifact_info{deployment="chat",digest="%s",format="gguf",model="tiny",'
            'quant="F32"} 1.0' % serving.digest_of(serving.A)) in text
    assert "no-such-model" not in text  # request-derived values never become labels


def test_beyond_loopback_serving_needs_the_token_too(make_agent, tmp_path):
    remote = make_agent(tmp_path / "remote", host="0.0.0.0", allow_remote=True)
    remote.wait_recovered()
    for path in ("/v1/models", "/metrics", "/readyz"):
        assert remote.client.get(path).status_code == 401
        assert remote.client.get(path, headers=remote.auth).status_code == 200
    assert remote.client.get("/healthz").status_code == 200


def test_on_loopback_serving_is_open(serving):
    assert serving.client.get("/v1/models").status_code == 200
    assert serving.client.post("/v1/chat/completions", json={
        "model": "chat", "messages": [{"role": "user", "content": "x"}]}).status_code == 200


def test_stream_abandoned_by_the_client_closes_the_runtime_iterator(serving):
    import anyio

    from edgectl_agent.openai import _sse

    closed = []

    def chunks():
        try:
            for i in range(100):
                yield {"choices": [{"index": 0, "text": f" w{i}"}]}
        finally:
            closed.append(True)

    request = type("R", (), {"app": serving.app})()
    model = serving.app.state.agent.deployments.serving_model("chat")

    async def take_one_then_leave():
        with anyio.CancelScope() as scope:
            async for event in _sse(request, model, chunks(), 0.0):
                assert event.startswith("data: ")
                scope.cancel()  # what starlette does when the client disconnects

    anyio.run(take_one_then_leave)
    assert closed == [True]

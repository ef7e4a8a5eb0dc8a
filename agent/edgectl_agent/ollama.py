"""Ollama-compatible serving API under /api, on the agent's port and behind the same token rule as /v1: tools
that speak only Ollama's API (and the official ``ollama`` client) work against any edgectl device. The model name
is the deployment name; a trailing ``:latest`` (the tag Ollama clients add) is accepted.

Endpoints: ``POST /api/chat``, ``/api/generate``, ``/api/embed`` (and the older ``/api/embeddings``),
``/api/show``; ``GET /api/tags`` (deployments serving a language model), ``/api/ps`` (the same: every serving
model is loaded), ``/api/version``. Managing models (pull, push, create, copy, delete) is edgectl's job and is not
offered here.

Generation goes through the OpenAI router's path (``edgectl_agent.inference``): the runtime's stream, with
``stream: true`` (Ollama's default) sent as NDJSON lines, with ``stream: false`` gathered into one JSON object.
``/api/generate`` renders the prompt (and ``system``) with the model's chat template as Ollama does, unless
``raw: true``. The last object carries ``done_reason`` ("stop" or "length"), ``eval_count`` and, where the runtime
reports usage, ``prompt_eval_count``; durations are nanoseconds (prompt_eval_duration = time to first token,
eval_duration = first token to last).

Options (``options``) map onto the runtime's sampling parameters:
``temperature`` -> temperature, ``top_p`` -> top_p, ``num_predict`` -> max_tokens (-1 or -2: no limit), ``stop``
-> stop, ``seed`` -> seed. ``num_ctx`` is checked, not applied: the context is fixed by the deployment's
``context_length``, so a larger value is a 400 naming it and the limit. Other options (``top_k``,
``repeat_penalty``, ``num_thread``, ...) are accepted and ignored. ``format`` (``"json"`` or a JSON Schema)
constrains the reply like OpenAI's ``response_format`` (llamacpp runtime; others answer a 400 naming ``format``).
``tools`` on /api/chat work as OpenAI's with ``tool_choice: "auto"`` (``edgectl_agent.runtimes.tool_calls``; Ollama
has no tool_choice): ``message.tool_calls`` with arguments as objects. ``keep_alive`` is ignored (deployed models
stay loaded). ``logprobs`` / ``top_logprobs`` (0 to 20) give each generated token's log-probability and its most
likely alternatives, in Ollama's shape (``logprobs: [{token, logprob, bytes, top_logprobs}]`` on each streamed object,
all of them on a gathered reply; llamacpp runtime, others a 400 naming ``logprobs``). ``images``, ``think``,
``suffix``, ``template`` and ``context`` are refused with a 400 naming the field.

Over 500 lines: one API's request models and reply shaping read best together; the serving path they share with
the OpenAI router is ``edgectl_agent.inference``.

Errors are Ollama's shape, ``{"error": "message (hint)"}``, with the agent's status codes; a missing or wrong token
is the agent's one 401 answer on every route.
"""

from __future__ import annotations

import json
import time
from contextlib import aclosing
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime, timezone
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgectl_agent import __version__
from edgectl_agent.api import check_json_values
from edgectl_agent.deployments import Serving
from edgectl_agent.errors import AgentError, BadRequest
from edgectl_agent.inference import (StreamEnd, chat_call, complete_call, count_usage, pull_stream, run_admitted,
                                     serving_llm, start_stream)
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.openai import Tool
from edgectl_agent.runtimes.extras import INCLUDE_USAGE, TOOLS, ChatExtras

# The Ollama API version whose endpoints and shapes this router follows (clients check it is recent enough).
OLLAMA_API_VERSION = "0.12.0"
NDJSON = "application/x-ndjson"


class OllamaRoute(APIRoute):
    """Answers errors in Ollama's shape, ``{"error": "..."}``, which Ollama clients read; authentication errors
    keep the agent's own shape (they are decided before the route is, for every route alike)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as e:
                return JSONResponse({"error": validation_message(e.errors())}, status_code=400)
            except AgentError as e:
                if e.status == 401:
                    raise
                return JSONResponse({"error": error_text(e)}, status_code=e.status)

        return route


router = APIRouter(prefix="/api", route_class=OllamaRoute)


def error_text(e: AgentError) -> str:
    return f"{e.message} (to fix: {e.hint})" if e.hint else e.message


def validation_message(errors: list[dict[str, Any]]) -> str:
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON: send a JSON object with Content-Type: application/json"
    parts = []
    for error in errors[:5]:
        loc = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {error.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


# -- requests -------------------------------------------------------------------------------------------------
class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="Deployment name (a trailing ':latest' is accepted).")
    keep_alive: float | str | None = Field(default=None, description="Ignored: deployed models stay loaded.")

    @model_validator(mode="before")
    @classmethod
    def _json_values_only(cls, data: Any) -> Any:
        check_json_values(data)  # a lone surrogate would reach the tokenizer and fail there (a 500)
        return data

    def deployment(self) -> str:
        return self.model.removesuffix(":latest")


class Options(BaseModel):
    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(default=None, ge=0, le=2, description="-> temperature.")
    top_p: float | None = Field(default=None, gt=0, le=1, description="-> top_p.")
    num_predict: int | None = Field(default=None, ge=-2, description="-> max_tokens; -1 or -2: no limit.")
    stop: list[str] | None = Field(default=None, description="-> stop.")
    seed: int | None = Field(default=None, description="-> seed.")
    num_ctx: int | None = Field(default=None, ge=1, description="Checked against the deployment's context_length.")

    @field_validator("num_predict")
    @classmethod
    def _predict_something(cls, v):
        if v == 0:
            raise ValueError("0 tokens generates nothing; use a positive count, or -1 for no limit")
        return v


def _refuse(field: str, why: str) -> BadRequest:
    return BadRequest(f"'{field}' is not supported by this agent's Ollama API: {why}", param=field,
                      hint=f"leave '{field}' out")


class _Generation(_Request):
    stream: bool = Field(default=True, description="NDJSON lines (default), or one JSON object.")
    format: Literal["", "json"] | dict[str, Any] | None = Field(default=None,
                                                                description='"json" or a JSON Schema.')
    options: Options | None = None
    think: bool | str | None = Field(default=None, description="Refused when set.")
    logprobs: bool | None = Field(default=None, description="Return each generated token's log-probability.")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="With logprobs: this many most likely "
                                     "tokens at each position, with their log-probabilities (0 to 20).")

    def params(self, serving: Serving) -> GenerationParams:
        o = self.options or Options()
        if o.num_ctx is not None and o.num_ctx > serving.desired.context_length:
            raise BadRequest(f"options.num_ctx {o.num_ctx} is more than deployment '{serving.desired.name}' has: "
                             f"its context_length is {serving.desired.context_length}", param="options.num_ctx",
                             hint="leave num_ctx out, or raise the deployment's context_length in its manifest")
        max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
        return GenerationParams(max_tokens=max_tokens, temperature=o.temperature, top_p=o.top_p,
                                stop=list(o.stop or []), seed=o.seed)

    def extras(self, serving: Serving) -> ChatExtras:
        """The format's schema, and usage (for the counts of the last object) where the runtime reports it."""
        if self.format == "json":
            schema: dict[str, Any] | None = {"type": "object"}
        else:
            schema = self.format or None
        usage = INCLUDE_USAGE in getattr(serving.model, "extra_features", frozenset())
        if self.top_logprobs and not self.logprobs:
            raise BadRequest("top_logprobs needs logprobs: true (log probabilities are returned only when asked "
                             "for)", param="top_logprobs", hint='send "logprobs": true with it')
        return ChatExtras(json_schema=schema, schema_param="format", format_field="format", include_usage=usage,
                          logprobs=(self.top_logprobs or 0) if self.logprobs else None)

    def check_supported(self) -> None:
        if self.think:
            raise _refuse("think", "no reasoning trace is produced")


class OllamaFunctionCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="ignore")

    function: OllamaFunctionCall


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[Any] | None = Field(default=None, description="Refused when set: text models only.")
    tool_calls: list[OllamaToolCall] | None = Field(default=None, description="An assistant turn's calls.")

    def as_dict(self) -> dict[str, Any]:
        """The OpenAI-shaped message the runtimes take (a call's arguments as a JSON string)."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [{"type": "function", "function": {"name": c.function.name,
                                                                   "arguments": json.dumps(c.function.arguments)}}
                                 for c in self.tool_calls]
        return out


class ChatBody(_Generation):
    messages: list[Message] = Field(default_factory=list, description="Empty: only checks the model is loaded.")
    tools: list[Tool] | None = Field(default=None, max_length=128, description="Functions the model may call.")

    def check_supported(self) -> None:
        super().check_supported()
        if any(m.images for m in self.messages):
            raise _refuse("messages.images", "the served models take text only")
        names = [t.function.name for t in self.tools or []]
        if len(set(names)) != len(names):
            raise BadRequest("tools: function names must be unique", param="tools",
                             hint="give each function its own name")

    def extras(self, serving: Serving) -> ChatExtras:
        """Ollama has no tool_choice: with tools the model calls them or answers (OpenAI's "auto")."""
        extras = super().extras(serving)
        if not self.tools:
            return extras
        if extras.json_schema is not None:
            raise BadRequest("format and tools cannot be used together: both constrain the reply", param="format",
                             hint="send one of them")
        if extras.logprobs is not None:
            raise BadRequest("log probabilities are not returned with tools (the reply is the calls' JSON)",
                             param="logprobs", hint="leave logprobs out, or send the request without tools")
        tools = tuple(t.model_dump(exclude_none=True) for t in self.tools)
        return ChatExtras(include_usage=extras.include_usage, tools=tools, tool_choice="auto")


class GenerateBody(_Generation):
    prompt: str = Field(default="", description="Empty: only checks the model is loaded.")
    system: str | None = Field(default=None, description="A system message before the prompt (not with raw).")
    raw: bool = Field(default=False, description="Send the prompt to the model as is, without the chat template.")
    suffix: str | None = None
    template: str | None = None
    context: list[int] | None = None
    images: list[Any] | None = None

    def check_supported(self) -> None:
        super().check_supported()
        for name, why in (("suffix", "fill-in-the-middle is not implemented"),
                          ("template", "the model's own chat template is used"),
                          ("context", "send the conversation with /api/chat instead"),
                          ("images", "the served models take text only")):
            if getattr(self, name):
                raise _refuse(name, why)


class EmbedBody(_Request):
    input: str | list[str]
    truncate: bool | None = Field(default=None, description="Ignored: an input beyond the context is a 400.")
    dimensions: int | None = Field(default=None, description="Refused when set.")
    options: dict[str, Any] | None = Field(default=None, description="Ignored.")

    def inputs(self) -> list[str]:
        if self.dimensions is not None:
            raise _refuse("dimensions", "embeddings are returned at the model's own size")
        inputs = [self.input] if isinstance(self.input, str) else list(self.input)
        if not inputs or any(not t for t in inputs):
            raise BadRequest("input must be a non-empty string or a list of non-empty strings", param="input",
                             hint='send e.g. {"input": "hello"}')
        return inputs


class EmbeddingsBody(_Request):
    prompt: str = Field(min_length=1)


class ShowBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, min_length=1)
    name: str | None = Field(default=None, min_length=1, description="The older spelling of 'model'.")

    def deployment(self) -> str:
        name = self.model or self.name
        if not name:
            raise BadRequest("send the model to show", param="model", hint='send {"model": "<deployment>"}')
        return name.removesuffix(":latest")


# -- answers --------------------------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _ns(seconds: float | None) -> int:
    return int((seconds or 0.0) * 1e9)


def _text(chunk: dict[str, Any]) -> str:
    choice = (chunk.get("choices") or [{}])[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def _finish(chunk: dict[str, Any]) -> str | None:
    choices = chunk.get("choices") or []
    return choices[0].get("finish_reason") if choices else None


def _call_deltas(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """A chunk's OpenAI tool-call deltas (a call's first with its name, the next ones pieces of its arguments)."""
    choice = (chunk.get("choices") or [{}])[0]
    return (choice.get("delta") or {}).get("tool_calls") or []


def _ollama_calls(calls: dict[int, dict[str, str]]) -> list[dict[str, Any]] | None:
    """Whole calls in Ollama's shape (arguments as an object, not a JSON string); None when an arguments text is
    not complete JSON (a reply cut short)."""
    try:
        return [{"function": {"name": c["name"], "arguments": json.loads(c["arguments"])}} for c in calls.values()]
    except ValueError:
        return None


def _ollama_logprobs(chunk: dict[str, Any]) -> list[dict[str, Any]]:
    """A chunk's log-probabilities in Ollama's shape ({token, logprob, bytes, top_logprobs}), from a chat chunk's
    ``logprobs.content`` or a raw completion chunk's legacy ``logprobs``."""
    choice = (chunk.get("choices") or [{}])[0]
    lp = choice.get("logprobs") or {}
    if "content" in lp:
        return [{"token": e["token"], "logprob": e["logprob"], "bytes": e["bytes"],
                 "top_logprobs": [{"token": a["token"], "logprob": a["logprob"], "bytes": a["bytes"]}
                                  for a in e.get("top_logprobs") or []]} for e in lp["content"] or []]
    return [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8")),
             "top_logprobs": [{"token": a, "logprob": av, "bytes": list(a.encode("utf-8"))} for a, av in top.items()]}
            for t, v, top in zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], lp.get("top_logprobs") or [])]


def _details(serving: Serving) -> dict[str, Any]:
    artifact = serving.artifact
    return {"parent_model": "", "format": artifact.format, "family": artifact.model, "families": [artifact.model],
            "parameter_size": "", "quantization_level": artifact.quant}


def _model_entry(request: Request, name: str, serving: Serving) -> dict[str, Any]:
    state = request.app.state.agent.deployments.states.get(name)
    since = state.since if state else datetime.now(timezone.utc)
    return {"name": name, "model": name, "modified_at": since.isoformat().replace("+00:00", "Z"),
            "size": serving.artifact.size_bytes, "digest": serving.artifact.digest.removeprefix("sha256:"),
            "details": _details(serving)}


class _Reply:
    """One generation's NDJSON objects: a piece of text each, then the last with the counts and durations."""

    def __init__(self, serving: Serving, kind: Literal["chat", "generate"], started: float) -> None:
        self.name, self.kind, self.started = serving.desired.name, kind, started
        self.text: list[str] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.done_reason: str | None = None
        self.usage: dict[str, Any] = {}
        self.logprobs: list[dict[str, Any]] | None = None  # all of them, for a gathered reply; None: not asked
        self._calls: dict[int, dict[str, str]] = {}  # streamed tool calls by index, until the reply ends

    def _object(self, text: str, calls: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
        if self.kind == "chat":
            body: dict[str, Any] = {"message": {"role": "assistant", "content": text,
                                                **({"tool_calls": calls} if calls else {})}}
        else:
            body = {"response": text}
        return {"model": self.name, "created_at": _now(), **body, **extra}

    def piece(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The object for one runtime chunk, or None for a chunk without text or calls."""
        finish = _finish(chunk)
        # Ollama ends a reply with calls as "stop", like any other finished reply.
        self.done_reason = ("stop" if finish == "tool_calls" else finish) or self.done_reason
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for delta in _call_deltas(chunk):  # Ollama sends whole calls: gathered until the reply ends
            call = self._calls.setdefault(delta["index"], {"name": "", "arguments": ""})
            call["name"] = delta["function"].get("name") or call["name"]
            call["arguments"] += delta["function"].get("arguments") or ""
        if finish is not None and self._calls:
            calls, texts = _ollama_calls(self._calls), [c["arguments"] for c in self._calls.values()]
            self._calls = {}
            if calls is None:  # cut short: what was written, as text
                self.text.extend(texts)
                return self._object("".join(texts), done=False)
            self.tool_calls.extend(calls)
            return self._object("", calls, done=False)
        text = _text(chunk)
        if not text:
            return None
        self.text.append(text)
        logprobs = _ollama_logprobs(chunk)
        if not logprobs:
            return self._object(text, done=False)
        self.logprobs = (self.logprobs or []) + logprobs
        return self._object(text, done=False, logprobs=logprobs)

    def last(self, end: StreamEnd, *, text: str = "", calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        out = self._object(text, calls, done=True, done_reason=self.done_reason or "stop",
                           total_duration=_ns(time.perf_counter() - self.started), load_duration=0,
                           eval_count=self.usage.get("completion_tokens", end.tokens), eval_duration=_ns(end.decode_s))
        if self.usage.get("prompt_tokens") is not None:
            out["prompt_eval_count"] = self.usage["prompt_tokens"]
        out["prompt_eval_duration"] = _ns(end.ttft_s)
        return out

    def loaded(self) -> dict[str, Any]:
        """What Ollama answers a request without messages or prompt: the model is loaded."""
        return self._object("", done=True, done_reason="load")


async def _ndjson(request: Request, serving: Serving, chunks: Iterator[dict[str, Any]],
                  reply: _Reply) -> AsyncIterator[str]:
    async with aclosing(pull_stream(request, serving, chunks, reply.started)) as items:
        async for item in items:
            if isinstance(item, AgentError):
                yield json.dumps({"error": error_text(item)}) + "\n"
                return
            if isinstance(item, StreamEnd):
                yield json.dumps(reply.last(item)) + "\n"
                return
            obj = reply.piece(item)
            if obj is not None:
                yield json.dumps(obj) + "\n"


async def _gathered(request: Request, serving: Serving, chunks: Iterator[dict[str, Any]], reply: _Reply
                    ) -> JSONResponse:
    async with aclosing(pull_stream(request, serving, chunks, reply.started)) as items:
        async for item in items:
            if isinstance(item, AgentError):
                raise item
            if isinstance(item, StreamEnd):
                out = reply.last(item, text="".join(reply.text), calls=reply.tool_calls)
                if reply.logprobs is not None:
                    out["logprobs"] = reply.logprobs
                return JSONResponse(out)
            reply.piece(item)
    raise AgentError("the generation ended without its end", hint="see the agent log")  # pull_stream always ends


async def _generate(request: Request, body: _Generation, kind: Literal["chat", "generate"],
                    call: Callable[[GenerationParams, ChatExtras], Callable[[Serving], Any]], empty: bool):
    """Run one chat or generate request: checks, then the stream, sent as NDJSON or gathered."""
    started = time.perf_counter()
    body.check_supported()
    serving = serving_llm(request, body.deployment())
    if empty:
        return JSONResponse(_Reply(serving, kind, started).loaded())

    def start(s: Serving) -> Iterator[dict[str, Any]]:
        return call(body.params(s), body.extras(s))(s)

    serving, chunks = await start_stream(request, body.deployment(), start)
    reply = _Reply(serving, kind, started)
    if body.stream:
        return StreamingResponse(_ndjson(request, serving, chunks, reply), media_type=NDJSON,
                                 headers={"Cache-Control": "no-cache"})
    return await _gathered(request, serving, chunks, reply)


NUM_PREDICT = "options.num_predict"  # the field that sets max_tokens here


# -- endpoints ------------------------------------------------------------------------------------------------
@router.post("/chat")
async def chat(body: ChatBody, request: Request):
    messages = [m.as_dict() for m in body.messages]
    return await _generate(request, body, "chat",
                           lambda params, extras: chat_call(messages, params, extras, stream=True, limit_field=NUM_PREDICT),
                           empty=not messages)


@router.post("/generate")
async def generate(body: GenerateBody, request: Request):
    if body.raw:
        if body.system:
            raise BadRequest("'system' is not used with raw: true (the prompt goes to the model as is)",
                             param="system", hint="put the system text into the prompt, or drop raw")

        def call(params: GenerationParams, extras: ChatExtras) -> Callable[[Serving], Any]:
            return complete_call(body.prompt, params, extras, stream=True, limit_field=NUM_PREDICT)
    else:
        messages = ([{"role": "system", "content": body.system}] if body.system else []) + [
            {"role": "user", "content": body.prompt}]

        def call(params: GenerationParams, extras: ChatExtras) -> Callable[[Serving], Any]:
            return chat_call(messages, params, extras, stream=True, limit_field=NUM_PREDICT)

    return await _generate(request, body, "generate", call, empty=not body.prompt)


async def _embed(request: Request, name: str, inputs: list[str]) -> tuple[Serving, dict[str, Any]]:
    serving_llm(request, name)  # an unknown model is a 404 before anything runs
    serving, out = await run_admitted(request, name, lambda s: s.model.embed(inputs))
    count_usage(request, serving.desired.name, out.get("usage"), None)
    return serving, out


@router.post("/embed")
async def embed(body: EmbedBody, request: Request):
    started = time.perf_counter()
    inputs = body.inputs()
    serving, out = await _embed(request, body.deployment(), inputs)
    return {"model": serving.desired.name, "embeddings": [item["embedding"] for item in out.get("data", [])],
            "total_duration": _ns(time.perf_counter() - started), "load_duration": 0,
            "prompt_eval_count": (out.get("usage") or {}).get("prompt_tokens", 0)}


@router.post("/embeddings")
async def embeddings(body: EmbeddingsBody, request: Request):
    _, out = await _embed(request, body.deployment(), [body.prompt])
    return {"embedding": out["data"][0]["embedding"]}


@router.get("/tags")
def tags(request: Request) -> dict[str, Any]:
    serving = request.app.state.agent.deployments.serving
    return {"models": [_model_entry(request, name, s) for name, s in sorted(serving.items())
                       if s.model.kind == "llm"]}


@router.get("/ps")
def ps(request: Request) -> dict[str, Any]:
    serving = request.app.state.agent.deployments.serving
    return {"models": [{**_model_entry(request, name, s), "size_vram": 0,
                        "context_length": s.desired.context_length}
                       for name, s in sorted(serving.items()) if s.model.kind == "llm"]}


@router.post("/show")
def show(body: ShowBody, request: Request) -> dict[str, Any]:
    serving = serving_llm(request, body.deployment())
    desired = serving.desired
    features = getattr(serving.model, "extra_features", frozenset())
    capabilities = (["completion"] + (["tools"] if TOOLS in features else [])
                    + (["embedding"] if serving.model.supports_embeddings else []))
    return {"modelfile": "", "parameters": "", "template": "", "license": "",
            "modified_at": _model_entry(request, desired.name, serving)["modified_at"],
            "details": _details(serving), "capabilities": capabilities,
            "model_info": {"general.name": serving.artifact.model, "edgectl.runtime": desired.runtime,
                           "edgectl.artifact": serving.artifact.digest, "edgectl.context_length":
                               desired.context_length, "edgectl.parallel": desired.parallel}}


@router.get("/version")
def version() -> dict[str, str]:
    return {"version": OLLAMA_API_VERSION, "edgectl_agent": __version__}

"""OpenAI-compatible serving API under /v1. The model id is the deployment name.

Inference is blocking (llama.cpp), so it runs in worker threads; a streaming response pulls one chunk at a time
from a worker and closes the runtime's iterator when the client goes away, so the model is freed at once.
"""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edgectl_agent.api import TIMINGS_HEADER, check_json_values
from edgectl_agent.deployments import Serving, run_on_active
from edgectl_agent.errors import AgentError, BadRequest, NotFound
from edgectl_agent.runtimes.base import GenerationParams

router = APIRouter(prefix="/v1")
ARTIFACT_HEADER = "X-Edgectl-Artifact"


class _Request(BaseModel):
    # Unknown OpenAI fields (user, logprobs, ...) are accepted and ignored, as other OpenAI servers do.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="Deployment name.")

    @model_validator(mode="before")
    @classmethod
    def _json_values_only(cls, data: Any) -> Any:
        check_json_values(data)  # a lone surrogate would reach the tokenizer and fail there (a 500)
        return data


class _Sampling(_Request):
    max_tokens: int | None = Field(default=None, ge=1, description="Tokens to generate at most.")
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="Only one choice per request is supported.")

    def params(self) -> GenerationParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return GenerationParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                                stop=stop, seed=self.seed)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

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
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v):
        if v:
            raise ValueError("tool calling is not supported by this agent")
        return v

    def params(self) -> GenerationParams:
        p = super().params()
        if self.max_tokens is None and self.max_completion_tokens is not None:
            return GenerationParams(**{**p.__dict__, "max_tokens": self.max_completion_tokens})
        return p


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)

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
def _serving(request: Request, model: str) -> Serving:
    serving = request.app.state.agent.deployments.serving_model(model)
    if serving.model.kind != "llm":
        raise NotFound(f"the model '{model}' is a tensor model, not a language model",
                       hint=f"use the KServe v2 API: POST /v2/models/{model}/infer", param="model",
                       code="model_not_found")
    return serving


def _stamp(out: dict[str, Any], serving: Serving) -> dict[str, Any]:
    """The id clients sent, and which artifact answered."""
    out["model"] = serving.desired.name
    out["system_fingerprint"] = serving.artifact.digest
    return out


def _count_usage(request: Request, name: str, usage: dict[str, Any] | None, seconds: float | None) -> None:
    """Tokens of a whole (non-streaming) response; ``seconds`` = the call's time when it generated text."""
    if not usage:
        return
    m = request.app.state.agent.metrics
    m.prompt_tokens.labels(deployment=name).inc(usage.get("prompt_tokens") or 0)
    completion = usage.get("completion_tokens") or 0
    if seconds is None:
        m.completion_tokens.labels(deployment=name).inc(completion)
    else:  # the call includes prompt processing: a lower bound of the decode speed
        m.note_generation(name, completion, seconds, decode_tokens=completion)


def _has_token(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


_DONE = object()


class _Started:
    """A runtime's chunk iterator whose first chunk was already taken; ``close`` closes the runtime's iterator."""

    def __init__(self, first: Any, chunks: Iterator[dict[str, Any]]) -> None:
        self._first, self._chunks = first, chunks

    def __iter__(self) -> "_Started":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._first is not _DONE:
            first, self._first = self._first, _DONE
            return first
        return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


async def _start_stream(request: Request, model: str, start: Callable[[Serving], Iterator[dict[str, Any]]]
                        ) -> tuple[Serving, _Started]:
    """Start a streaming inference and take its first chunk before the response begins: from then on the stream
    holds its model (a swap closes the old model only after it), a model swapped out before that is replaced by
    the active one, and an error before the first chunk is a plain HTTP error."""

    def first_chunk(serving: Serving) -> _Started:
        chunks = start(serving)
        try:
            return _Started(next(chunks, _DONE), chunks)
        except AgentError:
            raise
        except Exception as e:  # noqa: BLE001 — the runtime's own exception classes
            raise AgentError(f"inference failed: {type(e).__name__}: {e}", hint="see the agent log") from e

    return await run_on_active(lambda: _serving(request, model), first_chunk)


def timings_chunk(obj: str, ttft_s: float | None, tokens: int, decode_s: float) -> dict[str, Any]:
    """The chunk a TIMINGS_HEADER request gets last: time to first token (from the request's arrival), tokens
    generated, and seconds from the first token to the last (decode speed = (tokens - 1) / decode_s)."""
    return {"object": obj, "choices": [],
            "timings": {"ttft_s": ttft_s, "tokens": tokens, "decode_s": decode_s}}


async def _sse(request: Request, serving: Serving, chunks: Iterator[dict[str, Any]],
               started: float) -> AsyncIterator[str]:
    m = request.app.state.agent.metrics
    name = serving.desired.name
    generated = 0
    first_at = 0.0
    noted = False
    kind = "chat.completion.chunk"
    try:
        while True:
            try:
                chunk = await anyio.to_thread.run_sync(next, chunks, _DONE)
            except AgentError as e:
                yield f"data: {json.dumps(e.body())}\n\n"
                break
            except Exception as e:  # noqa: BLE001 — headers are sent; the error must travel in the stream
                err = AgentError(f"inference failed: {type(e).__name__}: {e}", hint="see the agent log")
                yield f"data: {json.dumps(err.body())}\n\n"
                break
            if chunk is _DONE:
                decode_s = time.perf_counter() - first_at if generated else 0.0
                m.note_generation(name, generated, decode_s, decode_tokens=generated - 1)
                noted = True
                if request.headers.get(TIMINGS_HEADER):
                    timings = timings_chunk(kind, first_at - started if generated else None, generated, decode_s)
                    yield f"data: {json.dumps(_stamp(timings, serving))}\n\n"
                yield "data: [DONE]\n\n"
                break
            kind = chunk.get("object") or kind
            if _has_token(chunk):
                if generated == 0:
                    first_at = time.perf_counter()
                    m.ttft.labels(deployment=name).observe(first_at - started)
                generated += 1
            if chunk.get("usage"):
                m.prompt_tokens.labels(deployment=name).inc(chunk["usage"].get("prompt_tokens") or 0)
            yield f"data: {json.dumps(_stamp(chunk, serving))}\n\n"
    finally:
        # On a client disconnect this runs cancelled: shield it, so the runtime's iterator is closed (and the
        # model's lock released) now rather than whenever the garbage collector gets to it. The thread running
        # ``next`` has finished by now: to_thread waits for it even when cancelled.
        # Decode speed: the tokens after the first, over the time since the first (prompt processing excluded).
        if not noted:  # a stream that ended early (client gone, runtime error)
            m.note_generation(name, generated, time.perf_counter() - first_at if generated else 0.0,
                              decode_tokens=generated - 1)
        close = getattr(chunks, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close)


def _stream_response(request: Request, serving: Serving, chunks, started: float) -> StreamingResponse:
    return StreamingResponse(_sse(request, serving, chunks, started), media_type="text/event-stream",
                             headers={ARTIFACT_HEADER: serving.artifact.digest, "Cache-Control": "no-cache"})


def _json_response(request: Request, serving: Serving, out: dict[str, Any],
                   seconds: float | None = None) -> JSONResponse:
    _count_usage(request, serving.desired.name, out.get("usage"), seconds)
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
    messages = [{"role": m.role, "content": m.content or ""} for m in body.messages]
    params = body.params()
    if body.stream:
        serving, chunks = await _start_stream(request, body.model,
                                              lambda s: s.model.chat(messages, params, stream=True))
        return _stream_response(request, serving, chunks, started)
    began = time.perf_counter()
    serving, out = await run_on_active(lambda: _serving(request, body.model),
                                       lambda s: s.model.chat(messages, params))
    return _json_response(request, serving, out, time.perf_counter() - began)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    started = time.perf_counter()
    params = body.params()
    if body.stream:
        serving, chunks = await _start_stream(request, body.model,
                                              lambda s: s.model.complete(body.prompt, params, stream=True))
        return _stream_response(request, serving, chunks, started)
    began = time.perf_counter()
    serving, out = await run_on_active(lambda: _serving(request, body.model),
                                       lambda s: s.model.complete(body.prompt, params))
    return _json_response(request, serving, out, time.perf_counter() - began)


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, request: Request):
    inputs = body.inputs()
    _serving(request, body.model)  # an unknown model is a 404 before the input is judged
    if not inputs or any(not isinstance(t, str) or not t for t in inputs):
        raise BadRequest("input must be a non-empty string or a list of non-empty strings", param="input",
                         hint='send e.g. {"input": "hello"}')
    serving, out = await run_on_active(lambda: _serving(request, body.model), lambda s: s.model.embed(inputs))
    if body.encoding_format == "base64":  # what the openai client asks for by default: little-endian float32
        for item in out.get("data", []):
            vec = item["embedding"]
            item["embedding"] = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
    return _json_response(request, serving, out)

"""The one path from an API request to a loaded language model, shared by the OpenAI (/v1, ``openai.py``) and the
Ollama (/api, ``ollama.py``) routers: find the deployment's model, run a call on it in a worker thread (retried on
the model a swap made active), start a stream, and pull a stream's chunks while recording the serving metrics.

The routers differ only in how they shape requests and responses; what runs on the model, and what the metrics
see, is the same for both.

Every generation (and embedding) request is admitted first (``edgectl_agent.admission``): into the deployment's
bounded queue, or refused with a 503 and Retry-After when it is full. Its ticket ends with the request: a whole
call when it returns, a stream when its iterator is closed -- by its end, or at once when the client goes away
(``pull_stream``), which frees the model for the next request. A client that leaves during a whole (non-streaming)
call sets the ticket's ``cancelled`` event (``cancelled_on_disconnect``); the llamacpp runtime then stops decoding
at the next token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Request

from edgectl_agent.admission import REQUEST_CANCELLED, REQUEST_STARTED, Ticket
from edgectl_agent.deployments import Serving, run_on_active
from edgectl_agent.errors import AgentError, BadRequest, NotFound
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.extras import LOGPROBS, ChatExtras
from edgectl_agent.runtimes.llamacpp_engine import PENDING


def serving_llm(request: Request, model: str) -> Serving:
    """The model serving deployment ``model``; a 404 for an unknown name or a tensor model."""
    serving = request.app.state.agent.deployments.serving_model(model)
    if serving.model.kind != "llm":
        raise NotFound(f"the model '{model}' is a tensor model, not a language model",
                       hint=f"use the KServe v2 API: POST /v2/models/{model}/infer", param="model",
                       code="model_not_found")
    return serving


FEATURE_WORDS = {LOGPROBS: "log probabilities"}


def check_extras(serving: Serving, extras: ChatExtras) -> None:
    """A 400 naming the first requested field the deployment's runtime does not implement, and the runtime."""
    supported = getattr(serving.model, "extra_features", frozenset())
    for feature in extras.requested():
        if feature not in supported:
            name = extras.field_of(feature)
            what = f" ({FEATURE_WORDS[feature]})" if feature in FEATURE_WORDS else ""
            raise BadRequest(f"'{name}'{what} is not supported by the '{serving.desired.runtime}' runtime that serves "
                             f"deployment '{serving.desired.name}'", param=name, code="unsupported_parameter",
                             hint=f"leave '{name}' out, or serve the model with a runtime that has it (llamacpp)")


def count_usage(request: Request, name: str, usage: dict[str, Any] | None, seconds: float | None) -> None:
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


T = TypeVar("T")
DISCONNECT_POLL_S = 0.1  # how often a whole call checks whether its client is still there


def admit(request: Request, serving: Serving) -> Ticket:
    """A ticket in the deployment's queue (edgectl_agent.admission), or Overloaded (503 + Retry-After)."""
    agent = request.app.state.agent
    name = serving.desired.name
    ticket = agent.admission.admit(name, parallel=serving.desired.parallel,
                                   slots=getattr(serving.model, "slots", 1))
    m = agent.metrics
    ticket.on_start = lambda t: m.queue_wait.labels(deployment=name).observe(t.queue_wait_s or 0.0)
    ticket.on_end = lambda t: m.generation_duration.labels(deployment=name).observe(t.duration_s or 0.0)
    return ticket


def with_ticket(ticket: Ticket, call: Callable[[Serving], T]) -> Callable[[Serving], T]:
    """``call``, run with the ticket's start and cancel signals where the runtime can reach them (context
    variables of the worker thread that runs it)."""

    def run(serving: Serving) -> T:
        REQUEST_STARTED.set(ticket.start)
        REQUEST_CANCELLED.set(ticket.cancelled)
        return call(serving)

    return run


@asynccontextmanager
async def cancelled_on_disconnect(request: Request, ticket: Ticket) -> AsyncIterator[None]:
    """While the body runs, set ``ticket.cancelled`` if the client disconnects."""

    async def watch() -> None:
        while not await request.is_disconnected():
            await anyio.sleep(DISCONNECT_POLL_S)
        ticket.cancelled.set()

    failure: Exception | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            yield
        except Exception as e:  # noqa: BLE001 - raised below as it is, not wrapped in the task group's group
            failure = e
        finally:
            tg.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def run_admitted(request: Request, model: str, call: Callable[[Serving], T]) -> tuple[Serving, T]:
    """``call`` on the active model of ``model`` once admitted to its queue; the ticket ends when it returns."""
    ticket = admit(request, serving_llm(request, model))
    try:
        async with cancelled_on_disconnect(request, ticket):
            result = await run_on_active(lambda: serving_llm(request, model), with_ticket(ticket, call))
        ticket.start()  # a runtime that does not say when it starts: it ran
        return result
    finally:
        ticket.end()


async def run_counted(request: Request, model: str, call: Callable[[Serving], dict[str, Any]]
                      ) -> tuple[Serving, dict[str, Any]]:
    """A whole (non-streaming) generation on the active model of ``model``, its tokens counted in the metrics."""
    began = time.perf_counter()
    serving, out = await run_admitted(request, model, call)
    count_usage(request, serving.desired.name, out.get("usage"), time.perf_counter() - began)
    return serving, out


_DONE = object()
_NOT_TAKEN = object()  # a StartedStream whose first chunk is still to be taken (``take_first``)


class StartedStream:
    """A runtime's chunk iterator whose first chunk was already taken (or, for a stream read in the event loop, is
    taken by ``take_first``); ``close`` closes the runtime's iterator and ends the request's ticket (its place in
    the deployment's queue)."""

    def __init__(self, first: Any, chunks: Iterator[dict[str, Any]]) -> None:
        self._first, self._chunks = first, chunks
        self.ticket: Ticket | None = None
        self._waker: Any = None

    def __iter__(self) -> "StartedStream":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._first is not _DONE:
            first, self._first = self._first, _DONE
            return first
        return next(self._chunks)

    @property
    def read_in_loop(self) -> bool:
        """Whether the runtime's chunks can be read in the event loop (``edgectl_agent.runtimes.llamacpp_engine.
        EngineStream``: it gives PENDING and wakes a waker rather than blocking)."""
        return getattr(self._chunks, "wake_on", None) is not None

    def wake_on(self, loop: asyncio.AbstractEventLoop) -> Any:
        """The runtime stream's waker (one per stream), or None: a runtime whose chunks are pulled in a worker
        thread."""
        if self._waker is None and self.read_in_loop:
            self._waker = self._chunks.wake_on(loop)
        return self._waker

    async def take_first(self) -> None:
        """Wait in the event loop for the first chunk of a stream ``read_in_loop`` (a worker thread would otherwise
        block on it: two more thread hops before the first token)."""
        if self._first is not _NOT_TAKEN:
            return
        waker = self.wake_on(asyncio.get_running_loop())
        while self._first is _NOT_TAKEN:
            waker.ready.clear()
            try:
                first = next(self._chunks, _DONE)
            except AgentError:
                raise
            except Exception as e:  # noqa: BLE001 — the runtime's own exception classes
                raise _inference_failed(e) from e
            if first is PENDING:
                await waker.ready.wait()
            else:
                self._first = first

    def close(self) -> None:
        try:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()
        finally:
            if self.ticket is not None:
                self.ticket.end()


def _inference_failed(e: Exception) -> AgentError:
    return AgentError(f"inference failed: {type(e).__name__}: {e}", hint="see the agent log")


async def start_stream(request: Request, model: str, start: Callable[[Serving], Iterator[dict[str, Any]]]
                       ) -> tuple[Serving, StartedStream]:
    """Start a streaming inference and take its first chunk before the response begins: from then on the stream
    holds its model (a swap closes the old model only after it), a model swapped out before that is replaced by
    the active one, and an error before the first chunk is a plain HTTP error."""

    def first_chunk(serving: Serving) -> StartedStream:
        chunks = start(serving)
        if getattr(chunks, "wake_on", None) is not None:
            return StartedStream(_NOT_TAKEN, chunks)
        try:
            return StartedStream(next(chunks, _DONE), chunks)
        except AgentError:
            raise
        except Exception as e:  # noqa: BLE001 — the runtime's own exception classes
            raise _inference_failed(e) from e

    ticket = admit(request, serving_llm(request, model))
    try:
        serving, stream = await run_on_active(lambda: serving_llm(request, model), with_ticket(ticket, first_chunk))
    except BaseException:
        ticket.end()
        raise
    try:
        await stream.take_first()
    except BaseException:  # an error, or the client went away: the sequence stops, its slot is freed
        stream.close()
        ticket.end()
        raise
    ticket.start()  # a runtime that does not say when it starts: its first chunk came
    stream.ticket = ticket
    return serving, stream


def has_token(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or []:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


@dataclass(frozen=True)
class StreamEnd:
    """The last item ``pull_stream`` yields for a stream that ran to its end: time to first token (from the
    request's arrival; None without tokens), chunks with text, and seconds from the first token to the last."""

    ttft_s: float | None
    tokens: int
    decode_s: float


async def pull_stream(request: Request, serving: Serving, chunks: Iterator[dict[str, Any]], started: float
                      ) -> AsyncIterator[dict[str, Any] | AgentError | StreamEnd]:
    """The runtime's chunks; then a ``StreamEnd``, or an ``AgentError`` (headers are sent by then: the caller writes
    it into the stream). Records time to first token and decode speed.

    A runtime whose stream has ``wake_on`` (the llamacpp engine; a supervised server's ``UpstreamStream``, which a
    reader thread of its own fills) is read right here in the event loop, waiting on its waker between tokens; any
    other runtime's chunks are each pulled in a worker thread."""
    m = request.app.state.agent.metrics
    name = serving.desired.name
    generated = 0
    first_at = 0.0
    noted = False
    wake_on = getattr(chunks, "wake_on", None)
    waker = wake_on(asyncio.get_running_loop()) if wake_on is not None else None  # StartedStream's: its runtime's
    try:
        while True:
            try:
                if waker is None:
                    chunk = await anyio.to_thread.run_sync(next, chunks, _DONE)
                else:
                    waker.ready.clear()  # before looking: an event the engine puts from now on sets it again
                    chunk = next(chunks, _DONE)
                    if chunk is PENDING:
                        await waker.ready.wait()
                        continue
            except AgentError as e:
                yield e
                break
            except Exception as e:  # noqa: BLE001 — the runtime's own exception classes
                yield _inference_failed(e)
                break
            if chunk is _DONE:
                decode_s = time.perf_counter() - first_at if generated else 0.0
                m.note_generation(name, generated, decode_s, decode_tokens=generated - 1)
                if generated >= 2:
                    m.time_per_output_token.labels(deployment=name).observe(decode_s / (generated - 1))
                noted = True
                yield StreamEnd(first_at - started if generated else None, generated, decode_s)
                break
            if has_token(chunk):
                if generated == 0:
                    first_at = time.perf_counter()
                    m.ttft.labels(deployment=name).observe(first_at - started)
                generated += 1
            if chunk.get("usage"):
                m.prompt_tokens.labels(deployment=name).inc(chunk["usage"].get("prompt_tokens") or 0)
            yield chunk
    finally:
        # On a client disconnect this runs cancelled: shield it, so the runtime's iterator is closed (and the
        # model's lock released) now rather than whenever the garbage collector gets to it. The thread running
        # ``next`` has finished by now: to_thread waits for it even when cancelled.
        # Decode speed: the tokens after the first, over the time since the first (prompt processing excluded).
        if not noted:  # a stream that ended early (client gone, runtime error)
            m.note_generation(name, generated, time.perf_counter() - first_at if generated else 0.0,
                              decode_tokens=generated - 1)
        close = getattr(chunks, "close", None)
        if close is not None and waker is not None:  # a stream read in the event loop closes without waiting
            close()
        elif close is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close)


def check_max_tokens(serving: Serving, params: GenerationParams, field: str) -> None:
    """A 400 naming ``field`` when the reply alone may not fit the deployment's context (prompt and reply share
    it), instead of a reply silently cut short."""
    context = serving.desired.context_length
    if params.max_tokens is not None and params.max_tokens > context:
        raise BadRequest(f"'{field}' is {params.max_tokens}: the reply alone would exceed the context length of "
                         f"deployment '{serving.desired.name}' ({context} tokens, shared by the prompt and the reply)",
                         param=field,
                         code="invalid_value", hint=f"ask for at most {context} tokens, or deploy with a larger "
                                                    "context_length")


def chat_call(messages: list[dict[str, Any]], params: GenerationParams, extras: ChatExtras, *,
              stream: bool = False, limit_field: str = "max_tokens") -> Callable[[Serving], Any]:
    """What runs on the model for a chat request: ``chat``, or ``chat_with_extras`` once the runtime is known to
    implement every extra asked for. ``limit_field``: the request field that set ``params.max_tokens``."""

    def call(serving: Serving) -> Any:
        check_max_tokens(serving, params, limit_field)
        if not extras:
            return serving.model.chat(messages, params, stream=stream)
        check_extras(serving, extras)
        return serving.model.chat_with_extras(messages, params, extras, stream=stream)

    return call


def complete_call(prompt: str, params: GenerationParams, extras: ChatExtras, *,
                  stream: bool = False, limit_field: str = "max_tokens") -> Callable[[Serving], Any]:
    """What runs on the model for a raw completion, like ``chat_call``."""

    def call(serving: Serving) -> Any:
        check_max_tokens(serving, params, limit_field)
        if not extras:
            return serving.model.complete(prompt, params, stream=stream)
        check_extras(serving, extras)
        return serving.model.complete_with_extras(prompt, params, extras, stream=stream)

    return call

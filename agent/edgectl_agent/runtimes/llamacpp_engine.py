"""Continuous batching on llama.cpp: a deployment's ``parallel`` requests decoded together, one batch per step.

One thread per model (``BatchEngine``) owns the llama.cpp context and makes every llama.cpp call: it loads the model,
and each step it puts one token of every running sequence -- and as much of the newly arrived prompts as the batch
has room for -- into one ``llama_decode``, then samples each sequence's next token from its own sampler chain
(grammar included). A request joins the batch between two steps and leaves it when it ends (end of generation,
``max_tokens``, the end of its context, a stop string, or its client going away): its KV cells are freed at once
and the next waiting request takes its place. The context holds ``parallel`` sequences of ``context_length`` tokens
each (``n_ctx = context_length x parallel``, split per sequence: the KV budget the planner reserves).

The request's side turns the engine's tokens into text: incremental UTF-8, stop strings held back until they cannot
start a stop string, OpenAI's logprobs, usage. A whole reply reads them in the request's worker thread. A stream
reads them in the server's event loop (``wake_on``): the engine wakes each event loop once per step for all its
streams with new tokens (right before its next ``llama_decode``), rather than handing each token to a worker thread
and back: on 2 cores every such hand-off takes a core from llama.cpp's decode threads. A deployment loaded for embeddings, or
with a named ``chat_format``, keeps the one-call runtime instead (``LlamaCppRuntime.load``,
``edgectl_agent.runtimes.llamacpp.LlamaCppModel``).

Why in-process and not a supervised ``llama-server``: docs/benchmarks.md ("Serving with continuous batching") has
the figures;
llama-server is not shipped on every platform the agent runs on (aarch64 devices install wheels only), and the
in-process engine keeps one process, one auth boundary and the blue-green swap as they are.

Over 500 lines: the engine thread and the request side that reads its sequences (``text_events``,
``EngineStream``) share one protocol (the events, ``PENDING``, the waker) and read best side by side.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import json
import math
import queue
import random
import threading
from asyncio import AbstractEventLoop, Event
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from edgectl_agent.errors import BadRequest, ModelUnavailable, RuntimeFailure

MAX_TOP_LOGPROBS = 20  # OpenAI's limit


@dataclass(frozen=True)
class Sampling:
    """How one sequence picks its tokens (llama-cpp-python's defaults where the request says nothing)."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    seed: int | None = None
    grammar: str | None = None  # GBNF, root rule "root"
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: and the k most likely


@dataclass
class Sequence:
    """One request in the engine. The engine thread writes ``events``; the request's thread reads them:
    ``("token", piece_bytes, logprob_entry|None)``, then ``("end", reason)`` with reason "stop" (end of generation),
    "length" (max_tokens or the context's end), "cancelled", or ``("error", exception)``."""

    prompt: list[int]
    max_tokens: int
    sampling: Sampling
    cancelled: threading.Event = field(default_factory=threading.Event)  # set by its reader: stop it
    client_gone: threading.Event | None = None  # the request's (admission's): its client went away
    on_start: Callable[[], None] | None = None
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    waker: StreamWaker | None = None  # set by a reader in an event loop: never block, wait on its event instead
    # engine-side state
    seq_id: int = -1
    fed: int = 0  # prompt tokens already decoded
    n_past: int = 0  # tokens in this sequence's KV cells
    generated: int = 0
    kv_tokens: list[int] = field(default_factory=list)  # the tokens in its KV cells, in order
    last: int = -1  # the token to feed next step
    sampler: Any = None
    batch_index: int = -1  # where this sequence's logits are in the step's batch


class StreamWaker:
    """An asyncio event a stream's reader awaits until its sequence has new events; the engine sets it from its own
    thread (``BatchEngine._wake``: one ``call_soon_threadsafe`` per event loop and step)."""

    def __init__(self, loop: AbstractEventLoop) -> None:
        self.loop = loop
        self.ready = Event()


def _set_all(wakers: list[StreamWaker]) -> None:
    for w in wakers:
        w.ready.set()


# What ``text_events`` and an ``EngineStream`` give, instead of blocking, when their sequence has a waker and no
# event is waiting: await the waker's event, then ask again.
PENDING: Any = object()


class BatchEngine:
    """The thread that owns one llama.cpp model and context and decodes its sequences together (module docstring).
    ``submit`` hands it a sequence; ``close`` lets the running ones finish, then frees everything."""

    def __init__(self, path: str, *, name: str, parallel: int, context_length: int, threads: int | None,
                 n_batch: int = 512, model_options: dict[str, Any] | None = None,
                 context_options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.parallel = parallel
        self.context_length = context_length
        self.n_batch = max(n_batch, parallel)
        self._inbox: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._cond = threading.Condition()
        self._closing = False
        self._users = 0  # request threads using the model's vocabulary now (tokenizing, compiling a grammar)
        self._free_ids = list(range(parallel))
        # What each free slot's KV cells still hold from its last request: a request whose prompt starts the same
        # way (a conversation's next turn, a shared system prompt) decodes only the rest (llama-server's
        # cache_prompt).
        self._cached: dict[int, list[int]] = {i: [] for i in range(parallel)}
        self._to_wake: dict[int, StreamWaker] = {}  # engine thread only: wakers of sequences with new events
        self._pieces: dict[int, bytes] = {}  # token -> its bytes (engine thread only)
        self._loaded = threading.Event()
        self._load_error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._main, name=f"llama.cpp:{name}",
            args=(path, threads, dict(model_options or {}), dict(context_options or {})), daemon=True)
        self._thread.start()
        self._loaded.wait()
        if self._load_error is not None:
            self._thread.join()
            raise self._load_error

    # -- the request's side -------------------------------------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        if len(seq.prompt) >= self.context_length:
            raise BadRequest(f"the prompt is {len(seq.prompt)} tokens; deployment '{self.name}' has a context of "
                             f"{self.context_length} per request",
                             hint="shorten the prompt, or deploy with a larger context_length", param="messages")
        with self._cond:
            if self._closing:
                raise ModelUnavailable(f"model '{self.name}' was unloaded while this request waited",
                                       hint="retry the request; it is answered by the model now active")
            self._inbox.append(seq)
            self._cond.notify()

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """While the body runs, the model is not freed (a request tokenizing or compiling a grammar against its
        vocabulary); a model being swapped out answers ModelUnavailable, which the request retries on the active
        one."""
        with self._cond:
            if self._closing:
                raise ModelUnavailable(f"model '{self.name}' was unloaded while this request waited",
                                       hint="retry the request; it is answered by the model now active")
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    def kv_cells_used(self) -> tuple[int, int]:
        """(KV cells holding tokens of running sequences, KV cells of the context): the cache usage."""
        with self._cond:
            used = sum(s.n_past for s in self._running) + sum(len(self._cached[i]) for i in self._free_ids)
        return used, self.context_length * self.parallel

    def close(self) -> None:
        """Refuse new sequences, let the running and waiting ones finish, then free the model (waits)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- tokenizer (read-only once loaded: safe from any thread, inside ``in_use``) --------------------------------
    def tokenize(self, text: str, *, add_bos: bool, special: bool = True) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def piece(self, token: int) -> bytes:
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._model.vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    # -- the engine thread --------------------------------------------------------------------------------------
    def _main(self, path: str, threads: int | None, model_options: dict[str, Any],
              context_options: dict[str, Any]) -> None:
        try:
            self._load(path, threads, model_options, context_options)
        except BaseException as e:  # noqa: BLE001 - handed to the loading thread
            self._load_error = e
            self._loaded.set()
            return
        self._loaded.set()
        try:
            self._loop()
        finally:
            with self._cond:  # the last tokenizing request is done with the vocabulary
                while self._users:
                    self._cond.wait()
            self._free()

    def _load(self, path: str, threads: int | None, model_options: dict[str, Any],
              context_options: dict[str, Any]) -> None:
        import llama_cpp
        from llama_cpp import _internals as internals

        self._llama_cpp = llama_cpp
        llama_cpp.set_verbose(False)  # llama.cpp's load log goes to the agent log only when asked (as Llama does)
        model_params = llama_cpp.llama_model_default_params()
        for key, value in model_options.items():
            setattr(model_params, key, value)
        self._model = internals.LlamaModel(path_model=path, params=model_params, verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.context_length * self.parallel
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_batch, context_options.pop("n_ubatch", 512))
        params.n_seq_max = self.parallel
        params.kv_unified = False  # each sequence its own context_length of cells
        # llama-cpp-python's default (flash_attn=False), so replies match what its Llama gave before; the
        # runtime option flash_attn turns it on.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if threads is not None:
            params.n_threads = threads
            params.n_threads_batch = threads
        for key, value in context_options.items():
            setattr(params, key, value)
        try:
            self._ctx = internals.LlamaContext(model=self._model, params=params, verbose=False)
        except BaseException:
            self._model.close()
            raise
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self.n_vocab = self._model.n_vocab()
        self.add_bos = self._model.add_bos_token()

    def _free(self) -> None:
        self._llama_cpp.llama_batch_free(self._batch)
        self._ctx.close()
        self._model.close()

    def _loop(self) -> None:
        while True:
            if not self._running:
                self._wake()  # nothing to decode: the last events go to their readers now
            with self._cond:
                while not self._running and not self._inbox and not self._closing:
                    self._cond.wait()
                if self._closing and not self._running and not self._inbox:
                    return
                while self._inbox and self._free_ids:
                    self._join(self._inbox.popleft())
            self._drop_cancelled()
            if self._running:
                self._step()  # which wakes the readers of the last step's tokens right before its llama_decode

    def _emit(self, seq: Sequence, event: tuple) -> None:
        seq.events.put(event)
        if seq.waker is not None:
            self._to_wake[id(seq.waker)] = seq.waker

    def _wake(self) -> None:
        """Wake the readers of this step's events: one call into each event loop, however many streams it has."""
        if not self._to_wake:
            return
        by_loop: dict[AbstractEventLoop, list[StreamWaker]] = {}
        for w in self._to_wake.values():
            by_loop.setdefault(w.loop, []).append(w)
        self._to_wake.clear()
        for loop, wakers in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: its streams are gone
                loop.call_soon_threadsafe(_set_all, wakers)

    def _join(self, seq: Sequence) -> None:
        seq.seq_id = max(self._free_ids, key=lambda i: (common_prefix(self._cached[i], seq.prompt), -i))
        self._free_ids.remove(seq.seq_id)
        # Reuse the cells of the prompt's cached prefix; the last prompt token is always decoded (its logits).
        keep = min(common_prefix(self._cached.pop(seq.seq_id), seq.prompt), len(seq.prompt) - 1)
        self._llama_cpp.llama_memory_seq_rm(self._memory, seq.seq_id, keep, -1)
        seq.fed = seq.n_past = keep
        seq.kv_tokens = list(seq.prompt[:keep])
        seq.sampler = self._sampler(seq.sampling)
        self._running.append(seq)
        if seq.on_start is not None:
            seq.on_start()

    def _leave(self, seq: Sequence, event: tuple) -> None:
        if seq.sampler is not None:
            seq.sampler.close()
        with self._cond:
            self._running.remove(seq)
            self._free_ids.append(seq.seq_id)
            self._cached[seq.seq_id] = seq.kv_tokens
        self._emit(seq, event)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._running
                    if s.cancelled.is_set() or (s.client_gone is not None and s.client_gone.is_set())]:
            self._leave(seq, ("end", "cancelled"))

    def _sampler(self, s: Sampling) -> Any:
        from llama_cpp import _internals as internals
        from llama_cpp.llama_grammar import LlamaGrammar

        sampler = internals.LlamaSampler()
        if s.grammar is not None:
            sampler.add_grammar(self._model, LlamaGrammar.from_string(s.grammar, verbose=False))
        if s.temperature <= 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(s.top_k)
            sampler.add_top_p(s.top_p, 1)
            sampler.add_min_p(s.min_p, 1)
            sampler.add_temp(s.temperature)
            sampler.add_dist(s.seed if s.seed is not None else random.getrandbits(32))
        return sampler

    def _step(self) -> None:
        """One llama_decode: a token of each generating sequence, then prompt tokens while the batch has room."""
        batch = self._batch
        n = 0
        for seq in self._running:
            seq.batch_index = -1
            if seq.fed == len(seq.prompt):
                self._put(n, seq.last, seq, logits=True)
                seq.batch_index = n
                seq.n_past += 1
                seq.kv_tokens.append(seq.last)
                n += 1
        for seq in self._running:
            while seq.fed < len(seq.prompt) and n < self.n_batch:
                last = seq.fed == len(seq.prompt) - 1
                self._put(n, seq.prompt[seq.fed], seq, logits=last)
                if last:
                    seq.batch_index = n
                seq.kv_tokens.append(seq.prompt[seq.fed])
                seq.fed += 1
                seq.n_past += 1
                n += 1
        batch.n_tokens = n
        # The last step's tokens go to their readers now, so that the event loop's work on them runs while
        # llama_decode has released the GIL, not while this thread wants it to build the next batch.
        self._wake()
        rc = self._llama_cpp.llama_decode(self._ctx.ctx, batch)
        if rc != 0:
            error = RuntimeFailure(f"llama.cpp could not decode a batch of {n} tokens (llama_decode returned {rc})",
                                   hint="the KV cache is full or the model failed: retry; see the agent log")
            for seq in list(self._running):
                self._llama_cpp.llama_memory_seq_rm(self._memory, seq.seq_id, -1, -1)
                seq.kv_tokens = []
                self._leave(seq, ("error", error))
            return
        for seq in [s for s in self._running if s.batch_index >= 0]:
            self._sample(seq)

    def _put(self, i: int, token: int, seq: Sequence, *, logits: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = seq.n_past
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq.seq_id
        batch.logits[i] = logits

    def _sample(self, seq: Sequence) -> None:
        llama_cpp = self._llama_cpp
        token = llama_cpp.llama_sampler_sample(seq.sampler.sampler, self._ctx.ctx, seq.batch_index)
        if llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
            self._leave(seq, ("end", "stop"))
            return
        entry = self._logprobs(seq, token) if seq.sampling.logprobs is not None else None
        seq.generated += 1
        seq.last = token
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.piece(token)
        self._emit(seq, ("token", piece, entry))
        if seq.generated >= seq.max_tokens or seq.n_past + 1 >= self.context_length:
            self._leave(seq, ("end", "length"))

    def _logprobs(self, seq: Sequence, token: int) -> tuple[float, list[tuple[bytes, float]]]:
        """The chosen token's log-probability under the model's distribution, and the ``logprobs`` most likely."""
        import numpy as np

        ptr = self._llama_cpp.llama_get_logits_ith(self._ctx.ctx, seq.batch_index)
        logits = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float64)
        top = logits.max()
        log_z = top + math.log(float(np.exp(logits - top).sum()))
        k = seq.sampling.logprobs or 0
        best = np.argpartition(-logits, k)[:k] if k else np.array([], dtype=int)
        best = best[np.argsort(-logits[best])]
        return float(logits[token] - log_z), [(self.piece(int(t)), float(logits[t] - log_z)) for t in best]


# A schema can ask for a grammar of millions of rules (maxLength: 1000000); llama.cpp would parse it per request.
MAX_GRAMMAR_BYTES = 256 * 1024


def compile_json_grammar(schema: dict[str, Any], param: str, vocab: Any = None) -> Any:
    """A llama.cpp grammar that admits exactly the JSON valid against ``schema`` (llama-cpp-python's JSON Schema
    converter, then, given the model's ``vocab``, llama.cpp's GBNF parser: llama-cpp-python itself would hand a
    grammar that fails to parse to the sampler as a null pointer). Either failing is a 400 naming ``param``."""
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    hint = ("use the JSON Schema subset llama.cpp supports (type, properties, required, items, enum, const, "
            "anyOf, $ref to $defs, patterns anchored with ^...$) and modest length limits")
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except Exception as e:  # noqa: BLE001 - the converter fails with AssertionError, KeyError, ValueError, ...
        raise BadRequest(f"{param}: llama.cpp cannot compile this JSON Schema into a grammar: "
                         f"{type(e).__name__}: {e}", param=param, code="invalid_json_schema", hint=hint) from e
    if len(gbnf) > MAX_GRAMMAR_BYTES:
        raise BadRequest(f"{param}: this JSON Schema makes a grammar of {len(gbnf)} bytes, more than the "
                         f"{MAX_GRAMMAR_BYTES} the agent compiles", param=param, code="invalid_json_schema",
                         hint="lower maxLength / minItems / maxItems, or split the schema")
    if vocab is not None:
        import llama_cpp

        sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not sampler:
            raise BadRequest(f"{param}: llama.cpp cannot parse the grammar made from this JSON Schema",
                             param=param, code="invalid_json_schema", hint=hint)
        llama_cpp.llama_sampler_free(sampler)
    return LlamaGrammar.from_string(gbnf, verbose=False)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def stop_position(text: str, stops: list[str]) -> int:
    """Where the earliest stop string starts in ``text``; -1 if none does."""
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters of ``text`` may be the start of a stop string (kept until the next token)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if s.startswith(text[-k:]):
                hold = k
                break
    return hold


LogprobEntry = tuple[str, bytes, float, list[tuple[str, bytes, float]]]  # token, its bytes, logprob, top ones


def text_events(seq: Sequence, stops: list[str]) -> Iterator[tuple[str, list[LogprobEntry], str | None]]:
    """(text, logprob entries of the tokens in that text, finish_reason) for one submitted sequence: text with the
    request's stop strings applied, then ("", [], reason). Closing the iterator cancels the sequence. With a waker
    set on the sequence, it gives ``PENDING`` instead of waiting for the engine's next event."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    pending_lp: list = []
    try:
        while True:
            if seq.waker is not None and seq.events.empty():
                yield PENDING
                continue
            event = seq.events.get()
            if event[0] == "error":
                raise event[1]
            if event[0] == "end":
                tail = pending + decoder.decode(b"", final=True)
                hit = stop_position(tail, stops)
                if hit >= 0:
                    tail = tail[:hit]
                if tail:
                    yield tail, pending_lp, None
                yield "", [], ("stop" if event[1] in ("stop", "cancelled") else event[1])
                return
            _, raw, entry = event
            if entry is not None:
                logprob, top = entry
                pending_lp.append((raw.decode("utf-8", errors="replace"), raw, logprob,
                                   [(alt.decode("utf-8", errors="replace"), alt, lp) for alt, lp in top]))
            pending += decoder.decode(raw)
            hit = stop_position(pending, stops)
            if hit >= 0:
                if pending[:hit]:
                    yield pending[:hit], pending_lp, None
                seq.cancelled.set()
                yield "", [], "stop"
                return
            keep = held_back(pending, stops)
            if len(pending) > keep:
                yield pending[:len(pending) - keep], pending_lp, None
                pending, pending_lp = pending[len(pending) - keep:], []
    finally:
        seq.cancelled.set()  # no-op once it ended; a closed stream frees its slot at the next step



class EngineStream:
    """A stream's chunks (``chunks``, made from ``text_events`` of ``seq``), read by the server either in a worker
    thread (``next`` waits for the engine) or, once ``wake_on`` was called, in its event loop: ``next`` then never
    waits, it gives ``PENDING`` and the reader awaits the returned waker's event."""

    def __init__(self, seq: Sequence, chunks: Iterator[dict[str, Any]]) -> None:
        self.seq = seq
        self._chunks = chunks

    def __iter__(self) -> "EngineStream":
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._chunks)

    def wake_on(self, loop: AbstractEventLoop) -> StreamWaker:
        self.seq.waker = StreamWaker(loop)
        return self.seq.waker

    def close(self) -> None:
        self._chunks.close()

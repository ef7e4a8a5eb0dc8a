"""The llamacpp runtime's generating model: OpenAI chat and completion on the continuous-batching engine
(``edgectl_agent.runtimes.llamacpp_engine``), ``parallel`` requests at once.

It renders chat templates with llama-cpp-python's sandboxed Jinja formatter (the same one ``check_chat_template``
probes at load), tokenizes, hands the engine a ``Sequence``, and shapes the engine's tokens into OpenAI dicts and
stream chunks: stop strings, usage counted exactly (prompt and generated tokens), logprobs, JSON Schema replies and
tool calls by grammar (``compile_json_grammar``, ``edgectl_agent.runtimes.tool_calls``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from edgectl_agent.admission import REQUEST_CANCELLED, REQUEST_STARTED, ClientGone
from edgectl_agent.errors import BadRequest
from edgectl_agent.runtimes.base import GenerationParams, LoadedModel
from edgectl_agent.runtimes.extras import INCLUDE_USAGE, LOGPROBS, RESPONSE_FORMAT, TOOLS, ChatExtras, usage_chunk
from edgectl_agent.runtimes.llamacpp_engine import (PENDING, BatchEngine, EngineStream, Sampling, Sequence,
                                                    compile_json_grammar, text_events)
from edgectl_agent.runtimes.tool_calls import (StreamedCalls, arguments_schema, parse_reply, reply_schema,
                                               tools_message, with_tools_message)

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's and llama-cpp-python's default for /v1/completions
CHAT_TEMPERATURE = 0.2  # llama-cpp-python's default for chat; 0.8 for completions


def chat_formatter(engine: BatchEngine) -> Any:
    """``messages -> ChatFormatterResponse`` from the GGUF's chat template (llama-cpp-python's sandboxed Jinja
    formatter), or llama-cpp-python's fallback format (llama-2) for a GGUF without one."""
    from llama_cpp import llama_chat_format

    model = engine._model
    template = model.metadata().get("tokenizer.chat_template")
    if not template:
        return lambda messages: llama_chat_format.format_llama2(messages=messages)
    eos, bos = model.token_eos(), model.token_bos()
    return llama_chat_format.Jinja2ChatFormatter(
        template=template, eos_token=model.token_get_text(eos) if eos != -1 else "",
        bos_token=model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])


def reply_as_chunks(run, extras: ChatExtras) -> Iterator[dict[str, Any]]:
    """A whole reply (``run()``: a chat.completion dict) sent as stream chunks: a tool-call reply is known only once
    its JSON is complete."""
    out = run()
    base = {k: out[k] for k in ("id", "created", "model")}
    base["object"] = "chat.completion.chunk"
    choice = out["choices"][0]
    message = choice["message"]
    if message.get("tool_calls"):
        delta: dict[str, Any] = {"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]}
    else:
        delta = {"content": message["content"]}
    for piece, finish in (({"role": "assistant"}, None), (delta, None), ({}, choice["finish_reason"])):
        yield {**base, "choices": [{"index": 0, "delta": piece, "logprobs": None, "finish_reason": finish}]}
    if extras.include_usage:
        yield usage_chunk(base, out["usage"]["prompt_tokens"], out["usage"]["completion_tokens"])


def _entry(token: str, raw: bytes, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(raw)}


def chat_logprobs(entries: list) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs`` of a chat completion from the engine's (token, bytes, logprob, top)."""
    return {"content": [{**_entry(t, raw, lp), "top_logprobs": [_entry(*alt) for alt in top]}
                        for t, raw, lp, top in entries]}


def completion_logprobs(entries: list, offset: int) -> dict[str, Any]:
    """OpenAI's legacy ``choices[].logprobs`` of a completion (tokens, token_logprobs, top_logprobs, text_offset)
    from the engine's (token, bytes, logprob, top); ``offset``: where the first token starts in the reply."""
    offsets = []
    for t, *_ in entries:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": [t for t, *_ in entries], "token_logprobs": [lp for _, _, lp, _ in entries],
            "top_logprobs": [{alt: alp for alt, _, alp in top} for *_, top in entries], "text_offset": offsets}


class BatchedLlamaModel(LoadedModel):
    extra_features = frozenset({RESPONSE_FORMAT, INCLUDE_USAGE, TOOLS, LOGPROBS})
    supports_embeddings = False

    def __init__(self, engine: BatchEngine, *, name: str) -> None:
        self.name = name
        self.engine = engine
        self.slots = engine.parallel
        self._format = chat_formatter(engine)

    # -- requests to sequences ----------------------------------------------------------------------------------
    def _chat_prompt(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
        from jinja2 import TemplateError

        try:
            formatted = self._format(messages=messages)
        except TemplateError as e:
            raise BadRequest(f"the model's chat template failed on these messages: {type(e).__name__}: {e}",
                             hint="send plain string contents; if it persists, the artifact's chat template is "
                                  "broken or hostile: rebuild it", code="chat_template_failed") from e
        stop = formatted.stop or []
        stops = [stop] if isinstance(stop, str) else list(stop)
        tokens = self.engine.tokenize(formatted.prompt, add_bos=self.engine.add_bos and not formatted.added_special)
        return tokens, stops

    def _sequence(self, prompt: list[int], params: GenerationParams, *, default_temperature: float,
                  default_max_tokens: int | None, grammar: str | None = None, logprobs: int | None = None
                  ) -> Sequence:
        room = self.engine.context_length - len(prompt)
        max_tokens = params.max_tokens if params.max_tokens is not None else (default_max_tokens or room)
        sampling = Sampling(temperature=params.temperature if params.temperature is not None else default_temperature,
                            top_p=params.top_p if params.top_p is not None else 0.95, seed=params.seed,
                            grammar=grammar, logprobs=logprobs)
        seq = Sequence(prompt=prompt, max_tokens=max(1, min(max_tokens, room)), sampling=sampling,
                       client_gone=REQUEST_CANCELLED.get(), on_start=REQUEST_STARTED.get())
        self.engine.submit(seq)
        return seq

    def _collect(self, seq: Sequence, stops: list[str]) -> tuple[str, str, list]:
        parts, entries, reason = [], [], "stop"
        for text, lps, finish in text_events(seq, stops):
            parts.append(text)
            entries.extend(lps)
            reason = finish or reason
        if seq.client_gone is not None and seq.client_gone.is_set():
            raise ClientGone("the client went away; its generation was stopped")
        return "".join(parts), reason, entries

    @staticmethod
    def _usage(seq: Sequence) -> dict[str, int]:
        return {"prompt_tokens": len(seq.prompt), "completion_tokens": seq.generated,
                "total_tokens": len(seq.prompt) + seq.generated}

    # -- chat ---------------------------------------------------------------------------------------------------
    def chat(self, messages, params: GenerationParams, *, stream: bool = False):
        return self.chat_with_extras(messages, params, ChatExtras(), stream=stream)

    def chat_with_extras(self, messages, params: GenerationParams, extras: ChatExtras, *, stream: bool = False):
        if extras.uses_tools:
            return self._chat_with_tools(messages, params, extras, stream=stream)
        with self.engine.in_use():
            grammar = self._grammar(extras)
            prompt, stops = self._chat_prompt(messages)
            seq = self._sequence(prompt, params, default_temperature=CHAT_TEMPERATURE, default_max_tokens=None,
                                 grammar=grammar, logprobs=extras.logprobs)
        stops = [*params.stop, *stops]
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.name}
        if stream:
            return EngineStream(seq, self._chat_chunks(base, seq, stops, extras))
        text, reason, entries = self._collect(seq, stops)
        return {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": chat_logprobs(entries) if extras.logprobs is not None else None,
                             "finish_reason": reason}],
                "usage": self._usage(seq)}

    def _chat_chunks(self, base, seq: Sequence, stops: list[str], extras: ChatExtras) -> Iterator[dict[str, Any]]:
        chunk = {**base, "object": "chat.completion.chunk"}
        yield {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}]}
        events = text_events(seq, stops)
        try:
            for item in events:
                if item is PENDING:
                    yield PENDING
                    continue
                text, lps, finish = item
                delta = {"content": text} if text else {}
                logprobs = chat_logprobs(lps) if extras.logprobs is not None and lps else None
                yield {**chunk, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                             "finish_reason": finish}]}
        finally:
            events.close()
        if extras.include_usage:
            yield usage_chunk(chunk, len(seq.prompt), seq.generated)

    def _chat_with_tools(self, messages, params: GenerationParams, extras: ChatExtras, *, stream: bool):
        """Tools by constrained decoding (edgectl_agent.runtimes.tool_calls). A stream sends each call as OpenAI
        does: its name once complete, then its arguments' JSON text piece by piece (``_tool_chunks``)."""
        tools = list(extras.tools)
        with self.engine.in_use():
            vocab = self.engine._model.vocab
            for i, tool in enumerate(tools):  # each alone first, so that a 400 names the tool whose schema fails
                compile_json_grammar(arguments_schema(tool), f"tools[{i}].function.parameters", vocab)
            grammar = compile_json_grammar(reply_schema(tools, extras.tool_choice, extras.parallel_tool_calls),
                                           TOOLS, vocab)
        prompt = with_tools_message(messages, tools_message(tools, extras.tool_choice, extras.parallel_tool_calls))

        if stream:
            with self.engine.in_use():
                tokens, stops = self._chat_prompt(prompt)
                seq = self._sequence(tokens, params, default_temperature=CHAT_TEMPERATURE, default_max_tokens=None,
                                     grammar=grammar._grammar)
            base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.name,
                    "object": "chat.completion.chunk"}
            return EngineStream(seq, self._tool_chunks(base, seq, [*params.stop, *stops], extras))

        def run_constrained() -> dict[str, Any]:
            with self.engine.in_use():
                tokens, stops = self._chat_prompt(prompt)
                seq = self._sequence(tokens, params, default_temperature=CHAT_TEMPERATURE, default_max_tokens=None,
                                     grammar=grammar._grammar)
            text, reason, _ = self._collect(seq, [*params.stop, *stops])
            message, finish = parse_reply(text, reason, extras.tool_choice)
            return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion",
                    "created": int(time.time()), "model": self.name,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                    "usage": self._usage(seq)}

        return run_constrained()

    def _tool_chunks(self, base, seq: Sequence, stops: list[str], extras: ChatExtras) -> Iterator[dict[str, Any]]:
        """A reply with tools, streamed: tool-call deltas as the calls are written; a reply in words (tool_choice
        "auto") is sent once its JSON is complete. A reply cut short after a call began ends with "length"."""
        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        yield chunk({"role": "assistant", "content": None})
        calls = StreamedCalls(extras.tool_choice)
        parts, reason = [], "stop"
        events = text_events(seq, stops)
        try:
            for item in events:
                if item is PENDING:
                    yield PENDING
                    continue
                text, _, finish = item
                parts.append(text)
                reason = finish or reason
                for delta in calls.feed(text):
                    yield chunk({"tool_calls": [delta]})
        finally:
            events.close()
        message, finish = parse_reply("".join(parts), reason, extras.tool_choice)
        if not calls.calls and message.get("content"):
            yield chunk({"content": message["content"]})
        yield chunk({}, finish)
        if extras.include_usage:
            yield usage_chunk(base, len(seq.prompt), seq.generated)

    def _grammar(self, extras: ChatExtras) -> str | None:
        if extras.json_schema is None:
            return None
        return compile_json_grammar(extras.json_schema, extras.schema_param, self.engine._model.vocab)._grammar

    # -- completion ---------------------------------------------------------------------------------------------
    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        return self.complete_with_extras(prompt, params, ChatExtras(), stream=stream)

    def complete_with_extras(self, prompt: str, params: GenerationParams, extras: ChatExtras, *,
                             stream: bool = False):
        with self.engine.in_use():
            tokens = self.engine.tokenize(prompt, add_bos=self.engine.add_bos, special=False)
            seq = self._sequence(tokens, params, default_temperature=0.8,
                                 default_max_tokens=DEFAULT_COMPLETION_MAX_TOKENS, grammar=self._grammar(extras),
                                 logprobs=extras.logprobs)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": self.name}
        if stream:
            return EngineStream(seq, self._completion_chunks(base, seq, list(params.stop), extras))
        text, reason, entries = self._collect(seq, list(params.stop))
        logprobs = completion_logprobs(entries, 0) if extras.logprobs is not None else None
        return {**base, "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": reason}],
                "usage": self._usage(seq)}

    def _completion_chunks(self, base, seq: Sequence, stops: list[str], extras: ChatExtras
                           ) -> Iterator[dict[str, Any]]:
        events = text_events(seq, stops)
        offset = 0  # of this chunk's first token in the reply (legacy logprobs' text_offset)
        try:
            for item in events:
                if item is PENDING:
                    yield PENDING
                    continue
                text, lps, finish = item
                logprobs = completion_logprobs(lps, offset) if extras.logprobs is not None and lps else None
                offset += sum(len(t) for t, *_ in lps)
                yield {**base, "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]}
        finally:
            events.close()
        if extras.include_usage:
            yield usage_chunk(base, len(seq.prompt), seq.generated)

    # -- the rest -----------------------------------------------------------------------------------------------
    def embed(self, inputs: list[str]) -> dict[str, Any]:
        raise BadRequest(f"model '{self.name}' does not support embeddings",
                         hint="deploy an embedding model with task: embedding (or runtime_options: "
                              "{embedding: true})", param="model", code="embeddings_not_supported")

    def kv_cache_usage(self) -> tuple[int, int]:
        """(tokens in the KV cache, tokens it holds): edgectl_agent_kv_cache_usage_ratio."""
        return self.engine.kv_cells_used()

    def close(self) -> None:
        self.engine.close()

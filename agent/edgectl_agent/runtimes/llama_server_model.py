"""The model the llama-server engine serves (edgectl_agent.runtimes.llama_server starts the server): OpenAI chat,
completion and embeddings forwarded to llama-server, in the shapes the in-process engine answers.

JSON Schema replies and tool calls use the agent's own grammars (``compile_json_grammar``: llama-cpp-python's
converter, errors name the request field) sent as llama-server's ``grammar``; tool calls are the agent's
(``edgectl_agent.runtimes.tool_calls``, not the chat template's); sampling defaults are the in-process engine's;
logprobs come back in the agent's shapes; a usage chunk goes to a client only when it asked
(``stream_options.include_usage``); a whole reply is gathered from an upstream stream, so that a client that goes
away stops its generation; embeddings come from llama-server's ``/embeddings``, mean-pooled for a model without
pooling as the in-process engine does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from edgectl_agent.admission import REQUEST_CANCELLED, ClientGone
from edgectl_agent.errors import BadRequest
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.extras import INCLUDE_USAGE, LOGPROBS, RESPONSE_FORMAT, TOOLS, ChatExtras, usage_chunk
from edgectl_agent.runtimes.llamacpp_engine import PENDING
from edgectl_agent.runtimes.supervised import ForwardingModel, SupervisedServer, reshaped
from edgectl_agent.runtimes.tool_calls import (StreamedCalls, arguments_schema, parse_reply, reply_schema,
                                               tools_message, with_tools_message)

CHAT_TEMPERATURE = 0.2  # the in-process engine's defaults (llamacpp_batched), so both engines sample alike
COMPLETION_TEMPERATURE = 0.8
TOP_P = 0.95
DEFAULT_COMPLETION_MAX_TOKENS = 16


def _strip_ids(entry: dict[str, Any]) -> dict[str, Any]:
    return {"token": entry.get("token", ""), "logprob": entry.get("logprob"), "bytes": entry.get("bytes")}


def chat_logprobs(upstream: dict[str, Any] | None) -> dict[str, Any] | None:
    """llama-server's chat logprobs in the agent's shape (OpenAI's, without llama-server's token ids)."""
    if not upstream:
        return None
    return {"content": [{**_strip_ids(e), "top_logprobs": [_strip_ids(t) for t in e.get("top_logprobs") or []]}
                        for e in upstream.get("content") or []]}


def completion_logprobs(upstream: dict[str, Any] | None, offset: int, top: int) -> dict[str, Any] | None:
    """llama-server's completion logprobs (chat-shaped) in OpenAI's legacy shape; ``offset``: where the first
    token starts in the reply; ``top``: how many alternatives the request asked for (llama-server sends at least
    one, the chosen token)."""
    if not upstream:
        return None
    entries = upstream.get("content") or []
    offsets = []
    for e in entries:
        offsets.append(offset)
        offset += len(e.get("token", ""))
    return {"tokens": [e.get("token", "") for e in entries], "token_logprobs": [e.get("logprob") for e in entries],
            "top_logprobs": [{t.get("token", ""): t.get("logprob") for t in (e.get("top_logprobs") or [])[:top]}
                             for e in entries], "text_offset": offsets}


def _completion_id(out: dict[str, Any]) -> str:
    """The reply's id with OpenAI's prefix for its kind (llama-server calls every id chatcmpl-)."""
    rest = str(out.get("id") or uuid.uuid4().hex[:24]).removeprefix("chatcmpl-")
    return ("cmpl-" if out.get("object") == "text_completion" else "chatcmpl-") + rest


# Temperature 0 is greedy decoding, as the in-process engine samples it (one argmax). llama-server would run its
# whole default chain for it (top-k 40 over the vocabulary, typical, top-p, min-p, temperature, then a draw): one
# top-k of 1 picks the same token. Logprobs are unaffected (llama-server takes them from the logits before
# sampling), and a grammar still constrains the choice. SmolLM2 (49152 tokens), one stream, one A/B run: llama-server
# decoded at 0.973x llama-cpp-python direct with the default chain, 0.987x with this one (within bench/serve.py's
# run-to-run spread).
GREEDY = {"samplers": ["top_k"], "top_k": 1}


class LlamaServerModel(ForwardingModel):
    """A GGUF served by a supervised llama-server: ``parallel`` requests decoded together in its slots."""

    extra_features = frozenset({RESPONSE_FORMAT, INCLUDE_USAGE, TOOLS, LOGPROBS})

    def __init__(self, name: str, server: SupervisedServer, *, slots: int, embeddings: bool) -> None:
        super().__init__(name, server, slots=slots)
        self._client.headers["Authorization"] = f"Bearer {server.api_key}"
        self.supports_embeddings = embeddings

    # -- requests -----------------------------------------------------------------------------------------------
    def _request(self, params: GenerationParams, stream: bool, *, chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "stream": stream, **params.as_kwargs()}
        body.setdefault("temperature", CHAT_TEMPERATURE if chat else COMPLETION_TEMPERATURE)
        body.setdefault("top_p", TOP_P)
        if body["temperature"] <= 0:
            body.update(GREEDY)
        if body.get("max_tokens") is None:
            if chat:
                body.pop("max_tokens")  # until the slot's context is full, as the in-process engine
            else:
                body["max_tokens"] = DEFAULT_COMPLETION_MAX_TOKENS
        if stream:
            body["stream_options"] = {"include_usage": True}  # counted by the agent's metrics either way
        return body

    def _refused(self, text: str) -> BadRequest:
        return BadRequest(f"llama-server refused the request: {text[:500]}",
                          hint="shorten the prompt or max_tokens to fit the deployment's context_length, or fix "
                               "the request's parameters")

    @staticmethod
    def _grammar(schema: dict[str, Any], param: str) -> str:
        """The agent's grammar for ``schema`` (the in-process engine's compiler): a 400 naming ``param``."""
        from edgectl_agent.runtimes.llamacpp_engine import compile_json_grammar

        return compile_json_grammar(schema, param)._grammar

    def _with_extras(self, body: dict[str, Any], extras: ChatExtras, *, chat: bool) -> dict[str, Any]:
        if extras.json_schema is not None:
            body["grammar"] = self._grammar(extras.json_schema, extras.schema_param)
        if extras.logprobs is not None:
            if chat:
                body["logprobs"] = True
                if extras.logprobs:
                    body["top_logprobs"] = extras.logprobs
            else:
                body["logprobs"] = max(extras.logprobs, 1)  # llama-server gives the chosen token only with k >= 1
        return body

    def _post_json(self, path: str, body: dict[str, Any], param: str | None = None):
        try:
            if body["stream"]:
                return self._post(path, body)
            return self._whole(path, body)
        except BadRequest as e:
            if param is not None and "grammar" in str(e).lower():
                raise BadRequest(f"{param}: llama.cpp cannot parse the grammar made from this JSON Schema",
                                 param=param, code="invalid_json_schema",
                                 hint="use the JSON Schema subset llama.cpp supports") from e
            raise

    def _whole(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A non-streaming request, sent upstream as a stream and put together here, in llama-server's whole-reply
        shape: a client that goes away (REQUEST_CANCELLED) closes the upstream stream at the next token, which
        stops its generation and frees its slot."""
        cancelled = REQUEST_CANCELLED.get()
        chunks = self._post(path, {**body, "stream": True, "stream_options": {"include_usage": True}})
        chat = path.endswith("chat/completions")
        parts: list[str] = []
        entries: list[dict[str, Any]] = []
        out: dict[str, Any] = {}
        finish = None
        try:
            for chunk in chunks:
                if cancelled is not None and cancelled.is_set():
                    raise ClientGone("the client went away; its generation was stopped")
                out.setdefault("id", chunk.get("id"))
                out.setdefault("created", chunk.get("created"))
                if chunk.get("usage"):
                    out["usage"] = chunk["usage"]
                for choice in chunk.get("choices") or []:
                    parts.append(((choice.get("delta") or {}).get("content") if chat else choice.get("text")) or "")
                    entries.extend((choice.get("logprobs") or {}).get("content") or [])
                    finish = choice.get("finish_reason") or finish
        finally:
            chunks.close()
        logprobs = {"content": entries} if entries else None
        text = "".join(parts)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat
                  else {"index": 0, "text": text})
        out["choices"] = [{**choice, "logprobs": logprobs, "finish_reason": finish}]
        return out

    # -- chat ---------------------------------------------------------------------------------------------------
    def chat(self, messages, params: GenerationParams, *, stream: bool = False):
        return self.chat_with_extras(messages, params, ChatExtras(), stream=stream)

    def chat_with_extras(self, messages, params: GenerationParams, extras: ChatExtras, *, stream: bool = False):
        if extras.uses_tools:
            return self._chat_with_tools(messages, params, extras, stream=stream)
        body = self._with_extras({"messages": messages, **self._request(params, stream, chat=True)}, extras,
                                 chat=True)
        param = extras.schema_param if extras.json_schema is not None else None
        out = self._post_json("/v1/chat/completions", body, param)
        if stream:
            return reshaped(out, lambda chunks: self._chat_chunks(chunks, extras))
        choice = out["choices"][0]
        choice["logprobs"] = chat_logprobs(choice.get("logprobs")) if extras.logprobs is not None else None
        return self._shaped(out, "chat.completion")

    def _shaped(self, out: dict[str, Any], obj: str) -> dict[str, Any]:
        usage = out.get("usage") or {}
        out = {k: v for k, v in out.items() if k in ("id", "created", "model", "choices")}
        out.update(id=_completion_id({**out, "object": obj}), object=obj, model=self.name, usage={k: usage.get(k, 0) for k in
                                                        ("prompt_tokens", "completion_tokens", "total_tokens")})
        return out

    def _chat_chunks(self, chunks: Iterator[dict[str, Any]], extras: ChatExtras) -> Iterator[dict[str, Any]]:
        try:
            for chunk in chunks:
                if chunk is PENDING:  # an UpstreamStream read in the event loop: nothing yet
                    yield PENDING
                    continue
                if not chunk.get("choices"):
                    if extras.include_usage and chunk.get("usage"):
                        yield usage_chunk(self._chunk_base(chunk), **self._token_counts(chunk["usage"]))
                    continue
                choice = chunk["choices"][0]
                logprobs = chat_logprobs(choice.get("logprobs")) if extras.logprobs is not None else None
                yield {**self._chunk_base(chunk), "choices": [{"index": 0, "delta": choice.get("delta") or {},
                                                               "logprobs": logprobs,
                                                               "finish_reason": choice.get("finish_reason")}]}
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def _chunk_base(self, chunk: dict[str, Any]) -> dict[str, Any]:
        return {"id": _completion_id(chunk), "object": chunk.get("object"), "created": chunk.get("created"),
                "model": self.name}

    @staticmethod
    def _token_counts(usage: dict[str, Any]) -> dict[str, int]:
        return {"prompt_tokens": usage.get("prompt_tokens", 0), "completion_tokens": usage.get("completion_tokens", 0)}

    def _chat_with_tools(self, messages, params: GenerationParams, extras: ChatExtras, *, stream: bool):
        """Tools as the in-process engine does them (edgectl_agent.runtimes.tool_calls): the reply constrained to
        the calls' JSON by the agent's grammar, parsed by the agent; a stream sends each call as OpenAI does."""
        tools = list(extras.tools)
        for i, tool in enumerate(tools):  # each alone first, so that a 400 names the tool whose schema fails
            self._grammar(arguments_schema(tool), f"tools[{i}].function.parameters")
        grammar = self._grammar(reply_schema(tools, extras.tool_choice, extras.parallel_tool_calls), TOOLS)
        prompt = with_tools_message(messages, tools_message(tools, extras.tool_choice, extras.parallel_tool_calls))
        body = {"messages": prompt, **self._request(params, stream, chat=True), "grammar": grammar}
        out = self._post_json("/v1/chat/completions", body, TOOLS)
        if stream:
            return reshaped(out, lambda chunks: self._tool_chunks(chunks, extras))
        choice = out["choices"][0]
        message, finish = parse_reply(choice["message"].get("content") or "", choice.get("finish_reason"),
                                      extras.tool_choice)
        out["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
        return self._shaped(out, "chat.completion")

    def _tool_chunks(self, chunks: Iterator[dict[str, Any]], extras: ChatExtras) -> Iterator[dict[str, Any]]:
        calls = StreamedCalls(extras.tool_choice)
        parts, reason, base, usage = [], "stop", None, None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        try:
            for event in chunks:
                if event is PENDING:  # an UpstreamStream read in the event loop: nothing yet
                    yield PENDING
                    continue
                if base is None:
                    base = {**self._chunk_base(event), "object": "chat.completion.chunk"}
                    yield chunk({"role": "assistant", "content": None})
                if not event.get("choices"):
                    usage = event.get("usage") or usage
                    continue
                choice = event["choices"][0]
                text = (choice.get("delta") or {}).get("content") or ""
                parts.append(text)
                reason = choice.get("finish_reason") or reason
                for delta in calls.feed(text):
                    yield chunk({"tool_calls": [delta]})
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        if base is None:
            base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                    "created": int(time.time()), "model": self.name}
        message, finish = parse_reply("".join(parts), reason, extras.tool_choice)
        if not calls.calls and message.get("content"):
            yield chunk({"content": message["content"]})
        yield chunk({}, finish)
        if extras.include_usage and usage:
            yield usage_chunk(base, **self._token_counts(usage))

    # -- completion ---------------------------------------------------------------------------------------------
    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        return self.complete_with_extras(prompt, params, ChatExtras(), stream=stream)

    def complete_with_extras(self, prompt: str, params: GenerationParams, extras: ChatExtras, *,
                             stream: bool = False):
        body = self._with_extras({"prompt": prompt, **self._request(params, stream, chat=False)}, extras,
                                 chat=False)
        param = extras.schema_param if extras.json_schema is not None else None
        out = self._post_json("/v1/completions", body, param)
        if stream:
            return reshaped(out, lambda chunks: self._completion_chunks(chunks, extras))
        choice = out["choices"][0]
        logprobs = (completion_logprobs(choice.get("logprobs"), 0, extras.logprobs) if extras.logprobs is not None
                    else None)
        out["choices"] = [{"index": 0, "text": choice.get("text", ""), "logprobs": logprobs,
                           "finish_reason": choice.get("finish_reason")}]
        return self._shaped(out, "text_completion")

    def _completion_chunks(self, chunks: Iterator[dict[str, Any]], extras: ChatExtras) -> Iterator[dict[str, Any]]:
        offset = 0
        try:
            for chunk in chunks:
                if chunk is PENDING:  # an UpstreamStream read in the event loop: nothing yet
                    yield PENDING
                    continue
                base = {**self._chunk_base(chunk), "object": "text_completion"}
                if not chunk.get("choices"):
                    if extras.include_usage and chunk.get("usage"):
                        yield usage_chunk(base, **self._token_counts(chunk["usage"]))
                    continue
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                logprobs = None
                if extras.logprobs is not None and choice.get("logprobs"):
                    logprobs = completion_logprobs(choice["logprobs"], offset, extras.logprobs)
                offset += len(text)
                yield {**base, "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                                            "finish_reason": choice.get("finish_reason")}]}
                if extras.include_usage and chunk.get("usage"):  # llama-server puts it on the last choice
                    yield usage_chunk(base, **self._token_counts(chunk["usage"]))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    # -- embeddings, metrics ------------------------------------------------------------------------------------
    def embed(self, inputs: list[str]) -> dict[str, Any]:
        if not self.supports_embeddings:
            raise BadRequest(f"model '{self.name}' does not support embeddings",
                             hint="deploy an embedding model with task: embedding (or runtime_options: "
                                  "{embedding: true})", param="model", code="embeddings_not_supported")
        # llama-server's own endpoint: per-token vectors for a model without pooling (mean-pooled here, as the
        # in-process engine does; its OpenAI endpoint refuses such a model), no normalization (as llama-cpp-python)
        out = self._post("/embeddings", {"content": inputs, "embd_normalize": -1})
        data, tokens = [], 0
        for i, item in enumerate(sorted(out, key=lambda item: item.get("index", 0))):
            vectors = item.get("embedding") or [[]]
            if vectors and not isinstance(vectors[0], list):
                vectors = [vectors]
            tokens += len(vectors) if len(vectors) > 1 else 0
            vector = vectors[0] if len(vectors) == 1 else [sum(col) / len(vectors) for col in zip(*vectors)]
            data.append({"object": "embedding", "index": i, "embedding": vector})
        return {"object": "list", "model": self.name, "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    def kv_cache_usage(self) -> tuple[int, int] | None:
        """(tokens in the KV cache, tokens it holds) from llama-server's ``/slots``: each slot's prompt and the
        tokens decoded after it, capped at the slot's context (edgectl_agent_kv_cache_usage_ratio); None when the
        server does not answer now (the metric is left out of that scrape)."""
        import httpx

        if self._closed or not self.server.ready.is_set():
            return None
        try:
            r = self._client.get("/slots", timeout=1.0)
            slots = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, RuntimeError):  # RuntimeError: closed meanwhile
            return None
        if not isinstance(slots, list):
            return None
        used = capacity = 0
        for slot in slots:
            n_ctx = int(slot.get("n_ctx") or 0)
            decoded = sum(int(t.get("n_decoded") or 0) for t in slot.get("next_token") or [])
            used += min(int(slot.get("n_prompt_tokens") or 0) + decoded, n_ctx)
            capacity += n_ctx
        return used, capacity

"""The OpenAI layer shared by LLM runtimes whose library generates text, not OpenAI dicts
(onnxruntime-genai, openvino-genai, mlx-lm, transformers with NF4).

A subclass of :class:`TextGenModel` implements two things: ``_count(text)`` (tokens in a text; given by
``_tokenizer`` where the runtime has a Hugging Face-style tokenizer) and ``_pieces(prompt, params)`` (an iterator of decoded text pieces, one per generated token, stopping at the model's
end-of-sequence token or ``max_tokens``). This class renders chat templates, applies ``stop`` strings, serializes
calls (one generation at a time per model), and shapes responses and stream chunks exactly like llama.cpp's.

Chat templates come from the artifact's ``tokenizer_config.json`` (or ``chat_template.jinja``) and are rendered in
Jinja's ImmutableSandboxedEnvironment: a template cannot reach Python internals or mutate its inputs.
"""

from __future__ import annotations

import json
import time
import uuid
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgectl_agent.errors import BadRequest, RuntimeFailure
from edgectl_agent.runtimes.base import GenerationParams, SerializedModel

DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions; llama-cpp-python uses the same
MAX_TEMPLATE_BYTES = 256 * 1024


def read_chat_template(folder: Path) -> str | None:
    """The chat template a model folder ships (tokenizer_config.json's ``chat_template`` or chat_template.jinja)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and jinja.stat().st_size <= MAX_TEMPLATE_BYTES:
        return jinja.read_text(encoding="utf-8")
    cfg = folder / "tokenizer_config.json"
    if not cfg.is_file():
        return None
    try:
        template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    except (ValueError, OSError):
        return None
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def special_tokens(folder: Path) -> dict[str, str]:
    """bos_token / eos_token strings from tokenizer_config.json (for templates that use them)."""
    cfg = folder / "tokenizer_config.json"
    out: dict[str, str] = {}
    try:
        raw = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
    except (ValueError, OSError):
        return out
    for key in ("bos_token", "eos_token"):
        value = raw.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def compile_chat_template(template: str | None, tokens: dict[str, str]):
    """A render function ``messages -> prompt`` from a Jinja chat template, compiled in a sandbox.

    Without a template, a plain "role: content" transcript is used. A template that does not compile fails the load
    (RuntimeFailure), so a broken artifact never becomes active.
    """
    if not template:
        def plain(messages: list[dict[str, Any]]) -> str:
            return "".join(f"{m.get('role', 'user')}: {m.get('content', '')}\n" for m in messages) + "assistant:"
        return plain
    try:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise RuntimeFailure(f"jinja2 is needed to render this model's chat template ({e})",
                             hint="pip install jinja2", status=422) from e

    def raise_exception(message: str) -> None:
        raise BadRequest(f"the model's chat template refused the messages: {message}",
                         hint="check the roles and their order (many templates need user/assistant alternation)")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        compiled = env.from_string(template)
    except TemplateError as e:
        raise RuntimeFailure(f"the model's chat template does not compile: {e}",
                             hint="fix chat_template in tokenizer_config.json and rebuild the artifact") from e

    def render(messages: list[dict[str, Any]]) -> str:
        try:
            return compiled.render(messages=messages, add_generation_prompt=True, **tokens)
        except BadRequest:
            raise
        except Exception as e:  # SecurityError, UndefinedError, TypeError ... from a hostile or buggy template
            raise BadRequest(f"the model's chat template failed on these messages: {type(e).__name__}: {e}",
                             hint="send plain string contents; if it persists, the artifact's template is broken")\
                from e
    return render


class TextGenModel(SerializedModel):
    """OpenAI responses from a text-piece generator. Subclasses: ``_pieces``, ``_free``, and ``_count`` unless they
    set ``_tokenizer``; their ``_pieces`` asks :meth:`_fit_to_context` how many tokens a prompt leaves room for."""

    # True where the library cannot end a generation at the context's end (mlx-lm): then a request whose prompt +
    # max_tokens do not fit is refused up front, instead of being cut short.
    max_tokens_must_fit: bool = False

    def __init__(self, name: str, folder: Path, *, context_length: int | None = None) -> None:
        super().__init__(name)
        self.context_length = context_length  # tokens the deployment holds, the prompt included; None: unbounded
        self._render = compile_chat_template(read_chat_template(folder), special_tokens(folder))

    # -- what a runtime implements ------------------------------------------------------------------------------
    # A Hugging Face-style tokenizer (``encode``, ``bos_token``: transformers', mlx-lm's) that the default
    # _encode/_count use; a runtime that counts its own way (onnxruntime-genai, OpenVINO GenAI) overrides _count.
    _tokenizer: Any = None

    def _encode(self, text: str) -> list[int]:
        """Token ids of ``text``: the BOS token is added unless the rendered prompt already starts with it, as
        llama.cpp and mlx-lm's stream_generate do."""
        if self._tokenizer is None:
            raise NotImplementedError(f"{type(self).__name__} has no _tokenizer: it must implement _count")
        bos = self._tokenizer.bos_token
        return self._tokenizer.encode(text, add_special_tokens=bos is None or not text.startswith(bos))

    def _count(self, text: str) -> int:
        """Number of tokens ``text`` encodes to."""
        return len(self._encode(text))

    @abstractmethod
    def _pieces(self, prompt: str, params: GenerationParams, max_tokens: int) -> Iterator[str]:
        """Decoded text, one piece per generated token, at most ``max_tokens``, ending at end-of-sequence."""

    # -- shared -------------------------------------------------------------------------------------------------
    def _fit_to_context(self, prompt_tokens: int, max_tokens: int) -> int:
        """How many tokens this request may generate: ``max_tokens``, cut to what the context leaves after the
        prompt. BadRequest when the prompt alone fills the context (or, with ``max_tokens_must_fit``, when prompt +
        max_tokens exceed it)."""
        context = self.context_length
        if context is None:
            return max_tokens
        if self.max_tokens_must_fit and prompt_tokens + max_tokens > context:
            raise BadRequest(f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) exceed the context length "
                             f"{context} of deployment '{self.name}'",
                             hint="shorten the prompt or max_tokens, or deploy with a larger context_length",
                             param="max_tokens")
        if prompt_tokens >= context:
            raise BadRequest(f"the prompt is {prompt_tokens} tokens; deployment '{self.name}' has a context of "
                             f"{context}", hint="shorten the prompt, or deploy with a larger context_length")
        return min(max_tokens, context - prompt_tokens)

    def _generate(self, prompt: str, params: GenerationParams) -> Iterator[tuple[str, str | None]]:
        """(text, finish_reason) pairs: text pieces with stop strings applied, then ("", reason). Holds the lock
        from the first ``next`` until exhausted or closed."""
        max_tokens = params.max_tokens if params.max_tokens is not None else DEFAULT_MAX_TOKENS
        self._acquire()
        try:
            n = 0
            pending = ""  # text held back because it may be the start of a stop string
            hold = max((len(s) for s in params.stop), default=0)
            for piece in self._pieces(prompt, params, max_tokens):
                n += 1
                pending += piece
                hit = min((i for i in (pending.find(s) for s in params.stop) if i >= 0), default=-1)
                if hit >= 0:
                    if pending[:hit]:
                        yield pending[:hit], None
                    yield "", "stop"
                    return
                if hold:
                    safe = len(pending) - (hold - 1)
                    if safe > 0:
                        yield pending[:safe], None
                        pending = pending[safe:]
                elif pending:
                    yield pending, None
                    pending = ""
            if pending:
                yield pending, None
            yield "", "length" if n >= max_tokens else "stop"
        finally:
            self._lock.release()

    def _usage(self, prompt: str, text: str) -> dict[str, int]:
        p, c = self._count(prompt), self._count(text) if text else 0
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def chat(self, messages, params: GenerationParams, *, stream: bool = False):
        prompt = self._render(messages)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": self.name}
        if stream:
            return self._chat_chunks(base, prompt, params)
        text, reason = self._collect(prompt, params)
        return {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": reason}],
                "usage": self._usage(prompt, text)}

    def _chat_chunks(self, base, prompt, params) -> Iterator[dict[str, Any]]:
        chunk = {**base, "object": "chat.completion.chunk"}
        yield {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        gen = self._generate(prompt, params)
        try:
            for text, reason in gen:
                delta = {"content": text} if text else {}
                yield {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}
        finally:
            gen.close()

    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": self.name}
        if stream:
            return self._completion_chunks(base, prompt, params)
        text, reason = self._collect(prompt, params)
        return {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
                "usage": self._usage(prompt, text)}

    def _completion_chunks(self, base, prompt, params) -> Iterator[dict[str, Any]]:
        gen = self._generate(prompt, params)
        try:
            for text, reason in gen:
                yield {**base, "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}]}
        finally:
            gen.close()

    def _collect(self, prompt: str, params: GenerationParams) -> tuple[str, str]:
        parts, reason = [], "stop"
        for text, r in self._generate(prompt, params):
            parts.append(text)
            reason = r or reason
        return "".join(parts), reason

    def embed(self, inputs: list[str]) -> dict[str, Any]:
        raise BadRequest(f"model '{self.name}' does not support embeddings",
                         hint="serve an embedding model as GGUF with runtime_options: {embedding: true}",
                         param="model", code="embeddings_not_supported")

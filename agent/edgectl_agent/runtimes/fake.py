"""A deterministic fake runtime, shipped so tests and demos run the whole flow without llama.cpp.

It "loads" any file that starts with the GGUF magic (anything else fails like a real runtime would), and answers
with words derived from the prompt and the artifact digest, one word per token. ``embedding`` in runtime_options
enables embeddings; ``fail_smoke: true`` makes the smoke inference fail (to exercise the health gate).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import BadRequest, ModelUnavailable, RuntimeFailure
from edgectl_agent.runtimes.base import GenerationParams, LoadedModel, Runtime, RuntimeCapabilities
from edgectl_agent.runtimes.extras import INCLUDE_USAGE, ChatExtras, usage_chunk

GGUF_MAGIC = b"GGUF"
WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")
FAKE_OPTIONS = frozenset({"embedding", "fail_smoke"})


class FakeRuntime(Runtime):
    name = "fake"
    capabilities = RuntimeCapabilities(name, embeddings=True)

    def __init__(self) -> None:
        self.loads: list[str] = []  # digests loaded, in order (for tests)

    def load(self, path: Path, desired: DesiredDeployment) -> LoadedModel:
        unknown = sorted(set(desired.runtime_options) - FAKE_OPTIONS)
        if unknown:
            raise RuntimeFailure(f"deployment '{desired.name}': unknown fake runtime_options {unknown}",
                                 hint=f"use only: {', '.join(sorted(FAKE_OPTIONS))}")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise RuntimeFailure(f"fake runtime: {path.name} is not a GGUF file (magic {magic!r})",
                                 hint="upload a GGUF artifact")
        self.loads.append(desired.artifact.digest)
        return FakeModel(desired)


def _words(seed: str, n: int) -> list[str]:
    h = hashlib.sha256(seed.encode()).digest()
    return [WORDS[h[i % len(h)] % len(WORDS)] for i in range(n)]


class FakeModel(LoadedModel):
    # No response_format: the fake cannot honour a schema, so it is refused like on any runtime without it.
    extra_features = frozenset({INCLUDE_USAGE})

    def __init__(self, desired: DesiredDeployment) -> None:
        self.desired = desired
        self.supports_embeddings = bool(desired.runtime_options.get("embedding", False))
        self._fail_smoke = bool(desired.runtime_options.get("fail_smoke", False))
        self._closed = False
        self._lock = threading.Lock()

    def _check(self) -> None:
        if self._closed:
            raise ModelUnavailable(f"model '{self.desired.name}' was unloaded", hint="retry the request")

    def _reply(self, prompt: str, params: GenerationParams) -> list[str]:
        n = min(params.max_tokens if params.max_tokens is not None else 8, 64)
        return _words(self.desired.artifact.digest + prompt, n)

    def _finish(self, params: GenerationParams, n: int) -> str:
        return "length" if params.max_tokens is not None and n >= params.max_tokens else "stop"

    def chat(self, messages, params: GenerationParams, *, stream: bool = False):
        self._check()
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        words = self._reply(prompt, params)
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": self.desired.name}
        if stream:
            return self._chat_chunks(base, words, params)
        return {**base, "object": "chat.completion",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": self._finish(params, len(words))}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                          "total_tokens": len(prompt.split()) + len(words)}}

    def _chat_chunks(self, base, words, params) -> Iterator[dict[str, Any]]:
        chunk = {**base, "object": "chat.completion.chunk"}
        yield {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}
        for i, w in enumerate(words):
            self._check()
            yield {**chunk, "choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w},
                                         "finish_reason": None}]}
        yield {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": self._finish(params, len(words))}]}

    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        self._check()
        if self._fail_smoke:
            raise RuntimeFailure("fake runtime: smoke inference failed (fail_smoke is set)",
                                 hint="remove fail_smoke from runtime_options")
        words = self._reply(prompt, params)
        base = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": self.desired.name}
        if stream:
            return self._completion_chunks(base, words, params)
        return {**base, "choices": [{"index": 0, "text": " " + " ".join(words), "logprobs": None,
                                     "finish_reason": self._finish(params, len(words))}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(words),
                          "total_tokens": len(prompt.split()) + len(words)}}

    def _completion_chunks(self, base, words, params) -> Iterator[dict[str, Any]]:
        for i, w in enumerate(words):
            last = i == len(words) - 1
            yield {**base, "choices": [{"index": 0, "text": " " + w, "logprobs": None,
                                        "finish_reason": self._finish(params, len(words)) if last else None}]}

    def chat_with_extras(self, messages, params: GenerationParams, extras: ChatExtras, *, stream: bool = False):
        out = self.chat(messages, params, stream=stream)
        prompt = "\n".join(str(m.get("content", "")) for m in messages)
        return self._with_usage(out, prompt, params, extras) if stream else out

    def complete_with_extras(self, prompt: str, params: GenerationParams, extras: ChatExtras, *,
                             stream: bool = False):
        out = self.complete(prompt, params, stream=stream)
        return self._with_usage(out, prompt, params, extras) if stream else out

    def _with_usage(self, chunks, prompt: str, params: GenerationParams, extras: ChatExtras):
        last: dict[str, Any] = {}
        for last in chunks:
            yield last
        if extras.include_usage:
            base = {k: v for k, v in last.items() if k != "choices"}
            yield usage_chunk(base, len(prompt.split()), len(self._reply(prompt, params)))

    def embed(self, inputs: list[str]) -> dict[str, Any]:
        self._check()
        if not self.supports_embeddings:
            raise BadRequest(f"model '{self.desired.name}' does not support embeddings",
                             hint="deploy it with runtime_options: {embedding: true}, or use an embedding model",
                             param="model", code="embeddings_not_supported")
        data = [{"object": "embedding", "index": i,
                 "embedding": [b / 255 for b in hashlib.sha256(text.encode()).digest()[:8]]}
                for i, text in enumerate(inputs)]
        n = sum(len(t.split()) for t in inputs)
        return {"object": "list", "data": data, "model": self.desired.name,
                "usage": {"prompt_tokens": n, "total_tokens": n}}

    def close(self) -> None:
        self._closed = True

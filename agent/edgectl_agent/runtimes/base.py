"""The one interface every runtime implements.

A ``Runtime`` turns an artifact on disk plus a ``DesiredDeployment`` into a ``LoadedModel``. A loaded model answers
OpenAI-shaped dicts (chat, completion, embeddings); with ``stream=True`` it returns an iterator of chunk dicts.
What a runtime can do is data (``RuntimeCapabilities``), and its heavy library is imported only in ``load``.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from edgectl_agent.admission import REQUEST_STARTED
from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import ModelUnavailable, RuntimeFailure
from edgectl_agent.runtimes import catalog


@dataclass(frozen=True)
class RuntimeCapabilities:
    """What a runtime can do. Its formats, kind and extra are catalog facts (edgectl_agent.runtimes.catalog),
    read from there by the runtime's name; the rest is the runtime's own."""

    runtime: str  # its name in the catalog
    embeddings: bool = False

    @property
    def formats(self) -> tuple[str, ...]:
        return catalog.entry(self.runtime).formats

    @property
    def extra(self) -> str | None:
        """The edgectl-agent extra that installs it, e.g. "llama"."""
        return catalog.entry(self.runtime).extra

    @property
    def chat(self) -> bool:
        return catalog.entry(self.runtime).kind == "llm"

    completion = chat
    streaming = chat


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters, already validated by the API layer. ``None`` = the runtime's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def as_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_tokens": self.max_tokens}
        for name in ("temperature", "top_p", "seed"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        if self.stop:
            kw["stop"] = list(self.stop)
        return kw


class LoadedModel(ABC):
    """One artifact loaded in memory. Must be safe to call from several threads (serialize inside if needed)."""

    supports_embeddings: bool = False
    slots: int = 1  # requests it works on at once; more wait in the deployment's queue (edgectl_agent.admission)
    kind: str = "llm"  # "llm": served under /v1 (OpenAI); "tensor": served under /v2 (KServe v2, TensorModel)

    @abstractmethod
    def chat(self, messages: list[dict[str, Any]], params: GenerationParams, *,
             stream: bool = False) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """An OpenAI ``chat.completion`` dict, or an iterator of ``chat.completion.chunk`` dicts."""

    @abstractmethod
    def complete(self, prompt: str, params: GenerationParams, *,
                 stream: bool = False) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """An OpenAI ``text_completion`` dict, or an iterator of its chunks."""

    @abstractmethod
    def embed(self, inputs: list[str]) -> dict[str, Any]:
        """An OpenAI embeddings ``list`` dict. BadRequest when the model was not loaded for embeddings."""

    @abstractmethod
    def close(self) -> None:
        """Free the model; waits for a running inference. Later calls raise ModelUnavailable."""

    def smoke(self, prompt: str, max_tokens: int) -> None:
        """A real inference of a few tokens, run before the model is switched in; a model loaded for embeddings
        embeds the prompt instead (it need not generate). Raises RuntimeFailure."""
        if self.supports_embeddings:
            data = self.embed([prompt]).get("data") or [{}]
            if not data[0].get("embedding"):
                raise RuntimeFailure(f"smoke embedding returned no vector: {str(data)[:200]}",
                                     hint="the artifact loads but does not embed; rebuild it from its source")
            return
        out = self.complete(prompt, GenerationParams(max_tokens=max_tokens, temperature=0.0))
        if not isinstance(out, dict) or not out.get("choices"):
            raise RuntimeFailure(f"smoke inference returned no choices: {str(out)[:200]}",
                                 hint="the artifact loads but does not generate; rebuild it from its source")


class SerializedModel(LoadedModel):
    """A model whose library runs one call at a time (llama.cpp contexts, the generate loops of TextGenModel): calls
    hold a lock; ``close`` waits for the running one, then frees the library's model (``_free``) once, and calls
    waiting meanwhile get ModelUnavailable."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._closed = False

    @abstractmethod
    def _free(self) -> None:
        """Release the library's model (called once, under the lock)."""

    def _acquire(self) -> None:
        self._lock.acquire()
        if self._closed:
            self._lock.release()
            raise ModelUnavailable(f"model '{self.name}' was unloaded while this request waited",
                                   hint="retry the request; it is answered by the model now active")
        started = REQUEST_STARTED.get()
        if started is not None:  # the request leaves the deployment's queue (edgectl_agent.admission)
            started()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._free()


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a tensor model: KServe v2 datatype name (FP32, INT64, ...) and shape (-1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


class TensorModel(LoadedModel):
    """A non-LLM model: named tensors in, named tensors out (the KServe v2 inference protocol, under /v2)."""

    kind = "tensor"
    platform: str = "unknown"
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    @abstractmethod
    def infer(self, inputs: dict[str, tuple[str, list[int], list[Any]]],
              outputs: list[str] | None = None) -> list[dict[str, Any]]:
        """Run the model. ``inputs``: name -> (datatype, shape, flat row-major data), already validated against
        ``self.inputs``. Returns ``[{"name", "datatype", "shape", "data"}]`` (data flat, row-major), for the
        requested ``outputs`` (None = all, in the model's order)."""

    def _not_llm(self) -> None:
        from edgectl_agent.errors import NotFound

        name = getattr(self, "name", "this model")
        raise NotFound(f"'{name}' is a tensor model, not a language model",
                       hint=f"use the KServe v2 API: POST /v2/models/{name}/infer", param="model",
                       code="model_not_found")

    def chat(self, messages, params, *, stream=False):
        self._not_llm()

    def complete(self, prompt, params, *, stream=False):
        self._not_llm()

    def embed(self, inputs):
        self._not_llm()

    @abstractmethod
    def smoke(self, prompt: str, max_tokens: int) -> None:
        """Run one inference on zeros of the declared input shapes (prompt and max_tokens are ignored)."""


def not_installed(runtime: str, error: ImportError) -> RuntimeFailure:
    """A runtime's library is missing on this device: 422, with the install command from the catalog."""
    return RuntimeFailure(f"the {runtime} runtime is not installed on this device ({error})",
                          hint=f"install it: {catalog.install_hint(runtime)}", status=422)


def import_library(runtime: str, module: str) -> ModuleType:
    """Import ``module``, a library of ``runtime``, now (at load, never before); :func:`not_installed` if missing."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise not_installed(runtime, e) from e


class Runtime(ABC):
    name: str
    capabilities: RuntimeCapabilities

    @abstractmethod
    def load(self, path: Path, desired: DesiredDeployment) -> LoadedModel:
        """Load ``path`` (blocking, can take seconds). Raises RuntimeFailure with the runtime's message."""

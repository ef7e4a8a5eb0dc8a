"""llama.cpp through llama-cpp-python (the ``[llama]`` extra), imported only when a model is loaded.

llama.cpp contexts are not thread-safe, so each loaded model serializes its calls with a lock; a streaming response
holds the lock until its iterator is finished or closed.

Before llama.cpp sees a file, its GGUF header passes the agent's bounded check (edgectl_agent.gguf_check), and its
chat template is compiled and rendered once in llama-cpp-python's sandboxed formatter (Jinja's
ImmutableSandboxedEnvironment, since llama-cpp-python 0.2.72): a crafted header or a template that reaches for Python
internals fails the activation with a 422 and the serving model stays.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import BadRequest, RuntimeFailure
from edgectl_agent.gguf_check import check_gguf
from edgectl_agent.runtimes.base import (GenerationParams, LoadedModel, Runtime, RuntimeCapabilities, SerializedModel,
                                         import_library)

log = logging.getLogger(__name__)


# runtime_options a deployment may pass through to llama_cpp.Llama (everything else is refused, by name).
LLAMA_OPTIONS = frozenset({
    "n_batch", "n_ubatch", "n_gpu_layers", "main_gpu", "flash_attn", "embedding", "use_mmap", "use_mlock", "seed",
    "chat_format", "type_k", "type_v", "rope_freq_base", "rope_freq_scale", "offload_kqv", "n_threads_batch",
    "pooling_type",
})


def llama_kwargs(desired: DesiredDeployment) -> dict[str, Any]:
    """The keyword arguments for ``llama_cpp.Llama`` (pure; unit-tested)."""
    unknown = sorted(set(desired.runtime_options) - LLAMA_OPTIONS)
    if unknown:
        raise RuntimeFailure(f"deployment '{desired.name}': unknown llama.cpp runtime_options {unknown}",
                             hint=f"use only: {', '.join(sorted(LLAMA_OPTIONS))}")
    kw: dict[str, Any] = {
        "n_ctx": desired.context_length * desired.parallel,
        "verbose": False,
    }
    if desired.threads is not None:
        kw["n_threads"] = desired.threads
    kw.update(desired.runtime_options)
    return kw


# The conversation a chat template is rendered with once at load: one user turn, which chat templates are made for.
PROBE_MESSAGES = ({"role": "user", "content": "hello"},)


def check_chat_template(template: str, label: str) -> None:
    """Compile ``template`` and render it once with llama-cpp-python's own (sandboxed) chat formatter.

    A template that does not compile, or that reaches for Python internals on a plain conversation (the sandbox's
    SecurityError), is refused here, so a model carrying it never becomes active. Other render errors are left to
    requests: templates may legitimately refuse some conversations (``raise_exception``).
    """
    from jinja2 import TemplateError
    from jinja2.exceptions import SecurityError
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    hint = "rebuild the artifact from a source whose tokenizer.chat_template is a plain Jinja chat template"
    try:
        formatter = Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>")
    except TemplateError as e:
        raise RuntimeFailure(f"{label}: the GGUF's chat template does not compile: {type(e).__name__}: {e}",
                             hint=hint, type="invalid_chat_template") from e
    try:
        formatter(messages=[dict(m) for m in PROBE_MESSAGES])
    except SecurityError as e:
        raise RuntimeFailure(f"{label}: the GGUF's chat template tries to reach Python internals, which the sandbox "
                             f"refused: {e}", hint=hint, type="unsafe_chat_template") from e
    except Exception:  # noqa: BLE001 - a template refusing the probe conversation is the template's business
        log.debug("%s: chat template refused the probe conversation", label, exc_info=True)


def _template_errors() -> tuple[type[Exception], ...]:
    """Jinja's error root, when jinja2 (a dependency of llama-cpp-python) is importable."""
    try:
        from jinja2 import TemplateError
    except ImportError:
        return ()
    return (TemplateError,)


class LlamaCppRuntime(Runtime):
    name = "llamacpp"
    capabilities = RuntimeCapabilities(name, embeddings=True)

    def load(self, path: Path, desired: DesiredDeployment) -> LoadedModel:
        kwargs = llama_kwargs(desired)
        label = f"artifact {desired.artifact.digest}"
        header = check_gguf(path, label=label)  # a crafted header never reaches llama.cpp's C parser
        llama_cpp = import_library(self.name, "llama_cpp")
        if header.chat_template:
            check_chat_template(header.chat_template, label)
        try:
            llm = llama_cpp.Llama(str(path), **kwargs)
        except (ValueError, RuntimeError, OSError) as e:
            raise RuntimeFailure(f"llama.cpp could not load {desired.artifact.digest} ({desired.artifact.model} "
                                 f"{desired.artifact.quant}) for deployment '{desired.name}': {e}",
                                 hint="check the artifact was built for llama.cpp (GGUF) and that the device has "
                                      "the memory for context_length x parallel; see the agent log") from e
        return LlamaCppModel(llm, embeddings=bool(kwargs.get("embedding", False)), name=desired.name)


def _template_failed(e: Exception) -> BadRequest:
    return BadRequest(f"the model's chat template failed on these messages: {type(e).__name__}: {e}",
                      hint="send plain string contents; if it persists, the artifact's chat template is broken or "
                           "hostile: rebuild it", code="chat_template_failed")


class LlamaCppModel(SerializedModel):
    def __init__(self, llm: Any, *, embeddings: bool, name: str) -> None:
        super().__init__(name)
        self._llm = llm
        self.supports_embeddings = embeddings
        self._template_errors = _template_errors()

    @contextlib.contextmanager
    def _locked_call(self) -> Iterator[None]:
        """Hold the lock for one call and translate llama.cpp's errors into the request's."""
        self._acquire()
        try:
            yield
        except (ValueError, RuntimeError) as e:  # llama.cpp's own checks (e.g. the prompt exceeds the context)
            raise BadRequest(f"llama.cpp rejected the request: {e}",
                             hint="shorten the prompt or max_tokens to fit the deployment's context_length") from e
        except self._template_errors as e:  # the sandbox refused the template (SecurityError) or it failed
            raise _template_failed(e) from e
        finally:
            self._lock.release()

    # The Llama method is looked up by name once the lock is held: a closed model has none (ModelUnavailable).
    def _run(self, method: str, *args, **kwargs):
        with self._locked_call():
            return getattr(self._llm, method)(*args, **kwargs)

    def _stream(self, method: str, *args, **kwargs) -> Iterator[dict[str, Any]]:
        with self._locked_call():
            it = getattr(self._llm, method)(*args, stream=True, **kwargs)
            try:
                yield from it
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()

    def chat(self, messages, params: GenerationParams, *, stream: bool = False):
        kw = params.as_kwargs()
        if stream:
            return self._stream("create_chat_completion", messages=messages, **kw)
        return self._run("create_chat_completion", messages=messages, **kw)

    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        kw = params.as_kwargs()
        if stream:
            return self._stream("create_completion", prompt, **kw)
        return self._run("create_completion", prompt, **kw)

    def embed(self, inputs: list[str]) -> dict[str, Any]:
        if not self.supports_embeddings:
            raise BadRequest(f"model '{self.name}' does not support embeddings",
                             hint="deploy it with runtime_options: {embedding: true}, or use an embedding model",
                             param="model", code="embeddings_not_supported")
        out = self._run("create_embedding", inputs)
        for item in out.get("data", []):
            vec = item["embedding"]
            if vec and isinstance(vec[0], list):  # the model has no pooling: one vector per token; mean-pool
                item["embedding"] = [sum(col) / len(vec) for col in zip(*vec)]
        return out

    def _free(self) -> None:
        close = getattr(self._llm, "close", None)
        if close is not None:
            close()
        self._llm = None

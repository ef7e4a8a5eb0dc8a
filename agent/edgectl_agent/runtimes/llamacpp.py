"""llama.cpp through llama-cpp-python (the ``[llama]`` extra), imported only when a model is loaded.

``LlamaCppRuntime.load`` serves a deployment with the engine ``runtime_options.engine`` names (``choose_engine``:
``auto``, the default, picks llama.cpp's own llama-server, supervised by the agent, for ``parallel`` > 1 where the
device has one: edgectl_agent.runtimes.llama_server). The in-process engine serves a generating model with the
continuous-batching engine
(``edgectl_agent.runtimes.llamacpp_engine`` and ``llamacpp_batched``: ``parallel`` requests decoded together, every
llama.cpp call on the model's one thread). A model loaded for embeddings, or with a named ``chat_format``, is
served here by ``LlamaCppModel`` on llama-cpp-python's ``Llama``: one call at a time behind a lock (a streaming
response holds it until its iterator is finished or closed), each call -- loading, each decode step of a stream,
closing -- on the model's own thread (``ModelThread``). Either way one thread calls llama.cpp per model:
llama.cpp's OpenMP build keeps a team of ``n_threads`` threads per calling thread, so calls from the server's many
worker threads would leave more OpenMP threads than CPUs, spinning against one another (decode halved after a few
concurrent clients, docs/benchmarks.md).

Before llama.cpp sees a file, its GGUF header passes the agent's bounded check (edgectl_agent.gguf_check), and its
chat template is compiled and rendered once in llama-cpp-python's sandboxed formatter (Jinja's
ImmutableSandboxedEnvironment, since llama-cpp-python 0.2.72): a crafted header or a template that reaches for Python
internals fails the activation with a 422 and the serving model stays.

Beyond sampling (``edgectl_agent.runtimes.extras``): JSON Schema replies and tool calls by grammar-constrained
decoding (``compile_json_grammar``, ``edgectl_agent.runtimes.tool_calls``) and usage at the end of a stream
(``SampledTokens``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from edgectl_agent.admission import REQUEST_CANCELLED, ClientGone
from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import BadRequest, ModelUnavailable, RuntimeFailure
from edgectl_agent.gguf_check import check_gguf
from edgectl_agent.runtimes.base import (GenerationParams, LoadedModel, Runtime, RuntimeCapabilities, SerializedModel,
                                         import_library)
from edgectl_agent.runtimes.extras import INCLUDE_USAGE, RESPONSE_FORMAT, TOOLS, ChatExtras, usage_chunk
from edgectl_agent.runtimes.llama_server import choose_engine, start_server
from edgectl_agent.runtimes.llama_server_model import LlamaServerModel
from edgectl_agent.runtimes.llamacpp_batched import reply_as_chunks
from edgectl_agent.runtimes.llamacpp_engine import MAX_GRAMMAR_BYTES, compile_json_grammar  # noqa: F401 - re-exported
from edgectl_agent.runtimes.tool_calls import (arguments_schema, parse_reply, reply_schema, tools_message,
                                               with_tools_message)

log = logging.getLogger(__name__)


# runtime_options a deployment may pass through to llama_cpp.Llama (everything else is refused, by name).
LLAMA_OPTIONS = frozenset({
    "n_batch", "n_ubatch", "n_gpu_layers", "main_gpu", "flash_attn", "embedding", "use_mmap", "use_mlock", "seed",
    "chat_format", "type_k", "type_v", "rope_freq_base", "rope_freq_scale", "offload_kqv", "n_threads_batch",
    "pooling_type", "engine", "priority",
})
NOT_LLAMA_ARGS = ("engine", "priority")  # choose_engine's and the llama-server engine's, not Llama()'s


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
    kw.update({k: v for k, v in desired.runtime_options.items() if k not in NOT_LLAMA_ARGS})
    return kw


# runtime_options that keep a deployment on the one-call runtime (LlamaCppModel, llama-cpp-python's Llama): an
# embedding model, and a chat format named instead of the GGUF's template. Everything else is served by the
# continuous-batching engine (BatchedLlamaModel).
ONE_CALL_OPTIONS = frozenset({"embedding", "pooling_type", "chat_format"})
MODEL_OPTIONS = frozenset({"n_gpu_layers", "main_gpu", "use_mmap", "use_mlock"})


def engine_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """llama_model_params and llama_context_params fields for the batching engine from ``llama_kwargs`` (pure)."""
    model = {k: v for k, v in kwargs.items() if k in MODEL_OPTIONS}
    context = {k: v for k, v in kwargs.items()
               if k in ("n_ubatch", "type_k", "type_v", "rope_freq_base", "rope_freq_scale", "offload_kqv",
                        "n_threads_batch")}
    if "flash_attn" in kwargs:
        context["flash_attn_type"] = 1 if kwargs["flash_attn"] else 0  # LLAMA_FLASH_ATTN_TYPE_ENABLED/_DISABLED
    return model, context


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


class ModelThread:
    """The one thread that makes every llama.cpp call of one loaded model (a one-worker executor). ``call`` runs a
    function there and returns its result or raises its exception, in the caller's thread."""

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama.cpp:{name}")

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self._executor.submit(fn, *args, **kwargs).result()

    def stop(self) -> None:
        """End the thread once the call it runs is done (later calls raise RuntimeError)."""
        self._executor.shutdown(wait=True)


_END = object()


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
        if choose_engine(desired, one_call=bool(ONE_CALL_OPTIONS & set(kwargs))) == "llama-server":
            server = start_server(Path(path), desired)
            return LlamaServerModel(desired.name, server, slots=desired.parallel,
                                    embeddings=bool(kwargs.get("embedding", False)))
        if "priority" in desired.runtime_options:
            raise RuntimeFailure(f"deployment '{desired.name}': runtime_options.priority is the llama-server "
                                 "engine's (llama.cpp's --prio), and this deployment is served in-process",
                                 hint="set engine: llama-server (auto picks it for parallel > 1 on a device with "
                                      "llama-server), or drop priority")
        if not ONE_CALL_OPTIONS & set(kwargs):
            return self._load_batched(path, desired, kwargs)
        if "n_threads" in kwargs:  # prefill with the deployment's threads too, as the batching engine does
            kwargs = {"n_threads_batch": kwargs["n_threads"], **kwargs}
        thread = ModelThread(desired.name)
        try:
            llm = thread.call(llama_cpp.Llama, str(path), **kwargs)
        except (ValueError, RuntimeError, OSError) as e:
            thread.stop()
            raise _load_failed(desired, e) from e
        except BaseException:
            thread.stop()
            raise
        return LlamaCppModel(llm, embeddings=bool(kwargs.get("embedding", False)), name=desired.name, thread=thread)

    @staticmethod
    def _load_batched(path: Path, desired: DesiredDeployment, kwargs: dict[str, Any]) -> LoadedModel:
        """The continuous-batching engine (edgectl_agent.runtimes.llamacpp_engine), ``parallel`` sequences."""
        from edgectl_agent.runtimes.llamacpp_batched import BatchedLlamaModel
        from edgectl_agent.runtimes.llamacpp_engine import BatchEngine

        model_options, context_options = engine_options(kwargs)
        try:
            engine = BatchEngine(str(path), name=desired.name, parallel=desired.parallel,
                                 context_length=desired.context_length, threads=desired.threads,
                                 n_batch=kwargs.get("n_batch", 512), model_options=model_options,
                                 context_options=context_options)
        except (ValueError, RuntimeError, OSError) as e:
            raise _load_failed(desired, e) from e
        return BatchedLlamaModel(engine, name=desired.name)


def _load_failed(desired: DesiredDeployment, e: Exception) -> RuntimeFailure:
    return RuntimeFailure(f"llama.cpp could not load {desired.artifact.digest} ({desired.artifact.model} "
                          f"{desired.artifact.quant}) for deployment '{desired.name}': {e}",
                          hint="check the artifact was built for llama.cpp (GGUF) and that the device has "
                               "the memory for context_length x parallel; see the agent log")


def _template_failed(e: Exception) -> BadRequest:
    return BadRequest(f"the model's chat template failed on these messages: {type(e).__name__}: {e}",
                      hint="send plain string contents; if it persists, the artifact's chat template is broken or "
                           "hostile: rebuild it", code="chat_template_failed")


# -- features beyond sampling (edgectl_agent.runtimes.extras) ------------------------------------------------
# JSON Schema grammars: compile_json_grammar (edgectl_agent.runtimes.llamacpp_engine, shared with the batching path).


class SampledTokens:
    """A logits processor that changes nothing and counts: the prompt's tokens (the context when the first token
    is sampled) and the tokens sampled. llama.cpp does not count an end-of-generation token in usage, so a stream
    that finished with "stop" counts one less; a reply ended by a stop string of the request is then counted one
    token low (llama.cpp gives a stream no usage of its own to compare with)."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.sampled = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.sampled == 0:
            self.prompt_tokens = len(input_ids)
        self.sampled += 1
        return scores

    def completion_tokens(self, finish_reason: str | None) -> int:
        return max(self.sampled - (1 if finish_reason == "stop" else 0), 0)


GENERATING = ("create_completion", "create_chat_completion")


class StopWhenCancelled:
    """A logits processor that changes nothing until ``cancelled`` is set (a whole call's client went away), then
    leaves only the end-of-generation token: llama.cpp ends the reply at the next token. (An exception would not
    do: llama-cpp-python runs logits processors in a C callback, which prints exceptions and goes on.)"""

    def __init__(self, cancelled: Any, eos_token: int) -> None:
        self.cancelled = cancelled
        self.eos_token = eos_token

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if self.cancelled.is_set():
            scores[:] = -float("inf")
            scores[self.eos_token] = 0.0
        return scores


def _finish_reason(chunk: dict[str, Any] | None) -> str | None:
    choices = (chunk or {}).get("choices") or []
    return choices[0].get("finish_reason") if choices else None


class LlamaCppModel(SerializedModel):
    extra_features = frozenset({RESPONSE_FORMAT, INCLUDE_USAGE, TOOLS})

    def __init__(self, llm: Any, *, embeddings: bool, name: str, thread: ModelThread | None = None) -> None:
        super().__init__(name)
        self._llm = llm
        self._thread = thread or ModelThread(name)  # the thread that makes its llama.cpp calls (ModelThread)
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
    # It runs on the model's thread; the lock keeps the calls of one request (a stream's steps) together.
    def _run(self, method: str, *args, **kwargs):
        cancelled = REQUEST_CANCELLED.get()
        with self._locked_call():
            call = getattr(self._llm, method)
            if cancelled is not None and method in GENERATING:  # stop decoding for a client that went away
                stop = StopWhenCancelled(cancelled, self._llm.token_eos())
                kwargs["logits_processor"] = [*kwargs.get("logits_processor", []), stop]
            out = self._thread.call(call, *args, **kwargs)
        if cancelled is not None and cancelled.is_set():
            raise ClientGone("the client went away; its generation was stopped")
        return out

    def _stream(self, method: str, *args, **kwargs) -> Iterator[dict[str, Any]]:
        with self._locked_call():
            it = self._thread.call(getattr(self._llm, method), *args, stream=True, **kwargs)
            try:
                while (chunk := self._thread.call(next, it, _END)) is not _END:
                    yield chunk
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    self._thread.call(close)

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

    def chat_with_extras(self, messages, params: GenerationParams, extras: ChatExtras, *, stream: bool = False):
        if extras.uses_tools:
            return self._chat_with_tools(messages, params, extras, stream=stream)
        kw = {**params.as_kwargs(), **self._grammar_kwargs(extras)}
        if stream:
            return self._stream_extras("create_chat_completion", extras, messages=messages, **kw)
        return self._run("create_chat_completion", messages=messages, **kw)

    def complete_with_extras(self, prompt: str, params: GenerationParams, extras: ChatExtras, *,
                             stream: bool = False):
        kw = {**params.as_kwargs(), **self._grammar_kwargs(extras)}
        if stream:
            return self._stream_extras("create_completion", extras, prompt, **kw)
        return self._run("create_completion", prompt, **kw)

    def _chat_with_tools(self, messages, params: GenerationParams, extras: ChatExtras, *, stream: bool):
        """Tools by constrained decoding (edgectl_agent.runtimes.tool_calls). A stream is the whole reply sent as
        chunks: the calls are known only once their JSON is complete."""
        tools = list(extras.tools)
        vocab = self._vocab()
        for i, tool in enumerate(tools):  # each alone first, so that a 400 names the tool whose schema fails
            compile_json_grammar(arguments_schema(tool), f"tools[{i}].function.parameters", vocab)
        grammar = compile_json_grammar(reply_schema(tools, extras.tool_choice, extras.parallel_tool_calls), TOOLS,
                                       vocab)
        prompt = with_tools_message(messages, tools_message(tools, extras.tool_choice, extras.parallel_tool_calls))

        def run() -> dict[str, Any]:
            out = self._run("create_chat_completion", messages=prompt, grammar=grammar, **params.as_kwargs())
            choice = out["choices"][0]
            message, finish = parse_reply(choice["message"].get("content") or "", choice.get("finish_reason"),
                                          extras.tool_choice)
            out["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
            return out

        return self._as_chunks(run, extras) if stream else run()

    _as_chunks = staticmethod(reply_as_chunks)

    def _grammar_kwargs(self, extras: ChatExtras) -> dict[str, Any]:
        if extras.json_schema is None:
            return {}
        return {"grammar": compile_json_grammar(extras.json_schema, extras.schema_param, self._vocab())}

    def _vocab(self) -> Any:
        """The model's vocabulary, which llama.cpp parses grammars against (read-only once loaded)."""
        llm = self._llm
        if llm is None:
            raise ModelUnavailable(f"model '{self.name}' was unloaded", hint="retry the request")
        return llm._model.vocab

    def _stream_extras(self, method: str, extras: ChatExtras, *args, **kwargs) -> Iterator[dict[str, Any]]:
        if not extras.include_usage:
            yield from self._stream(method, *args, **kwargs)
            return
        counter = SampledTokens()
        last = None
        for chunk in self._stream(method, *args, logits_processor=[counter], **kwargs):
            last = chunk
            yield chunk
        base = {k: v for k, v in (last or {}).items() if k not in ("choices", "usage")}
        yield usage_chunk(base, counter.prompt_tokens, counter.completion_tokens(_finish_reason(last)))

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
        try:
            if close is not None:
                self._thread.call(close)
        finally:
            self._llm = None
            self._thread.stop()

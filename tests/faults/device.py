"""What the fault tests share: tiny artifacts (GGUF files for llama.cpp, OpenVINO IR folders), pushing and
activating them as `edgectl apply` does (edgectl's own AgentClient), asking a real agent which artifact answers,
and listing what a crash may leave in an agent's root."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.tinymodels import write_tiny_llama_gguf

MODEL = "tiny"


@dataclass(frozen=True)
class Artifact:
    """An artifact as edgectl pushes it: its blobs in upload order and the deployment that serves it."""

    digest: str
    blobs: list[tuple[str, Path]] = field(compare=False)
    desired: object = field(compare=False)  # edgectl_agent.api.DesiredDeployment
    kind: str = field(default="llm", compare=False)  # llm: answers chat; tensor: answers KServe v2 infer

    @property
    def hexes(self) -> set[str]:
        """The store file names of its blobs."""
        return {d[7:] for d, _ in self.blobs}


def tiny_gguf(folder: Path, seed: int, *, name: str = MODEL) -> Artifact:
    """A tiny llama GGUF (F16, ~3 MB; every seed gives other weights, so another digest) served by llama.cpp."""
    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from edgectl_agent.store import sha256_file

    path = write_tiny_llama_gguf(folder / f"tiny-{seed}.gguf", seed=seed, ftype="F16")
    digest = sha256_file(path)
    return Artifact(digest, [(digest, path)], DesiredDeployment(
        name=name, runtime="llamacpp", context_length=256, threads=1,
        artifact=ArtifactRef(digest=digest, format="gguf", quant="F16", size_bytes=path.stat().st_size,
                             model="tiny")))


def tiny_ir(folder: Path, seed: int, *, name: str = "mlp") -> Artifact:
    """A tiny OpenVINO IR folder (a directory artifact: manifest + model.xml + model.bin), built by edgectl's real
    builder from a one-layer ONNX graph whose weights depend on ``seed``; served by the openvino runtime."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from tests.integration.conftest import build_from

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["Y"])], "linear",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    src = folder / f"linear-{seed}.onnx"
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(model.SerializeToString())
    built, store = build_from(folder, {"type": "onnx", "path": str(src), "precision": "FP32"}, format="openvino",
                              quant="FP32", kind="tensor", task="tensor", name=name)  # store: <folder>/store
    return Artifact(built.digest, store.blobs_of(built), DesiredDeployment(
        name=name, runtime="openvino", context_length=256, threads=1,
        artifact=ArtifactRef(digest=built.digest, format="openvino", quant="FP32", size_bytes=built.size_bytes,
                             model=name, layout="tree")), kind="tensor")


def push_and_activate(agent, art: Artifact, *, retries: int = 5):
    """Upload (resumable, verified) and activate, as edgectl apply does; the agent's DeploymentState."""
    from edgectl.agent_client import AgentClient

    with AgentClient(agent.url, agent.token, device="faults", timeout=60.0) as client:
        for digest, path in art.blobs:
            client.upload(digest, path, retries=retries)
        return client.put_deployment(art.desired)


def deployment(agent, name: str = MODEL) -> dict:
    r = httpx.get(f"{agent.url}/control/v1/state", headers=agent.auth, timeout=10)
    r.raise_for_status()
    return next(d for d in r.json()["deployments"] if d["name"] == name)


def chat(agent, name: str = MODEL, client: httpx.Client | None = None, max_tokens: int = 4) -> httpx.Response:
    body = {"model": name, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens,
            "temperature": 0}
    if client is not None:
        return client.post("/v1/chat/completions", json=body)
    return httpx.post(f"{agent.url}/v1/chat/completions", json=body, timeout=60)


def answering_digest(agent, art: Artifact) -> str:
    """Which artifact answers a real request for ``art``'s deployment now (it must answer): a chat completion, or
    a KServe v2 inference on zeros."""
    name = art.desired.name
    if art.kind == "llm":
        r = chat(agent, name)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] > 0, r.text
        return r.json()["system_fingerprint"]
    (spec,) = httpx.get(f"{agent.url}/v2/models/{name}", timeout=10).json()["inputs"]
    shape = [1 if d < 0 else d for d in spec["shape"]]
    r = httpx.post(f"{agent.url}/v2/models/{name}/infer", timeout=30, json={"inputs": [
        {"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": [0] * math.prod(shape)}]})
    assert r.status_code == 200, r.text
    return r.json()["model_version"]


def stored(root: Path) -> set[str]:
    """Names of the complete blobs in the agent's store."""
    return {p.name for p in (root / "artifacts").iterdir()}


def staged(root: Path) -> set[str]:
    """Names in the agent's staging folder (partial uploads, tree folders being laid out)."""
    return {p.name for p in (root / "staging").iterdir()}


def leftovers(root: Path) -> list[str]:
    """Temp files and half-laid-out tree folders anywhere under the root: a crash must not leave them for good."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith(".tmp") or ".tree-" in p.name)

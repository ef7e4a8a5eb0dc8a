"""ONNX LLMs end to end: a tiny HF llama folder -> the real onnxruntime-genai model builder (FP32, INT4) -> a real
agent with the onnxruntime-genai runtime -> the real openai client (chat, streamed chat, completions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import build_smollm2, serve_artifact

pytestmark = pytest.mark.integration
og = pytest.importorskip("onnxruntime_genai")
pytest.importorskip("onnx_ir")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
openai = pytest.importorskip("openai")

GENAI_FF = 384  # the tiny llama's FF (512) equals its vocab, which the builder cannot tell from the LM head
PROMPT_IDS = [74, 71, 78, 78, 81, 494, 261, 330, 86]


def write_genai_llama(folder: Path) -> Path:
    """tests/tinyhf's llama with FF 384 (a multiple of the INT4 block, 32) instead of 512."""
    from safetensors.numpy import load_file, save_file

    from tests.tinyhf import write_tiny_hf_llama

    write_tiny_hf_llama(folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = GENAI_FF
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = load_file(str(folder / "model.safetensors"))
    rng = np.random.default_rng(1)
    hidden = config["hidden_size"]
    for name in list(tensors):
        if ".mlp.gate_proj." in name or ".mlp.up_proj." in name:
            tensors[name] = (rng.standard_normal((GENAI_FF, hidden)) * 0.02).astype(np.float32)
        elif ".mlp.down_proj." in name:
            tensors[name] = (rng.standard_normal((hidden, GENAI_FF)) * 0.02).astype(np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


TINY_ARCH = {"family": "llama", "parameters": 1_200_000, "layers": 2, "hidden_size": 256, "attention_heads": 4,
             "kv_heads": 2, "head_dim": 64, "vocab_size": 512, "max_context": 512}


def build_from(tmp_path: Path, source: dict, *, format: str, quant: str, name: str = "tiny"):
    """conftest.build_from for a chat model (which needs architecture facts): ``(artifact, store)``."""
    from edgectl.builders import ArtifactStore, build
    from edgectl.spec import Model, Recipe

    model = Model.model_validate({
        "apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": name},
        "spec": {"task": "chat", "architecture": TINY_ARCH, "sources": [source]}})
    store = ArtifactStore(tmp_path / "store")
    recipe = Recipe(model=name, format=format, kind="llm", quant=quant, source_precision=source["precision"])
    artifact, _ = build(recipe, model, store)
    return artifact, store


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory) -> Path:
    return write_genai_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


def source(folder: Path) -> dict:
    return {"type": "huggingface", "path": str(folder), "precision": "FP32"}


@pytest.fixture(scope="module")
def int4(hf_folder, tmp_path_factory):
    return build_from(tmp_path_factory.mktemp("int4"), source(hf_folder), format="onnx", quant="INT4")


def genai_logits(folder: Path, ids: list[int]) -> np.ndarray:
    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=64, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    return np.array(generator.get_output("logits"))[0, -1]


def reference_logits(folder: Path, ids: list[int]) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def test_fp32_matches_transformers_and_int4_stays_close(hf_folder, int4, tmp_path):
    fp32, store = build_from(tmp_path, source(hf_folder), format="onnx", quant="FP32")
    assert fp32.layout == "tree" and fp32.format == "onnx" and fp32.quant == "FP32"
    want = reference_logits(hf_folder, PROMPT_IDS)
    got = genai_logits(store.local_path(fp32), PROMPT_IDS)
    assert np.abs(got - want).max() < 1e-4 * max(1.0, np.abs(want).max())

    art4, store4 = int4
    assert art4.size_bytes < fp32.size_bytes / 2.5
    got4 = genai_logits(store4.local_path(art4), PROMPT_IDS)
    # 4-bit round-to-nearest on random Gaussian weights (a worst case): measured relative L2 error 0.20
    assert np.linalg.norm(got4 - want) / np.linalg.norm(want) < 0.3
    assert int(got4.argmax()) == int(want.argmax())


def test_genai_config_and_graph_versions(int4):
    import onnx

    art, store = int4
    folder = store.local_path(art)
    config = json.loads((folder / "genai_config.json").read_text())
    assert config["model"]["type"] == "llama" and config["model"]["decoder"]["filename"] == "model.onnx"
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    ops = {n.op_type for n in graph.graph.node}
    assert "MatMulNBits" in ops and "GroupQueryAttention" in ops, ops
    assert not any(p.name.startswith(".") for p in folder.rglob("*"))


def test_agent_serves_chat_stream_and_completions(int4, start_agent):
    from edgectl.agent_client import AgentClient
    from edgectl.plan.compat import mismatch

    art, store = int4
    agent = start_agent()
    # The compatibility check apply runs before pushing, with the runtime versions this real agent reports.
    with AgentClient(agent.url, agent.token, device="test") as client:
        reported = dict(client.facts().runtimes)
    assert mismatch(art.compat, "onnxruntime-genai", reported["onnxruntime-genai"], reported) is None, art.compat
    old = {**reported, "onnxruntime-genai": "0.3.0"}  # 0.3.0 bundles onnxruntime 1.18.0: no opset 22
    why = mismatch(art.compat, "onnxruntime-genai", "0.3.0", old) or ""
    assert "onnxruntime-genai 0.3.0" in why and "onnxruntime 1.18.0 (bundled with it)" in why, why
    assert "pip install -U 'onnxruntime-genai>=0.7'" in why
    serve_artifact(agent, store, art, kind="llm")
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, max_retries=0, timeout=120)

    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                          max_tokens=8, temperature=0)
    text = chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage.completion_tokens >= 1 and chat.usage.prompt_tokens > 1

    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                                 max_tokens=8, temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy: the stream carries the same answer, piece by piece

    done = client.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0)
    assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 5

    sampled = client.completions.create(model="tiny", prompt="the cat", max_tokens=5, temperature=0.8, top_p=0.9,
                                        seed=3)
    assert sampled.usage.completion_tokens >= 1


@pytest.mark.slow
def test_smollm2_int4_knows_paris(tmp_path, start_agent, smollm2_store):
    art, store = build_smollm2(tmp_path, smollm2_store, format="onnx", quant="INT4")
    agent = start_agent()
    serve_artifact(agent, store, art, name="smollm2", kind="llm", context_length=512)
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, max_retries=0, timeout=300)
    answer = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    assert "Paris" in answer.choices[0].message.content

"""bitsandbytes NF4 end to end with the real tools, on this machine's CPU: a tiny Hugging Face llama folder -> the bnb
builder (a 16-bit folder with a quality record of NF4 against the float32 source) -> a real agent whose
transformers runtime loads it as NF4 with bitsandbytes' CPU library -> the real openai client through the agent's
authenticated API. SmolLM2 (GGUF -> HF -> bnb NF4) answers "Paris" (slow).

bitsandbytes is installed by scripts/setup.sh (the [bnb] extras): without it these tests fail, never skip. CUDA
was not exercised here (no GPU on this machine).
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.integration.conftest import build_from, build_smollm2, serve_artifact
from tests.tinyhf import write_tiny_hf_llama

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def tiny_nf4(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bnb")
    folder = write_tiny_hf_llama(tmp / "tiny-llama")
    return build_from(tmp, {"type": "huggingface", "path": str(folder), "precision": "FP32"},
                      format="bnb", quant="NF4_DQ")


def test_bnb_build_is_a_16_bit_folder_with_an_nf4_quality_record(tiny_nf4):
    artifact, store = tiny_nf4
    assert (artifact.format, artifact.quant, artifact.layout) == ("bnb", "NF4_DQ", "tree")
    assert artifact.tool_version.startswith("transformers 4.57")
    folder = store.local_path(artifact)
    config = json.loads((folder / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16" and "quantization_config" not in config
    assert (folder / "tokenizer_config.json").is_file() and list(folder.glob("*.safetensors"))
    quality = artifact.quality
    assert quality is not None and quality.tool.startswith("bitsandbytes 0.50")
    # random Gaussian weights are 4-bit's worst case; the record must still show a model that tracks its source
    assert 0.3 < quality.top1_agreement <= 1.0 and quality.kl_divergence > 0
    assert abs(quality.perplexity - quality.source_perplexity) / quality.source_perplexity < 0.5


def test_loaded_nf4_memory_matches_the_plan_layout(tiny_nf4):
    """The planner's NF4 bits per weight (edgectl.plan.formats) against what bitsandbytes really holds."""
    from edgectl.plan import formats
    from edgectl.spec.model import Architecture
    from edgectl_agent.api import ArtifactRef, DesiredDeployment
    from edgectl_agent.runtimes.transformers_nf4 import TransformersNf4Runtime
    from tests.integration.conftest import tiny_hf_architecture

    artifact, store = tiny_nf4
    # the exact parameter count (the planner derives the feed-forward width from it): 2 layers x 590,336 +
    # 2 x 512 x 256 embedding and output + the final norm's 256
    arch = Architecture.model_validate({**tiny_hf_architecture(), "parameters": 1_443_072})
    for quant in ("NF4", "NF4_DQ"):
        desired = DesiredDeployment(name="m", runtime="transformers", context_length=128, artifact=ArtifactRef(
            digest=artifact.digest, format="bnb", quant=quant, size_bytes=artifact.size_bytes, model="tiny",
            layout="tree"))
        model = TransformersNf4Runtime().load(store.local_path(artifact), desired)
        try:
            planned = formats.weights_bytes(arch, "bnb", quant)
            assert abs(model.weight_bytes - planned) / planned < 0.03, (quant, model.weight_bytes, planned)
            assert model.device == "cpu"
        finally:
            model.close()
    # NF4 in memory is far below the 16-bit folder on disk
    assert formats.weights_bytes(arch, "bnb", "NF4_DQ") < 0.6 * formats.stored_bytes(arch, "bnb", "NF4_DQ")


def test_agent_serves_nf4_on_the_cpu_through_the_openai_client(tiny_nf4, start_agent):
    from edgectl.agent_client import AgentClient

    artifact, store = tiny_nf4
    agent = start_agent()
    with AgentClient(agent.url, agent.token, device="test", timeout=60.0) as client:
        facts = client.facts()
    assert "cpu" in facts.bitsandbytes_backends and facts.runtimes["transformers"].startswith("0.50")
    serve_artifact(agent, store, artifact, runtime_options={"device": "cpu"})
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, timeout=120)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0, stream=True)
        if c.choices]
    assert "".join(pieces) == reply.choices[0].message.content  # greedy: the stream says the same
    text = client.completions.create(model="tiny", prompt="the library", max_tokens=5, temperature=0)
    assert text.choices[0].finish_reason in ("length", "stop") and text.usage.completion_tokens <= 5
    # behind the agent's authentication: its control API refuses a call without the device token
    from edgectl_agent.api import CONTROL_PREFIX

    assert httpx.get(agent.url + CONTROL_PREFIX + "/state", timeout=10).status_code == 401
    # a bad runtime option fails that activation, naming the option; the serving model stays (same agent)
    from edgectl.errors import AgentError
    from edgectl_agent.api import ArtifactRef, DesiredDeployment

    desired = DesiredDeployment(
        name="other", runtime="transformers", context_length=128, runtime_options={"device": "tpu"},
        artifact=ArtifactRef(digest=artifact.digest, format="bnb", quant=artifact.quant,
                             size_bytes=artifact.size_bytes, model="tiny", layout="tree"))
    with AgentClient(agent.url, agent.token, device="test", timeout=60.0) as control:
        with pytest.raises(AgentError) as err:
            control.put_deployment(desired)
    assert "runtime_options.device 'tpu'" in str(err.value)
    again = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=8, temperature=0)
    assert again.choices[0].message.content == reply.choices[0].message.content


@pytest.mark.slow
def test_smollm2_nf4_names_paris(tmp_path, smollm2_store, start_agent):
    artifact, store = build_smollm2(tmp_path, smollm2_store, format="bnb", quant="NF4")
    assert artifact.quality is not None and artifact.quality.top1_agreement > 0.6
    agent = start_agent()
    # float32 compute: about twice bfloat16's speed on a CPU without bfloat16 units (the embedding takes 4 bytes)
    serve_artifact(agent, store, artifact, name="smollm2", context_length=512,
                   runtime_options={"compute_dtype": "float32"})
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, timeout=300)
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=12,
        temperature=0)
    assert "Paris" in reply.choices[0].message.content

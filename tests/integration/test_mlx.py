"""MLX end to end with the real tools: a tiny Hugging Face llama folder -> mlx_lm.convert (FP16 / INT8 / INT4) ->
the artifact store as a tree -> a real agent with the mlx runtime -> the real openai client.

mlx runs on the CPU here (Linux, mlx[cpu]); on Apple silicon the same code runs on Metal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.integration.conftest import build_from, build_smollm2, serve_artifact
from tests.tinyhf import write_tiny_hf_llama

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")
pytest.importorskip("mlx_lm")

PROMPT = "the quick brown fox jumps over the lazy dog and the cat"
# Relative L2 error of the logits against transformers in float32 on PROMPT. Measured on the tiny random llama:
# FP16 0.0008, INT8 0.012, INT4 0.21 (random Gaussian weights are the worst case for 4-bit groups).
LOGIT_TOLERANCE = {"FP16": 0.01, "INT8": 0.05, "INT4": 0.4}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    return write_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


def source(folder: Path) -> dict:
    return {"type": "huggingface", "path": str(folder), "precision": "FP32"}


def reference_logits(folder: Path) -> np.ndarray:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder)(PROMPT)["input_ids"]
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder)(torch.tensor([ids])).logits[0].numpy()


def mlx_logits(folder: Path) -> np.ndarray:
    import mlx.core as mx
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(folder))
    ids = tokenizer.encode(PROMPT)
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def test_builds_fp16_int8_int4_folders_that_match_the_source(tmp_path, tiny_hf):
    want = reference_logits(tiny_hf)
    sizes, errors = {}, {}
    for quant, bits in (("FP16", None), ("INT8", 8), ("INT4", 4)):
        artifact, store = build_from(tmp_path, source(tiny_hf), format="mlx", quant=quant)
        assert (artifact.format, artifact.layout, artifact.quant) == ("mlx", "tree", quant)
        folder = store.local_path(artifact)
        names = sorted(p.name for p in folder.iterdir())
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(names)
        assert not [n for n in names if n.startswith(".") or n.endswith(".py") or n == "README.md"], names
        config = json.loads((folder / "config.json").read_text())
        if bits is None:
            assert "quantization" not in config
        else:  # what mlx_lm.load (and the lead's compat checker) reads
            assert config["quantization"]["bits"] == bits and config["quantization"]["group_size"] == 64
            assert config["quantization"].get("mode", "affine") == "affine"
        sizes[quant] = (folder / "model.safetensors").stat().st_size
        got = mlx_logits(folder)
        assert got.shape == want.shape
        errors[quant] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
        assert errors[quant] < LOGIT_TOLERANCE[quant], errors
    # fewer bits, fewer bytes, more error: each quant level really is what it says
    assert sizes["INT4"] < sizes["INT8"] < sizes["FP16"], sizes
    assert errors["FP16"] < errors["INT8"] < errors["INT4"], errors


def test_same_source_and_recipe_give_the_same_digest(tmp_path, tiny_hf):
    a, _ = build_from(tmp_path / "a", source(tiny_hf), format="mlx", quant="INT4")
    b, _ = build_from(tmp_path / "b", source(tiny_hf), format="mlx", quant="INT4")
    assert a.digest == b.digest


def test_unsupported_model_type_is_refused_with_the_supported_list(tmp_path, tiny_hf):
    from edgectl.errors import BuildError

    odd = tmp_path / "odd"
    odd.mkdir()
    for f in tiny_hf.iterdir():
        (odd / f.name).write_bytes(f.read_bytes())
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "not-a-model"}))
    with pytest.raises(BuildError, match="cannot convert model_type 'not-a-model'") as e:
        build_from(tmp_path, source(odd), format="mlx", quant="INT4")
    assert "llama" in e.value.hint and "qwen2" in e.value.hint


@pytest.mark.parametrize("quant", ["INT4", "INT8"])
def test_real_agent_serves_mlx_to_the_openai_client(tmp_path, tiny_hf, start_agent, quant):
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    artifact, store = build_from(tmp_path, source(tiny_hf), format="mlx", quant=quant)
    agent = start_agent()
    serve_artifact(agent, store, artifact)
    oai = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "capital of France?"}]

    chat = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    text = chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("length", "stop") and chat.usage.completion_tokens > 0
    assert chat.usage.prompt_tokens > 5  # the ChatML template was rendered around the message

    stream = oai.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text  # greedy: the same answer
    assert chunks[-1].choices[0].finish_reason == chat.choices[0].finish_reason

    # The agent's greedy completion is exactly mlx_lm's own, run here on the same artifact folder (computing in
    # float32, as the runtime does on a CPU).
    import mlx.core as mx

    model, tokenizer = mlx_lm.load(str(store.local_path(artifact)))
    model.set_dtype(mx.float32)
    expected = mlx_lm.generate(model, tokenizer, PROMPT, max_tokens=6, sampler=make_sampler(temp=0.0))
    done = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0)
    assert done.choices[0].text == expected
    assert done.choices[0].finish_reason in ("length", "stop")
    streamed = "".join(c.choices[0].text for c in
                       oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0, stream=True))
    assert streamed == expected

    seeded = [oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=1.0, seed=7)
              .choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]  # a seed makes sampling repeatable

    with pytest.raises(openai.BadRequestError, match="exceed the context length"):
        oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=400)


@pytest.mark.slow
def test_smollm2_mlx_int4_knows_paris(tmp_path, start_agent, smollm2_store):
    artifact, store = build_smollm2(tmp_path, smollm2_store, format="mlx", quant="INT4")
    config = json.loads((store.local_path(artifact) / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    agent = start_agent()
    serve_artifact(agent, store, artifact, name="smollm2", context_length=512)
    oai = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token, max_retries=0, timeout=120)
    chat = oai.chat.completions.create(model="smollm2", max_tokens=24, temperature=0, messages=[
        {"role": "user", "content": "What is the capital of France? Answer in one word."}])
    assert "paris" in chat.choices[0].message.content.lower(), chat.choices[0].message.content

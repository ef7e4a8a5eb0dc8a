"""OpenVINO LLMs end to end: a tiny Hugging Face llama -> the real builder (optimum-intel export, NNCF INT4/INT8,
openvino-tokenizers) -> a real agent's openvino-genai runtime -> the openai client (chat, streamed chat,
completions). The slow test does the same with SmolLM2 converted from its GGUF and expects "Paris"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.conftest import build_from, build_smollm2, serve_artifact

pytestmark = pytest.mark.integration
pytest.importorskip("optimum.intel")
pytest.importorskip("openvino_genai")
openai = pytest.importorskip("openai")

IR_VERSION = re.compile(rb'<net name="[^"]*" version="(\d+)"')


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory) -> Path:
    from tests.tinyhf import write_tiny_hf_llama

    return write_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


@pytest.mark.parametrize("quant", ["INT4", "INT8"])
def test_tiny_llama_builds_and_serves(tmp_path, tiny_hf, start_agent, quant):
    source = {"type": "huggingface", "path": str(tiny_hf), "precision": "FP32"}
    artifact, store = build_from(tmp_path, source, format="openvino", quant=quant)
    assert artifact.layout == "tree" and artifact.format == "openvino"
    folder = store.local_path(artifact)
    names = {p.name for p in folder.iterdir()}
    assert {"openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml",
            "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names, names
    assert IR_VERSION.search((folder / "openvino_model.xml").read_bytes()[:200]).group(1) == b"11"
    weight_types = set(re.findall(rb'element_type="(u4|i4|u8|i8)"', (folder / "openvino_model.xml").read_bytes()))
    assert weight_types == ({b"u4", b"u8"} if quant == "INT4" else {b"u8"}), weight_types  # asymmetric: unsigned
    fp32_bytes = (tiny_hf / "model.safetensors").stat().st_size
    # INT4/INT8 weights (embeddings and lm_head stay INT8 in INT4): well under the FP32 source
    assert artifact.size_bytes < fp32_bytes / (3 if quant == "INT4" else 2.5), (artifact.size_bytes, fp32_bytes)

    agent = start_agent()
    serve_artifact(agent, store, artifact, context_length=256)
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token)
    messages = [{"role": "user", "content": "hello the world"}]

    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    text = chat.choices[0].message.content
    assert text and chat.choices[0].finish_reason in ("length", "stop")
    assert chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0

    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0,
                                            stream=True)
    chunks = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(chunks) == text  # greedy: the streamed text is the same generation
    assert sum(1 for c in chunks if c) >= 2  # arrived in pieces

    done = client.completions.create(model="tiny", prompt="the", max_tokens=5, temperature=0)
    assert done.choices[0].text and done.choices[0].finish_reason == "length"
    # seeded sampling is reproducible
    a, b = (client.completions.create(model="tiny", prompt="the", max_tokens=6, temperature=0.9, seed=7)
            for _ in range(2))
    assert a.choices[0].text == b.choices[0].text


@pytest.mark.slow
def test_smollm2_int4_knows_paris(tmp_path, start_agent, smollm2_store):
    # build() converts the GGUF to a Hugging Face folder first (edgectl.builders.convert), then builds INT4 from it.
    artifact, store = build_smollm2(tmp_path, smollm2_store, format="openvino", quant="INT4")
    agent = start_agent()
    serve_artifact(agent, store, artifact, name="smollm2", context_length=512)
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=agent.token)
    chat = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=24,
        temperature=0)
    assert "Paris" in chat.choices[0].message.content


def compressed_weights(xml: Path) -> dict[str, dict]:
    """Per weight compressed below 8 bits or to 8: its element type, shape, whether a zero point is subtracted
    (asymmetric) and the shape of its scale, read from the IR's graph (Constant -> Convert [-> Subtract] ->
    Multiply)."""
    import openvino as ov

    out = {}
    for op in ov.Core().read_model(xml).get_ordered_ops():
        kind = op.get_element_type().get_type_name() if op.get_type_name() == "Constant" else ""
        if kind not in ("u4", "i4", "u8", "i8") or op.get_friendly_name().endswith("zero_point"):
            continue
        convert = next(iter(op.output(0).get_target_inputs())).get_node()
        after = next(iter(convert.output(0).get_target_inputs())).get_node()
        subtract = after.get_type_name() == "Subtract"
        multiply = next(iter(after.output(0).get_target_inputs())).get_node() if subtract else after
        weight_side = after if subtract else convert
        scale = next(multiply.input_value(i).get_node() for i in range(2)
                     if multiply.input_value(i).get_node().get_friendly_name() != weight_side.get_friendly_name())
        out[op.get_friendly_name()] = {"type": kind, "shape": list(op.get_output_shape(0)), "zero_point": subtract,
                                       "scale_shape": list(scale.get_output_shape(0))}
    return out


def test_npu_recipe_is_symmetric_channel_wise_int4_and_loads_on_cpu(tmp_path, tiny_hf):
    """INT4_SYM_CW, the recipe the planner picks for an Intel NPU: every 4-bit weight is signed (symmetric, no zero
    point) with one scale per output channel, and openvino-genai loads and runs the folder (on the CPU: no NPU
    here). Its quality against the source is measured and recorded like GGUF's."""
    import openvino_genai

    source = {"type": "huggingface", "path": str(tiny_hf), "precision": "FP32"}
    artifact, store = build_from(tmp_path, source, format="openvino", quant="INT4_SYM_CW")
    folder = store.local_path(artifact)
    weights = compressed_weights(folder / "openvino_model.xml")
    four_bit = {n: w for n, w in weights.items() if w["type"] in ("u4", "i4")}
    assert len(four_bit) == 2 * 7, sorted(weights)  # q, k, v, o, gate, up, down in each of the 2 layers
    for name, w in four_bit.items():
        assert w["type"] == "i4" and not w["zero_point"], (name, w)  # symmetric
        assert len(w["shape"]) == 2 and w["scale_shape"] == [w["shape"][0], 1], (name, w)  # one scale per row
    # the embedding and the output layer keep NNCF's INT8 backup precision (asymmetric, per channel)
    assert {w["type"] for n, w in weights.items() if n not in four_bit} == {"u8"}
    grouped_artifact, _ = build_from(tmp_path, source, format="openvino", quant="INT4", store=store)
    grouped = compressed_weights(store.local_path(grouped_artifact) / "openvino_model.xml")
    assert grouped and all(w["type"] == "u4" and w["zero_point"] and len(w["shape"]) == 3
               for w in grouped.values() if w["type"] in ("u4", "i4"))  # the CPU/GPU recipe: asymmetric, grouped

    pipe = openvino_genai.LLMPipeline(str(folder), "CPU")
    text = pipe.generate("hello the world", max_new_tokens=6)
    assert isinstance(text, str) and text.strip(), repr(text)

    q = artifact.quality
    assert q is not None and q.tool.startswith("openvino ") and q.text_tokens > 100, q
    assert 0.5 <= q.top1_agreement <= 1 and 0 <= q.kl_divergence < 0.1, q

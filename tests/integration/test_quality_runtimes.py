"""Quality records for ONNX GenAI and MLX artifacts, measured for real: the tiny Hugging Face llama built to INT4 by
the real tools is measured against its source during the build (onnxruntime-genai, and mlx_lm on the Linux CPU
build, against transformers in float32), so a Deployment's quality floor (spec.quality) applies to these formats
too. The record must equal the same comparison done here independently, from each runtime's own logits."""

from __future__ import annotations

import numpy as np
import pytest

from tests.integration.test_onnx_genai import build_from as build_chat
from tests.integration.test_onnx_genai import source, write_genai_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return write_genai_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


def runtime_logits(format: str, folder, tokens: list[int]) -> np.ndarray:
    if format == "onnx":
        import onnxruntime_genai as og

        model = og.Model(str(folder))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(tokens) + 1)
        generator = og.Generator(model, params)
        generator.append_tokens(tokens)
        return np.array(generator.get_output("logits"))[0]
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.utils import dequantize_model

    model, _ = mlx_lm.load(str(folder))
    quantized = np.array(model(mx.array([tokens[:16]]))[0].astype(mx.float32))
    # measured with the weights dequantized as MLX does it, in float32 (MLX's CPU build is slow on quantized
    # weights): the same logits as the quantized model's, up to its float16 rounding
    model = dequantize_model(model)
    model.set_dtype(mx.float32)
    logits = np.array(model(mx.array([tokens]))[0].astype(mx.float32))
    assert np.linalg.norm(logits[:16] - quantized) < 1e-2 * np.linalg.norm(quantized)  # fp16 activations there
    return logits


@pytest.mark.parametrize(("format", "tool"), [("onnx", "onnxruntime-genai "), ("mlx", "mlx-lm ")])
def test_a_fresh_int4_artifact_carries_its_measured_quality(hf_folder, tmp_path, format, tool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgectl.builders import quality

    art, store = build_chat(tmp_path, source(hf_folder), format=format, quant="INT4")
    q = art.quality
    assert q is not None, f"{format} INT4: no quality record"
    assert q.tool.startswith(tool) and "transformers" in q.tool and q.text == quality.QUALITY_TEXT_ID

    tokens = AutoTokenizer.from_pretrained(str(hf_folder))(quality.QUALITY_TEXT)["input_ids"][:quality.MAX_TOKENS]
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(str(hf_folder)).float()(torch.tensor([tokens])).logits[0].numpy()
    got = runtime_logits(format, store.local_path(art), tokens)
    n = len(tokens)
    assert q.text_tokens == n > 100
    assert q.top1_agreement == pytest.approx(quality.top1_agreement(want[:n - 1], got[:n - 1]), abs=1e-6)
    assert q.kl_divergence == pytest.approx(quality.mean_kl_divergence(want[:n - 1], got[:n - 1]), rel=1e-3)
    assert q.perplexity == pytest.approx(quality.perplexity(got, np.array(tokens)), rel=1e-3)
    assert q.source_perplexity == pytest.approx(quality.perplexity(want, np.array(tokens)), rel=1e-3)
    assert 0 < q.kl_divergence and 0 < q.top1_agreement < 1  # 4 bits on random weights move the model measurably
    # recorded with the artifact: a cache hit returns the same figures without measuring again
    again, _ = build_chat(tmp_path, source(hf_folder), format=format, quant="INT4")
    assert again.digest == art.digest and again.quality == q

"""Quality records for ONNX GenAI and MLX artifacts, measured for real: the tiny Hugging Face llama built by the real
tools is measured against its source (transformers, float32) by onnxruntime-genai and by mlx_lm (the Linux CPU
build), so a Deployment's quality floor (spec.quality) applies to these formats too."""

from __future__ import annotations

import pytest

from tests.integration.test_onnx_genai import build_from as build_chat
from tests.integration.test_onnx_genai import source, write_genai_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return write_genai_llama(tmp_path_factory.mktemp("hf") / "tiny-llama")


@pytest.mark.parametrize(("format", "exact", "coarse", "tool"), [("onnx", "FP32", "INT4", "onnxruntime-genai "),
                                                                 ("mlx", "FP16", "INT4", "mlx-lm ")])
def test_fresh_artifacts_carry_top1_agreement_perplexity_and_kl(hf_folder, tmp_path, format, exact, coarse, tool):
    high, _ = build_chat(tmp_path / "high", source(hf_folder), format=format, quant=exact)
    low, store = build_chat(tmp_path / "low", source(hf_folder), format=format, quant=coarse)
    for art in (high, low):
        q = art.quality
        assert q is not None, f"{format} {art.quant}: no quality record"
        assert q.tool.startswith(tool) and "transformers" in q.tool
        assert q.text_tokens > 100 and q.source_perplexity > 1
    # the precise build agrees with its source almost exactly; 4 bits move it measurably further
    assert high.quality.top1_agreement >= 0.98 and high.quality.kl_divergence < 1e-3, high.quality
    assert abs(high.quality.perplexity - high.quality.source_perplexity) < 0.01 * high.quality.source_perplexity
    assert low.quality.kl_divergence > 10 * max(high.quality.kl_divergence, 1e-6), (high.quality, low.quality)
    # recorded with the artifact: a cache hit returns the same figures without measuring again
    again, _ = build_chat(tmp_path / "low", source(hf_folder), format=format, quant=coarse)
    assert again.digest == low.digest and again.quality == low.quality

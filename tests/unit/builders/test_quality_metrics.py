"""The quality metrics on synthetic logits (no llama.cpp), and the Quality record in the artifact index."""

from __future__ import annotations

import math

import pytest

from edgectl.spec.artifact import BuiltArtifact, Quality

np = pytest.importorskip("numpy")
quality = pytest.importorskip("edgectl.builders.quality")


def test_uniform_logits_have_perplexity_equal_to_the_vocabulary_size() -> None:
    logits = np.zeros((5, 7))
    assert quality.perplexity(logits, np.array([0, 1, 2, 3, 4])) == pytest.approx(7.0)


def test_perplexity_uses_the_previous_position_to_predict_each_token() -> None:
    # position i puts probability 1/2 on token i+1 (logit ln 3 over four others at 0: 3/(3+3) = 1/2)
    logits = np.zeros((4, 4))
    for i in range(3):
        logits[i, i + 1] = math.log(3.0)
    assert quality.perplexity(logits, np.array([0, 1, 2, 3])) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        quality.perplexity(logits, np.array([0]))


def test_top1_agreement_counts_positions_with_the_same_argmax() -> None:
    source = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0]])
    artifact = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 9.0], [0.0, 1.0, 0.0]])
    assert quality.top1_agreement(source, artifact) == pytest.approx(0.5)
    assert quality.top1_agreement(source, source) == 1.0
    with pytest.raises(ValueError):
        quality.top1_agreement(source, artifact[:2])


def test_kl_divergence_is_zero_for_identical_or_shifted_logits_and_matches_the_formula() -> None:
    rng = np.random.default_rng(0)
    source = rng.normal(size=(6, 11))
    assert quality.mean_kl_divergence(source, source) == pytest.approx(0.0, abs=1e-12)
    assert quality.mean_kl_divergence(source, source + 4.0) == pytest.approx(0.0, abs=1e-12)  # softmax-invariant
    p, q = np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]])
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert quality.mean_kl_divergence(np.log(p), np.log(q)) == pytest.approx(expected)
    assert quality.mean_kl_divergence(source, rng.normal(size=(6, 11))) > 0


def test_compare_ignores_the_last_position_and_fills_the_record() -> None:
    tokens = np.array([0, 1, 2])
    source = np.array([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    artifact = source.copy()
    artifact[2] = [0.0, 9.0, 0.0]  # differs only where the next token is beyond the text
    q = quality.compare(source, artifact, tokens, tool="t")
    assert (q.text, q.text_tokens, q.top1_agreement, q.tool) == (quality.QUALITY_TEXT_ID, 3, 1.0, "t")
    assert q.perplexity == q.source_perplexity
    assert q.kl_divergence == pytest.approx(0.0, abs=1e-12)


def test_the_fixed_text_is_a_paragraph_of_a_few_hundred_tokens() -> None:
    words = quality.QUALITY_TEXT.split()
    assert 120 <= len(words) <= 200 and quality.MAX_TOKENS < quality.N_CTX


def test_index_entries_without_quality_still_load_and_quality_round_trips() -> None:
    base = {"digest": "sha256:" + "a" * 64, "model": "m", "format": "gguf", "quant": "Q8_0", "size_bytes": 1,
            "source_digest": "sha256:" + "b" * 64, "tool_version": "t", "cache_key": "c" * 64}
    assert BuiltArtifact.model_validate(base).quality is None
    q = Quality(text="x", text_tokens=200, source_perplexity=12.02, perplexity=12.41, top1_agreement=0.973,
                kl_divergence=0.01, tool="t")
    art = BuiltArtifact.model_validate({**base, "quality": q.model_dump(mode="json")})
    assert BuiltArtifact.model_validate_json(art.model_dump_json()) == art
    assert q.summary() == "top-1 agreement 97.3% with the source, perplexity 12.41 vs 12.02"


def test_openvino_inputs_fill_what_the_ir_takes_and_refuse_the_unknown() -> None:
    import numpy as np
    import pytest

    from edgectl.builders.quality import openvino_inputs

    got = openvino_inputs({"input_ids", "attention_mask", "position_ids", "beam_idx"}, [5, 6, 7])
    assert got["input_ids"].tolist() == [[5, 6, 7]] and got["attention_mask"].tolist() == [[1, 1, 1]]
    assert got["position_ids"].tolist() == [[0, 1, 2]] and got["beam_idx"].dtype == np.int32
    assert set(openvino_inputs({"input_ids"}, [1, 2])) == {"input_ids"}
    with pytest.raises(ValueError, match="token_type_ids"):
        openvino_inputs({"input_ids", "token_type_ids"}, [1, 2])

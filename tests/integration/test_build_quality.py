"""Real measurements: the tiny F32 model quantized to Q8_0 and Q2_K is measured against its source after the
build; Q8_0 stays closer to the source than Q2_K, and a cache hit returns the recorded figure without work."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import edgectl.builders.quality as quality_module
from edgectl.builders import ArtifactStore, build
from edgectl.spec.artifact import Recipe
from edgectl.spec.model import Model
from tests.integration.test_build_gguf import catalog_model
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
llama_cpp = pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    source = write_tiny_llama_gguf(tmp_path_factory.mktemp("src") / "tiny-f32.gguf", seed=7)
    return catalog_model("tiny", {"type": "gguf", "precision": "F32", "path": str(source)})


def test_q8_0_agrees_with_the_source_more_than_q2_k_and_hits_keep_the_figure(
        tiny_model: Model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path / "store")
    events: list[tuple[str, int, int | None]] = []
    measured = {}
    for quant in ("Q8_0", "Q2_K"):
        recipe = Recipe(model="tiny", format="gguf", quant=quant, source_precision="F32")
        artifact, built = build(recipe, tiny_model, store, threads=2, progress=lambda *e: events.append(e))
        assert built and artifact.quality is not None
        measured[quant] = artifact.quality
    q8, q2 = measured["Q8_0"], measured["Q2_K"]
    assert q8.top1_agreement > 0.9
    assert q8.top1_agreement >= q2.top1_agreement
    assert q8.kl_divergence < q2.kl_divergence
    for q in (q8, q2):
        assert math.isfinite(q.perplexity) and math.isfinite(q.source_perplexity)
        assert q.text == quality_module.QUALITY_TEXT_ID and q.tool == f"llama-cpp-python {llama_cpp.__version__}"
    assert q8.source_perplexity == q2.source_perplexity and q8.text_tokens == q2.text_tokens > 100
    assert ("measure quality", 1, 1) in events

    def must_not_measure(*args, **kwargs):
        raise AssertionError("a cache hit must not measure")

    monkeypatch.setattr(quality_module, "measure", must_not_measure)
    again, built = build(Recipe(model="tiny", format="gguf", quant="Q8_0", source_precision="F32"), tiny_model,
                         store, threads=2)
    assert not built and again.quality == q8
    assert {a.quant: a.quality for a in store.list()} == measured


def test_as_shipped_copy_is_measured_once_and_agrees_exactly(tiny_model: Model, tmp_path: Path) -> None:
    artifact, built = build(Recipe(model="tiny", format="gguf", quant="F32", source_precision="F32"), tiny_model,
                            ArtifactStore(tmp_path / "store"), threads=2)
    q = artifact.quality
    assert built and q is not None
    assert (q.top1_agreement, q.kl_divergence, q.perplexity) == (1.0, 0.0, q.source_perplexity)


def test_measure_quality_false_records_none(tiny_model: Model, tmp_path: Path) -> None:
    artifact, _ = build(Recipe(model="tiny", format="gguf", quant="Q4_0", source_precision="F32"), tiny_model,
                        ArtifactStore(tmp_path / "store"), threads=2, measure_quality=False)
    assert artifact.quality is None


def test_measuring_is_quiet(tiny_model: Model, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGECTL_DEBUG", raising=False)
    artifact, _ = build(Recipe(model="tiny", format="gguf", quant="Q6_K", source_precision="F32"), tiny_model,
                        ArtifactStore(tmp_path / "store"), threads=2)
    assert artifact.quality is not None
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""

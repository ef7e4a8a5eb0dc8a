"""The plan shows the measured quality of a built artifact beside its size; it comes only through ``built``."""

from __future__ import annotations

from pathlib import Path

from edgectl.load import load_paths
from edgectl.plan import plan, recipe_id
from edgectl.spec import BuiltArtifact, Quality, Recipe
from tests.unit.plan.test_golden import make_facts

MANIFEST = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {name: local}
spec:
  devices:
    - {name: this-machine, profile: auto, transport: {type: local}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {name: smollm2}
spec: {model: smollm2-135m-instruct, selector: {devices: [this-machine]}, context_length: 2048,
       quantization: {allow: [Q4_0]}}
"""
QUALITY = Quality(text="edgectl-quality-text-v1", text_tokens=200, source_perplexity=12.02, perplexity=12.41,
                  top1_agreement=0.973, kl_divergence=0.02, tool="llama-cpp-python 0.3.36")


def _plan(tmp_path: Path, quality: Quality | None):
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(MANIFEST)
    spec = load_paths([manifest])
    recipe = Recipe(model="smollm2-135m-instruct", format="gguf", quant="Q4_0", source_precision="Q4_1")
    built = {recipe_id(recipe): BuiltArtifact(
        digest="sha256:" + "1" * 64, model=recipe.model, format="gguf", quant="Q4_0", size_bytes=80 * 2**20,
        source_digest="sha256:" + "0" * 64, tool_version="t", cache_key="k" * 64, quality=quality)}
    p = plan(spec, {"this-machine": make_facts({"ram_gb": 24, "cpus": 2})}, {"this-machine": None}, built)
    return p.devices[0].deployments[0].chosen


def test_plan_shows_the_measured_quality_of_the_built_artifact(tmp_path: Path) -> None:
    chosen = _plan(tmp_path, QUALITY)
    assert chosen.recipe.quant == "Q4_0" and chosen.quality == QUALITY
    assert chosen.quality.summary() == "top-1 agreement 97.3% with the source, perplexity 12.41 vs 12.02"
    assert chosen.to_dict()["quality"]["top1_agreement"] == 0.973


def test_plan_without_a_measurement_says_nothing_about_it(tmp_path: Path) -> None:
    chosen = _plan(tmp_path, None)
    assert chosen.quality is None
    assert chosen.to_dict()["quality"] is None

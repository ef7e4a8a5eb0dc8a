"""apply plans once where nothing starts: the store's cache hits for every recipe the planner may consider are looked
up first (edgectl.apply.planning.make_plan), so one pure plan sees them all."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgectl.apply.planning as planning
from edgectl.apply import DeviceContext
from edgectl.builders import ArtifactStore, build
from edgectl.load import load_paths
from edgectl.plan import recipe_id
from edgectl.spec import Recipe

MANIFEST = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-llama}}
spec:
  architecture: {{family: llama, parameters: {params}, layers: 2, hidden_size: 256, attention_heads: 4, kv_heads: 2,
                 head_dim: 64, vocab_size: 537, max_context: 512}}
  sources:
    - {{type: gguf, path: tiny.gguf, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: f}}
spec:
  devices:
    - {{name: box, profile: x86-cpu-server, transport: {{type: ssh, host: box.example}}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: tiny}}
spec:
  model: tiny-llama
  selector: {{devices: [box]}}
  context_length: 256
  quantization: {{allow: [F32, Q8_0]}}
"""


def test_a_cache_hit_is_planned_in_one_pass(tmp_path: Path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    from tests.tinymodels import write_tiny_llama_gguf

    params = sum(int(t.n_elements) for t in gguf.GGUFReader(write_tiny_llama_gguf(tmp_path / "tiny.gguf")).tensors)
    (tmp_path / "m.yaml").write_text(MANIFEST.format(params=params))
    spec = load_paths([tmp_path / "m.yaml"])
    store = ArtifactStore(tmp_path / "store")
    shipped = Recipe(model="tiny-llama", format="gguf", kind="llm", quant="F32", source_precision="F32")
    artifact, _ = build(shipped, spec.models["tiny-llama"], store, measure_quality=False)  # as shipped: a copy

    calls = []
    real_plan = planning.plan
    monkeypatch.setattr(planning, "plan", lambda *a, **k: calls.append(1) or real_plan(*a, **k))
    contexts = {"box": DeviceContext(spec.devices["box"])}
    built: dict = {}
    p = planning.make_plan(spec, contexts, store, built)
    assert len(calls) == 1
    assert built == {recipe_id(shipped): artifact}  # the hit, found before planning; Q8_0 is not in the store
    (dep,) = p.devices[0].deployments
    assert dep.chosen.recipe.quant == "F32"
    assert "build" not in [s.action for s in dep.steps]  # a cache hit: no build step

    planning.make_plan(spec, contexts, store, built)  # a later plan of the same run: no second lookup pass
    assert len(calls) == 2 and list(built) == [recipe_id(shipped)]

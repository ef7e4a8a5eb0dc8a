"""The health gate reads the answer, for real: a local agent serves SmolLM2, whose answer to "What is the capital
of France? Answer in one word." contains "Paris" (without the second sentence SmolLM2-135M rambles in French:
the gate caught that too), so the gate passes; the same deployment switched to a random-weight model (it
answers garbage) fails the gate on the answer and is rolled back to SmolLM2, which still serves."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_apply_local import edgectl, free_port, home  # noqa: F401  (fixture)
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration

MANIFESTS = """\
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
metadata: {{name: local}}
spec:
  devices:
    - {{name: here, profile: auto, transport: {{type: local}}, agent: {{port: {port}}}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: chat}}
spec:
  model: {model}
  selector: {{devices: [here]}}
  context_length: 512
  quantization: {{allow: [{quant}]}}
  rollout:
    health_gate: {{prompt: "What is the capital of France? Answer in one word.", max_tokens: 24, expect_contains: Paris}}
"""


def serving(mdir, env) -> tuple[str, str, str]:
    (st,) = json.loads(edgectl("status", str(mdir), "--json", env=env).stdout)
    (dep,) = st["deployments"]
    return dep["state"], dep["active"]["model"], dep["active"]["digest"]


def test_gate_passes_a_right_answer_and_rolls_back_a_garbage_one(tmp_path, home):  # noqa: F811
    from gguf import GGUFReader

    mdir = tmp_path / "m"
    mdir.mkdir()
    tiny = write_tiny_llama_gguf(mdir / "tiny.gguf")
    params = sum(int(t.n_elements) for t in GGUFReader(tiny).tensors)
    port = free_port()
    manifest = mdir / "all.yaml"

    manifest.write_text(MANIFESTS.format(params=params, port=port, model="smollm2-135m-instruct", quant="Q4_1"))
    r = edgectl("apply", str(mdir), env=home)
    assert "health gate passed (" in r.stdout and "answer contains 'Paris'" in r.stdout, r.stdout
    good = serving(mdir, home)
    assert good[:2] == ("serving", "smollm2-135m-instruct")

    manifest.write_text(MANIFESTS.format(params=params, port=port, model="tiny-llama", quant="Q8_0"))
    r = edgectl("apply", str(mdir), env=home, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = " ".join(r.stderr.split())
    assert "health gate failed" in errors and "does not contain 'Paris'" in errors, errors
    assert "answered the gate's prompt wrongly" in errors
    assert "rolled back to" in r.stdout, r.stdout
    assert serving(mdir, home) == good

"""Rollouts for real: three local devices (three real agent processes on their own loopback ports and roots),
waves, a canary that fails its health gate, automatic rollback, run records, diff and `edgectl rollback`."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_apply_local import edgectl, free_port, home  # noqa: F401  (fixture)
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
DEVICES = ("dev-a", "dev-b", "dev-c")

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
metadata: {{name: lab}}
spec:
  devices:
{devices}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: tiny}}
spec:
  model: tiny-llama
  selector: {{labels: {{lab: "yes"}}}}
  context_length: 256
  quantization: {{allow: [{quant}]}}
  rollout: {rollout}
"""


def write(mdir, params, ports, quant, rollout):
    devices = "\n".join(f"    - {{name: {d}, profile: auto, transport: {{type: local}}, agent: {{port: {p}}}, "
                        f"labels: {{lab: \"yes\"}}}}" for d, p in zip(DEVICES, ports))
    (mdir / "fleet.yaml").write_text(MANIFESTS.format(params=params, devices=devices, quant=quant, rollout=rollout))


def serving(mdir, env) -> dict[str, tuple[str, str]]:
    st = json.loads(edgectl("status", str(mdir), "--json", env=env).stdout)
    return {s["device"]: next(((d["active"]["digest"], d["state"]) for d in s["deployments"]), None) for s in st}


def test_canary_fails_gate_rolls_back_and_halts_then_rolling_then_rollback(tmp_path, home):  # noqa: F811
    from gguf import GGUFReader

    mdir = tmp_path / "m"
    mdir.mkdir()
    tiny = write_tiny_llama_gguf(mdir / "tiny.gguf")
    params = sum(int(t.n_elements) for t in GGUFReader(tiny).tensors)
    ports = [free_port() for _ in DEVICES]

    # 1. All at once (the default): every device gets Q8_0 and passes the gate's real smoke request.
    write(mdir, params, ports, "Q8_0", "{}")
    r = edgectl("apply", str(mdir), env=home)
    assert r.stdout.count("health gate passed") == 3, r.stdout
    first = serving(mdir, home)
    assert {s for _, s in first.values()} == {"serving"} and len({d for d, _ in first.values()}) == 1

    # 2. Canary with a gate no device can pass: the canary is rolled back, the rollout halts, exit code 1, and
    #    the other two devices are never touched (same digest, the new artifact never pushed to them).
    write(mdir, params, ports, "Q4_0", "{strategy: canary, canary: 1, wave_size: 1, "
                                       "health_gate: {min_tokens_per_s: 1000000000}}")
    r = edgectl("apply", str(mdir), env=home, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rollout halted" in r.stderr and "(canary)" in r.stderr and "not started: dev-b, dev-c" in r.stderr
    assert "health gate failed" in r.stderr and "rolled back to" in r.stdout
    assert serving(mdir, home) == first
    for d in ("dev-b", "dev-c"):
        agent_root = tmp_path / "home" / "agents" / d
        assert not any("Q4_0" in p.read_text() for p in agent_root.rglob("state.json")), d
    # The run record says what happened.
    record = json.loads(edgectl("runs", "last", "--json", env=home).stdout)
    assert record["outcome"] == "halted"
    assert record["waves"][0]["canary"] and record["waves"][0]["outcome"] == "failed"
    assert len(record["waves"]) == 1
    listing = edgectl("runs", env=home).stdout
    assert record["id"] in listing and "halted" in listing

    # diff: every device differs from the desired Q4_0 (none serves it), exit code 1.
    d = edgectl("diff", str(mdir), "--json", env=home, check=False)
    assert d.returncode == 1
    assert {row["status"] for row in json.loads(d.stdout)} == {"drift: serves another artifact"}

    # 3. Rolling, two waves, with the default gate: everything moves to Q4_0; diff is clean.
    write(mdir, params, ports, "Q4_0", "{strategy: rolling, wave_size: 2}")
    r = edgectl("apply", str(mdir), env=home)
    record = json.loads(edgectl("runs", "last", "--json", env=home).stdout)
    assert [w["devices"] for w in record["waves"]] == [["dev-a", "dev-b"], ["dev-c"]]
    assert record["outcome"] == "ok"
    second = serving(mdir, home)
    assert {s for _, s in second.values()} == {"serving"} and all(second[k] != first[k] for k in DEVICES)
    assert edgectl("diff", str(mdir), env=home).returncode == 0

    # 4. `edgectl rollback tiny` returns every device to the Q8_0 artifact it served before.
    r = edgectl("rollback", "tiny", str(mdir), env=home)
    assert r.stdout.count("rolled back") == 3
    assert serving(mdir, home) == first
    assert json.loads(edgectl("runs", "last", "--json", env=home).stdout)["command"] == "rollback"

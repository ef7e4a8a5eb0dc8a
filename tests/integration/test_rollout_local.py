"""Rollouts for real: three local devices (three real agent processes on their own loopback ports and roots),
waves, a canary that fails its health gate (max_ttft_ms, judged on the agent's own timings), automatic rollback, run
records, diff, `edgectl rollback` of one device then of the others, and drift made behind edgectl's back (another
digest PUT to an agent, a deployment DELETEd) that diff and status name and apply fixes."""

from __future__ import annotations

import json

import httpx
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

    # 1. All at once (the default): every device gets Q8_0 and passes the gate's real smoke request, with a
    #    time-to-first-token limit any device meets, judged on the agent's own timing of that request.
    write(mdir, params, ports, "Q8_0", "{health_gate: {max_ttft_ms: 60000}}")
    r = edgectl("apply", str(mdir), env=home)
    assert r.stdout.count("health gate passed (ttft ") == 3 and "tok/s as timed by the agent" in r.stdout, r.stdout
    first = serving(mdir, home)
    assert {s for _, s in first.values()} == {"serving"} and len({d for d, _ in first.values()}) == 1

    # 2. Canary with a gate no device can pass (a first token within a microsecond): the canary is rolled back,
    #    the rollout halts, exit code 1, and the other two devices are never touched (same digest, the new
    #    artifact never pushed to them).
    write(mdir, params, ports, "Q4_0", "{strategy: canary, canary: 1, wave_size: 1, "
                                       "health_gate: {max_ttft_ms: 0.001}}")
    r = edgectl("apply", str(mdir), env=home, check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "rollout halted" in r.stderr and "(canary)" in r.stderr and "not started: dev-b, dev-c" in r.stderr
    errors = " ".join(r.stderr.split())
    assert "health gate failed (as timed by the agent): time to first token" in errors and "max_ttft_ms 0.001" \
        in errors, errors
    assert "rolled back to" in r.stdout
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

    # 4. `edgectl rollback tiny --device dev-a` returns only dev-a to the Q8_0 artifact it served before; then
    #    the other two go back as well.
    r = edgectl("rollback", "tiny", str(mdir), "--device", "dev-a", env=home)
    assert r.stdout.count("rolled back") == 1 and "dev-a" in r.stdout and "dev-b" not in r.stdout
    assert serving(mdir, home) == {"dev-a": first["dev-a"], "dev-b": second["dev-b"], "dev-c": second["dev-c"]}
    assert json.loads(edgectl("runs", "last", "--json", env=home).stdout)["command"] == "rollback"
    r = edgectl("rollback", "tiny", str(mdir), "--device", "dev-b", "--device", "dev-c", env=home)
    assert r.stdout.count("rolled back") == 2
    assert serving(mdir, home) == first

    # 5. Drift behind edgectl's back: after an apply puts every device back on Q4_0 (the agents hold it: nothing
    #    is pushed), dev-b's agent is told directly to serve its previous (Q8_0) artifact and dev-c's deployment is
    #    deleted on its agent. diff names both and exits 1, status shows them, apply fixes them, diff is clean.
    r = edgectl("apply", str(mdir), env=home)
    assert "pushed" not in r.stdout and serving(mdir, home) == second, r.stdout
    agents = tmp_path / "home" / "agents"
    for name, port in zip(DEVICES, ports):
        if name == "dev-a":
            continue
        auth = {"Authorization": f"Bearer {(agents / name / 'token').read_text().strip()}"}
        url = f"http://127.0.0.1:{port}/control/v1"
        if name == "dev-b":
            (dep,) = httpx.get(f"{url}/state", headers=auth).json()["deployments"]
            body = {**dep["desired"], "artifact": dep["previous"]}
            assert httpx.put(f"{url}/deployments/tiny", json=body, headers=auth, timeout=60).status_code == 200
        else:
            assert httpx.delete(f"{url}/deployments/tiny", headers=auth, timeout=60).status_code == 200
    d = edgectl("diff", str(mdir), "--json", env=home, check=False)
    assert d.returncode == 1
    rows = {row["device"]: row for row in json.loads(d.stdout)}
    assert {n: row["status"] for n, row in rows.items()} == {
        "dev-a": "in sync", "dev-b": "drift: serves another artifact", "dev-c": "not deployed"}, rows
    assert rows["dev-b"]["observed"].startswith("gguf Q8_0 " + first["dev-b"][0][7:19])
    assert "drift: serves another artifact" in edgectl("diff", str(mdir), env=home, check=False).stdout
    st = {s["device"]: s for s in json.loads(edgectl("status", str(mdir), "--json", env=home).stdout)}
    assert st["dev-a"]["drift"] == []
    assert [s["action"] for s in st["dev-b"]["drift"]] == ["activate"]
    assert st["dev-b"]["deployments"][0]["active"]["digest"] == first["dev-b"][0]
    assert st["dev-c"]["deployments"] == [] and "activate" in [s["action"] for s in st["dev-c"]["drift"]]
    r = edgectl("apply", str(mdir), env=home)
    # dev-b activates the Q4_0 its agent still holds; dev-c's agent deleted it with the deployment: pushed again
    assert r.stdout.count("activated tiny") == 2 and r.stdout.count("pushed sha256:") == 1, r.stdout
    assert serving(mdir, home) == second
    after = {s["device"]: s for s in json.loads(edgectl("status", str(mdir), "--json", env=home).stdout)}
    assert after["dev-a"]["deployments"] == st["dev-a"]["deployments"]  # in sync: not touched
    assert edgectl("diff", str(mdir), env=home).returncode == 0

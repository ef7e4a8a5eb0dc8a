"""Twenty real sshd devices on loopback (tests/fleet.py) with mixed profiles ('auto' and named ones): one apply
bootstraps and deploys to all of them, a second one changes nothing, a stopped device is reported unreachable with
the reason and a hint while the others get the change (within max_unavailable), and one more stopped device than
max_unavailable halts the rollout before any device changes. Ten more go through the Ansible engine (cold apply,
then a no-op one); ten, not twenty, because Ansible's per-task cost on two loaded cores put twenty at minutes.

The devices share one agent venv (transport.venv): the real bootstrap installs it once, the others find it there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fleet import SshFleet
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BASE_PYTHON = str(Path(sys._base_executable).resolve())
N = 20
PROFILES = ("auto", "x86-cpu-server", "nvidia-gpu-box")

MODEL = """\
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
kind: Deployment
metadata: {{name: tiny}}
spec:
  model: tiny-llama
  selector: {{labels: {{site: sim}}}}
  context_length: {context}
  threads: 1
  quantization: {{allow: [Q8_0]}}
  rollout: {{max_unavailable: 1}}
"""


def edgectl(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=REPO)


def served(fleet: SshFleet) -> dict[str, tuple[str, str, int]]:
    """Per device, from the agent's state file on the device: (state, active digest, context_length)."""
    out = {}
    for d in fleet.devices:
        (dep,) = json.loads((d.home / ".local/share/edgectl-agent/root/state.json").read_text())["deployments"]
        out[d.name] = (dep["state"], dep["active"]["digest"], dep["desired"]["context_length"])
    return out


def test_twenty_devices_mixed_profiles_apply_noop_and_unreachable(tmp_path, ssh_shared):
    from gguf import GGUFReader

    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), EDGECTL_WHEELHOUSE=str(ssh_shared["wheelhouse"]),
               COLUMNS="250", NO_COLOR="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))
    with SshFleet(tmp_path / "fleet", N) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = tmp_path / "manifests"
        mdir.mkdir()
        params = sum(int(t.n_elements) for t in GGUFReader(write_tiny_llama_gguf(mdir / "tiny.gguf")).tensors)
        profiles = {d.name: PROFILES[i % len(PROFILES)] for i, d in enumerate(fleet.devices)}
        (mdir / "fleet.yaml").write_text(fleet.fleet_yaml(profile="auto", profiles=profiles, python=BASE_PYTHON,
                                                          venv=ssh_shared["venv"]))

        def apply(context: int) -> subprocess.CompletedProcess:
            (mdir / "model.yaml").write_text(MODEL.format(params=params, context=context))
            start = time.perf_counter()
            r = edgectl("apply", str(mdir), env=env)
            print(f"apply (context {context}): {time.perf_counter() - start:.1f} s, exit {r.returncode}")
            return r

        r = apply(256)
        assert r.returncode == 0, r.stdout + r.stderr
        state = served(fleet)
        digests = {digest for _, digest, _ in state.values()}
        assert len(digests) == 1 and all(s == ("serving", *digests, 256) for s in state.values()), state
        assert r.stdout.count("activated tiny") == N and "health gate passed" in r.stdout
        plan = json.loads(edgectl("plan", str(mdir), "--json", env=env).stdout)
        shown = {dp["device"]: dp["profile"] for dp in plan["devices"]}
        assert sum(p.startswith("auto (") for p in shown.values()) == 7  # resolved from the agents' facts
        assert {p for p in shown.values() if not p.startswith("auto")} == {"x86-cpu-server", "nvidia-gpu-box"}

        pids = {d.name: (d.home / ".local/share/edgectl-agent/agent.pid").read_text() for d in fleet.devices}
        r = apply(256)
        assert r.returncode == 0 and "no changes" in r.stdout, r.stdout + r.stderr
        assert {d.name: (d.home / ".local/share/edgectl-agent/agent.pid").read_text() for d in fleet.devices} == pids

        # one device stopped (max_unavailable 1): it is reported with reason and hint, the other 19 change
        down = fleet.devices[4]
        down.stop()
        r = apply(384)
        out = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 1, out
        assert f"{down.name}: failed device '{down.name}': cannot connect over SSH to 127.0.0.1:{down.port}" in out
        assert "tried 4 times" in out and "hint: check that the device is on, sshd runs" in out
        state = served(fleet)
        assert state.pop(down.name)[2] == 256
        assert all(s == ("serving", *digests, 384) for s in state.values()), state

        # a second one down: more than max_unavailable, the rollout halts before any device changes
        fleet.devices[5].stop()
        r = apply(512)
        out = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 1 and f"2 of {N} devices unreachable" in out and "no device was changed" in out, out
        assert {c for _, _, c in served(fleet).values()} == {256, 384}


N_ANSIBLE = 10


def test_ansible_engine_on_mixed_profile_devices_apply_then_noop(tmp_path, ssh_shared):
    """The same kind of fleet through `apply --engine ansible` (ansible-runner, forks = --parallel): every device
    bootstrapped from the shared venv and deployed; a second apply changes nothing and restarts no agent."""
    from gguf import GGUFReader

    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), EDGECTL_WHEELHOUSE=str(ssh_shared["wheelhouse"]),
               COLUMNS="250", NO_COLOR="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))
    with SshFleet(tmp_path / "fleet", N_ANSIBLE, prefix="ans") as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = tmp_path / "manifests"
        mdir.mkdir()
        params = sum(int(t.n_elements) for t in GGUFReader(write_tiny_llama_gguf(mdir / "tiny.gguf")).tensors)
        profiles = {d.name: PROFILES[i % len(PROFILES)] for i, d in enumerate(fleet.devices)}
        (mdir / "fleet.yaml").write_text(fleet.fleet_yaml(profile="auto", profiles=profiles, python=BASE_PYTHON,
                                                          venv=ssh_shared["venv"]))
        (mdir / "model.yaml").write_text(MODEL.format(params=params, context=256))

        start = time.perf_counter()
        r = edgectl("apply", str(mdir), "--engine", "ansible", env=env)
        cold = time.perf_counter() - start
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "via ansible" in out, out
        assert r.stdout.count("activated tiny") == N_ANSIBLE and r.stdout.count("health gate passed") == N_ANSIBLE
        state = served(fleet)
        assert len({digest for _, digest, _ in state.values()}) == 1
        assert {s for s, _, c in state.values()} == {"serving"}, state

        pids = {d.name: (d.home / ".local/share/edgectl-agent/agent.pid").read_text() for d in fleet.devices}
        start = time.perf_counter()
        r = edgectl("apply", str(mdir), "--engine", "ansible", env=env)
        noop = time.perf_counter() - start
        assert r.returncode == 0 and "no changes" in r.stdout, r.stdout + r.stderr
        assert {d.name: (d.home / ".local/share/edgectl-agent/agent.pid").read_text() for d in fleet.devices} == pids
        print(f"ansible engine, {N_ANSIBLE} devices: cold apply {cold:.1f} s, no-op apply {noop:.1f} s")

"""SSH access paths and an SSH canary against real sshd devices on loopback (tests/fleet.py): a device reached through
another as its ProxyJump host (both host keys verified), a device whose key is refused (marked with the reason and a
hint while the others are deployed), a device without key_file that authenticates through a real ssh-agent, and a
canary over SSH that fails its health gate (halted, rolled back, the others untouched, exit code 1).

edgectl runs with HOME set to an empty folder and no SSH_AUTH_SOCK unless a test starts an ssh-agent: no key of this
machine's user can authenticate by accident. The three devices (module-scoped) share one agent venv
(transport.venv), installed by the real bootstrap on first use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fleet import SshFleet, keygen
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BASE_PYTHON = str(Path(sys._base_executable).resolve())
AGENT_HOME = ".local/share/edgectl-agent"

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
  context_length: 256
  threads: 1
  quantization: {{allow: [{quant}]}}
  rollout: {rollout}
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    with SshFleet(tmp_path_factory.mktemp("access") / "fleet", 3) as f:
        yield f


@pytest.fixture(scope="module")
def work(tmp_path_factory, fleet, ssh_shared) -> dict:
    from gguf import GGUFReader

    base = tmp_path_factory.mktemp("access-work")
    fleet.write_known_hosts(base / "home" / "known_hosts")
    (base / "user").mkdir()
    mdir = base / "manifests"
    mdir.mkdir()
    params = sum(int(t.n_elements) for t in GGUFReader(write_tiny_llama_gguf(mdir / "tiny.gguf")).tensors)
    # HOME moves, pip's cache stays: the wheelhouse is filled from wheels built before (llama-cpp-python compiles)
    pip_cache = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    env = dict(os.environ, HOME=str(base / "user"), PIP_CACHE_DIR=pip_cache, EDGECTL_HOME=str(base / "home"),
               EDGECTL_WHEELHOUSE=str(ssh_shared["wheelhouse"]), COLUMNS="250", NO_COLOR="1",
               PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))
    env.pop("SSH_AUTH_SOCK", None)
    return {"base": base, "mdir": mdir, "params": params, "env": env, "venv": ssh_shared["venv"],
            "wrong_key": keygen(base / "wrong_key")}


def write(work: dict, fleet: SshFleet, *, dev3: str, quant: str = "Q8_0", rollout: str = "{}") -> Path:
    """dev1 plain, dev2 through dev1 (ProxyJump), dev3 with key 'key' | 'wrong-key' | 'agent' (no key_file)."""
    d1, d2, d3 = fleet.devices
    keys = {"key": f", key_file: {fleet.client_key}", "wrong-key": f", key_file: {work['wrong_key']}", "agent": ""}
    lines = ["apiVersion: edgectl.dev/v1alpha1", "kind: Fleet", "metadata: {name: sim}", "spec:", "  devices:"]
    for d, extra in ((d1, keys["key"]), (d2, keys["key"] + f", proxy_jump: '127.0.0.1:{d1.port}'"),
                     (d3, keys[dev3])):
        lines += [f"    - name: {d.name}", "      profile: x86-cpu-server", "      labels: {site: sim}",
                  f"      agent: {{port: {d.agent_port}}}",
                  f"      transport: {{type: ssh, host: 127.0.0.1, port: {d.port}, python: {BASE_PYTHON}, "
                  f"venv: {work['venv']}{extra}}}"]
    (work["mdir"] / "fleet.yaml").write_text("\n".join(lines) + "\n")
    (work["mdir"] / "model.yaml").write_text(MODEL.format(params=work["params"], quant=quant, rollout=rollout))
    return work["mdir"]


def edgectl(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=REPO)


def served(dev) -> dict | None:
    state = dev.home / AGENT_HOME / "root" / "state.json"
    if not state.exists():
        return None
    deps = json.loads(state.read_text())["deployments"]
    return {d["name"]: (d["state"], d["active"]["digest"], d["active"]["quant"]) for d in deps}


def test_proxy_jump_verifies_both_host_keys_then_reaches_the_device_behind(fleet, work, monkeypatch, tmp_path):
    from edgectl.errors import TransportError
    from edgectl.spec import Device
    from edgectl.transport.ssh import SshTransport

    d1, d2, _ = fleet.devices
    monkeypatch.setenv("HOME", work["env"]["HOME"])
    monkeypatch.setenv("EDGECTL_HOME", str(tmp_path / "home"))
    device = Device(name="dev2", profile="x86-cpu-server", agent={"port": d2.agent_port}, transport={
        "type": "ssh", "host": "127.0.0.1", "port": d2.port, "key_file": str(fleet.client_key),
        "proxy_jump": f"127.0.0.1:{d1.port}"})

    def attempt(known: list) -> str:
        fleet.write_known_hosts(tmp_path / "home" / "known_hosts", known)
        t = SshTransport(device)
        try:
            return t.run(["printenv", "HOME"]).stdout.strip()
        finally:
            t.close()

    logins = d1.authentications(), d2.authentications()
    with pytest.raises(TransportError) as e:  # the jump host's key is not pinned: refused before logging in
        attempt([d2])
    assert f"host key of 127.0.0.1:{d1.port} is unknown" in e.value.message and d1.fingerprint() in e.value.message
    assert (d1.authentications(), d2.authentications()) == logins
    with pytest.raises(TransportError) as e:  # the jump host is known, the device behind it is not
        attempt([d1])
    assert f"host key of 127.0.0.1:{d2.port} is unknown" in e.value.message and d2.fingerprint() in e.value.message
    assert d1.authentications() == logins[0] + 1 and d2.authentications() == logins[1]  # got as far as the jump
    assert attempt([d1, d2]) == str(d2.home)  # dev2's own sshd answered (its HOME), through dev1
    assert d1.authentications() == logins[0] + 2 and d2.authentications() == logins[1] + 1


def test_a_refused_key_marks_that_device_and_the_others_are_deployed(fleet, work):
    d1, d2, d3 = fleet.devices
    r = edgectl("apply", str(write(work, fleet, dev3="wrong-key")), env=work["env"])
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 1, out
    assert f"dev3: failed device 'dev3': SSH authentication as 'current user' on 127.0.0.1:{d3.port} failed" in out
    assert "hint: set transport.key_file or load the key into ssh-agent (ssh-add)" in out
    assert d3.authentications() == 0 and served(d3) is None
    for d in (d1, d2):  # dev2's agent was bootstrapped and reached through dev1
        assert served(d)["tiny"][::2] == ("serving", "Q8_0"), out


def test_a_device_without_key_file_authenticates_through_ssh_agent(fleet, work):
    d3 = fleet.devices[2]
    mdir = write(work, fleet, dev3="agent")
    r = edgectl("plan", str(mdir), "--device", "dev3", env=work["env"])  # no agent, no ~/.ssh key: refused
    assert "SSH authentication" in r.stdout + r.stderr and d3.authentications() == 0, r.stdout + r.stderr
    sock_dir = Path(tempfile.mkdtemp(prefix="sa-", dir="/tmp"))  # unix socket paths are short
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock_dir / "s")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        env = {**work["env"], "SSH_AUTH_SOCK": str(sock_dir / "s")}
        for _ in range(100):
            if (sock_dir / "s").exists():
                break
            __import__("time").sleep(0.02)
        subprocess.run(["ssh-add", str(fleet.client_key)], env=env, check=True, capture_output=True)
        r = edgectl("apply", str(mdir), env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "activated tiny" in r.stdout and d3.authentications() >= 1
        assert served(d3)["tiny"][::2] == ("serving", "Q8_0")
    finally:
        agent.terminate()
        agent.wait(10)
        subprocess.run(["rm", "-rf", str(sock_dir)], check=False)


def test_ssh_canary_failing_its_gate_halts_rolls_back_and_leaves_the_others(fleet, work):
    d1, d2, d3 = fleet.devices
    r = edgectl("apply", str(write(work, fleet, dev3="key")), env=work["env"])  # Q8_0 everywhere (no-op after
    assert r.returncode == 0, r.stdout + r.stderr                                  # the tests above)
    before = {d.name: served(d) for d in fleet.devices}
    mdir = write(work, fleet, dev3="key", quant="Q4_0",
                 rollout="{strategy: canary, canary: 1, wave_size: 1, health_gate: {max_ttft_ms: 0.001}}")
    r = edgectl("apply", str(mdir), env=work["env"])
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 1, out
    assert "1 of 1 devices failed in wave 1 (canary)" in out and "not started: dev2, dev3" in out, out
    assert "health gate failed (as timed by the agent)" in out and "max_ttft_ms 0.001" in out, out
    assert "dev1: " in out and "tiny: rolled back to" in out, out
    assert {d.name: served(d) for d in fleet.devices} == before  # the canary back on Q8_0, the others untouched
    for d in (d2, d3):
        assert not any("Q4_0" in p.read_text() for p in (d.home / AGENT_HOME / "root").glob("*.json")), d.name

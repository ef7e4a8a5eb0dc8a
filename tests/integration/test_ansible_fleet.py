"""The Ansible engine against real OpenSSH servers on loopback (tests/fleet.py), with the real ansible-core run
through ansible-runner: bootstrap from edgectl's wheelhouse, push through the agent's upload API, activate, health
gate, in serial waves; re-apply is a no-op; a chat completion works through the device's agent.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.fleet import SshFleet
from tests.integration.test_ssh_fleet import edgectl, env, manifests, transport, wheelhouse  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration
AGENT_HOME = ".local/share/edgectl-agent"


def device_line(stdout: str, name: str) -> str:
    """The summary line of one device, unwrapped (Rich folds long lines)."""
    lines = stdout.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith(f"{name}: "))
    out = [lines[i]]
    for ln in lines[i + 1:]:
        if not ln.strip() or ln.split(":")[0].startswith("dev"):
            break
        out.append(ln)
    return " ".join(" ".join(out).split())


def _fleet_with_engine(mdir: Path) -> None:
    text = (mdir / "fleet.yaml").read_text()
    (mdir / "fleet.yaml").write_text(text.replace("spec:\n  devices:", "spec:\n  engine: ansible\n  devices:", 1))


def test_ansible_engine_serves_three_devices_and_reapply_is_a_no_op(tmp_path, env, monkeypatch):  # noqa: F811 (fixture)
    from openai import OpenAI

    with SshFleet(tmp_path / "fleet", 3) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        _fleet_with_engine(mdir)
        with open(mdir / "model.yaml", "a") as f:  # rolling waves of 2: two serial batches
            f.write("  rollout: {strategy: rolling, wave_size: 2}\n")

        r = edgectl("apply", str(mdir), env=env)
        out = r.stdout + r.stderr
        assert "via ansible" in out, out
        for d in fleet.devices:
            line = device_line(r.stdout, d.name)
            assert "installed edgectl-agent" in line and "started agent" in line, out
            assert "pushed sha256:" in line and "activated tiny" in line and "health gate passed" in line, out
            assert (d.home / AGENT_HOME / "venv/bin/python").exists()
        # every sshd saw a login: the devices were worked on over SSH by ansible (host keys checked strictly)
        assert all(d.authentications() >= 1 for d in fleet.devices)
        record = json.loads(edgectl("runs", "last", "--json", env=env).stdout)
        assert [w["devices"] for w in record["waves"]] == [["dev1", "dev2"], ["dev3"]], record["waves"]

        for d in fleet.devices:
            t = transport(fleet, d.name, monkeypatch, env)
            (dep,) = t.agent(start=False).state().deployments
            assert dep.state == "serving" and dep.active.format == "gguf" and dep.active.quant == "Q8_0"
            t.close()
        t = transport(fleet, "dev2", monkeypatch, env)
        token = (fleet.device("dev2").home / AGENT_HOME / "root/token").read_text().strip()
        with httpx.Client(transport=t.transport.http_transport(), timeout=60.0) as http:
            openai = OpenAI(base_url=t.endpoint, api_key=token, http_client=http)
            chat = openai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=8)
            assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
        t.close()

        pids = [(d.home / AGENT_HOME / "agent.pid").read_text() for d in fleet.devices]
        r2 = edgectl("apply", str(mdir), "--engine", "ansible", env=env)
        assert "no changes" in r2.stdout and "via ansible" not in r2.stdout + r2.stderr, r2.stdout + r2.stderr
        assert [(d.home / AGENT_HOME / "agent.pid").read_text() for d in fleet.devices] == pids


def test_unknown_host_key_is_refused_by_the_ansible_engine(tmp_path, env):  # noqa: F811 (fixture)
    """Known hosts only from edgectl's file and the user's: a device missing from both is never worked on."""
    from edgectl.spec import Device
    from edgectl.apply.ansible import run_playbook, host_connection

    with SshFleet(tmp_path / "fleet", 1) as fleet:
        dev = fleet.devices[0]
        known = tmp_path / "known_hosts"
        known.write_text("")  # neither this file nor the (absent) user's file pins the device
        device = Device(name="dev1", profile="x86-cpu-server", agent={"port": dev.agent_port}, transport={
            "type": "ssh", "host": "127.0.0.1", "port": dev.port, "key_file": str(fleet.client_key)})
        host = {**host_connection(device, [known]), "edgectl_allowed_failures": 0, "edgectl_bootstrap": False,
                "edgectl_deployment": "x", "edgectl_blobs": [], "edgectl_desired": {}, "edgectl_smoke": None,
                "edgectl_rollback": None}
        outcome = run_playbook({"dev1": host}, {"edgectl_serial": [1]}, forks=1)
        ho = outcome.hosts["dev1"]
        assert ho.error and "unreachable" in ho.error and "Host key verification failed" in ho.error, ho
        assert dev.authentications() == 0 and dev.sessions() == 0


def test_canary_failing_its_gate_halts_the_ansible_rollout_and_rolls_back(tmp_path, env):  # noqa: F811 (fixture)
    with SshFleet(tmp_path / "fleet", 3) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        with open(mdir / "model.yaml", "a") as f:  # no CPU decodes a billion tokens/s: the canary's gate fails
            f.write("  rollout: {strategy: canary, canary: 1, wave_size: 2, "
                    "health_gate: {min_tokens_per_s: 1000000000}}\n")
        r = edgectl("apply", str(mdir), "--engine", "ansible", env=env, check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "rollout halted" in r.stderr, out
        assert "1 of 1 devices failed in wave 1 (canary)" in r.stderr and "not started: dev2, dev3" in r.stderr, out
        assert "health gate failed" in r.stderr and "edgectl: gate" in r.stderr, out
        assert "tiny: removed again (nothing served it before) (it failed)" in r.stdout, out
        assert "tiny: not started (rollout halted)" in r.stdout, out
        for name in ("dev2", "dev3"):  # bootstrapped before the plan (agents report the hardware), never deployed to
            root = fleet.device(name).home / AGENT_HOME / "root"
            assert (root / "token").exists() and not (root / "state.json").exists(), name
            assert not list((root / "artifacts").iterdir()), name
        state = json.loads(edgectl("status", str(mdir), "--json", "--device", "dev1", env=env).stdout)
        assert state[0]["deployments"] == [], state


def test_a_failed_device_past_max_failure_rolls_back_the_rest_of_its_wave(tmp_path, env):  # noqa: F811 (fixture)
    """One wave of three; dev2's agent holds part of the artifact from an interrupted push, which the playbook
    refuses to append to: the other two activated, then the gate after the batch rolls them back (max_failure 0)."""
    import re

    with SshFleet(tmp_path / "fleet", 3) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        _fleet_with_engine(mdir)
        digest = re.search(r"sha256:([0-9a-f]{64})", edgectl("build", str(mdir), env=env).stdout).group(1)
        staging = fleet.device("dev2").home / AGENT_HOME / "root" / "staging"
        staging.mkdir(parents=True)
        (staging / f"{digest}.part").write_bytes(b"GGUF")
        r = edgectl("apply", str(mdir), env=env, check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "1 of 3 devices failed in wave 1" in r.stderr, out
        assert "dev2: failed" in r.stderr and "edgectl: no partial upload" in r.stderr, out
        assert "holds 4 bytes of sha256:" in " ".join(r.stderr.split()), out  # the item's own reason
        for name in ("dev1", "dev3"):
            line = device_line(r.stdout, name)
            assert "activated tiny" in line and "tiny: removed again (nothing served it before) (the wave failed)" \
                in line, out
        state = {s["device"]: s for s in json.loads(edgectl("status", str(mdir), "--json", env=env).stdout)}
        assert state["dev1"]["deployments"] == [] and state["dev3"]["deployments"] == [], state


def test_ansible_bootstrap_pins_the_fleets_verify_key(tmp_path, env):  # noqa: F811 (fixture)
    """A signing fleet: the playbook's bootstrap writes the fleet's public key into the agent's root and starts the
    agent verifying with it (as edgectl's SSH bootstrap does); the signed deployment is accepted."""
    from edgectl.signing import Signer
    from edgectl.paths import VERIFY_KEY_FILE

    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        _fleet_with_engine(mdir)
        edgectl("keygen", str(tmp_path / "fleet-key"), env=env)
        text = (mdir / "fleet.yaml").read_text()
        (mdir / "fleet.yaml").write_text(text.replace(
            "spec:\n", f"spec:\n  signing: {{key_file: {tmp_path / 'fleet-key'}}}\n", 1))
        r = edgectl("apply", str(mdir), env=env)
        out = r.stdout + r.stderr
        assert "via ansible" in out and "started agent" in out and "activated tiny" in out, out
        root = fleet.devices[0].home / AGENT_HOME / "root"
        assert (root / VERIFY_KEY_FILE).read_bytes() == Signer.load(tmp_path / "fleet-key").public_pem
        state = json.loads(edgectl("status", str(mdir), "--json", env=env).stdout)
        assert state[0]["deployments"][0]["state"] == "serving", state
        cmdline = (fleet.devices[0].home / AGENT_HOME / "agent.pid").read_text().strip()
        assert "--verify-key-file" in Path(f"/proc/{cmdline}/cmdline").read_text().replace("\0", " ")

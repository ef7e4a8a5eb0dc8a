"""The SSH transport against real OpenSSH servers on loopback (tests/fleet.py): bootstrap, apply, chat through the
direct-tcpip control channel, host key refusal, and argv/SFTP safety.

Every device is a real sshd with its own host key and HOME; agents are installed on them from wheels edgectl builds
here and pushes (pip --no-index on the device side), then started detached (no systemd in the harness).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fleet import SshFleet
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BASE_PYTHON = str(Path(sys._base_executable).resolve())  # the devices' python3: same version as this one

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
  quantization: {{allow: [Q8_0]}}
"""


@pytest.fixture
def wheelhouse(ssh_shared) -> Path:
    """The session's wheelhouse (conftest.ssh_shared): the first bootstrap fills it (pip wheel here), every later
    one - in any module - reuses it."""
    return ssh_shared["wheelhouse"]


@pytest.fixture
def env(tmp_path, wheelhouse) -> dict:
    return dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), EDGECTL_WHEELHOUSE=str(wheelhouse),
                COLUMNS="200", NO_COLOR="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))


def edgectl(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                       timeout=900, cwd=REPO)
    if check and r.returncode != 0:
        raise AssertionError(f"edgectl {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def manifests(tmp_path: Path, fleet: SshFleet) -> Path:
    from gguf import GGUFReader

    mdir = tmp_path / "manifests"
    mdir.mkdir(exist_ok=True)
    tiny = write_tiny_llama_gguf(mdir / "tiny.gguf")
    params = sum(int(t.n_elements) for t in GGUFReader(tiny).tensors)
    (mdir / "model.yaml").write_text(MODEL.format(params=params))
    (mdir / "fleet.yaml").write_text(fleet.fleet_yaml(profile="x86-cpu-server", python=BASE_PYTHON))
    return mdir


def transport(fleet: SshFleet, name: str, monkeypatch, env: dict):
    from edgectl.agents import connect
    from edgectl.spec import Device

    monkeypatch.setenv("EDGECTL_HOME", env["EDGECTL_HOME"])
    d = fleet.device(name)
    return connect(Device(name=name, profile="x86-cpu-server", agent={"port": d.agent_port}, transport={
        "type": "ssh", "host": "127.0.0.1", "port": d.port, "key_file": str(fleet.client_key),
        "python": BASE_PYTHON}))


def test_apply_bootstraps_three_devices_and_serves_through_the_channel(tmp_path, env, monkeypatch):
    from openai import OpenAI

    with SshFleet(tmp_path / "fleet", 3) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)

        r = edgectl("apply", str(mdir), env=env)
        for d in fleet.devices:
            assert f"{d.name}: " in r.stdout and "activated tiny" in r.stdout, r.stdout + r.stderr
            assert (d.home / ".local/share/edgectl-agent/venv/bin/python").exists()  # installed in its own HOME

        for d in fleet.devices:
            t = transport(fleet, d.name, monkeypatch, env)
            client = t.agent(start=False)
            (dep,) = client.state().deployments
            assert dep.state == "serving" and dep.active.format == "gguf" and dep.active.quant == "Q8_0"
            # a glibc x86-64 device gets the agent's extra fast-http: its uvicorn runs on httptools and uvloop
            fast = t.transport.run([str(d.home / ".local/share/edgectl-agent/venv/bin/python"), "-c",
                                    "import httptools, uvloop"])
            assert fast.returncode == 0, fast.stderr
            token = t.transport.run(["cat", str(d.home / ".local/share/edgectl-agent/root/token")]).stdout.strip()
            with httpx.Client(transport=t.transport.http_transport(), timeout=60.0) as http:
                openai = OpenAI(base_url=t.endpoint, api_key=token, http_client=http)
                chat = openai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=8)
                assert chat.choices[0].message.content is not None and chat.usage.completion_tokens > 0
                chunks = list(openai.chat.completions.create(
                    model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8, stream=True))
                assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 0
            # the agent listens on the device's loopback only: here that is its own port on 127.0.0.1
            assert f"--port {d.agent_port}" in t.transport.run(["ps", "-o", "args=", "-p", t.transport.run(
                ["cat", str(d.home / ".local/share/edgectl-agent/agent.pid")]).stdout.strip()]).stdout
            t.close()

        pids = [(d.home / ".local/share/edgectl-agent/agent.pid").read_text() for d in fleet.devices]
        r2 = edgectl("apply", str(mdir), env=env)
        assert "no changes" in r2.stdout, r2.stdout + r2.stderr
        assert [(d.home / ".local/share/edgectl-agent/agent.pid").read_text() for d in fleet.devices] == pids

        # the fleet collector reads every agent's /metrics through the same SSH channels (issue 04)
        from edgectl.collector import FleetCollector
        from edgectl.load import load_paths

        monkeypatch.setenv("EDGECTL_HOME", env["EDGECTL_HOME"])
        collector = FleetCollector(list(load_paths([mdir]).devices.values()), timeout=60)
        try:
            assert [(s.device, s.reason) for s in collector.scrape_all()] == [(d.name, None) for d in fleet.devices]
            text = collector.exposition().decode()
        finally:
            collector.close()
        for d in fleet.devices:
            assert f'edgectl_device_up{{device="{d.name}"' in text
            assert any(line.startswith("edgectl_agent_") and f'device="{d.name}"' in line and 'deployment="tiny"' in line
                       for line in text.splitlines()), text[:3000]

        # one device down: it is reported with the reason, the others are untouched
        fleet.devices[2].stop()
        st = edgectl("status", str(mdir), "--json", env=env, check=False)
        import json

        rows = {s["device"]: s for s in json.loads(st.stdout)}
        assert rows["dev1"]["deployments"][0]["state"] == "serving"
        assert not rows["dev3"]["reachable"] and "cannot connect over SSH" in rows["dev3"]["error"]


def test_unknown_host_is_refused_with_its_fingerprint_then_trusted(tmp_path, env):
    with SshFleet(tmp_path / "fleet", 1) as fleet:
        dev = fleet.devices[0]
        mdir = manifests(tmp_path, fleet)
        r = edgectl("apply", str(mdir), env=env, check=False)
        assert r.returncode != 0
        assert f"host key of 127.0.0.1:{dev.port} is unknown" in r.stderr and dev.fingerprint() in r.stderr
        assert "edgectl trust dev1" in r.stderr
        assert dev.authentications() == 0 and dev.sessions() == 0

        r = edgectl("trust", "dev1", str(mdir), "--yes", env=env)
        assert dev.fingerprint() in r.stdout and "pinned in" in r.stdout
        assert f"[127.0.0.1]:{dev.port}" in (Path(env["EDGECTL_HOME"]) / "known_hosts").read_text()
        assert "already trusted" in edgectl("trust", "dev1", str(mdir), "--yes", env=env).stdout
        r = edgectl("plan", str(mdir), env=env)  # reaches the device now (no agent yet: nothing started)
        assert "unreachable:" not in r.stdout and "activate (gguf Q8_0" in r.stdout, r.stdout
        assert dev.authentications() >= 1


def test_changed_host_key_aborts_with_zero_commands_run(tmp_path, env):
    with SshFleet(tmp_path / "fleet", 2) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        dev = fleet.devices[0]
        old = dev.fingerprint()
        new = dev.change_host_key()
        r = edgectl("apply", str(mdir), "--device", "dev1", env=env, check=False)
        assert r.returncode != 0
        assert "HOST KEY CHANGED" in r.stderr and new in r.stderr and old in r.stderr
        assert "nothing was run" in r.stderr and "--replace" in r.stderr
        # proof: sshd never authenticated anyone nor started a session, and the device's HOME stayed empty
        assert dev.authentications() == 0 and dev.sessions() == 0
        assert list(dev.home.iterdir()) == []

        r = edgectl("trust", "dev1", str(mdir), "--yes", env=env, check=False)
        assert r.returncode != 0 and "--replace" in r.stderr
        r = edgectl("trust", "dev1", str(mdir), "--yes", "--replace", env=env)
        assert new in r.stdout
        assert "HOST KEY" not in edgectl("plan", str(mdir), "--device", "dev1", env=env).stdout


HOSTILE = "a b;$(touch PWNED)'x\"`touch PWNED2`&|*.txt"


def test_argv_and_files_with_hostile_names(tmp_path, env, monkeypatch):
    from edgectl.errors import TransportError

    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        dev = fleet.devices[0]
        t = transport(fleet, "dev1", monkeypatch, env)
        data = os.urandom(3 * 1024 * 1024 + 17)
        src = tmp_path / "payload"
        src.write_bytes(data)
        target = f"{dev.home}/in -dir/{HOSTILE}"
        t.transport.put_file(src, target)
        assert t.transport.run(["ls", "-1", f"{dev.home}/in -dir"]).stdout == HOSTILE + "\n"
        assert t.transport.run(["sha256sum", target]).stdout.split()[0] == hashlib.sha256(data).hexdigest()
        assert t.transport.run(["printf", "%s", HOSTILE]).stdout == HOSTILE
        assert not list(dev.home.rglob("PWNED*")) and not list(Path(REPO).glob("PWNED*"))

        # a cut transfer resumes from the .part; a corrupt .part is caught by the sha256 and never takes the name
        final = dev.home / "resumed.bin"
        Path(str(final) + ".part").write_bytes(data[:1_000_000])
        t.transport.put_file(src, str(final))
        assert final.read_bytes() == data
        bad = dev.home / "bad.bin"
        Path(str(bad) + ".part").write_bytes(b"\0" * 1_000_000)
        with pytest.raises(TransportError) as e:
            t.transport.put_file(src, str(bad))
        assert "arrived corrupted" in e.value.message and not bad.exists()
        assert not Path(str(bad) + ".part").exists() and not Path(target + ".part").exists()
        t.transport.put_file(src, str(bad))  # the retry starts over and succeeds
        assert bad.read_bytes() == data
        t.close()


def test_a_signing_fleet_pins_its_key_on_an_ssh_device_and_the_agent_refuses_unsigned(tmp_path, env, monkeypatch):
    """spec.signing on an SSH device: the bootstrap installs the sign extra, writes verify-key.pub into the agent
    root once and starts the agent with it; apply serves signed, an unsigned deployment is refused by the agent."""
    from edgectl_agent.api import CONTROL_PREFIX, DesiredDeployment

    from edgectl.errors import AgentError
    from edgectl.signing import Signer

    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        (mdir / "keys").mkdir()
        edgectl("keygen", str(mdir / "keys" / "fleet"), env=env)
        fleet_yaml = mdir / "fleet.yaml"
        fleet_yaml.write_text(fleet_yaml.read_text().replace("spec:\n", "spec:\n  signing: {key_file: keys/fleet}\n"))
        key_id = Signer.load(mdir / "keys" / "fleet").key_id

        r = edgectl("apply", str(mdir), env=env)
        assert "activated tiny" in r.stdout, r.stdout + r.stderr
        (d,) = fleet.devices
        agent_root = d.home / ".local/share/edgectl-agent/root"
        assert (agent_root / "verify-key.pub").read_bytes() == (mdir / "keys" / "fleet.pub").read_bytes()

        t = transport(fleet, d.name, monkeypatch, env)
        try:
            client = t.agent(start=False)
            assert client.facts().verify_key_id == key_id
            (dep,) = client.state().deployments
            assert dep.state == "serving" and dep.desired.signature.key_id == key_id
            unsigned = DesiredDeployment.model_validate(dep.desired.model_dump()).model_copy(
                update={"signature": None})
            with pytest.raises(AgentError) as refused:
                client.put_deployment(unsigned)
            assert refused.value.status == 403
            token = (agent_root / "token").read_text().strip()
            with httpx.Client(transport=t.transport.http_transport(), base_url=t.transport.base_url, timeout=30,
                              headers={"Authorization": f"Bearer {token}"}) as http:
                put = http.put(f"{CONTROL_PREFIX}/deployments/tiny", content=unsigned.model_dump_json(),
                               headers={"Content-Type": "application/json"})
                assert put.status_code == 403 and put.json()["error"]["type"] == "signature_missing", put.text
            assert client.state().deployments[0].state == "serving"  # the refusal changed nothing
        finally:
            t.close()


def test_apply_fails_where_an_agent_that_is_not_ours_holds_the_port(tmp_path, env):
    """Another agent (its own root, its own token) answers on the SSH device's agent port: apply names the device,
    why and the fix, and exits non-zero; never "no changes". First with no agent of ours ever on the device, then
    with our token on the device (an agent of ours ran there before): the other agent refuses it (401)."""
    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        (mdir / "fleet.yaml").write_text(fleet.fleet_yaml(profile="auto", python=BASE_PYTHON))
        dev = fleet.devices[0]
        other = subprocess.Popen([sys.executable, "-m", "edgectl_agent", "serve", "--root", str(tmp_path / "other"),
                                  "--port", str(dev.agent_port)], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for _ in range(300):
                assert other.poll() is None, "the other agent exited"
                try:
                    if httpx.get(f"http://127.0.0.1:{dev.agent_port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            r = edgectl("apply", str(mdir), env=env, check=False)
            out = " ".join((r.stdout + r.stderr).split())
            assert r.returncode == 1 and "no changes" not in out, out
            assert f"{dev.name}: failed device '{dev.name}': cannot read the agent token" in out, out
            assert "an agent answers on the device's port but not from transport.agent_dir" in out, out

            root = dev.home / ".local/share/edgectl-agent/root"
            root.mkdir(parents=True)
            (root / "token").write_text("ours-from-an-earlier-agent\n")
            r = edgectl("apply", str(mdir), env=env, check=False)
            out = " ".join((r.stdout + r.stderr).split())
            assert r.returncode == 1 and "no changes" not in out, out
            assert f"{dev.name}: failed device '{dev.name}': the agent on port {dev.agent_port} is not this " \
                   "edgectl's: its token differs" in out, out
            assert "To fix: stop it, or give this device another port" in out, out
        finally:
            os.killpg(other.pid, signal.SIGKILL)
            other.wait()

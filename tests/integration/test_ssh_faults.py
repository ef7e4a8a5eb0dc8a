"""Faults on the SSH path against real sshd devices on loopback (tests/fleet.py): transient connect failures are
retried with bounded backoff, a dropped session is re-established, a push cut mid-way resumes from the cut
without ever letting the partial bytes be activated, and a foreign process on the agent's port is refused.

The devices of this module share one agent venv (transport.venv), installed by the real bootstrap on first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fleet import SshFleet

pytestmark = pytest.mark.integration
BASE_PYTHON = str(Path(sys._base_executable).resolve())
MIB = 1024 * 1024


@pytest.fixture
def shared(ssh_shared) -> dict:
    return ssh_shared


@pytest.fixture
def fleet(tmp_path, shared, monkeypatch):
    monkeypatch.setenv("EDGECTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGECTL_WHEELHOUSE", str(shared["wheelhouse"]))
    with SshFleet(tmp_path / "fleet", 1) as f:
        f.write_known_hosts(tmp_path / "home" / "known_hosts")
        yield f


def transport(fleet: SshFleet, shared: dict, name: str = "dev1"):
    from edgectl.agents import connect
    from edgectl.spec import Device

    d = fleet.device(name)
    return connect(Device(name=name, profile="x86-cpu-server", agent={"port": d.agent_port}, transport={
        "type": "ssh", "host": "127.0.0.1", "port": d.port, "key_file": str(fleet.client_key),
        "python": BASE_PYTHON, "venv": shared["venv"]}))


def test_connect_is_retried_with_backoff_then_gives_up_with_the_count(fleet, shared):
    from edgectl.errors import TransportError
    from edgectl.transport import ssh

    dev = fleet.devices[0]
    dev.stop()
    t = transport(fleet, shared)
    threading.Timer(0.3, dev.start).start()  # sshd comes back while edgectl is backing off
    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())
    ssh.log.addHandler(handler)
    ssh.log.setLevel(logging.INFO)
    try:
        assert t.transport.run(["echo", "up"]).stdout == "up\n"
    finally:
        ssh.log.removeHandler(handler)
    assert any("retry 1 in 0.5 s" in m for m in seen), seen  # the first attempt was refused, the next one got in
    t.close()

    dev.stop()
    with pytest.raises(TransportError) as e:
        t.transport.run(["true"])
    delays = ssh.backoff_delays(ssh.CONNECT_ATTEMPTS)
    assert f"tried {ssh.CONNECT_ATTEMPTS} times over {sum(delays):.1f} s" in e.value.message
    assert "cannot connect over SSH" in e.value.message and "sshd runs" in e.value.hint


def test_a_dropped_session_is_reopened_for_commands_and_agent_channels(fleet, shared):
    dev = fleet.devices[0]
    t = transport(fleet, shared)
    client = t.agent(start=True)
    assert client.health()["status"] == "ok"
    assert dev.cut_connections() >= 1
    assert t.transport.run(["echo", "again"]).stdout == "again\n"  # a new session, transparently
    assert dev.cut_connections() >= 1
    assert client.state().agent_version  # the agent channel is opened on a new session too
    t.close()


def test_push_cut_mid_way_resumes_from_the_cut_and_never_activates_a_partial_file(fleet, shared, monkeypatch):
    from edgectl.agent_client import UPLOAD_CHUNK
    from edgectl.errors import AgentError
    from edgectl_agent.api import ArtifactRef, DesiredDeployment

    dev = fleet.devices[0]
    t = transport(fleet, shared)
    client = t.agent(start=True)
    data = b"GGUF" + os.urandom(24 * MIB)  # the fake runtime loads anything with the GGUF magic
    path = fleet.base / "blob"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    stored = dev.home / ".local/share/edgectl-agent/root/artifacts" / digest[7:]
    desired = DesiredDeployment(name="blob", runtime="fake", artifact=ArtifactRef(
        digest=digest, format="gguf", quant="F32", size_bytes=len(data), model="blob"))

    offsets: list[int] = []  # what the agent held each time the client asked where to resume
    ask = client.upload_status
    monkeypatch.setattr(client, "upload_status", lambda d: offsets.append(ask(d).received_bytes) or ask(d))
    cut: dict = {}

    def progress(done: int, total: int) -> None:
        if "at" in cut or done < 10 * MIB:
            return
        cut["at"] = done  # every byte up to here was written into the SSH channel
        cut["killed"] = dev.cut_connections()
        # meanwhile, over another connection: the partial bytes are not an artifact and cannot be activated
        other = transport(fleet, shared)
        with pytest.raises(AgentError) as e:
            other.client(other.installer.token()).put_deployment(desired)
        cut["refused"] = (e.value.status, e.value.message)
        cut["stored"] = stored.exists()
        other.close()

    status = client.upload(digest, path, progress=progress)
    assert cut["killed"] >= 1 and status.complete
    assert cut["refused"][0] == 409 and "not in this device's store" in cut["refused"][1]
    assert cut["stored"] is False
    resumed_at = next(o for o in offsets if o > 0)
    assert 0 < resumed_at <= cut["at"]
    assert cut["at"] - resumed_at <= UPLOAD_CHUNK, (cut, offsets)  # re-sent at most one chunk, never from zero
    print(f"cut after {cut['at']} bytes sent, resumed at {resumed_at}: {cut['at'] - resumed_at} bytes re-sent")
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest[7:]
    assert client.put_deployment(desired).state == "serving"
    t.close()


def test_a_foreign_process_on_the_agent_port_is_refused_with_the_fix(fleet, shared):
    """Something else answers on the device's agent port (no agent of ours in transport.agent_dir): the lifecycle
    neither reports it as the device's agent nor installs over it; it says what and how to fix it."""
    import http.server

    from edgectl.errors import TransportError

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", "15")
            self.end_headers()
            self.wfile.write(b'{"status":"ok"}')

        def log_message(self, *args):
            pass

    dev = fleet.devices[0]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", dev.agent_port), Healthy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    t = transport(fleet, shared)
    try:
        for start in (False, True):
            with pytest.raises(TransportError) as e:
                t.agent(start=start)
            assert "dev1" in e.value.message and "cannot read the agent token" in e.value.message
            assert "agent_dir" in e.value.hint
        assert not (dev.home / ".local/share/edgectl-agent/agent.pid").exists()  # nothing was started
    finally:
        t.close()
        server.shutdown()
        server.server_close()


DISK_MANIFESTS = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-{x}}}
spec:
  architecture: {{family: llama, parameters: {params}, layers: 2, hidden_size: 256, attention_heads: 4, kv_heads: 2,
                 head_dim: 64, vocab_size: 537, max_context: 512}}
  sources:
    - {{type: gguf, path: tiny-{x}.gguf, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: tiny-{x}}}
spec:
  model: tiny-{x}
  selector: {{labels: {{site: sim}}}}
  context_length: 256
  threads: 1
  quantization: {{allow: [Q8_0]}}
"""


def edgectl_cli(*args: str, tmp_path: Path, shared: dict) -> subprocess.CompletedProcess:
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), EDGECTL_WHEELHOUSE=str(shared["wheelhouse"]),
               COLUMNS="250", NO_COLOR="1", PYTHONPATH=os.pathsep.join([str(repo), str(repo / "agent")]))
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=900, cwd=repo)


def test_push_refused_before_any_byte_when_the_agents_disk_is_short(fleet, shared, tmp_path):
    """Two deployments on a device whose agent store is a small tmpfs: the first fits, then the agent's reported
    free space (read right before the push) is less than the second artifact + 10%: refused, nothing sent."""
    import re

    from gguf import GGUFReader

    from tests.tinymodels import write_tiny_llama_gguf

    dev = fleet.devices[0]
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    docs = []
    for seed, x in ((1, "a"), (2, "b")):
        g = write_tiny_llama_gguf(mdir / f"tiny-{x}.gguf", seed=seed)
        docs.append(DISK_MANIFESTS.format(x=x, params=sum(int(t.n_elements) for t in GGUFReader(g).tensors)))
    (mdir / "models.yaml").write_text("---\n".join(docs))
    (mdir / "fleet.yaml").write_text(fleet.fleet_yaml(profile="x86-cpu-server", python=BASE_PYTHON).replace(
        f"python: {BASE_PYTHON}", f"python: {BASE_PYTHON}, venv: {shared['venv']}"))

    built = edgectl_cli("build", str(mdir), tmp_path=tmp_path, shared=shared)
    assert built.returncode == 0, built.stdout + built.stderr
    digests = dict(re.findall(r"tiny-(a|b) gguf Q8_0 .*?(sha256:[0-9a-f]{64})", built.stdout))
    sizes = {x: next((tmp_path / "home").rglob(d[7:])).stat().st_size for x, d in digests.items()}

    root = dev.home / ".local/share/edgectl-agent/root"
    root.mkdir(parents=True)
    tmpfs = (int(max(sizes.values()) * 1.6) // 4096 + 1) * 4096  # one artifact + 10% fits, two do not
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs}", "tmpfs", str(root)], check=True)
    try:
        r = edgectl_cli("apply", str(mdir), tmp_path=tmp_path, shared=shared)
        out = r.stdout + r.stderr
        assert r.returncode == 1, out
        m = re.search(r"deployment 'tiny-b': not enough disk for gguf Q8_0 \S+: [\d.]+ MB \((\d+) bytes\) to push "
                      r"\+ 10% = [\d.]+ MB \((\d+) bytes\) needed, the agent reports [\d.]+ MB \((\d+) bytes\) free",
                      " ".join(out.split()))
        assert m, out
        missing, need, free = map(int, m.groups())
        assert missing == sizes["b"] and need == int(sizes["b"] * 1.1) and free < need
        assert free <= tmpfs - sizes["a"]  # the real free space, after the first push
        assert "nothing was pushed" in out and "removed again" not in out and "rollback failed" not in out
        state = __import__("json").loads((root / "state.json").read_text())
        assert [d["name"] for d in state["deployments"]] == ["tiny-a"]
        assert not any(p.name.startswith(digests["b"][7:]) for p in root.rglob("*"))  # not a byte of it
    finally:
        fleet.close()
        subprocess.run(["umount", "-l", str(root)], check=False)

"""The Docker transport against a real dockerd (Debian's docker.io, started by tests/dockerd.py on a private socket):
the agent image is built from deploy/docker/Dockerfile FROM the make-base.sh base, `edgectl apply` runs the agent
container and delivers the artifact through the agent's upload API, the real `openai` client chats through the port
published on 127.0.0.1, a re-apply touches nothing, and a killed agent is brought back by the restart policy serving
the same model from its volume. A second device is controlled through `docker exec` only (nothing published). A third
reaches the same engine as a remote one, over tcp:// with mutual TLS (certificates made by the test).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.dockerd import Dockerd, make_tls
from tests.fleet import free_port
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

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
  selector: {{labels: {{site: docker}}}}
  context_length: 256
  threads: 1
  quantization: {{allow: [Q8_0]}}
"""

FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: containers}}
spec:
  devices:
{devices}
"""

DEVICE = """\
    - name: {name}
      profile: x86-cpu-server
      labels: {{site: docker}}
      agent: {{port: {port}}}
      transport: {{type: docker, engine: "{engine}", control: {control}}}
"""


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with Dockerd(tmp_path_factory.mktemp("dockerd"), tls_port=free_port()) as d:
        d.make_base()
        yield d


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
                       timeout=900, cwd=REPO, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"edgectl {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def manifests(tmp_path: Path, engine: Dockerd, devices: list[tuple[str, int, str]]) -> Path:
    from gguf import GGUFReader

    mdir = tmp_path / "manifests"
    mdir.mkdir(exist_ok=True)
    tiny = write_tiny_llama_gguf(mdir / "tiny.gguf")
    params = sum(int(t.n_elements) for t in GGUFReader(tiny).tensors)
    (mdir / "model.yaml").write_text(MODEL.format(params=params))
    rows = "".join(DEVICE.format(name=n, port=p, engine=engine.url, control=c) for n, p, c in devices)
    (mdir / "fleet.yaml").write_text(FLEET.format(devices=rows))
    return mdir


def inspect(engine: Dockerd, name: str) -> dict:
    return json.loads(engine.docker("inspect", name).stdout)[0]


def token(engine: Dockerd, name: str) -> str:
    return engine.docker("exec", name, "cat", "/var/lib/edgectl-agent/token").stdout.strip()


def chat(base_url: str, api_key: str, http: httpx.Client | None = None) -> tuple[str, int]:
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, http_client=http, max_retries=0)
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens > 0
    chunks = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=8, stream=True))
    streamed = sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
    assert streamed > 0
    return reply.choices[0].message.content, streamed


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_apply_to_a_container_serves_on_loopback_reapplies_nothing_and_survives_an_agent_kill(tmp_path, env, engine):
    port = free_port()
    mdir = manifests(tmp_path, engine, [("box1", port, "port")])

    started = time.monotonic()
    r = edgectl("apply", str(mdir), env=env)
    apply_s = time.monotonic() - started
    assert "box1: " in r.stdout and "activated tiny" in r.stdout, r.stdout + r.stderr
    print(f"\ncold apply (wheelhouse + image build + container + upload + activation): {apply_s:.1f} s")

    info = inspect(engine, "edgectl-agent-box1")
    assert info["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    # published on the host's loopback only, never on all interfaces
    assert info["HostConfig"]["PortBindings"] == {"8088/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
    (mount,) = info["Mounts"]
    assert mount["Type"] == "volume" and mount["Name"] == "edgectl-agent-box1"
    assert mount["Destination"] == "/var/lib/edgectl-agent"
    image = json.loads(engine.docker("image", "inspect", info["Config"]["Image"]).stdout)[0]
    assert image["Config"]["Healthcheck"]["Test"][0] == "CMD"
    assert image["Config"]["Labels"]["dev.edgectl.agent-extras"] == "fast-http,llama"
    # the image's agent has the extra fast-http (httptools and uvloop: its uvicorn uses them); check=True fails here
    engine.docker("exec", "edgectl-agent-box1", "/opt/edgectl-agent/bin/python", "-c", "import httptools, uvloop")
    print(f"agent image {info['Config']['Image']}: {image['Size'] / 1e6:.0f} MB")
    # the artifact went into the volume through the agent's upload API (content-addressed store)
    store = engine.docker("exec", "edgectl-agent-box1", "find", "/var/lib/edgectl-agent", "-type", "f").stdout
    assert "token" in store and len([p for p in store.split() if len(Path(p).name) >= 64]) >= 1, store

    key = token(engine, "edgectl-agent-box1")
    url = f"http://127.0.0.1:{port}/v1"
    chat(url, key)
    # beyond the container's loopback the agent requires the token for serving too
    assert httpx.get(f"{url}/models", timeout=10).status_code == 401
    wait_for(lambda: inspect(engine, "edgectl-agent-box1")["State"]["Health"]["Status"] == "healthy", 60,
             "the image's HEALTHCHECK to report healthy")

    before = inspect(engine, "edgectl-agent-box1")
    started = time.monotonic()
    r2 = edgectl("apply", str(mdir), env=env)
    print(f"no-op re-apply: {time.monotonic() - started:.1f} s")
    assert "no changes" in r2.stdout, r2.stdout + r2.stderr
    after = inspect(engine, "edgectl-agent-box1")
    assert (after["Id"], after["State"]["StartedAt"]) == (before["Id"], before["State"]["StartedAt"])

    # kill the agent hard (SIGKILL from the host): the restart policy brings it back, serving the same model
    os.kill(after["State"]["Pid"], signal.SIGKILL)
    wait_for(lambda: inspect(engine, "edgectl-agent-box1")["RestartCount"] >= 1, 60, "docker to restart the agent")
    wait_for(lambda: _serving(port, key), 60, "the restarted agent to serve again")
    chat(url, key)
    assert "no changes" in edgectl("apply", str(mdir), env=env).stdout

    st = json.loads(edgectl("status", str(mdir), "--json", env=env).stdout)
    assert st[0]["device"] == "box1" and st[0]["deployments"][0]["state"] == "serving"


def _serving(port: int, key: str) -> bool:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        return r.status_code == 200 and any(m["id"] == "tiny" for m in r.json()["data"])
    except httpx.HTTPError:
        return False


def test_exec_control_publishes_nothing_and_chats_through_docker_exec(tmp_path, env, engine, monkeypatch):
    from edgectl.agents import connect
    from edgectl.load import load_paths

    mdir = manifests(tmp_path, engine, [("box2", 8088, "exec")])
    r = edgectl("apply", str(mdir), env=env)
    assert "box2: " in r.stdout and "activated tiny" in r.stdout, r.stdout + r.stderr

    info = inspect(engine, "edgectl-agent-box2")
    # no network at all: nothing published, no bridge address to reach it by
    assert info["HostConfig"]["NetworkMode"] == "none" and not info["HostConfig"]["PortBindings"]
    assert not any(info["NetworkSettings"]["Ports"].values())
    assert info["Config"]["Cmd"] == ["--host", "127.0.0.1", "--port", "8088"]

    monkeypatch.setenv("EDGECTL_HOME", env["EDGECTL_HOME"])
    device = load_paths([mdir]).devices["box2"]
    t = connect(device)
    try:
        client = t.agent(start=False)
        (dep,) = client.state().deployments
        assert dep.state == "serving" and dep.active.format == "gguf" and dep.active.quant == "Q8_0"
        assert t.transport.run(["printf", "%s", "a b;$(x)"]).stdout == "a b;$(x)"  # argv, no shell
        with httpx.Client(transport=t.transport.http_transport(), timeout=60.0) as http:
            chat(t.endpoint, token(engine, "edgectl-agent-box2"), http)
        payload = tmp_path / "payload.bin"
        payload.write_bytes(os.urandom(300_000))
        t.transport.put_file(payload, "/tmp/in dir/payload.bin")
        import hashlib

        assert t.transport.run(["sha256sum", "/tmp/in dir/payload.bin"]).stdout.split()[0] == \
            hashlib.sha256(payload.read_bytes()).hexdigest()
    finally:
        t.close()

    # The fleet collector reads the container's metrics through docker exec too (no network to reach it by).
    from edgectl.collector import FleetCollector, parse_exposition

    collector = FleetCollector([device], timeout=30)
    try:
        (scrape,) = collector.scrape_all()
        assert scrape.up, scrape
        samples = [s for f in parse_exposition(collector.exposition().decode()) for s in f.samples]
    finally:
        collector.close()
    completions = [s for s in samples if s.name == "edgectl_agent_completion_tokens_total"]
    assert completions and all(s.labels["device"] == "box2" and s.labels["quant"] == "Q8_0" for s in completions)
    assert sum(s.value for s in completions) > 0  # the chat above, counted in the container


def test_a_removed_container_comes_back_from_its_volume_without_a_transfer(tmp_path, env, engine):
    port = free_port()
    mdir = manifests(tmp_path, engine, [("box3", port, "port")])
    edgectl("apply", str(mdir), env=env)
    key = token(engine, "edgectl-agent-box3")
    engine.docker("rm", "-f", "edgectl-agent-box3")
    r = edgectl("apply", str(mdir), env=env)
    # a new container on the same volume: same token, the store and state restored, nothing to upload or activate
    assert "no changes" in r.stdout, r.stdout + r.stderr
    assert token(engine, "edgectl-agent-box3") == key
    wait_for(lambda: _serving(port, key), 30, "the new container to serve")
    chat(f"http://127.0.0.1:{port}/v1", key)


def test_a_signing_fleet_pins_its_key_in_the_volume_and_replaces_an_unverified_container(tmp_path, env, engine,
                                                                                          monkeypatch):
    """spec.signing turned on for a Docker device whose agent runs unverified: the lifecycle replaces the container
    with one whose agent verifies with the fleet's key (verify-key.pub on the volume, --verify-key-file in its
    command, the sign extra in its image), and what apply serves there after is signed."""
    from edgectl.agents import connect
    from edgectl.load import load_paths
    from edgectl.signing import Signer

    mdir = manifests(tmp_path, engine, [("box6", 8088, "exec")])
    r = edgectl("apply", str(mdir), env=env)
    assert "activated tiny" in r.stdout, r.stdout + r.stderr
    assert "--verify-key-file" not in inspect(engine, "edgectl-agent-box6")["Config"]["Cmd"]

    (mdir / "keys").mkdir()
    edgectl("keygen", str(mdir / "keys" / "fleet"), env=env)
    fleet_yaml = mdir / "fleet.yaml"
    fleet_yaml.write_text(fleet_yaml.read_text().replace("spec:\n", "spec:\n  signing: {key_file: keys/fleet}\n"))
    key = Signer.load(mdir / "keys" / "fleet")
    monkeypatch.setenv("EDGECTL_HOME", env["EDGECTL_HOME"])
    device = load_paths([mdir]).devices["box6"]
    # what apply does for a device whose fleet signs: the lifecycle with the fleet's public key
    link = connect(device, verify_key=key.public_pem)
    try:
        assert link.agent(start=False).facts().verify_key_id is None  # read-only: nothing changes
        assert link.agent(start=True, runtimes={"llamacpp"}).facts().verify_key_id == key.key_id
    finally:
        link.close()
    info = inspect(engine, "edgectl-agent-box6")
    assert info["Config"]["Cmd"][-2:] == ["--verify-key-file", "/var/lib/edgectl-agent/verify-key.pub"]
    assert engine.docker("exec", "edgectl-agent-box6", "cat", "/var/lib/edgectl-agent/verify-key.pub").stdout == \
        (mdir / "keys" / "fleet.pub").read_text()

    r = edgectl("apply", str(mdir), env=env)  # what it serves is signed by the fleet's key
    link = connect(device)
    try:
        client = link.agent(start=False)
        assert client.facts().verify_key_id == key.key_id
        (dep,) = client.state().deployments
        assert dep.state == "serving" and dep.desired.signature.key_id == key.key_id, r.stdout + r.stderr
    finally:
        link.close()


def test_a_taken_port_and_a_missing_base_are_reported_with_a_fix(tmp_path, env, engine):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        mdir = manifests(tmp_path, engine, [("box4", port, "port")])
        r = edgectl("apply", str(mdir), env=env, check=False)
    assert r.returncode != 0
    assert f"127.0.0.1:{port} on the engine host is taken" in r.stderr and "host_port" in r.stderr, r.stderr
    assert engine.docker("ps", "-aq", "--filter", "name=edgectl-agent-box4").stdout.strip() == ""

    fleet = mdir / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace("control: port}", "control: port, base_image: nobase:1, "
                                               "image: edgectl-agent:never-built}"))
    r = edgectl("apply", str(mdir), env=env, check=False)
    assert r.returncode != 0
    assert "base image nobase:1 is not on" in r.stderr and "make-base.sh" in r.stderr, r.stderr


def test_a_remote_engine_over_mutual_tls_is_deployed_to_and_a_foreign_certificate_refused(tmp_path, env, engine,
                                                                                         monkeypatch):
    from edgectl.agents import connect
    from edgectl.errors import TransportError
    from edgectl.load import load_paths
    from edgectl.transport.docker import DockerTransport

    tcp = f"tcp://127.0.0.1:{engine.tls_port}"
    mdir = manifests(tmp_path, engine, [("box5", 8088, "exec")])
    fleet = mdir / "fleet.yaml"
    fleet.write_text(fleet.read_text().replace(f'engine: "{engine.url}"',
                                               f'engine: "{tcp}", tls_cert_path: "{engine.tls_client}"'))
    r = edgectl("apply", str(mdir), env=env)
    assert "box5: " in r.stdout and "activated tiny" in r.stdout, r.stdout + r.stderr
    assert inspect(engine, "edgectl-agent-box5")["State"]["Running"]  # the same engine, seen through its socket

    monkeypatch.setenv("EDGECTL_HOME", env["EDGECTL_HOME"])
    t = connect(load_paths([mdir]).devices["box5"])
    try:
        (dep,) = t.agent(start=False).state().deployments
        assert dep.state == "serving" and dep.active.quant == "Q8_0"
    finally:
        t.close()
    # a client certificate from another CA (the engine's own CA still trusted on this side): the engine refuses
    # the handshake (--tlsverify), and edgectl says where it failed
    import shutil

    _, foreign = make_tls(tmp_path / "foreign")
    shutil.copy(engine.tls_client / "ca.pem", foreign / "ca.pem")
    fleet.write_text(fleet.read_text().replace(str(engine.tls_client), str(foreign)))
    with pytest.raises(TransportError) as e:
        DockerTransport(load_paths([mdir]).devices["box5"]).engine()
    assert f"cannot reach the Docker engine at {tcp}" in e.value.message and "SSL" in e.value.message, e.value

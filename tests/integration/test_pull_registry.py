"""Pull mode for real: a real CNCF Distribution registry (htpasswd auth), the real `edgectl` CLI publishing, a real
agent process in pull mode with real llama.cpp on a tiny GGUF, served through the OpenAI API.

publish -> the agent pulls and serves -> re-publish another quant -> the agent swaps -> the registry stops -> the
agent keeps serving and records that it is unreachable -> the registry returns -> the agent recovers. The attacks
(replay, expiry, digest mismatch) are in tests/security/test_pull_channel.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.registry import Registry, TokenService
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
POLL_S = 5
WAIT_S = 120.0

MANIFESTS = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-llama}}
spec:
  architecture: {{family: llama, parameters: 1000000, layers: 2, hidden_size: 256, attention_heads: 4, kv_heads: 2,
                 head_dim: 64, vocab_size: 537, max_context: 512}}
  sources:
    - {{type: gguf, path: tiny.gguf, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: shops}}
spec:
  signing: {{key_file: fleet.key}}
  pull: {{registry: "{registry}", repository: shops/models, plain_http: true, poll_interval_s: {poll}{extra}}}
  devices:
    - name: {device}
      profile: x86-cpu-server
      transport: {{type: pull}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: chat}}
spec:
  model: tiny-llama
  selector: {{devices: [{device}]}}
  context_length: 256
  quantization: {{allow: [{quant}]}}
"""


def edgectl(*args: str, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                       timeout=600, cwd=REPO)
    if r.returncode != 0:
        raise AssertionError(f"edgectl {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


class PullWorld:
    """A registry, a manifest folder with a fleet key, and edgectl's environment (push and read-only users)."""

    def __init__(self, tmp: Path, token: TokenService | None = None, device: str = "shop-1") -> None:
        """``token``: the registry authenticates through that Bearer-token service instead of htpasswd.
        ``device``: the pull device's name; a test whose agent reports to a Pushgateway gives one no other test
        uses, so a report can never be read by another test (status is read by device name)."""
        self.device = device
        self.registry = Registry(tmp / "registry", {"publisher": "push-secret", "shop": "read-secret"},
                                 token=token).start()
        self.dir = tmp / "m"
        self.dir.mkdir()
        write_tiny_llama_gguf(self.dir / "tiny.gguf")
        self.env = dict(os.environ, EDGECTL_HOME=str(tmp / "home"), COLUMNS="200", NO_COLOR="1",
                        EDGECTL_REGISTRY_USERNAME="publisher", EDGECTL_REGISTRY_PASSWORD="push-secret",
                        EDGECTL_REGISTRY_READ_USERNAME="shop", EDGECTL_REGISTRY_READ_PASSWORD="read-secret")
        edgectl("keygen", str(self.dir / "fleet.key"), env=self.env)

    def write(self, quant: str, extra: str = "") -> None:
        """``extra``: more spec.pull fields, e.g. ', pushgateway: "http://..."'."""
        (self.dir / "all.yaml").write_text(MANIFESTS.format(registry=self.registry.address, poll=POLL_S, quant=quant,
                                                            extra=extra, device=self.device))

    def enroll(self, out: Path) -> dict:
        edgectl("enroll", self.device, "-f", str(self.dir), "--out", str(out), env=self.env)
        return json.loads(out.read_text())


def wait_for(what, check, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def pull_status(root: Path) -> dict:
    try:
        return json.loads((root / "pull-status.json").read_text())
    except (OSError, ValueError):
        return {}


def serving_digest(agent, name: str = "chat") -> str | None:
    state = httpx.get(f"{agent.url}/control/v1/state", headers=agent.auth, timeout=10).json()
    return next((d["active"]["digest"] for d in state["deployments"]
                 if d["name"] == name and d["state"] == "serving" and d.get("active")), None)


def chat(agent) -> dict:
    r = httpx.post(f"{agent.url}/v1/chat/completions", timeout=60,
                   json={"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def world(tmp_path):
    w = PullWorld(tmp_path)
    yield w
    w.registry.stop()


def test_publish_pull_serve_swap_and_offline(world, tmp_path, start_agent):
    world.write("Q8_0")
    out = edgectl("apply", str(world.dir), env=world.env).stdout
    assert "published state version 1" in out and "published tiny-llama gguf Q8_0" in out, out
    assert "no changes" in edgectl("apply", str(world.dir), env=world.env).stdout  # idempotent: nothing republished

    config = world.enroll(tmp_path / "pull.json")
    assert oct((tmp_path / "pull.json").stat().st_mode & 0o777) == "0o600"
    assert config["username"] == "shop" and config["registry"] == world.registry.address
    assert "BEGIN PUBLIC KEY" in config["verify_key_pem"]

    root = tmp_path / "device"
    agent = start_agent(root=root, env={"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / "pull.json")})
    first = wait_for("the agent to pull and serve", lambda: serving_digest(agent))
    assert chat(agent)["choices"][0]["message"]["role"] == "assistant"
    assert pull_status(root)["applied_version"] == 1

    world.write("Q4_0")  # a new artifact: published as state version 2, swapped in by the agent
    out = edgectl("apply", str(world.dir), env=world.env).stdout
    assert "published state version 2" in out, out
    second = wait_for("the agent to swap", lambda: (d := serving_digest(agent)) != first and d)
    assert second and second != first
    chat(agent)

    world.registry.stop()  # the registry goes away: the agent keeps serving, backs off, says why
    wait_for("the agent to notice the registry is down",
             lambda: pull_status(root).get("outcome") == "registry_unreachable")
    assert serving_digest(agent) == second
    chat(agent)

    world.registry.start()  # same storage: the agent recovers at its next (backed-off) poll
    wait_for("the agent to reach the registry again",
             lambda: pull_status(root).get("outcome") in ("unchanged",), timeout=4 * POLL_S * 1.2 + 30)
    assert serving_digest(agent) == second


def test_download_resumes_from_a_partial_blob_with_a_range_request(tmp_path):
    """A download cut half-way resumes at the bytes already in the store (a ranged GET on the real registry)."""
    import asyncio
    import hashlib
    from types import SimpleNamespace

    from edgectl_agent.oci import RegistryReader
    from edgectl_agent.pull import Puller
    from edgectl_agent.pull_state import PullConfig
    from edgectl_agent.store import ArtifactStore

    from edgectl.pull.oci import RegistryWriter
    from edgectl.signing import Signer, generate_key

    registry = Registry(tmp_path / "registry", {"u": "p"}).start()
    try:
        data = os.urandom(3 << 20)
        blob = tmp_path / "blob"
        blob.write_bytes(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        RegistryWriter(registry.address, "r/m", plain_http=True, username="u", password="p").push_blob_file(blob,
                                                                                                            digest)
        store = ArtifactStore(tmp_path / "device")
        half = len(data) // 2

        async def first_half():
            yield data[:half]
        store.begin(digest, 0, len(data), None)
        asyncio.run(store.receive(digest, 0, len(data), first_half()))
        assert store.status(digest).received_bytes == half

        reader = RegistryReader(registry.address, "r/m", scheme="http", username="u", password="p")
        offsets = []
        stream = reader.blob_stream

        def recording_stream(d, offset):
            start, chunks = stream(d, offset)
            offsets.append((offset, start))
            return start, chunks
        reader.blob_stream = recording_stream
        generate_key(tmp_path / "k")
        config = PullConfig(device="d", registry=registry.address, repository="r/m", scheme="http",
                            verify_key_pem=Signer.load(tmp_path / "k").public_pem.decode())
        agent = SimpleNamespace(settings=SimpleNamespace(root=tmp_path / "device"), store=store,
                                uploads_in_progress=set(), recovery=None, deployments=None)
        asyncio.run(Puller(agent, config, reader=reader).fetch_blob(digest, len(data)))
        assert offsets == [(half, half)]  # resumed where it stopped, and the registry honoured the Range
        assert store.has(digest) and store.path(digest).read_bytes() == data
    finally:
        registry.stop()


LOCAL_DEVICE = """\
---
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: lab}}
spec:
  devices:
    - {{name: lab-1, profile: auto, transport: {{type: local}}, agent: {{port: {port}}}}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: lab-chat}}
spec:
  model: tiny-llama
  selector: {{devices: [lab-1]}}
  context_length: 256
  quantization: {{allow: [Q8_0]}}
"""


def test_one_apply_publishes_for_pull_devices_and_pushes_to_the_others(world, tmp_path):
    from tests.integration.conftest import free_port

    world.write("Q8_0")
    with open(world.dir / "all.yaml", "a") as f:
        f.write(LOCAL_DEVICE.format(port=free_port()))
    try:
        out = edgectl("apply", str(world.dir), env=world.env).stdout
        assert "shop-1" in out and "published state version 1" in out, out
        assert "lab-1" in out and "activated lab-chat" in out, out
        assert "lab-chat is serving on lab-1" in " ".join(out.split()), out
    finally:
        edgectl("stop", str(world.dir), "-d", "lab-1", env=world.env)


def test_site_mirror_serves_devices_from_one_copy_and_without_the_origin(tmp_path):
    """A second Distribution in proxy mode at the site: the agent pulls through it (its cold ranged GET answers 200
    with the whole body: the download restarts at 0 and still verifies), the mirror keeps one copy, and serves it
    to the next device when the origin is gone."""
    import asyncio
    import hashlib
    from types import SimpleNamespace

    from edgectl_agent.oci import RegistryReader
    from edgectl_agent.pull import Puller
    from edgectl_agent.pull_state import PullConfig
    from edgectl_agent.store import ArtifactStore

    from edgectl.pull.oci import RegistryWriter
    from edgectl.pull.publish import push_state_document
    from edgectl.signing import Signer, generate_key

    # The origin is anonymous here: Distribution 2.8's proxy mode sends upstream credentials only to a token-auth
    # registry (against htpasswd it gets 401), so a real site mirror fronts Harbor or a cloud registry.
    origin = Registry(tmp_path / "origin", {}).start()
    mirror = Registry(tmp_path / "mirror", {"shop": "s"},
                      proxy_of=(f"http://{origin.address}", "publisher", "p")).start()
    try:
        data = os.urandom(2 << 20)
        (tmp_path / "blob").write_bytes(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        writer = RegistryWriter(origin.address, "shops/models", plain_http=True, username="publisher", password="p")
        writer.push_blob_file(tmp_path / "blob", digest)
        state_manifest = push_state_document(writer, "d1", b'{"not": "checked here"}')
        generate_key(tmp_path / "k")
        pem = Signer.load(tmp_path / "k").public_pem.decode()

        def device(name: str) -> tuple[Puller, ArtifactStore, list]:
            reader = RegistryReader(mirror.address, "shops/models", scheme="http", username="shop", password="s")
            starts = []
            stream = reader.blob_stream

            def recording(d, offset):
                start, chunks = stream(d, offset)
                starts.append((offset, start))
                return start, chunks
            reader.blob_stream = recording
            store = ArtifactStore(tmp_path / name)
            agent = SimpleNamespace(settings=SimpleNamespace(root=tmp_path / name), store=store,
                                    uploads_in_progress=set(), recovery=None, deployments=None)
            config = PullConfig(device="d1", registry=mirror.address, repository="shops/models", scheme="http",
                                verify_key_pem=pem)
            return Puller(agent, config, reader=reader), store, starts

        puller, store, starts = device("dev-a")
        assert puller.reader.tag_digest("state-d1") == state_manifest  # tags resolve through the mirror
        half = len(data) // 2

        async def first_half():
            yield data[:half]
        store.begin(digest, 0, len(data), None)
        asyncio.run(store.receive(digest, 0, len(data), first_half()))
        asyncio.run(puller.fetch_blob(digest, len(data)))
        assert starts == [(half, 0)]  # a cold proxy ignores Range: detected, restarted at 0
        assert store.path(digest).read_bytes() == data

        hexd = digest.split(":")[1]
        cached = tmp_path / "mirror/storage/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        wait_for("the mirror to keep its copy", lambda: cached.exists() and cached.stat().st_size == len(data), 30)
        origin.stop()  # the site is cut off from the origin: the mirror still serves the next device
        puller_b, store_b, _ = device("dev-b")
        asyncio.run(puller_b.fetch_blob(digest, len(data)))
        assert store_b.path(digest).read_bytes() == data
    finally:
        mirror.stop()
        origin.stop()

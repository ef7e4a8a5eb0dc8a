"""The agent container's spec for vLLM and GPUs (edgectl.agents.install_docker_spec): the exact docker SDK arguments
and the Engine API JSON they become, and the refusal of transport.gpus on an engine without the NVIDIA runtime.
The real counterpart: tests/integration/test_docker_vllm_spec.py creates the container on a real dockerd."""

from __future__ import annotations

import pytest

from edgectl.agents.install_docker_spec import (
    LABEL_RESOURCES,
    NVIDIA_FIX,
    VLLM_SHM_MB,
    VLLM_VENV_IN_IMAGE,
    missing_gpu_runtime,
    resources_label,
    run_options,
)
from edgectl.spec import Device


def device(**transport) -> Device:
    return Device(name="gpu1", profile="nvidia-gpu-box", agent={"port": 9100},
                  transport={"type": "docker", **transport})


def host_config(options: dict) -> dict:
    """The HostConfig JSON the docker SDK sends for these create() options (its own code, no engine)."""
    import docker.types

    return docker.types.HostConfig(version="1.43", device_requests=options.get("device_requests"),
                                   shm_size=options.get("shm_size"))


def test_a_gpu_box_running_vllm_gets_all_gpus_shared_memory_and_the_images_vllm_venv() -> None:
    opts = run_options(device(gpus="all"), "img", runtimes=["vllm", "llamacpp"])
    assert opts["device_requests"] == [{"driver": "", "count": -1, "capabilities": [["gpu"]]}]  # --gpus all
    assert opts["shm_size"] == f"{VLLM_SHM_MB}m"  # --shm-size 2048m
    assert opts["environment"] == {"EDGECTL_VLLM_VENV": VLLM_VENV_IN_IMAGE}
    assert opts["volumes"] == {"edgectl-agent-gpu1": {"bind": "/var/lib/edgectl-agent", "mode": "rw"}}
    assert opts["labels"][LABEL_RESOURCES] == "gpus=all,shm=2048,vllm"
    api = host_config(opts)
    assert api["DeviceRequests"] == [{"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]],
                                      "Options": {}}]
    assert api["ShmSize"] == 2048 * 2**20


def test_a_gpu_count_and_an_explicit_shm_size_are_passed_as_given() -> None:
    opts = run_options(device(gpus=2, shm_size_mb=8192), "img", runtimes=["vllm"])
    assert opts["device_requests"][0]["count"] == 2
    assert host_config(opts)["ShmSize"] == 8192 * 2**20
    assert resources_label(device(gpus=2, shm_size_mb=8192), ["vllm"]) == "gpus=2,shm=8192,vllm"


def test_without_vllm_or_gpus_the_container_spec_is_unchanged() -> None:
    opts = run_options(device(), "img", runtimes=["llamacpp"])
    assert not {"device_requests", "shm_size", "environment"} & set(opts)
    assert LABEL_RESOURCES not in opts["labels"]
    # a GPU box whose profile has no vLLM in its runtimes still gets the GPUs it declares, not vLLM's shm
    opts = run_options(device(gpus="all"), "img", runtimes=["llamacpp"])
    assert "device_requests" in opts and "shm_size" not in opts and "environment" not in opts


def test_gpus_on_an_engine_without_the_nvidia_runtime_are_refused_with_the_fix() -> None:
    why = missing_gpu_runtime(device(gpus="all"), {"Runtimes": {"runc": {}, "io.containerd.runc.v2": {}}})
    assert why is not None and "no NVIDIA container runtime" in why and "runc" in why
    assert "nvidia-ctk runtime configure" in NVIDIA_FIX and "remove transport.gpus" in NVIDIA_FIX
    assert missing_gpu_runtime(device(gpus="all"), {"Runtimes": {"runc": {}, "nvidia": {}}}) is None
    assert missing_gpu_runtime(device(), {"Runtimes": {"runc": {}}}) is None  # none asked for


@pytest.mark.parametrize("transport", [{"gpus": 0}, {"gpus": "some"}, {"shm_size_mb": 16}])
def test_bad_gpu_and_shm_values_are_refused_by_the_manifest(transport) -> None:
    with pytest.raises(ValueError):
        device(**transport)


def test_a_container_made_without_the_gpus_no_longer_fits() -> None:
    from types import SimpleNamespace

    from edgectl.agents.install_docker import DockerInstaller
    from edgectl.transport.docker import DockerTransport

    plain = run_options(device(), "img", runtimes=["vllm"])["labels"]  # made before gpus was declared
    container = SimpleNamespace(labels=plain, attrs={"Config": {"Image": "mine:1"}})
    with_gpus = DockerInstaller(DockerTransport(device(gpus="all", image="mine:1")))
    assert not with_gpus.fits(container, [], runtimes=["vllm"])
    same = DockerInstaller(DockerTransport(device(image="mine:1")))
    assert same.fits(container, [], runtimes=["vllm"])
    assert not same.fits(container, [], runtimes=["llamacpp"])  # vLLM no longer served: its shm and venv go

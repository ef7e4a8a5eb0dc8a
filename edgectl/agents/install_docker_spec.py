"""The agent container's spec on a Docker engine: the keyword arguments of the docker SDK's ``containers.create``
(pure, unit-tested; edgectl.agents.install_docker runs them).

What the container gets:

- the agent's command line (:func:`agent_args`): published on the engine host's 127.0.0.1, or loopback only and no
  network at all for control ``exec``;
- its named volume at the agent's root: the model store, state, token and pinned key survive a new image or container;
- for vLLM (the device runs the ``vllm`` runtime): ``/dev/shm`` of ``transport.shm_size_mb`` or 2048 MiB (Docker's
  64 MiB default is too small for vLLM's processes, which share tensors through it) and ``EDGECTL_VLLM_VENV`` naming
  the image's vLLM venv (:data:`VLLM_VENV_IN_IMAGE`): vLLM runs inside the agent container, supervised by the agent
  like on any device, from a venv the base image provides (the agent image is built FROM that base);
- ``transport.gpus``: an NVIDIA device request (``--gpus all`` / ``--gpus N``), which the engine satisfies only with
  the NVIDIA Container Toolkit: :func:`missing_gpu_runtime` says so before anything is built.

A container whose spec differs from the one wanted now (other GPUs, shm size or vLLM venv) is replaced: the spec is
recorded in its labels (:data:`LABEL_RESOURCES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgectl.spec import Device
from edgectl.transport.docker import AGENT_PORT, AGENT_ROOT, container_name, host_port

LABEL_DEVICE = "dev.edgectl.device"
LABEL_CONTROL = "dev.edgectl.control"
LABEL_VERIFY_KEY = "dev.edgectl.verify-key-file"  # the agent's --verify-key-file ("" when it verifies nothing)
LABEL_PLATFORM = "dev.edgectl.platform"  # linux/amd64, linux/arm64: what the image was built for
LABEL_RESOURCES = "dev.edgectl.resources"  # gpus, shm size and vLLM venv the container was made with
RESTART_POLICY = {"Name": "unless-stopped"}
VLLM_RUNTIME = "vllm"
VLLM_SHM_MB = 2048  # /dev/shm for vLLM: a tmpfs, so only what its processes put there uses memory
VLLM_VENV_IN_IMAGE = "/opt/vllm-venv"  # where the base image keeps vLLM (docs: "vLLM in a Docker container")
NVIDIA_RUNTIME = "nvidia"  # the runtime the NVIDIA Container Toolkit registers with dockerd
NVIDIA_FIX = ("install the NVIDIA Container Toolkit on the engine's host, then `sudo nvidia-ctk runtime configure "
              "--runtime=docker && sudo systemctl restart docker` (`docker info` then lists the nvidia runtime); or "
              "remove transport.gpus to run without GPUs")


def volume_name(device: Device) -> str:
    return device.transport.volume or f"edgectl-agent-{device.name}"


def agent_args(control: str) -> list[str]:
    """Arguments after the image's ENTRYPOINT (``edgectl_agent serve --root ...``)."""
    if control == "port":  # Docker's port publishing reaches the container's interface, not its loopback
        return ["--host", "0.0.0.0", "--allow-remote", "--port", str(AGENT_PORT)]
    return ["--host", "127.0.0.1", "--port", str(AGENT_PORT)]


def control_label(device: Device) -> str:
    """How the container is reached; a container made for another control mode or port is replaced."""
    spec = device.transport
    return f"port:{host_port(device)}" if spec.control == "port" else "exec"


def gpu_requests(device: Device) -> list[dict[str, Any]]:
    """``device_requests`` for ``transport.gpus``: Docker's ``--gpus all`` is count -1 with the gpu capability."""
    gpus = device.transport.gpus
    if gpus is None:
        return []
    return [{"driver": "", "count": -1 if gpus == "all" else gpus, "capabilities": [["gpu"]]}]


def shm_size_mb(device: Device, runtimes: Sequence[str]) -> int | None:
    """``/dev/shm`` in MiB: the transport's, else :data:`VLLM_SHM_MB` for a device running vLLM, else Docker's."""
    if device.transport.shm_size_mb is not None:
        return device.transport.shm_size_mb
    return VLLM_SHM_MB if VLLM_RUNTIME in runtimes else None


def container_environment(runtimes: Sequence[str]) -> dict[str, str]:
    return {"EDGECTL_VLLM_VENV": VLLM_VENV_IN_IMAGE} if VLLM_RUNTIME in runtimes else {}


def resources_label(device: Device, runtimes: Sequence[str]) -> str:
    """The container's GPUs, shm size and vLLM venv in one label value, e.g. ``gpus=all,shm=2048,vllm``."""
    shm = shm_size_mb(device, runtimes)
    parts = [f"gpus={device.transport.gpus}" if device.transport.gpus is not None else "",
             f"shm={shm}" if shm is not None else "", "vllm" if container_environment(runtimes) else ""]
    return ",".join(p for p in parts if p)


def run_options(device: Device, image: str, *, verify_key_file: str | None = None,
                platform: str | None = None, runtimes: Sequence[str] = ()) -> dict[str, Any]:
    """Keyword arguments of ``containers.create``/``run`` for the device's agent container; ``verify_key_file``:
    the agent verifies deployments with that public key (on its volume); ``platform``: the container's;
    ``runtimes``: the runtimes it serves (vLLM's get shared memory and the image's vLLM venv)."""
    spec = device.transport
    options: dict[str, Any] = {
        "image": image, "name": container_name(device), "detach": True,
        "command": agent_args(spec.control) + (["--verify-key-file", verify_key_file] if verify_key_file else []),
        "volumes": {volume_name(device): {"bind": AGENT_ROOT, "mode": "rw"}},
        "restart_policy": dict(RESTART_POLICY),
        "labels": {LABEL_DEVICE: device.name, LABEL_CONTROL: control_label(device),
                   LABEL_VERIFY_KEY: verify_key_file or ""},
    }
    resources = resources_label(device, runtimes)
    if resources:
        options["labels"][LABEL_RESOURCES] = resources
    if platform is not None:
        options["platform"] = platform
        options["labels"][LABEL_PLATFORM] = platform
    if spec.control == "port":
        options["ports"] = {f"{AGENT_PORT}/tcp": ("127.0.0.1", host_port(device))}
    else:  # reached only through docker exec: the container needs no network at all (it serves offline)
        options["network_mode"] = "none"
    requests = gpu_requests(device)
    if requests:
        options["device_requests"] = requests
    shm = shm_size_mb(device, runtimes)
    if shm is not None:
        options["shm_size"] = f"{shm}m"
    environment = container_environment(runtimes)
    if environment:
        options["environment"] = environment
    return options


def missing_gpu_runtime(device: Device, engine_info: dict[str, Any]) -> str | None:
    """Why the engine cannot give the container the GPUs ``transport.gpus`` asks for (``docker info`` lists no
    nvidia runtime), or None when it can or none is asked for."""
    if device.transport.gpus is None:
        return None
    runtimes = sorted(engine_info.get("Runtimes") or {})
    if NVIDIA_RUNTIME in runtimes:
        return None
    return (f"transport.gpus asks for NVIDIA GPUs ({device.transport.gpus}), but the engine has no NVIDIA container "
            f"runtime (`docker info` lists the runtimes: {', '.join(runtimes) or 'none'})")

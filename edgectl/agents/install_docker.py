"""Docker installer: the agent as an image + container on a Docker engine.

The agent image is built from ``deploy/docker/Dockerfile`` with the wheelhouse edgectl builds (the same wheels the venv
installer pushes over SSH), FROM a base image given as a build argument, so it builds offline from a locally made base
(``deploy/docker/make-base.sh``). The container restarts unless stopped; its store, state, token and pinned verify key
live on a named volume, so a new image or container keeps the deployed models and the pin. When the fleet signs, the
fleet's public key goes into the volume (``verify-key.pub``, trust on first use, never overwritten) and the agent's
command gets ``--verify-key-file``, as on every other target.

Any architecture: the device's platform is ``transport.platform`` or else the engine's own (``docker info``), so one
engine can run an amd64 and an arm64 device side by side (the other one under qemu-user-static emulation). The image
is built FROM a base of that platform (``edgectl-base:debian12`` for amd64, ``edgectl-base:debian12-arm64`` for
arm64; ``make-base.sh --platform``), whose platform facts (libc, Python) are probed by running it once; the
wheelhouse for those facts (edgectl.agents.wheelhouse: binary wheels for the target, llama-cpp-python cross-built)
is installed inside by pip under emulation, which measured ~1 minute for the agent with llama on a 2-core machine.
The image is labelled with its platform, wheelhouse key and base image id, and reused while the agent version and
code, the platform and the base are the same. Its extras (tag and label) include ``fast-http`` (httptools, uvloop):
both platforms' Debian 12 bases have their wheels (wheelhouse.base_extras; a base that has not is refused).

The container's own spec (command, volume, ports, GPUs, shared memory, vLLM's venv) is
edgectl.agents.install_docker_spec; ``transport.gpus`` on an engine without the NVIDIA runtime fails before any
image is built. A device that runs vLLM gets its agent image FROM the vLLM base (``/opt/vllm-venv`` on the base with
g++, ``make-base.sh --compiler``: vLLM's CPU build compiles its model; edgectl.agents.install_docker_vllm); the user's
own ``transport.image`` is used as it is.

Over 500 lines: the installer's steps (base, vLLM base, image, container, pinned key) read best in one class, and
its pure pieces are above it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Sequence

from edgectl_agent import __version__ as AGENT_VERSION

from edgectl.agents.install_venv import SIGN_EXTRA, base_extras, build_wheelhouse, extras_for
from edgectl.agents.install_docker_spec import (  # agent_args: re-exported, its callers import it from here
    LABEL_CONTROL,
    LABEL_DEVICE,
    LABEL_PLATFORM,
    LABEL_RESOURCES,
    LABEL_VERIFY_KEY,
    NVIDIA_FIX,
    VLLM_RUNTIME,
    agent_args,  # noqa: F401
    control_label,
    missing_gpu_runtime,
    resources_label,
    run_options,
    volume_name,
)
from edgectl.agents.install_docker_vllm import (
    LABEL_VLLM_BASE,
    build_vllm_base,
    ensure_vllm_wheelhouse,
    vllm_base_key,
    vllm_base_tag,
    vllm_requirements,
)
from edgectl.agents.installer import VERIFY_KEY_FILE, Installer
from edgectl.agents.platform import PLATFORM_SCRIPT, PlatformProbeError, TargetPlatform, normalise_arch, parse_platform
from edgectl.errors import EdgectlError, TransportError
from edgectl.spec import Device
from edgectl.spec.fleet import DOCKER_ARCHES
from edgectl.transport.docker import AGENT_ROOT, DockerTransport, _docker, host_port

BUILD_TIMEOUT_S = 900
LABEL_VERSION = "dev.edgectl.agent-version"
LABEL_EXTRAS = "dev.edgectl.agent-extras"
LABEL_SOURCE = "dev.edgectl.agent-source"
LABEL_WHEELHOUSE = "dev.edgectl.wheelhouse"  # the wheelhouse's key (agent version + target platform tag)
LABEL_BASE = "dev.edgectl.base-image"  # the id of the base image it was built FROM
NATIVE_IMAGE_PLATFORM = "linux/amd64"  # its agent image and base keep the names they had before other platforms
BASE_IMAGE = "edgectl-base:debian12"
# What a base image is (make-base.sh's, or transport.base_image: "a Debian 12 image with python3 and venv"): the
# image's extras are chosen for it before the base is run; build_image checks the real one against it.
BASE_LIBC, BASE_PYTHON = ("glibc", "2.36"), "3.11"
VERIFY_KEY_PATH = f"{AGENT_ROOT}/{VERIFY_KEY_FILE}"  # on the volume


# -- pure pieces (unit-tested) -----------------------------------------------------------------------------------
def default_image(extras: Sequence[str], platform: str = NATIVE_IMAGE_PLATFORM) -> str:
    """The agent image's tag: one per agent version, set of runtime extras and platform (amd64's has no suffix).
    One with the ``vllm`` extra is built FROM the vLLM base."""
    return f"edgectl-agent:{AGENT_VERSION}-{'-'.join(sorted(extras)) or 'base'}{platform_suffix(platform)}"


def default_base_image(platform: str) -> str:
    """The base image's tag for ``platform``: what ``make-base.sh --platform PLATFORM`` imports."""
    return BASE_IMAGE + platform_suffix(platform)


def compiler_base_image(platform: str) -> str:
    """The base with g++ the vLLM base is built FROM: what ``make-base.sh --platform PLATFORM --compiler`` makes."""
    return default_base_image(platform) + "-cxx"


def platform_suffix(platform: str) -> str:
    return "" if platform == NATIVE_IMAGE_PLATFORM else "-" + platform.rpartition("/")[2]


def docker_platform(os_name: str, machine: str) -> str:
    """Docker's name of a platform: ``linux/arm64`` for (linux, aarch64 or arm64), ``linux/amd64`` for x86_64."""
    arch = normalise_arch(machine)
    return f"{os_name.lower() or 'linux'}/{DOCKER_ARCHES.get(arch, arch)}"


def engine_platform_of(engine_info: dict[str, Any]) -> str:
    """An engine's own platform from ``docker info`` (OSType, Architecture)."""
    return docker_platform(engine_info.get("OSType") or "linux", engine_info.get("Architecture") or "")


def device_platform(device: Device, engine_info: dict[str, Any]) -> str:
    """The platform the device's agent runs on: ``transport.platform``, else the engine's own architecture."""
    return device.transport.platform or engine_platform_of(engine_info)


def image_platform(attrs: dict[str, Any]) -> str:
    """An image's platform from ``docker image inspect`` (Os, Architecture)."""
    return docker_platform(attrs.get("Os") or "linux", attrs.get("Architecture") or "")


def base_platform(platform: str) -> TargetPlatform:
    """The platform an agent image of Docker ``platform`` (linux/amd64, linux/arm64) runs on: a Debian 12 base."""
    os_name, _, arch = platform.partition("/")
    return TargetPlatform(os=os_name, arch=normalise_arch(arch), libc=BASE_LIBC[0], libc_version=BASE_LIBC[1],
                          python=BASE_PYTHON)


def build_args(base_image: str, extras: Sequence[str]) -> dict[str, str]:
    return {"BASE": base_image, "EXTRAS": ",".join(sorted(extras)), "AGENT_VERSION": AGENT_VERSION}


def dockerfile_folder() -> Path:
    """deploy/docker of a source checkout, or the copy shipped inside the edgectl wheel."""
    import edgectl

    here = Path(edgectl.__file__).resolve().parent
    for folder in (here.parent / "deploy" / "docker", here / "docker"):
        if (folder / "Dockerfile").is_file():
            return folder
    raise TransportError("the agent's Dockerfile is not installed with edgectl",
                         hint="run edgectl from a source checkout (deploy/docker/Dockerfile), or reinstall edgectl")


def agent_source_digest() -> str:
    """sha256 over the agent package's files (names and bytes): an image or container built from other agent code
    is rebuilt / replaced even though the version number did not change (a source checkout moves between releases)."""
    import edgectl_agent

    root = Path(edgectl_agent.__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                       and p.suffix != ".pyc"):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def key_archive(verify_key: bytes) -> bytes:
    """A tar holding only ``verify-key.pub`` (mode 0644), for put_archive into the agent's root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(VERIFY_KEY_FILE)
        info.size, info.mode = len(verify_key), 0o644
        tar.addfile(info, io.BytesIO(verify_key))
    return buf.getvalue()


# -- the installer ------------------------------------------------------------------------------------------------
class DockerInstaller(Installer):
    restarts_by_itself: ClassVar[bool] = True  # the restart policy brings a killed agent back

    transport: DockerTransport

    def __init__(self, transport: DockerTransport, *, verify_key: bytes | None = None) -> None:
        super().__init__(transport, verify_key=verify_key)
        self._container = None  # the container install() made ready, start() starts
        self._engine_platform: str | None = None

    @property
    def device(self) -> Device:
        return self.transport.device

    @property
    def spec(self):
        return self.transport.spec

    @property
    def container_name(self) -> str:
        return self.transport.container_name

    def engine(self):
        return self.transport.engine()

    @property
    def engine_platform(self) -> str:
        """The engine's own platform (``docker info``: its OS and architecture)."""
        if self._engine_platform is None:
            docker = _docker()
            try:
                info = self.engine().info()
            except docker.errors.DockerException as e:
                raise TransportError(f"device '{self.name}': cannot read {self.transport.where}'s architecture "
                                     f"(docker info): {e}", hint="check the engine's health (docker info)") from e
            self._engine_platform = engine_platform_of(info)
        return self._engine_platform

    @property
    def platform(self) -> str:
        """The device's platform (``linux/arm64``...): transport.platform, else the engine's own."""
        return self.spec.platform or self.engine_platform

    def platform_matches(self, labelled: str | None) -> bool:
        """Whether a container labelled with platform ``labelled`` runs on the device's. One without the label
        runs on the engine's own (edgectl made no other before it knew platforms)."""
        if labelled is None and self.spec.platform is None:
            return True
        return (labelled or self.engine_platform) == self.platform

    @property
    def base_image(self) -> str:
        return self.spec.base_image or default_base_image(self.platform)

    def token(self) -> str | None:
        c = self.transport.container()
        if c is None or c.status != "running":
            return None
        r = self.transport.run(["cat", f"{AGENT_ROOT}/token"])
        return (r.stdout.strip() or None) if r.returncode == 0 else None

    def not_ours(self, health: dict) -> EdgectlError:
        return TransportError(f"device '{self.name}': 127.0.0.1:{host_port(self.device)} on the engine host is "
                              f"answered (it says {health}), but not by a running container {self.container_name} "
                              "with an agent token",
                              hint="stop the process or container using that port, or set transport.host_port (or "
                                   "agent.port) to another one; `docker ps -a` shows the containers")

    def extras(self, runtimes: list[str], *, sign: bool) -> list[str]:
        """The image's edgectl-agent extras: the runtimes', its platform's base extras (fast-http: glibc bases on
        amd64 and arm64) and, for a pinned agent, the one that verifies."""
        return sorted(set(extras_for(runtimes)) | set(base_extras(base_platform(self.platform)))
                      | ({SIGN_EXTRA} if sign else set()))

    def current(self, runtimes: list[str]) -> bool:
        c = self.transport.container()
        return c is not None and self.fits(c, self.extras(runtimes, sign=self.verify_key is not None),
                                           runtimes=runtimes)

    def install(self, runtimes: list[str]) -> None:
        self.check_gpu_runtime()
        extras = self.extras(runtimes, sign=self.verify_key is not None)
        container = self.transport.container()
        if container is not None and self.fits(container, extras, runtimes=runtimes):
            self._container = container
            return
        vllm = VLLM_RUNTIME in runtimes
        image = self.ensure_image(extras, vllm=vllm)
        if container is not None:  # another agent version, runtimes, GPUs or unpinned: replace it, the volume stays
            self._remove(container)
        self._container = self._create(image, pinned=self.verify_key is not None, runtimes=runtimes)
        if self.verify_key is not None:
            if not self._has(self._container, VERIFY_KEY_PATH):  # trust on first use: never overwritten
                self._put_key(self._container, self.verify_key)
        elif self._has(self._container, VERIFY_KEY_PATH):  # pinned earlier: it stays pinned
            self._remove(self._container)
            self._container = self._create(self.ensure_image(self.extras(runtimes, sign=True), vllm=vllm),
                                           pinned=True, runtimes=runtimes)

    def check_gpu_runtime(self) -> None:
        """``transport.gpus`` on an engine without the NVIDIA container runtime: refused before anything is built."""
        if self.spec.gpus is None:
            return
        docker = _docker()
        try:
            info = self.engine().info()
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': cannot read {self.transport.where}'s runtimes (docker "
                                 f"info): {e}", hint="check the engine's health (docker info)") from e
        why = missing_gpu_runtime(self.device, info)
        if why:
            raise TransportError(f"device '{self.name}' on {self.transport.where}: {why}", hint=NVIDIA_FIX)

    def start(self) -> None:
        docker = _docker()
        try:
            self._container.start()
        except docker.errors.APIError as e:
            text = str(e)
            if "port is already allocated" in text or "address already in use" in text:
                self._remove_quietly()
                raise TransportError(f"device '{self.name}': 127.0.0.1:{host_port(self.device)} on the engine host "
                                     "is taken", hint="free that port, or set transport.host_port (or agent.port) to "
                                     "another one") from e
            raise TransportError(f"device '{self.name}': starting container {self.container_name} failed: {e}",
                                 hint=f"see `docker logs {self.container_name}`; `docker ps -a` shows a conflicting "
                                      "container") from e
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': starting container {self.container_name} failed: {e}",
                                 hint=f"see `docker logs {self.container_name}`") from e

    def running(self) -> bool:
        self._container.reload()
        return self._container.status not in ("exited", "dead")

    def stop(self) -> bool:
        docker = _docker()
        c = self.transport.container()
        if c is None or c.status != "running":
            return False
        try:
            c.stop()
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': stopping container {self.container_name} failed: {e}",
                                 hint=f"stop it by hand: docker stop {self.container_name}") from e
        return True

    def start_failed(self) -> EdgectlError:
        c = self._container
        logs = c.logs(tail=20).decode(errors="replace").strip() if c is not None else ""
        return TransportError(f"device '{self.name}': the agent in container {self.container_name} did not start "
                              f"(status {c.status if c is not None else 'missing'}):\n{logs or '(no output)'}",
                              hint=f"see `docker logs {self.container_name}`")

    def fits(self, container, extras: list[str], *, runtimes: Sequence[str] = ()) -> bool:
        """The container was made for this device and control mode with the GPUs, shared memory and vLLM venv
        ``runtimes`` need, from the image it should run: the user's ``image`` as given, else ours for this agent
        version and code with every needed runtime extra."""
        labels = container.labels or {}
        if labels.get(LABEL_DEVICE) != self.name or labels.get(LABEL_CONTROL) != control_label(self.device):
            return False
        if labels.get(LABEL_RESOURCES, "") != resources_label(self.device, runtimes):
            return False  # made with other GPUs, shm size or vLLM venv: replaced
        if not self.platform_matches(labels.get(LABEL_PLATFORM)):
            return False  # made for another platform: replaced
        if self.verify_key is not None and not labels.get(LABEL_VERIFY_KEY):
            return False  # running unverified while the fleet signs: replaced by a pinned one
        if self.spec.image is not None:
            return container.attrs["Config"]["Image"] == self.spec.image
        if VLLM_RUNTIME in runtimes and not labels.get(LABEL_VLLM_BASE):
            return False  # its image has no vLLM venv: replaced by one built FROM the vLLM base
        have = set(filter(None, labels.get(LABEL_EXTRAS, "").split(",")))
        return (labels.get(LABEL_VERSION) == AGENT_VERSION and set(extras) <= have
                and labels.get(LABEL_SOURCE) == agent_source_digest())

    def ensure_image(self, extras: list[str], *, vllm: bool = False) -> str:
        """The agent image for ``extras`` on the engine, built from the Dockerfile when missing: reused while it
        was built for this agent version and code, this platform and the current base image; with ``vllm`` FROM
        the vLLM base (made first when missing)."""
        docker = _docker()
        tag = self.spec.image or default_image(extras, self.platform)
        client = self.engine()
        try:
            found = client.images.get(tag)
        except docker.errors.ImageNotFound:
            found = None
        if found is not None and self.spec.image is not None:  # a tag the user named is theirs as it is
            if image_platform(found.attrs) != self.platform:
                raise TransportError(f"device '{self.name}': image {tag} is {image_platform(found.attrs)}, the "
                                     f"device runs {self.platform}",
                                     hint="give transport.image an agent image of that platform, or set "
                                          "transport.platform to the image's")
            return tag
        base_tag = self.ensure_vllm_base() if vllm else self.base_image
        if found is not None and self._image_fits(found.labels or {}, base_tag):
            return tag
        self.build_image(tag, extras, base_tag)
        return tag

    def ensure_vllm_base(self) -> str:
        """The vLLM base image's tag on the engine (the base with g++, or ``transport.base_image``, plus vLLM's
        venv), built when the engine lacks it: its tag carries its content key, so it is reused while the base's
        layers, vLLM's requirements and Dockerfile.vllm stay."""
        docker = _docker()
        client = self.engine()
        base_tag = self.spec.base_image or compiler_base_image(self.platform)
        base = self._base(base_tag, self.platform, make_option="--compiler ")
        requirements = vllm_requirements()
        dockerfile = dockerfile_folder() / "Dockerfile.vllm"
        key = vllm_base_key(requirements, (base.attrs.get("RootFS") or {}).get("Layers") or [base.id],
                            dockerfile.read_bytes())
        tag = vllm_base_tag(base_tag, key)
        try:
            client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        house = ensure_vllm_wheelhouse(requirements, self.probe_base(base), device=self.name)
        build_vllm_base(client, base, tag, key, house, requirements, platform=self.platform, device=self.name,
                        dockerfile=dockerfile)
        return tag

    def _image_fits(self, labels: dict[str, str], base_tag: str) -> bool:
        docker = _docker()
        try:
            base_id = self.engine().images.get(base_tag).id
        except docker.errors.ImageNotFound:
            base_id = labels.get(LABEL_BASE)  # the base was removed: the image built from it still fits
        return (labels.get(LABEL_SOURCE) == agent_source_digest() and labels.get(LABEL_VERSION) == AGENT_VERSION
                and labels.get(LABEL_PLATFORM) == self.platform and labels.get(LABEL_BASE) == base_id)

    def probe_base(self, base) -> TargetPlatform:
        """The base image's platform facts (libc, Python), read by running its python3 once (under emulation for
        another architecture): the wheelhouse is built for exactly those."""
        docker = _docker()
        client = self.engine()
        try:
            out = client.containers.run(base.id, ["python3", "-c", PLATFORM_SCRIPT], platform=self.platform,
                                        network_mode="none", remove=True, stdout=True, stderr=True,
                                        labels={LABEL_DEVICE: self.name})
        except docker.errors.ContainerError as e:
            text = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else str(e.stderr)
            raise self._cannot_run(base, text or str(e)) from e
        except docker.errors.APIError as e:
            raise self._cannot_run(base, str(e)) from e
        try:
            return parse_platform(out.decode(errors="replace"))
        except PlatformProbeError as e:
            raise TransportError(f"device '{self.name}': the base image {self.base_image} did not say which platform "
                                 f"it runs on: {e}", hint="the base image needs python3 (Debian 12: make-base.sh)") \
                from e

    def _cannot_run(self, base, text: str) -> TransportError:
        if "exec format error" in text:
            return TransportError(f"device '{self.name}': {self.transport.where} cannot run {self.platform} "
                                  f"containers (exec format error running the base image {self.base_image})",
                                  hint="on the engine's host register qemu-user-static in binfmt_misc with the "
                                       "fix-binary flag (Debian: apt-get install qemu-user-static, then restart "
                                       "dockerd), or remove transport.platform to use the engine's own "
                                       "architecture")
        return TransportError(f"device '{self.name}': running python3 in the base image {self.base_image} failed: "
                              f"{text.strip()[-1000:]}",
                              hint="the base image needs python3 with venv (Debian 12: deploy/docker/make-base.sh)")

    def _base(self, base_tag: str, platform: str, *, make_option: str = ""):
        """The base image ``base_tag`` of ``platform`` on the engine, or the error saying how to make it
        (``make-base.sh [make_option]``)."""
        docker = _docker()
        client = self.engine()
        try:
            base = client.images.get(base_tag)
        except docker.errors.ImageNotFound as e:
            option = ("" if platform == NATIVE_IMAGE_PLATFORM else f"--platform {platform} ") + make_option
            raise TransportError(f"device '{self.name}': base image {base_tag} is not on {self.transport.where} "
                                 f"(a {platform} image is needed)",
                                 hint="make it offline from a Debian mirror: deploy/docker/make-base.sh "
                                      f"{option}{base_tag} (with DOCKER_HOST set to that engine), or set "
                                      f"transport.base_image to a Debian 12 {platform} image with python3 and "
                                      "venv") from e
        if image_platform(base.attrs) != platform:
            raise TransportError(f"device '{self.name}': base image {base_tag} is {image_platform(base.attrs)}, the "
                                 f"device runs {platform}",
                                 hint=f"make a {platform} base: deploy/docker/make-base.sh --platform {platform} "
                                      "TAG, and set transport.base_image to TAG (or leave it unset)")
        return base

    def build_image(self, tag: str, extras: list[str], base_tag: str | None = None) -> None:
        """docker build of deploy/docker/Dockerfile FROM ``base_tag`` (default: the device's base image) with this
        machine's wheelhouse as the context."""
        docker = _docker()
        client = self.engine()
        platform = self.platform
        base = self._base(base_tag or self.base_image, platform)
        target = self.probe_base(base)
        lacking = sorted(set(extras) & set(base_extras(base_platform(platform))) - set(base_extras(target)))
        if lacking:
            raise TransportError(f"device '{self.name}': the base image {base_tag or self.base_image} runs {target}, "
                                 f"where the package index has no wheels of the agent's extra {', '.join(lacking)} "
                                 "(httptools, uvloop)",
                                 hint="use a Debian 12 base (deploy/docker/make-base.sh), or unset "
                                      "transport.base_image")
        house = build_wheelhouse(extras, target)
        with tempfile.TemporaryDirectory(prefix="edgectl-docker-") as tmp:
            context = Path(tmp)
            shutil.copy(dockerfile_folder() / "Dockerfile", context / "Dockerfile")
            (context / "wheels").mkdir()
            for wheel in house.glob("*.whl"):
                shutil.copy(wheel, context / "wheels" / wheel.name)
            labels = {LABEL_VERSION: AGENT_VERSION, LABEL_EXTRAS: ",".join(sorted(extras)),
                      LABEL_SOURCE: agent_source_digest(), LABEL_PLATFORM: platform,
                      LABEL_WHEELHOUSE: house.name, LABEL_BASE: base.id,
                      LABEL_VLLM_BASE: (base.labels or {}).get(LABEL_VLLM_BASE, "")}
            try:
                # FROM the base's id: a tag names one platform's image only, the id cannot be mistaken
                client.images.build(path=str(context), tag=tag, buildargs=build_args(base.id, extras),
                                    labels=labels, rm=True, forcerm=True, pull=False, timeout=BUILD_TIMEOUT_S,
                                    platform=platform)
            except docker.errors.BuildError as e:
                log = "".join(str(x.get("stream") or x.get("error") or "") for x in e.build_log)[-2000:]
                raise TransportError(f"device '{self.name}': building the agent image {tag} failed: {e.msg}\n{log}",
                                     hint="the base image needs python3 with venv (Debian 12: make-base.sh)") from e
            except docker.errors.DockerException as e:
                raise TransportError(f"device '{self.name}': building the agent image {tag} failed: {e}",
                                     hint="check the engine's disk space and logs") from e

    def _create(self, image: str, *, pinned: bool, runtimes: Sequence[str] = ()):
        """The device's container, created (not started) from ``image`` on its volume, for ``runtimes``."""
        docker = _docker()
        client = self.engine()
        volume = volume_name(self.device)
        options = run_options(self.device, image, verify_key_file=VERIFY_KEY_PATH if pinned else None,
                              platform=self.platform, runtimes=runtimes)
        labels = client.images.get(image).labels or {}
        options["labels"].update({k: labels.get(k, "") for k in (LABEL_VERSION, LABEL_EXTRAS, LABEL_SOURCE,
                                                                 LABEL_VLLM_BASE)})
        try:
            try:
                client.volumes.get(volume)
            except docker.errors.NotFound:
                client.volumes.create(volume, labels={LABEL_DEVICE: self.name})
            return client.containers.create(**options)
        except docker.errors.APIError as e:
            raise TransportError(f"device '{self.name}': creating container {self.container_name} failed: {e}",
                                 hint="see the engine's log; `docker ps -a` shows a conflicting container") from e

    def _has(self, container, path: str) -> bool:
        """Whether ``path`` exists in the container (its volume included), running or not."""
        docker = _docker()
        try:
            stream, _ = container.get_archive(path)
            for _chunk in stream:
                pass
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': looking for {path} in {self.container_name} failed: {e}",
                                 hint="retry; check the engine's health (docker info)") from e

    def _put_key(self, container, verify_key: bytes) -> None:
        """The fleet's public key into the agent's root on the volume (before the agent first starts there)."""
        docker = _docker()
        try:
            if not container.put_archive(AGENT_ROOT, key_archive(verify_key)):
                raise TransportError(f"device '{self.name}': the engine refused to write {VERIFY_KEY_PATH}",
                                     hint="check the engine host's disk space")
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': writing {VERIFY_KEY_PATH} into {self.container_name} "
                                 f"failed: {e}", hint="retry; check the engine host's disk") from e

    def _remove(self, container) -> None:
        docker = _docker()
        try:
            container.remove(force=True)
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': removing the old container {self.container_name} failed: {e}",
                                 hint=f"remove it by hand: docker rm -f {self.container_name}") from e

    def _remove_quietly(self) -> None:
        c = self.transport.container()
        if c is not None:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - cleanup after an error that is already being reported
                pass

    def remove(self, *, volume: bool = False) -> None:
        """Remove the agent container (and with ``volume``, its store): the device's agent is gone."""
        docker = _docker()
        c = self.transport.container()
        if c is not None:
            self._remove(c)
        if volume:
            try:
                self.engine().volumes.get(volume_name(self.device)).remove(force=True)
            except docker.errors.NotFound:
                pass

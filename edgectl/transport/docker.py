"""Docker transport (docker SDK): the agent runs in a container on a Docker engine (local socket, ssh://, TLS tcp://).

The agent image is built from ``deploy/docker/Dockerfile`` with the wheelhouse edgectl builds (the same wheels the SSH
bootstrap pushes), FROM a base image given as a build argument, so it builds offline from a locally made base
(``deploy/docker/make-base.sh``). The container restarts unless stopped; its store, state and token live on a named
volume, so a new image or container keeps the deployed models. edgectl reaches the agent either on a port published on
the engine host's 127.0.0.1 only, or through ``docker exec``: each HTTP connection is a small relay process in the
container talking to the agent's loopback. Never through a bridge IP.
"""

from __future__ import annotations

import hashlib
import io
import platform
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpcore
import httpx
from edgectl_agent import __version__ as AGENT_VERSION
from edgectl_agent.api import Facts

from edgectl.agent_client import AgentClient
from edgectl.errors import TransportError, require_module
from edgectl.spec import Device
from edgectl.transport.base import Transport

if TYPE_CHECKING:
    import docker

AGENT_ROOT = "/var/lib/edgectl-agent"
AGENT_PORT = 8088  # inside the container
AGENT_PYTHON = "/opt/edgectl-agent/bin/python"
START_TIMEOUT_S = 60.0
BUILD_TIMEOUT_S = 900
LABEL_DEVICE = "dev.edgectl.device"
LABEL_VERSION = "dev.edgectl.agent-version"
LABEL_EXTRAS = "dev.edgectl.agent-extras"
LABEL_CONTROL = "dev.edgectl.control"
LABEL_SOURCE = "dev.edgectl.agent-source"
RESTART_POLICY = {"Name": "unless-stopped"}

# Runs inside the container for control 'exec': stdin/stdout <-> the agent's loopback port, one TCP connection.
RELAY_SCRIPT = (
    "import os, socket, sys, threading\n"
    "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
    "def up():\n"
    "    while b := os.read(0, 65536):\n"
    "        s.sendall(b)\n"
    "    s.shutdown(socket.SHUT_WR)\n"
    "threading.Thread(target=up, daemon=True).start()\n"
    "while b := s.recv(65536):\n"
    "    os.write(1, b)\n")


# -- pure pieces (unit-tested) -----------------------------------------------------------------------------------
def default_image(extras: Sequence[str]) -> str:
    """The agent image's tag: one per agent version and set of runtime extras."""
    return f"edgectl-agent:{AGENT_VERSION}-{'-'.join(sorted(extras)) or 'base'}"


def container_name(device: Device) -> str:
    return device.transport.container or f"edgectl-agent-{device.name}"


def volume_name(device: Device) -> str:
    return device.transport.volume or f"edgectl-agent-{device.name}"


def host_port(device: Device) -> int:
    return device.transport.host_port or device.agent.port


def agent_args(control: str) -> list[str]:
    """Arguments after the image's ENTRYPOINT (``edgectl_agent serve --root ...``)."""
    if control == "port":  # Docker's port publishing reaches the container's interface, not its loopback
        return ["--host", "0.0.0.0", "--allow-remote", "--port", str(AGENT_PORT)]
    return ["--host", "127.0.0.1", "--port", str(AGENT_PORT)]


def control_label(device: Device) -> str:
    """How the container is reached; a container made for another control mode or port is replaced."""
    spec = device.transport
    return f"port:{host_port(device)}" if spec.control == "port" else "exec"


def run_options(device: Device, image: str) -> dict[str, Any]:
    """Keyword arguments of ``containers.run`` for the device's agent container."""
    spec = device.transport
    options: dict[str, Any] = {
        "image": image, "command": agent_args(spec.control), "name": container_name(device), "detach": True,
        "volumes": {volume_name(device): {"bind": AGENT_ROOT, "mode": "rw"}},
        "restart_policy": dict(RESTART_POLICY),
        "labels": {LABEL_DEVICE: device.name, LABEL_CONTROL: control_label(device)},
    }
    if spec.control == "port":
        options["ports"] = {f"{AGENT_PORT}/tcp": ("127.0.0.1", host_port(device))}
    else:  # reached only through docker exec: the container needs no network at all (it serves offline)
        options["network_mode"] = "none"
    return options


def build_args(base_image: str, extras: Sequence[str]) -> dict[str, str]:
    return {"BASE": base_image, "EXTRAS": ",".join(sorted(extras)), "AGENT_VERSION": AGENT_VERSION}


def client_kwargs(engine: str | None, tls_cert_path: str | None) -> dict[str, Any] | None:
    """How to build the docker client: None means docker's own environment ($DOCKER_HOST, else the local socket)."""
    if engine is None:
        return None
    kwargs: dict[str, Any] = {"base_url": engine}
    if engine.startswith("ssh://"):
        kwargs["use_ssh_client"] = False  # paramiko, host keys checked against ~/.ssh/known_hosts (RejectPolicy)
    if engine.startswith("tcp://"):
        folder = Path(tls_cert_path or "").expanduser()
        kwargs["tls"] = {"ca_cert": str(folder / "ca.pem"),
                         "client_cert": (str(folder / "cert.pem"), str(folder / "key.pem")), "verify": True}
    return kwargs


def _tls_engine_client(docker, kwargs: dict[str, Any]) -> "docker.DockerClient":
    """A client of a TLS engine that trusts the engine's ca.pem only. requests replaces a session's CA with
    $REQUESTS_CA_BUNDLE / $CURL_CA_BUNDLE whenever one is set (psf/requests#3829), which refuses every private
    engine CA; the session stops reading the environment before its first request (the version query)."""

    class EngineApi(docker.APIClient):
        def _retrieve_server_version(self):
            self.trust_env = False
            return super()._retrieve_server_version()

    client = docker.DockerClient.__new__(docker.DockerClient)
    client.api = EngineApi(**kwargs)
    client.api.trust_env = False
    return client


def dockerfile_folder() -> Path:
    """deploy/docker of a source checkout, or the copy shipped inside the edgectl wheel."""
    import edgectl

    here = Path(edgectl.__file__).resolve().parent
    for folder in (here.parent / "deploy" / "docker", here / "docker"):
        if (folder / "Dockerfile").is_file():
            return folder
    raise TransportError("the agent's Dockerfile is not installed with edgectl",
                         hint="run edgectl from a source checkout (deploy/docker/Dockerfile), or reinstall edgectl")


def timed_argv(argv: Sequence[str], timeout: float) -> list[str]:
    """argv under coreutils ``timeout`` (the Docker exec API has none): TERM at the limit, KILL 5 s later."""
    if isinstance(argv, str):
        raise TypeError("argv must be a list of arguments, not a shell string")
    if not argv:
        raise ValueError("argv is empty")
    return ["timeout", "-k", "5", f"{max(1, int(timeout))}", *argv]


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


def _docker():
    return require_module("docker", "docker")


# -- HTTP over docker exec ----------------------------------------------------------------------------------------
class ExecStream(httpcore.NetworkStream):
    """One relay process's stdin/stdout. Docker multiplexes its output (tty off) into frames: an 8-byte header
    (stream type, 3 zero bytes, big-endian length), then the payload; stderr frames are kept for error messages."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._raw = getattr(sock, "_sock", sock)  # SocketIO (unix) -> its socket; paramiko channels as they are
        self._buffer = b""
        self.stderr = b""

    def _recv_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self._raw.recv(n - len(data))
            if not chunk:
                return data
            data += chunk
        return data

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self._raw.settimeout(timeout)
        try:
            while not self._buffer:
                header = self._recv_exact(8)
                if len(header) < 8:
                    return b""
                size = int.from_bytes(header[4:8], "big")
                payload = self._recv_exact(size)
                if header[0] == 2:
                    self.stderr += payload
                else:
                    self._buffer += payload
            out, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
            return out
        except TimeoutError as e:
            raise httpcore.ReadTimeout(str(e) or "read timed out") from e
        except OSError as e:
            raise httpcore.ReadError(str(e)) from e

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._raw.settimeout(timeout)
        try:
            self._raw.sendall(buffer)
        except TimeoutError as e:
            raise httpcore.WriteTimeout(str(e) or "write timed out") from e
        except OSError as e:
            raise httpcore.WriteError(str(e)) from e

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            close = getattr(self._sock, "close", None)
            if close is not None and self._sock is not self._raw:
                close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("TLS is not used on the agent's loopback")

    def get_extra_info(self, info: str) -> Any:
        return None


class ExecBackend(httpcore.NetworkBackend):
    """Each "TCP connection" is a relay process started with ``docker exec`` in the agent's container."""

    def __init__(self, transport: DockerTransport) -> None:
        self._t = transport

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        docker = _docker()
        try:
            api = self._t.engine().api
            exec_id = api.exec_create(container_name(self._t.device), [AGENT_PYTHON, "-c", RELAY_SCRIPT, str(port)],
                                      stdin=True, stdout=True, stderr=True, tty=False)["Id"]
            return ExecStream(api.exec_start(exec_id, socket=True))
        except docker.errors.DockerException as e:
            raise httpcore.ConnectError(f"docker exec into {container_name(self._t.device)} failed: {e}") from e

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not reachable through this transport")


class ExecTransport(httpx.HTTPTransport):
    """httpx's own transport (exception mapping, keep-alive pool) over ExecBackend."""

    def __init__(self, transport: DockerTransport) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(network_backend=ExecBackend(transport), max_connections=10,
                                             max_keepalive_connections=4, keepalive_expiry=30.0)


# -- the transport -----------------------------------------------------------------------------------------------
class DockerTransport(Transport):
    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.spec = device.transport
        self._engine: docker.DockerClient | None = None

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def container_name(self) -> str:
        return container_name(self.device)

    @property
    def where(self) -> str:
        return self.spec.engine or "the local Docker engine"

    @property
    def base_url(self) -> str:
        if self.spec.control == "port":
            return f"http://127.0.0.1:{host_port(self.device)}"
        return f"http://127.0.0.1:{AGENT_PORT}"  # as the container sees it; reached through docker exec

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/v1"

    # -- engine ----------------------------------------------------------------------------------------------
    def engine(self) -> docker.DockerClient:
        """The docker client (connected once); an unreachable engine is a TransportError with a hint."""
        if self._engine is not None:
            return self._engine
        docker = _docker()
        kwargs = client_kwargs(self.spec.engine, self.spec.tls_cert_path)
        try:
            if kwargs is None:
                client = docker.from_env()
            else:
                if "tls" in kwargs:
                    kwargs["tls"] = docker.tls.TLSConfig(**kwargs["tls"])
                    client = _tls_engine_client(docker, kwargs)
                else:
                    client = docker.DockerClient(**kwargs)
            client.ping()
        except docker.errors.TLSParameterError as e:
            raise TransportError(f"device '{self.name}': TLS settings for {self.where} are unusable: {e}",
                                 hint="transport.tls_cert_path must hold ca.pem, cert.pem and key.pem") from e
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': cannot reach the Docker engine at {self.where}: {e}",
                                 hint="check that dockerd runs there and transport.engine (or $DOCKER_HOST) points "
                                      "at it, and that this user may use its socket") from e
        self._engine = client
        return client

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def _container(self):
        docker = _docker()
        try:
            return self.engine().containers.get(self.container_name)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': cannot inspect container {self.container_name}: {e}",
                                 hint="retry; check the engine's health (docker info)") from e

    def _running(self):
        c = self._container()
        if c is None:
            raise TransportError(f"device '{self.name}': container {self.container_name} does not exist",
                                 hint="run `edgectl apply` first: it creates the agent container")
        return c

    # -- dumb pipes -------------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run argv in the agent container (``docker exec``, no shell), stopped at ``timeout``."""
        docker = _docker()
        full = timed_argv(argv, timeout)
        try:
            code, (out, err) = self._running().exec_run(full, demux=True)
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': docker exec of {argv[0]} failed: {e}",
                                 hint=f"check that container {self.container_name} runs (docker ps)") from e
        if code == 124:
            raise subprocess.TimeoutExpired(list(argv), timeout, out, err)
        return subprocess.CompletedProcess(list(argv), code, (out or b"").decode(errors="replace"),
                                           (err or b"").decode(errors="replace"))

    def put_file(self, local: Path, remote: Path | str) -> None:
        """Copy into the container (a tar stream through the engine) as ``.part``; sha256 checked in the container
        before it takes its final name, so a partial file never appears there."""
        docker = _docker()
        remote = str(remote)
        folder, _, name = remote.rpartition("/")
        if not folder.startswith("/") or not name:
            raise TransportError(f"device '{self.name}': '{remote}' is not an absolute file path in the container",
                                 hint="give put_file an absolute path")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(str(local), arcname=name + ".part", recursive=False)
        container = self._running()
        self._check(["mkdir", "-p", folder], what="creating the target folder")
        try:
            if not container.put_archive(folder, buf.getvalue()):
                raise TransportError(f"device '{self.name}': the engine refused the copy of {local.name}",
                                     hint="check the container's disk space")
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': copying {local.name} into {self.container_name} failed: {e}",
                                 hint="retry; check the engine host's disk") from e
        part = remote + ".part"
        theirs = self._check(["sha256sum", part], what="hashing the copied file").split()[0]
        ours = _sha256_file(local)
        if theirs != ours:
            self.run(["rm", "-f", part])
            raise TransportError(f"device '{self.name}': {remote} arrived corrupted (sha256 {theirs}, expected "
                                 f"{ours}); the partial file was removed", hint="retry")
        self._check(["mv", "-f", part, remote], what="renaming the copied file")

    def _check(self, argv: Sequence[str], *, what: str, timeout: float = 60.0) -> str:
        r = self.run(argv, timeout=timeout)
        if r.returncode != 0:
            raise TransportError(f"device '{self.name}': {what} failed (exit {r.returncode}): "
                                 f"{(r.stderr or r.stdout).strip()[-1500:]}",
                                 hint=f"the command was: {list(argv)}")
        return r.stdout

    def facts_without_agent(self) -> Facts | None:
        return None  # the agent reports facts; without it the profile stands in

    # -- control ---------------------------------------------------------------------------------------------
    def http_transport(self) -> httpx.BaseTransport | None:
        return ExecTransport(self) if self.spec.control == "exec" else None

    def client(self, token: str) -> AgentClient:
        return AgentClient(self.base_url, token, device=self.name, transport=self.http_transport())

    def _health(self) -> dict | None:
        try:
            with httpx.Client(transport=self.http_transport(), timeout=5.0) as http:
                r = http.get(f"{self.base_url}/healthz")
                return r.json() if r.status_code == 200 else {"status": f"http {r.status_code}"}
        except (httpx.HTTPError, ValueError):
            return None

    def _token(self) -> str:
        r = self.run(["cat", f"{AGENT_ROOT}/token"])
        if r.returncode != 0 or not r.stdout.strip():
            raise TransportError(f"device '{self.name}': cannot read the agent token in {self.container_name}: "
                                 f"{r.stderr.strip()}", hint="the agent creates it at its first start; see "
                                 f"`docker logs {self.container_name}`")
        return r.stdout.strip()

    # -- agent lifecycle --------------------------------------------------------------------------------------
    def agent(self, *, start: bool, runtimes: Iterable[str] = ()) -> AgentClient | None:
        from edgectl.transport.bootstrap import extras_for

        container = self._container()
        if not start:
            if container is None or container.status != "running" or self._health() is None:
                return None
            return self.client(self._token())
        extras = extras_for(runtimes)
        if container is not None and self._fits(container, extras):
            if container.status != "running":
                self._start(container)
            return self._wait_ready(container)
        image = self.ensure_image(extras)
        if container is not None:  # another agent version or missing runtimes: replace it, the volume stays
            self._remove(container)
        return self._wait_ready(self._create(image))

    def _fits(self, container, extras: list[str]) -> bool:
        """The container was made for this device and control mode, from the image it should run: the user's
        ``image`` as given, else ours for this agent version and code with every needed runtime extra."""
        labels = container.labels or {}
        if labels.get(LABEL_DEVICE) != self.name or labels.get(LABEL_CONTROL) != control_label(self.device):
            return False
        if self.spec.image is not None:
            return container.attrs["Config"]["Image"] == self.spec.image
        have = set(filter(None, labels.get(LABEL_EXTRAS, "").split(",")))
        return (labels.get(LABEL_VERSION) == AGENT_VERSION and set(extras) <= have
                and labels.get(LABEL_SOURCE) == agent_source_digest())

    def ensure_image(self, extras: list[str]) -> str:
        """The agent image for ``extras`` on the engine, built from the Dockerfile when missing."""
        docker = _docker()
        tag = self.spec.image or default_image(extras)
        client = self.engine()
        try:
            found = client.images.get(tag)
            # a tag the user named is theirs as it is; ours is rebuilt when the agent's code changed
            if self.spec.image is not None or (found.labels or {}).get(LABEL_SOURCE) == agent_source_digest():
                return tag
        except docker.errors.ImageNotFound:
            pass
        self.build_image(tag, extras)
        return tag

    def build_image(self, tag: str, extras: list[str]) -> None:
        """docker build of deploy/docker/Dockerfile with this machine's wheelhouse as the context."""
        from edgectl.transport.bootstrap import build_wheelhouse

        docker = _docker()
        client = self.engine()
        try:
            client.images.get(self.spec.base_image)
        except docker.errors.ImageNotFound as e:
            raise TransportError(f"device '{self.name}': base image {self.spec.base_image} is not on {self.where}",
                                 hint="make it offline from a Debian mirror: deploy/docker/make-base.sh "
                                      f"{self.spec.base_image} (with DOCKER_HOST set to that engine), or set "
                                      "transport.base_image to a Debian 12 image with python3 and venv") from e
        arch = client.info().get("Architecture", "")
        if arch and arch != platform.machine():
            raise TransportError(f"device '{self.name}': the engine runs {arch}, this machine {platform.machine()}; "
                                 "the image is built from wheels made here",
                                 hint="run edgectl on a machine of the engine's architecture, or give "
                                      "transport.image an agent image built there")
        house = build_wheelhouse(extras)
        with tempfile.TemporaryDirectory(prefix="edgectl-docker-") as tmp:
            context = Path(tmp)
            shutil.copy(dockerfile_folder() / "Dockerfile", context / "Dockerfile")
            (context / "wheels").mkdir()
            for wheel in house.glob("*.whl"):
                shutil.copy(wheel, context / "wheels" / wheel.name)
            labels = {LABEL_VERSION: AGENT_VERSION, LABEL_EXTRAS: ",".join(sorted(extras)),
                      LABEL_SOURCE: agent_source_digest()}
            try:
                client.images.build(path=str(context), tag=tag, buildargs=build_args(self.spec.base_image, extras),
                                    labels=labels, rm=True, forcerm=True, pull=False, timeout=BUILD_TIMEOUT_S)
            except docker.errors.BuildError as e:
                log = "".join(str(x.get("stream") or x.get("error") or "") for x in e.build_log)[-2000:]
                raise TransportError(f"device '{self.name}': building the agent image {tag} failed: {e.msg}\n{log}",
                                     hint="the base image needs python3 with venv (Debian 12: make-base.sh)") from e
            except docker.errors.DockerException as e:
                raise TransportError(f"device '{self.name}': building the agent image {tag} failed: {e}",
                                     hint="check the engine's disk space and logs") from e

    def _create(self, image: str):
        docker = _docker()
        client = self.engine()
        volume = volume_name(self.device)
        options = run_options(self.device, image)
        labels = client.images.get(image).labels or {}
        options["labels"].update({k: labels.get(k, "") for k in (LABEL_VERSION, LABEL_EXTRAS, LABEL_SOURCE)})
        try:
            try:
                client.volumes.get(volume)
            except docker.errors.NotFound:
                client.volumes.create(volume, labels={LABEL_DEVICE: self.name})
            return client.containers.run(**options)
        except docker.errors.APIError as e:
            text = str(e)
            if "port is already allocated" in text or "address already in use" in text:
                self._remove_quietly()
                raise TransportError(f"device '{self.name}': 127.0.0.1:{host_port(self.device)} on the engine host "
                                     "is taken", hint="free that port, or set transport.host_port (or agent.port) to "
                                     "another one") from e
            raise TransportError(f"device '{self.name}': starting container {self.container_name} failed: {e}",
                                 hint="see the engine's log; `docker ps -a` shows a conflicting container") from e

    def _start(self, container) -> None:
        docker = _docker()
        try:
            container.start()
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': starting container {self.container_name} failed: {e}",
                                 hint=f"see `docker logs {self.container_name}`") from e

    def _remove(self, container) -> None:
        docker = _docker()
        try:
            container.remove(force=True)
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': removing the old container {self.container_name} failed: {e}",
                                 hint=f"remove it by hand: docker rm -f {self.container_name}") from e

    def _remove_quietly(self) -> None:
        c = self._container()
        if c is not None:
            try:
                c.remove(force=True)
            except Exception:  # noqa: BLE001 - cleanup after an error that is already being reported
                pass

    def _wait_ready(self, container) -> AgentClient:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            health = self._health()
            if health and health.get("status") == "ok":
                if health.get("version") != AGENT_VERSION:
                    raise TransportError(f"device '{self.name}': the container runs agent {health.get('version')}, "
                                         f"edgectl needs {AGENT_VERSION}",
                                         hint=f"remove it (docker rm -f {self.container_name}) and apply again")
                return self._recovered(self.client(self._token()), deadline)
            container.reload()
            if container.status in ("exited", "dead"):
                break
            time.sleep(0.2)
        logs = container.logs(tail=20).decode(errors="replace").strip()
        raise TransportError(f"device '{self.name}': the agent in container {self.container_name} did not start "
                             f"(status {container.status}):\n{logs or '(no output)'}",
                             hint=f"see `docker logs {self.container_name}`")

    def _recovered(self, client: AgentClient, deadline: float) -> AgentClient:
        """Wait until a (re)started agent has reloaded what its volume says it served: observed mid-recovery, a
        deployment reads 'loading' and the plan would activate it again for nothing."""
        while time.monotonic() < deadline:
            if not any(d.state == "loading" for d in client.state().deployments):
                return client
            time.sleep(0.2)
        client.close()
        raise TransportError(f"device '{self.name}': the agent in {self.container_name} is still reloading its "
                             f"deployments after {START_TIMEOUT_S:.0f} s",
                             hint=f"see `docker logs {self.container_name}`; apply again once it serves")

    def remove(self, *, volume: bool = False) -> None:
        """Remove the agent container (and with ``volume``, its store): the device's agent is gone."""
        docker = _docker()
        c = self._container()
        if c is not None:
            self._remove(c)
        if volume:
            try:
                self.engine().volumes.get(volume_name(self.device)).remove(force=True)
            except docker.errors.NotFound:
                pass


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

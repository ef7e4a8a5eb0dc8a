"""Docker transport (docker SDK): the device is a container on a Docker engine (local socket, ssh://, TLS tcp://).

Pipes only: ``run`` is ``docker exec`` (no shell), ``put_file`` a tar stream through the engine checked by sha256 in
the container, and the agent's port is reached either on a port published on the engine host's 127.0.0.1 only, or
through ``docker exec``: each HTTP connection is a small relay process in the container talking to the agent's
loopback. Never through a bridge IP. The image and the container (the agent's lifecycle) are
edgectl.agents.install_docker.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import httpcore
import httpx

from edgectl.errors import TransportError, require_module
from edgectl.spec import Device
from edgectl.transport.base import Transport
from edgectl.transport.local import sha256_file

if TYPE_CHECKING:
    import docker

AGENT_ROOT = "/var/lib/edgectl-agent"
AGENT_PORT = 8088  # inside the container
AGENT_PYTHON = "/opt/edgectl-agent/bin/python"

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
def container_name(device: Device) -> str:
    return device.transport.container or f"edgectl-agent-{device.name}"


def host_port(device: Device) -> int:
    return device.transport.host_port or device.agent.port


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


def timed_argv(argv: Sequence[str], timeout: float) -> list[str]:
    """argv under coreutils ``timeout`` (the Docker exec API has none): TERM at the limit, KILL 5 s later."""
    if isinstance(argv, str):
        raise TypeError("argv must be a list of arguments, not a shell string")
    if not argv:
        raise ValueError("argv is empty")
    return ["timeout", "-k", "5", f"{max(1, int(timeout))}", *argv]


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
    kind: ClassVar[str] = "docker"

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.spec = device.transport
        self._engine: docker.DockerClient | None = None

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

    def container(self):
        """The device's container (any state), or None when there is none."""
        docker = _docker()
        try:
            return self.engine().containers.get(self.container_name)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': cannot inspect container {self.container_name}: {e}",
                                 hint="retry; check the engine's health (docker info)") from e

    def _running(self):
        c = self.container()
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
        self.check(["mkdir", "-p", folder], what="creating the target folder")
        try:
            if not container.put_archive(folder, buf.getvalue()):
                raise TransportError(f"device '{self.name}': the engine refused the copy of {local.name}",
                                     hint="check the container's disk space")
        except docker.errors.DockerException as e:
            raise TransportError(f"device '{self.name}': copying {local.name} into {self.container_name} failed: {e}",
                                 hint="retry; check the engine host's disk") from e
        part = remote + ".part"
        theirs = self.check(["sha256sum", part], what="hashing the copied file").split()[0]
        ours = sha256_file(local)
        if theirs != ours:
            self.run(["rm", "-f", part])
            raise TransportError(f"device '{self.name}': {remote} arrived corrupted (sha256 {theirs}, expected "
                                 f"{ours}); the partial file was removed", hint="retry")
        self.check(["mv", "-f", part, remote], what="renaming the copied file")

    # -- control ---------------------------------------------------------------------------------------------
    def http_transport(self) -> httpx.BaseTransport | None:
        """control 'exec': a relay per connection; control 'port': plain TCP to the published port."""
        return ExecTransport(self) if self.spec.control == "exec" else None

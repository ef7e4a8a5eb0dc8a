"""SSH transport (paramiko): run argv on the device, put files resumably, reach the agent through a direct-tcpip
channel to the device's 127.0.0.1, so the agent never listens beyond loopback.

Host keys are always verified, against ``~/.ssh/known_hosts`` and edgectl's own ``known_hosts`` (written by
``edgectl trust DEVICE``). An unknown host is refused with its fingerprint; a changed key aborts before
authentication, so no command runs on a device that may be an impostor.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import posixpath
import re
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, TypeVar

import httpx
from edgectl_agent import __version__ as AGENT_VERSION
from edgectl_agent.api import Facts

from edgectl.agent_client import AgentClient
from edgectl.errors import AgentError, EdgectlError, TransportError, require_module
from edgectl.paths import edgectl_home
from edgectl.spec import Device
from edgectl.transport.base import Transport

if TYPE_CHECKING:
    import paramiko
    from edgectl.transport.bootstrap import RemoteLayout

CONNECT_TIMEOUT_S = 15.0
START_TIMEOUT_S = 60.0
EXIT_OUTPUT_GRACE_S = 2.0
PUT_CHUNK = 1024 * 1024
PUT_STALL_S = 120.0
# Large windows keep a long transfer from stalling on window adjusts (paramiko's default is 2 MiB).
WINDOW_BYTES = 32 * 1024 * 1024
MAX_PACKET_BYTES = 32 * 1024

# Transient failures (connection refused or timed out, a dropped session, sshd short of sessions) are retried with
# exponential backoff, a bounded number of times; authentication and host key failures never are.
CONNECT_ATTEMPTS = 4
CHANNEL_ATTEMPTS = 3
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 4.0
NO_KEYS_MESSAGE = "No authentication methods available"  # paramiko's SSHException when it has no key to try
OPEN_FAILED_RESOURCE_SHORTAGE = 4  # RFC 4254 channel open failure code: sshd is out of sessions for now

log = logging.getLogger(__name__)
T = TypeVar("T")
_NULL_HANDLER = logging.NullHandler()
_SAFE_ARG = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")
# put_file's receiver on the device (argv: the .part, the file's size): says how many bytes of the .part an earlier,
# cut push left (0 when none, or more than the file has: started over), then appends stdin to it, hashing what it
# held and what arrives, and prints the sha256 once the stream ends and the bytes are synced. On Linux it widens its
# stdin pipe to 1 MiB: with the default 64 KiB, sshd and the receiver take turns every 64 KiB (half the throughput).
PUT_RECEIVER = """\
import hashlib, os, sys
try:
    import fcntl
    fcntl.fcntl(0, fcntl.F_SETPIPE_SZ, 1 << 20)
except (ImportError, AttributeError, OSError):
    pass
part, size = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.dirname(part) or ".", exist_ok=True)
held = os.path.getsize(part) if os.path.isfile(part) else 0
held = held if held <= size else 0
h = hashlib.sha256()
with open(part, "r+b" if held else "wb") as f:
    while f.tell() < held and (block := f.read(min(1 << 20, held - f.tell()))):
        h.update(block)
    print(held, flush=True)
    while block := sys.stdin.buffer.read1(1 << 20):
        h.update(block)
        f.write(block)
    f.flush()
    os.fsync(f.fileno())
print(h.hexdigest(), flush=True)
"""
# The user's $HOME, then the agent token (one line) at "$1", relative to $HOME unless absolute; values only as
# parameters, read with the shell's own `read` (no process per device for it).
TOKEN_SCRIPT = ('printf "%s\\n" "$HOME"; case "$1" in /*) f=$1 ;; *) f=$HOME/$1 ;; esac; '
                'IFS= read -r t <"$f"; [ -n "$t" ] && printf "%s\\n" "$t"')


# -- pure pieces (unit-tested) -----------------------------------------------------------------------------------
def quote_arg(arg: str) -> str:
    """One argument as a POSIX shell word that the shell turns back into exactly ``arg``."""
    if not isinstance(arg, str):
        raise TypeError(f"command arguments must be strings, got {type(arg).__name__}: {arg!r}")
    if "\0" in arg:
        raise ValueError("a command argument cannot contain a NUL byte")
    if _SAFE_ARG.match(arg):
        return arg
    return "'" + arg.replace("'", "'\"'\"'") + "'"


def quote_argv(argv: Sequence[str]) -> str:
    """The command line sshd hands to the user's (POSIX) login shell so that it runs exactly ``argv``.

    SSH only carries a string; this is the one place where argv becomes one, and every argument is quoted."""
    if isinstance(argv, str):
        raise TypeError("argv must be a list of arguments, not a shell string")
    if not argv:
        raise ValueError("argv is empty")
    return " ".join(quote_arg(a) for a in argv)


def fingerprint(key: "paramiko.PKey") -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a host key (what `ssh-keygen -lf` prints)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The host's name in known_hosts files: ``host`` on port 22, ``[host]:port`` elsewhere."""
    return host if port == 22 else f"[{host}]:{port}"


def parse_jump(spec: str, default_user: str | None) -> tuple[str | None, str, int]:
    """``[user@]host[:port]`` -> (user, host, port)."""
    user, _, hostport = spec.rpartition("@")
    host, _, port = hostport.partition(":")
    return (user or default_user), host, int(port or 22)


def remote_path(path: str, home: str) -> str:
    """Expand a leading '~/' with the device user's home; everything remote is addressed by absolute path."""
    return posixpath.join(home, path[2:]) if path.startswith("~/") else path


def backoff_delays(attempts: int, first: float = BACKOFF_FIRST_S, cap: float = BACKOFF_MAX_S) -> list[float]:
    """Seconds to wait before each retry: ``attempts - 1`` delays doubling from ``first``, each at most ``cap``."""
    return [min(cap, first * 2 ** i) for i in range(max(0, attempts - 1))]


def known_hosts_files() -> list[Path]:
    """Where host keys are looked up: the user's OpenSSH file and edgectl's own (``edgectl trust`` writes it)."""
    return [Path.home() / ".ssh" / "known_hosts", edgectl_home() / "known_hosts"]


def trust_command(device: str) -> str:
    return f"edgectl trust {device} MANIFESTS..."


# -- host keys ---------------------------------------------------------------------------------------------------
def _paramiko():
    paramiko = require_module("paramiko", "ssh")
    # paramiko logs a refused channel (no agent listening yet) at ERROR; without a handler Python would print it.
    logging.getLogger("paramiko").addHandler(_NULL_HANDLER)
    return paramiko


_PARSED_KNOWN_HOSTS: dict[Path, tuple[tuple[int, int], "paramiko.HostKeys"]] = {}
_PARSED_KNOWN_HOSTS_LOCK = threading.Lock()


def _parsed_known_hosts(path: Path) -> "paramiko.HostKeys | None":
    """One known_hosts file, parsed once per change (a fleet's connections each needed it: parsing a user's file of
    hundreds of entries for every device added up)."""
    paramiko = _paramiko()
    try:
        st = path.stat()
    except OSError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    with _PARSED_KNOWN_HOSTS_LOCK:
        cached = _PARSED_KNOWN_HOSTS.get(path)
        if cached is None or cached[0] != stamp:
            cached = _PARSED_KNOWN_HOSTS[path] = (stamp, paramiko.HostKeys(str(path)))
        return cached[1]


def pinned_host_keys(host: str, port: int) -> list[tuple[str, "paramiko.PKey"]]:
    """(key type, key) pinned for this host, over both known_hosts files in order; the first of a type wins, as
    when paramiko loads both files."""
    name = known_hosts_name(host, port)
    out: list[tuple[str, "paramiko.PKey"]] = []
    for path in known_hosts_files():
        keys = _parsed_known_hosts(path)
        found = keys.lookup(name) if keys is not None else None
        for keytype in (found.keys() if found else []):
            if keytype not in (t for t, _ in out):
                out.append((keytype, found[keytype]))
    return out


def known_host_keys(host: str, port: int) -> dict[str, "paramiko.PKey"]:
    """Keys pinned for this host in either known_hosts file, by key type."""
    return dict(pinned_host_keys(host, port))


def _refuse_unknown_policy(device: str, where: str):
    paramiko = _paramiko()

    class RefuseUnknown(paramiko.MissingHostKeyPolicy):
        """Never AutoAdd: an unknown host is refused with what a user needs to pin it."""

        def missing_host_key(self, client, hostname, key) -> None:
            raise TransportError(
                f"device '{device}': host key of {where} is unknown ({key.get_name()} {fingerprint(key)}); "
                "nothing was run on it",
                hint=f"check that fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then pin "
                     f"it: {trust_command(device)}")

    return RefuseUnknown()


def _fast_transport(*args: Any, **kwargs: Any) -> "paramiko.Transport":
    """A paramiko Transport preferring AES-GCM (one AEAD call per packet instead of cipher + HMAC: faster pushes in
    pure Python) with large windows; servers without GCM still get the usual ciphers."""
    paramiko = _paramiko()
    t = paramiko.Transport(*args, default_window_size=WINDOW_BYTES, **kwargs)
    opts = t.get_security_options()
    gcm = [c for c in opts.ciphers if c.endswith("-gcm@openssh.com")]
    opts.ciphers = tuple(gcm + [c for c in opts.ciphers if c not in gcm])
    return t


def fetch_host_key(host: str, port: int, *, sock: Any = None, timeout: float = CONNECT_TIMEOUT_S) -> "paramiko.PKey":
    """The host key a server presents (key exchange only, no authentication, no command)."""
    paramiko = _paramiko()
    try:
        s = sock or socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        raise TransportError(f"cannot connect to {host}:{port}: {e.strerror or e}",
                             hint="check the device's address and port and that sshd runs there") from e
    t = paramiko.Transport(s)
    try:
        t.start_client(timeout=timeout)
        return t.get_remote_server_key()
    except paramiko.SSHException as e:
        raise TransportError(f"SSH handshake with {host}:{port} failed: {e}",
                             hint="check that the port is an SSH server's") from e
    finally:
        t.close()


def pin_host_key(host: str, port: int, key: "paramiko.PKey", *, replace: bool = False) -> Path:
    """Write the key into edgectl's own known_hosts (the user's OpenSSH file is never edited)."""
    paramiko = _paramiko()
    path = edgectl_home() / "known_hosts"
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = paramiko.HostKeys()
    if path.is_file():
        keys.load(str(path))
    name = known_hosts_name(host, port)
    if replace and name in keys:
        del keys[name]
    keys.add(name, key.get_name(), key)
    tmp = path.with_name(path.name + ".tmp")
    keys.save(str(tmp))
    tmp.replace(path)
    return path


# -- the transport -----------------------------------------------------------------------------------------------
class SshTransport(Transport):
    def __init__(self, device: Device, *, verify_key: bytes | None = None) -> None:
        super().__init__(device)
        self.spec = device.transport
        self.verify_key = verify_key  # public key PEM to pin at the first bootstrap, when the fleet signs
        self.port = device.agent.port
        self._client: "paramiko.SSHClient | None" = None
        self._jump: "paramiko.SSHClient | None" = None
        self._home: str | None = None
        self.service_mode: str | None = None  # transport.service as resolved on the device (bootstrap)
        self.service_user = ""
        self._token_error = ""

    @property
    def name(self) -> str:
        return self.device.name

    @property
    def where(self) -> str:
        return f"{self.spec.host}:{self.spec.port}"

    @property
    def base_url(self) -> str:
        """The agent's URL as the device sees it; requests go there through the SSH channel."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/v1"

    # -- connection -------------------------------------------------------------------------------------------
    def _connect_client(self, host: str, port: int, user: str | None, *, sock: Any = None) -> "paramiko.SSHClient":
        paramiko = _paramiko()
        client = paramiko.SSHClient()
        for keytype, key in pinned_host_keys(host, port):  # this host's pins only; never written back
            client.get_host_keys().add(known_hosts_name(host, port), keytype, key)
        where = f"{host}:{port}"
        client.set_missing_host_key_policy(_refuse_unknown_policy(self.name, where))
        key_file = self.spec.key_file and str(Path(self.spec.key_file).expanduser())
        delays = backoff_delays(CONNECT_ATTEMPTS) if sock is None else []  # a jump channel is used up by a try
        attempt = 0
        try:
            while True:
                attempt += 1
                try:
                    client.connect(host, port=port, username=user, key_filename=key_file, allow_agent=True,
                                   look_for_keys=key_file is None, timeout=CONNECT_TIMEOUT_S,
                                   banner_timeout=CONNECT_TIMEOUT_S, auth_timeout=CONNECT_TIMEOUT_S, sock=sock,
                                   transport_factory=_fast_transport)
                    break
                except (paramiko.BadHostKeyException, paramiko.AuthenticationException):
                    raise
                except (OSError, paramiko.SSHException) as e:  # refused, timed out, reset, no banner: transient
                    if str(e) == NO_KEYS_MESSAGE:  # not transient: no key file, no ssh-agent key, no ~/.ssh key
                        raise paramiko.AuthenticationException("no key to offer (no transport.key_file, no key in "
                                                               "ssh-agent, none in ~/.ssh)") from e
                    if attempt > len(delays):
                        raise
                    log.info("device %s: SSH connect to %s failed (%s); retry %d in %.1f s", self.name, where, e,
                             attempt, delays[attempt - 1])
                    client.close()
                    time.sleep(delays[attempt - 1])
        except EdgectlError:
            client.close()
            raise
        except paramiko.BadHostKeyException as e:
            client.close()
            name = known_hosts_name(host, port)
            raise TransportError(
                f"device '{self.name}': HOST KEY CHANGED for {where}: it presents {e.key.get_name()} "
                f"{fingerprint(e.key)}, known_hosts has {e.expected_key.get_name()} {fingerprint(e.expected_key)}; "
                "aborted before authentication, nothing was run",
                hint="someone may be intercepting the connection; if the device was reinstalled, verify the new "
                     f"fingerprint on it, remove the old entry (ssh-keygen -R '{name}', and from "
                     f"{edgectl_home() / 'known_hosts'}), then run: {trust_command(self.name)} --replace") from e
        except paramiko.AuthenticationException as e:
            client.close()
            raise TransportError(f"device '{self.name}': SSH authentication as '{user or 'current user'}' on "
                                 f"{where} failed: {e}",
                                 hint="set transport.key_file or load the key into ssh-agent (ssh-add), and check "
                                      "transport.user and the device's authorized_keys") from e
        except (OSError, paramiko.SSHException) as e:
            client.close()
            tries = f" (tried {attempt} times over {sum(delays[:attempt - 1]):.1f} s)" if attempt > 1 else ""
            raise TransportError(f"device '{self.name}': cannot connect over SSH to {where}: {e}{tries}",
                                 hint="check that the device is on, sshd runs, and transport.host/port are "
                                      "right") from e
        return client

    def connect(self) -> "paramiko.SSHClient":
        """The SSH session (opened once, through the jump host when one is set)."""
        if self._client is not None and self._client.get_transport() is not None \
                and self._client.get_transport().is_active():
            return self._client
        sock = None
        if self.spec.proxy_jump:
            juser, jhost, jport = parse_jump(self.spec.proxy_jump, self.spec.user)
            self._jump = self._connect_client(jhost, jport, juser)
            try:
                sock = self._jump.get_transport().open_channel(
                    "direct-tcpip", (self.spec.host, self.spec.port), ("127.0.0.1", 0), timeout=CONNECT_TIMEOUT_S)
            except Exception as e:  # paramiko.ChannelException, SSHException, OSError
                raise TransportError(f"device '{self.name}': the jump host {jhost}:{jport} could not reach "
                                     f"{self.where}: {e}", hint="check transport.host/port as the jump host sees "
                                     "them, and AllowTcpForwarding on the jump host") from e
        self._client = self._connect_client(self.spec.host, self.spec.port, self.spec.user, sock=sock)
        self._client.get_transport().set_keepalive(30)
        return self._client

    def _open(self, what: str, open_fn: Callable[["paramiko.Transport"], T]) -> T:
        """``open_fn(ssh_transport)`` (a session, channel or SFTP), retried with backoff on a dropped session
        (reconnecting) or sshd out of sessions. Nothing was sent on a channel that failed to open, so a retry
        can never run a command twice."""
        paramiko = _paramiko()
        delays = backoff_delays(CHANNEL_ATTEMPTS)
        for attempt in range(len(delays) + 1):
            try:
                return open_fn(self.connect().get_transport())
            except paramiko.ChannelException as e:  # the device answered: only "out of sessions" may pass
                if e.code != OPEN_FAILED_RESOURCE_SHORTAGE or attempt == len(delays):
                    raise
            except (OSError, EOFError, paramiko.SSHException) as e:
                if attempt == len(delays):
                    raise
                log.info("device %s: opening %s failed (%s); reconnecting", self.name, what, e)
                self.close()  # the session is dead or unusable: the next try connects again
            time.sleep(delays[attempt])
        raise AssertionError("unreachable")

    def presented_host_key(self) -> "paramiko.PKey":
        """The key the device presents now (through the jump host when one is set); nothing is authenticated."""
        sock = None
        if self.spec.proxy_jump:
            juser, jhost, jport = parse_jump(self.spec.proxy_jump, self.spec.user)
            self._jump = self._connect_client(jhost, jport, juser)
            sock = self._jump.get_transport().open_channel(
                "direct-tcpip", (self.spec.host, self.spec.port), ("127.0.0.1", 0), timeout=CONNECT_TIMEOUT_S)
        return fetch_host_key(self.spec.host, self.spec.port, sock=sock)

    def close(self) -> None:
        for c in (self._client, self._jump):
            if c is not None:
                c.close()
        self._client = self._jump = None

    # -- dumb pipes -------------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        command = quote_argv(argv)
        paramiko = _paramiko()
        try:
            chan = self._open("a session", lambda tr: tr.open_session(timeout=CONNECT_TIMEOUT_S))
            chan.exec_command(command)
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            exited_at = None
            while True:  # drain both streams, or a chatty stderr fills its window and the command blocks
                busy = False
                while chan.recv_ready():
                    out += chan.recv(65536)
                    busy = True
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(65536)
                    busy = True
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    # sshd may send the exit status before the last output (a shell that prints and exits at
                    # once): done at the end of the output, or shortly after the exit if a background process
                    # holds the output open
                    exited_at = exited_at or time.monotonic()
                    if chan.eof_received or chan.closed:
                        break
                    if time.monotonic() - exited_at > EXIT_OUTPUT_GRACE_S:
                        log.info("device %s: %s exited but its output stays open (a background process?); not "
                                 "waiting for it", self.name, argv[0])
                        break
                    time.sleep(0.001)
                    continue
                if time.monotonic() > deadline:
                    chan.close()
                    raise subprocess.TimeoutExpired(list(argv), timeout, bytes(out), bytes(err))
                if not busy:  # woken at once by the exit status (what ends a short command), else polls
                    chan.status_event.wait(0.005)
            code = chan.recv_exit_status()
            chan.close()
        except (OSError, paramiko.SSHException) as e:
            raise TransportError(f"device '{self.name}': running {argv[0]} over SSH failed: {e}",
                                 hint="the connection dropped; retry") from e
        return subprocess.CompletedProcess(list(argv), code, out.decode(errors="replace"), err.decode(errors="replace"))

    def check(self, argv: Sequence[str], *, timeout: float = 60.0, what: str = "") -> str:
        """Run and return stdout; a non-zero exit is a TransportError with the command's stderr."""
        r = self.run(argv, timeout=timeout)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip()[-1500:]
            raise TransportError(f"device '{self.name}': {what or argv[0]} failed (exit {r.returncode}): {tail}",
                                 hint=f"the command was: {quote_argv(argv)}")
        return r.stdout

    @property
    def home(self) -> str:
        """The SSH user's home on the device (as its sessions see $HOME)."""
        if self._home is None:
            self._home = self.check(["printenv", "HOME"], what="reading $HOME").strip() or "/"
        return self._home

    def put_file(self, local: Path, remote: Path | str) -> None:
        """Stream the file into ``<remote>.part`` through one exec session (PUT_RECEIVER, run by the device's
        transport.python), resuming after the bytes a cut push left there; the device hashes the whole .part while
        it is written, and the file takes its final name only when that sha256 matches this side's, so a partial or
        corrupt file never appears under it.

        Faster than SFTP (paramiko's 32 KiB requests, then a second pass to hash the file on the device): the bytes
        go through as one stream, hashed on both ends as they pass."""
        remote = remote_path(str(remote), self.home)
        part = remote + ".part"
        paramiko = _paramiko()
        try:
            local_sha, remote_sha = self._stream_into(local, part)
        except (OSError, EOFError, ValueError, paramiko.SSHException) as e:
            raise TransportError(f"device '{self.name}': copying {local.name} to {remote} was cut: {e}",
                                 hint="retry: the copy resumes from the bytes already on the device") from e
        if remote_sha != local_sha:
            self.run(["rm", "-f", "--", part])
            raise TransportError(f"device '{self.name}': {remote} arrived corrupted (sha256 {remote_sha}, "
                                 f"expected {local_sha}); the partial file was removed",
                                 hint="retry; if it repeats, check the device's disk")
        self.check(["mv", "-f", "--", part, remote], what="moving the pushed file into place")

    def _stream_into(self, local: Path, part: str) -> tuple[str, str]:
        """Send ``local`` into ``part`` from where the device says it holds bytes; (local sha256, the device's)."""
        size = local.stat().st_size
        chan = self._open("a session", lambda tr: tr.open_session(timeout=CONNECT_TIMEOUT_S))
        try:
            chan.settimeout(PUT_STALL_S)  # a link that moves nothing for this long counts as cut
            chan.exec_command(quote_argv([self.spec.python, "-c", PUT_RECEIVER, part, str(size)]))
            answers = chan.makefile("rb")
            held = answers.readline()
            if not held.strip().isdigit():
                raise self._receiver_failed(chan, part)
            offset = int(held)
            h = hashlib.sha256()
            with open(local, "rb") as src:
                left = offset
                while left:  # the bytes already on the device count in the hash
                    block = src.read(min(PUT_CHUNK, left))
                    if not block:
                        raise ValueError(f"{local} shrank while it was sent")
                    h.update(block)
                    left -= len(block)
                try:
                    while chunk := src.read(PUT_CHUNK):
                        h.update(chunk)
                        chan.sendall(memoryview(chunk))  # a memoryview: paramiko re-slices what is left per packet
                except OSError:
                    if chan.exit_status_ready():  # the receiver stopped (a failed write): say why
                        raise self._receiver_failed(chan, part) from None
                    raise
            chan.shutdown_write()
            digest = answers.readline().strip().decode(errors="replace")
            if chan.recv_exit_status() != 0 or not digest:
                raise self._receiver_failed(chan, part)
        finally:
            chan.close()
        return h.hexdigest(), digest

    def _receiver_failed(self, chan: "paramiko.Channel", part: str) -> TransportError:
        code = chan.recv_exit_status()
        err = chan.makefile_stderr("rb").read().decode(errors="replace").strip()
        return TransportError(f"device '{self.name}': writing {part} failed (exit {code}): {err[-1500:]}",
                              hint=f"check the device's disk and its Python (transport.python: {self.spec.python})")

    def facts_without_agent(self) -> Facts | None:
        return None  # the agent reports facts; without it the profile stands in (no side effects here)

    # -- control channel ------------------------------------------------------------------------------------
    def http_transport(self) -> httpx.BaseTransport:
        """An httpx transport whose connections are direct-tcpip channels to the device's loopback."""
        from edgectl.transport.channel import ChannelTransport

        return ChannelTransport(self.open_channel, device=self.name)

    def open_channel(self, host: str, port: int, *, window_size: int, timeout: float | None) -> "paramiko.Channel":
        """A direct-tcpip channel to ``host:port`` as the device resolves it (retried like every channel)."""
        return self._open(f"a channel to {host}:{port}", lambda tr: tr.open_channel(
            "direct-tcpip", (host, port), ("127.0.0.1", 0), window_size=window_size, timeout=timeout))

    def client(self, token: str) -> AgentClient:
        return AgentClient(self.base_url, token, device=self.name, transport=self.http_transport())

    def _health(self) -> dict | None:
        try:
            with httpx.Client(transport=self.http_transport(), timeout=10.0) as http:
                r = http.get(f"{self.base_url}/healthz")
                return r.json() if r.status_code == 200 else {"status": f"http {r.status_code}"}
        except (httpx.HTTPError, ValueError):
            return None

    # -- agent lifecycle --------------------------------------------------------------------------------------
    @property
    def layout(self) -> "RemoteLayout":
        from edgectl.transport.bootstrap import RemoteLayout

        venv = remote_path(self.spec.venv, self.home) if self.spec.venv else None
        return RemoteLayout(remote_path(self.spec.agent_dir, self.home), venv)

    def agent(self, *, start: bool, runtimes: Iterable[str] = ()) -> AgentClient | None:
        from edgectl.transport import bootstrap

        self.connect()  # host key and auth problems surface here, before anything else
        # The usual case is an agent of this version: its token first, then one HTTP connection (one channel) for
        # health and what the caller asks next (facts, state), not a channel each.
        token = self._read_token()
        if token is not None:
            client = self.client(token)
            health = _health_of(client)
            if health is not None and (health.get("version") == AGENT_VERSION or not start):
                return client
            client.close()
        else:
            health = self._health()
        if health is not None and (health.get("version") == AGENT_VERSION or not start):
            return self.client(self._token())  # an agent answers, but its token is not where agent_dir says
        if not start:
            return None
        if health is not None:  # an older agent: replace it with this version
            bootstrap.stop_agent(self, self.layout)
        pinned = bootstrap.pin_verify_key(self, self.layout)
        bootstrap.ensure_installed(self, self.layout, runtimes, sign=pinned is not None)
        bootstrap.start_agent(self, self.layout, verify_key_file=pinned)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            health = self._health()
            if health and health.get("status") == "ok":
                return self.client(self._token())
            if not bootstrap.agent_alive(self, self.layout):
                break
            time.sleep(0.2)
        raise TransportError(f"device '{self.name}': the agent did not start:\n{bootstrap.log_tail(self, self.layout)}",
                             hint=f"see its log on the device: {self.layout.log}")

    def _read_token(self) -> str | None:
        """The agent's token, or None where there is none (yet). One session reads it and $HOME: each command is
        a round trip and a process on the device, and a fleet-wide no-op apply runs this once per device."""
        token = posixpath.join(self.spec.agent_dir, "root", "token")
        r = self.run(["sh", "-c", TOKEN_SCRIPT, "edgectl-token", token[2:] if token.startswith("~/") else token])
        home, _, token_text = r.stdout.partition("\n")
        if self._home is None:
            self._home = home.strip() or "/"
        self._token_error = r.stderr.strip()
        return token_text.strip() if r.returncode == 0 and token_text.strip() else None

    def _token(self) -> str:
        token = self._read_token()
        if token is None:
            raise TransportError(f"device '{self.name}': cannot read the agent token {self.layout.token}: "
                                 f"{self._token_error}",
                                 hint="an agent answers on the device's port but not from transport.agent_dir; "
                                      "stop it or point agent_dir at its root's parent")
        return token


def _health_of(client: AgentClient) -> dict | None:
    """/healthz through ``client``; None when nothing answers (as SshTransport._health)."""
    try:
        return client.health()
    except AgentError as e:
        return {"status": f"http {e.status}"}
    except TransportError:
        return None

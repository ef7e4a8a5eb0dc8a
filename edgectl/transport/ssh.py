"""SSH transport (paramiko): run argv on the device, put files resumably, reach the agent through a direct-tcpip
channel to the device's 127.0.0.1, so the agent never listens beyond loopback.

Host keys are always verified, against ``~/.ssh/known_hosts`` and edgectl's own ``known_hosts`` (written by
``edgectl trust DEVICE``, see ssh_trust). An unknown host is refused with its fingerprint; a changed key aborts
before authentication, so no command runs on a device that may be an impostor. The agent's lifecycle on an SSH
device (venv, wheels, service) is edgectl.agents.install_venv.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

import httpx

from edgectl.errors import EdgectlError, TransportError
from edgectl.spec import Device
from edgectl.transport.base import Transport
from edgectl.paths import edgectl_home
from edgectl.transport.ssh_trust import (
    CONNECT_TIMEOUT_S, TrustCheck, check_presented_key, fetch_host_key, fingerprint,
    known_hosts_name, paramiko_module, pinned_host_keys, refuse_unknown_policy, trust_command)

if TYPE_CHECKING:
    import paramiko

_paramiko = paramiko_module
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


def _fast_transport(*args: Any, **kwargs: Any) -> "paramiko.Transport":
    """A paramiko Transport preferring AES-GCM (one AEAD call per packet instead of cipher + HMAC: faster pushes in
    pure Python) with large windows; servers without GCM still get the usual ciphers."""
    paramiko = _paramiko()
    t = paramiko.Transport(*args, default_window_size=WINDOW_BYTES, **kwargs)
    opts = t.get_security_options()
    gcm = [c for c in opts.ciphers if c.endswith("-gcm@openssh.com")]
    opts.ciphers = tuple(gcm + [c for c in opts.ciphers if c not in gcm])
    return t


# -- the transport -----------------------------------------------------------------------------------------------
class SshTransport(Transport):
    kind: ClassVar[str] = "ssh"

    def __init__(self, device: Device) -> None:
        super().__init__(device)
        self.spec = device.transport
        self.port = device.agent.port
        self._client: "paramiko.SSHClient | None" = None
        self._jump: "paramiko.SSHClient | None" = None
        self._home: str | None = None

    @property
    def where(self) -> str:
        return f"{self.spec.host}:{self.spec.port}"

    @property
    def base_url(self) -> str:
        """The agent's URL as the device sees it; requests go there through the SSH channel."""
        return f"http://127.0.0.1:{self.port}"

    # -- connection -------------------------------------------------------------------------------------------
    def _connect_client(self, host: str, port: int, user: str | None, *, sock: Any = None) -> "paramiko.SSHClient":
        paramiko = _paramiko()
        client = paramiko.SSHClient()
        for keytype, key in pinned_host_keys(host, port):  # this host's pins only; never written back
            client.get_host_keys().add(known_hosts_name(host, port), keytype, key)
        where = f"{host}:{port}"
        client.set_missing_host_key_policy(refuse_unknown_policy(self.name, where))
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

    def show_argv(self, argv: Sequence[str]) -> str:
        return quote_argv(argv)

    @property
    def home(self) -> str:
        """The SSH user's home on the device (as its sessions see $HOME)."""
        if self._home is None:
            self._home = self.check(["printenv", "HOME"], what="reading $HOME").strip() or "/"
        return self._home

    def remember_home(self, home: str) -> None:
        """$HOME as a command that ran anyway printed it (saves the round trip of reading it alone)."""
        if self._home is None:
            self._home = home or "/"

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

    # -- control channel ------------------------------------------------------------------------------------
    def http_transport(self) -> httpx.BaseTransport:
        """An httpx transport whose connections are direct-tcpip channels to the device's loopback."""
        from edgectl.transport.channel import ChannelTransport

        return ChannelTransport(self.open_channel, device=self.name)

    def open_channel(self, host: str, port: int, *, window_size: int, timeout: float | None) -> "paramiko.Channel":
        """A direct-tcpip channel to ``host:port`` as the device resolves it (retried like every channel)."""
        return self._open(f"a channel to {host}:{port}", lambda tr: tr.open_channel(
            "direct-tcpip", (host, port), ("127.0.0.1", 0), window_size=window_size, timeout=timeout))



def check_trust(device: Device, *, replace: bool = False) -> TrustCheck:
    """``edgectl trust``: the host key ``device`` presents now (through its jump host when one is set), checked
    against what is pinned (ssh_trust.check_presented_key); nothing is authenticated or run on the device."""
    if device.transport.type != "ssh":
        raise TransportError(f"device '{device.name}' uses transport '{device.transport.type}', which has no host "
                             "key", hint="`edgectl trust` is for devices with `transport: {type: ssh}`")
    t = SshTransport(device)
    try:
        key = t.presented_host_key()
    finally:
        t.close()
    return check_presented_key(device.name, device.transport.host, device.transport.port, key, replace=replace)

"""SSH host-key trust: where host keys are pinned, how an unknown or changed key is refused, and what
``edgectl trust DEVICE`` decides before it pins a presented key.

Host keys are looked up in ``~/.ssh/known_hosts`` and edgectl's own ``known_hosts`` (the only one edgectl writes).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgectl.errors import TransportError, require_module
from edgectl.paths import edgectl_home

if TYPE_CHECKING:
    import paramiko

CONNECT_TIMEOUT_S = 15.0
_NULL_HANDLER = logging.NullHandler()


def fingerprint(key: "paramiko.PKey") -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a host key (what `ssh-keygen -lf` prints)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The host's name in known_hosts files: ``host`` on port 22, ``[host]:port`` elsewhere."""
    return host if port == 22 else f"[{host}]:{port}"


def known_hosts_files() -> list[Path]:
    """Where host keys are looked up: the user's OpenSSH file and edgectl's own (``edgectl trust`` writes it)."""
    return [Path.home() / ".ssh" / "known_hosts", edgectl_home() / "known_hosts"]


def trust_command(device: str) -> str:
    return f"edgectl trust {device} MANIFESTS..."


# -- host keys ---------------------------------------------------------------------------------------------------
def paramiko_module():
    paramiko = require_module("paramiko", "ssh")
    # paramiko logs a refused channel (no agent listening yet) at ERROR; without a handler Python would print it.
    logging.getLogger("paramiko").addHandler(_NULL_HANDLER)
    return paramiko


_PARSED_KNOWN_HOSTS: dict[Path, tuple[tuple[int, int], "paramiko.HostKeys"]] = {}
_PARSED_KNOWN_HOSTS_LOCK = threading.Lock()


def _parsed_known_hosts(path: Path) -> "paramiko.HostKeys | None":
    """One known_hosts file, parsed once per change (a fleet's connections each needed it: parsing a user's file of
    hundreds of entries for every device added up)."""
    paramiko = paramiko_module()
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


def refuse_unknown_policy(device: str, where: str):
    paramiko = paramiko_module()

    class RefuseUnknown(paramiko.MissingHostKeyPolicy):
        """Never AutoAdd: an unknown host is refused with what a user needs to pin it."""

        def missing_host_key(self, client, hostname, key) -> None:
            raise TransportError(
                f"device '{device}': host key of {where} is unknown ({key.get_name()} {fingerprint(key)}); "
                "nothing was run on it",
                hint=f"check that fingerprint on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub), then pin "
                     f"it: {trust_command(device)}")

    return RefuseUnknown()


def fetch_host_key(host: str, port: int, *, sock: Any = None, timeout: float = CONNECT_TIMEOUT_S) -> "paramiko.PKey":
    """The host key a server presents (key exchange only, no authentication, no command)."""
    paramiko = paramiko_module()
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
    paramiko = paramiko_module()
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



@dataclass(frozen=True)
class TrustCheck:
    """What ``edgectl trust`` found: the key a device presents and whether it is pinned already."""

    device: str
    host: str
    port: int
    key: "paramiko.PKey"
    trusted: bool  # this very key is pinned already: nothing to do

    @property
    def name(self) -> str:
        return known_hosts_name(self.host, self.port)

    @property
    def shown(self) -> str:
        return f"{self.key.get_name()} {fingerprint(self.key)}"


def check_presented_key(device: str, host: str, port: int, key: "paramiko.PKey", *, replace: bool) -> TrustCheck:
    """Whether ``key`` (presented by the device now) may be pinned: already pinned, new, or (with ``replace``)
    replacing another key edgectl pinned. A different key pinned without ``replace``, or pinned in the user's own
    known_hosts (read first, never edited), is an error that says what to do."""
    known = known_host_keys(host, port)
    check = TrustCheck(device, host, port, key, trusted=known.get(key.get_name()) == key)
    if check.trusted or not known:
        return check
    olds = ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in known.values())
    if not replace:
        raise TransportError(f"device '{device}' ({check.name}) now presents {check.shown}, but {olds} is pinned; "
                             "nothing was changed",
                             hint="if the device was reinstalled, check the new fingerprint on it, then rerun "
                                  "with --replace")
    user_file = known_hosts_files()[0]
    if user_file.is_file() and check.name in paramiko_module().HostKeys(str(user_file)):
        raise TransportError(f"{user_file} pins {check.name} to another key, and it is read first",
                             hint=f"remove that entry with: ssh-keygen -R '{check.name}'; then rerun")
    return check

"""A simulated fleet of real OpenSSH servers on loopback, for integration tests and bench/.

Each device is a real ``sshd`` (Debian's openssh-server) on its own 127.0.0.1 port with its own host key, authorized
key, root folder (its sessions get ``HOME=<root>/home``) and agent port. Nothing but 127.0.0.1 is ever contacted.
The harness can stop a device, change its host key, and count what sshd logged (authentications, sessions).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
START_TIMEOUT_S = 10.0


_GIVEN: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free 127.0.0.1 port below the ephemeral range. A device's ports are chosen long before its sshd or agent
    binds them; an ephemeral port (what bind(0) returns) could meanwhile become the source port of one of the
    fleet's own many connections (client -> sshd, sshd -> agent) and make the agent fail to bind."""
    top = _ephemeral_start()
    for _ in range(200):
        port = random.randrange(max(1024, top - 12000), top)
        if port in _GIVEN:  # handed out already (not bound yet): a fleet never gets one port twice
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 below {top} after 200 tries")


def keygen(path: Path, kind: str = "ed25519") -> Path:
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)], check=True)
    return path


def sshd_config(dev: "SshDevice", authorized_keys: Path) -> str:
    """Key-only login, this device's own host key and HOME, loopback only, verbose log (the tests read it)."""
    return "\n".join([
        f"Port {dev.port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {dev.host_key}",
        f"PidFile {dev.dir / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "StrictModes no",
        "UsePAM no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "AllowTcpForwarding yes",
        f"SetEnv HOME={dev.home}",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        *dev.extra_config,
        "",
    ])


@dataclass
class SshDevice:
    name: str
    dir: Path
    port: int
    agent_port: int
    authorized_keys: Path
    extra_config: list[str] = field(default_factory=list)  # more sshd_config lines (e.g. a ForceCommand)
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def host_key(self) -> Path:
        return self.dir / "host_key"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def authentications(self) -> int:
        """Successful logins sshd logged (a refused host key never gets this far)."""
        return self.log_text().count("Accepted publickey")

    def sessions(self) -> int:
        """Commands/shells sshd started."""
        return self.log_text().count("Starting session")

    def host_key_line(self) -> str:
        """``[127.0.0.1]:port type base64`` as a known_hosts line."""
        kind, b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}"

    def fingerprint(self) -> str:
        out = subprocess.run([SSH_KEYGEN, "-lf", str(self.host_key.with_suffix(".pub"))], capture_output=True,
                             text=True, check=True).stdout
        return out.split()[1]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key)
        config = self.dir / "sshd_config"
        config.write_text(sshd_config(self, self.authorized_keys))
        self.proc = subprocess.Popen([str(SSHD), "-D", "-f", str(config), "-E", str(self.log)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd for {self.name} exited: {self.proc.stderr.read().decode()}"
                                   f"{self.log_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"sshd for {self.name} did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        """Stop sshd (the device becomes unreachable); its agent, if any, keeps running like on a real device."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def change_host_key(self) -> str:
        """A reinstalled (or impersonated) device: new host key, sshd restarted. Returns the new fingerprint."""
        self.stop()
        keygen(self.host_key)
        self.start()
        return self.fingerprint()

    def cut_connections(self) -> int:
        """Cut every SSH connection to this device, as a dropped link would: SIGKILL the per-connection sshd
        processes (the client's TCP connection is reset; sshd keeps listening). Returns how many were killed."""
        import psutil

        if self.proc is None:
            return 0
        procs = psutil.Process(self.proc.pid).children(recursive=True)
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        return len(procs)

    def kill_agents(self) -> None:
        for pid_file in self.home.rglob("agent.pid"):
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


class SshFleet:
    """N devices named ``<prefix>1..N`` under ``base``, all accepting one client key (``client_key``)."""

    def __init__(self, base: Path, n: int, *, prefix: str = "dev") -> None:
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} is missing: the SSH fleet needs Debian's openssh-server "
                               "(apt-get install -y openssh-server)")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.client_key = keygen(base / "client_key")
        authorized = base / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        self.devices = [SshDevice(f"{prefix}{i}", base / f"{prefix}{i}", free_port(), free_port(), authorized)
                        for i in range(1, n + 1)]

    def __enter__(self) -> "SshFleet":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for d in self.devices:
            d.start()

    def close(self) -> None:
        for d in self.devices:
            d.kill_agents()
            d.stop()

    def device(self, name: str) -> SshDevice:
        return next(d for d in self.devices if d.name == name)

    def write_known_hosts(self, path: Path, devices: list[SshDevice] | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(d.host_key_line() + "\n" for d in (devices or self.devices)))
        return path

    def fleet_yaml(self, *, profile: str, name: str = "sim", python: str | None = None,
                   devices: list[SshDevice] | None = None, profiles: dict[str, str] | None = None,
                   venv: str | None = None) -> str:
        """A Fleet manifest for these devices (ssh transport, this fleet's client key, per-device agent port);
        ``profiles`` names a device's profile where it differs from ``profile``; ``venv``: one shared agent venv."""
        lines = ["apiVersion: edgectl.dev/v1alpha1", "kind: Fleet", f"metadata: {{name: {name}}}", "spec:",
                 "  devices:"]
        for d in devices or self.devices:
            extra = (f", python: {python}" if python else "") + (f", venv: {venv}" if venv else "")
            lines += [f"    - name: {d.name}", f"      profile: {(profiles or {}).get(d.name, profile)}",
                      f"      transport: {{type: ssh, host: 127.0.0.1, port: {d.port}, key_file: {self.client_key}"
                      f"{extra}}}",
                      f"      agent: {{port: {d.agent_port}}}",
                      "      labels: {site: sim}"]
        return "\n".join(lines) + "\n"

"""An emulated linux/aarch64 device for integration tests and bench/: a Debian 12 arm64 root file system run as a
chroot under qemu-user-static (binfmt_misc), with its own sshd on a 127.0.0.1 port.

The root file system is made once with ``debootstrap --arch=arm64`` (python3, python3-venv, openssh-server; about
5 minutes) and cached packed under ``~/.cache/edgectl/arm64`` (``EDGECTL_TEST_CACHE`` overrides); each test
session unpacks it in seconds. No systemd runs there (the agent runs detached); the host's /sys is never mounted
into it (onnxruntime crashed under qemu with it), nor the host's /dev; /proc is. Needs root (chroot, mounts) and
Debian's qemu-user-static and debootstrap: :func:`require_emulation` fails naming what to install, never skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from tests.fleet import SSHD, free_port, keygen

SUITE = "bookworm"
MIRROR = os.environ.get("EDGECTL_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("python3", "python3-venv", "openssh-server")
BINFMT = Path("/proc/sys/fs/binfmt_misc")
QEMU_HANDLER = BINFMT / "qemu-aarch64"
QEMU_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")  # qemu-user-static's registration (fix-binary flag 'F')
START_TIMEOUT_S = 60.0  # sshd under emulation starts in a few seconds


def cache_dir() -> Path:
    env = os.environ.get("EDGECTL_TEST_CACHE")
    return (Path(env).expanduser() if env else Path.home() / ".cache" / "edgectl") / "arm64"


def rootfs_tarball() -> Path:
    return cache_dir() / f"debian12-arm64-{'-'.join(PACKAGES)}.tar.gz"


def require_emulation() -> None:
    """Fail (naming the fix) unless this machine can run aarch64 binaries: root, debootstrap, qemu-user-static and
    its binfmt_misc handler (mounted and registered here when missing)."""
    missing = [pkg for pkg, path in (("qemu-user-static", "/usr/bin/qemu-aarch64-static"),
                                     ("debootstrap", "/usr/sbin/debootstrap"), ("openssh-server", str(SSHD)))
               if not Path(path).exists()]
    if missing:
        raise RuntimeError(f"the emulated aarch64 device needs Debian's {', '.join(missing)}: run "
                           f"`scripts/setup.sh test` (as root) or `apt-get install -y {' '.join(missing)}`")
    if os.geteuid() != 0:
        raise RuntimeError("the emulated aarch64 device needs root (chroot, mounts): run the test as root")
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not QEMU_HANDLER.exists():
        (BINFMT / "register").write_text(QEMU_CONF.read_text().strip())
    if "enabled" not in QEMU_HANDLER.read_text():
        raise RuntimeError(f"the binfmt_misc handler {QEMU_HANDLER} is disabled: echo 1 > {QEMU_HANDLER}")


def debootstrap_argv(target: Path) -> list[str]:
    return ["nice", "-n", "10", "debootstrap", "--arch=arm64", "--variant=minbase",
            f"--include={','.join(PACKAGES)}", SUITE, str(target), MIRROR]


def ensure_rootfs_tarball(log=print) -> Path:
    """The packed root file system, made with debootstrap the first time (minutes) and cached."""
    tarball = rootfs_tarball()
    if tarball.exists():
        return tarball
    require_emulation()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    work = tarball.parent / "rootfs.building"
    shutil.rmtree(work, ignore_errors=True)
    started = time.monotonic()
    log(f"emulated arm64: debootstrap of a Debian 12 arm64 root file system into {work} (about 5 minutes, once)")
    r = subprocess.run(debootstrap_argv(work), capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"debootstrap --arch=arm64 failed ({MIRROR}):\n{(r.stdout + r.stderr)[-3000:]}")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (work / cache).glob("*"):
            if f.is_file():
                f.unlink()
    partial = tarball.with_suffix(".partial")
    subprocess.run(["tar", "-C", str(work), "--exclude=./proc/*", "--exclude=./sys/*", "-czf", str(partial), "."],
                   check=True)
    partial.rename(tarball)
    shutil.rmtree(work, ignore_errors=True)
    log(f"emulated arm64: root file system cached as {tarball} ({tarball.stat().st_size >> 20} MiB, "
        f"{time.monotonic() - started:.0f} s)")
    return tarball


def sshd_config(port: int) -> str:
    """Inside the chroot: key-only root login on 127.0.0.1:port, host key and authorized keys at fixed paths."""
    return "\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", "HostKey /etc/ssh/edgectl_host_key",
        "AuthorizedKeysFile /etc/ssh/edgectl_authorized_keys", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin prohibit-password",
        "StrictModes no", "UsePAM no", "UseDNS no", "PrintMotd no", "PrintLastLog no", "AllowTcpForwarding yes",
        "Subsystem sftp internal-sftp", "LogLevel VERBOSE", ""])


class Arm64Device:
    """One emulated aarch64 device: the cached root file system unpacked at ``root``, its sshd on ``port`` (SSH
    user root, key ``client_key``), its agent port ``agent_port``."""

    def __init__(self, name: str, root: Path, client_key: Path) -> None:
        self.name, self.root, self.client_key = name, root, client_key
        self.port, self.agent_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self._mounts: list[Path] = []

    def host_key_line(self) -> str:
        kind, b64 = (self.root / "etc/ssh/edgectl_host_key.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {b64}"

    def start(self) -> None:
        require_emulation()
        if not (self.root / "usr/bin/python3").exists():
            self.root.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "-C", str(self.root), "-xzf", str(ensure_rootfs_tarball())], check=True)
        keygen(self.root / "etc/ssh/edgectl_host_key")
        (self.root / "etc/ssh/edgectl_authorized_keys").write_text(self.client_key.with_suffix(".pub").read_text())
        (self.root / "etc/ssh/edgectl_sshd_config").write_text(sshd_config(self.port))
        (self.root / "run/sshd").mkdir(parents=True, exist_ok=True)
        # /proc only: debootstrap made the device nodes sshd and Python need (null, urandom, tty, ptmx) in its /dev,
        # and a bind-mounted host /dev under a test's tmp folder could be emptied by a later cleanup
        proc = self.root / "proc"
        if not os.path.ismount(proc):
            subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
            self._mounts.append(proc)
        self.proc = subprocess.Popen(["chroot", str(self.root), "/usr/sbin/sshd", "-D", "-f",
                                      "/etc/ssh/edgectl_sshd_config", "-E", "/var/log/edgectl-sshd.log"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        import socket

        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the emulated device's sshd exited: {self.proc.stderr.read().decode()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the emulated device's sshd did not listen on 127.0.0.1:{self.port}")

    def kill_agent(self) -> None:
        """Stop the detached agent (its pid file under the agent dir, /root/.edgectl-agent by default)."""
        import signal

        for pid_file in (self.root / "root").rglob("agent.pid"):  # the agent dir of SSH user root
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def close(self) -> None:
        self.kill_agent()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
        self.proc = None
        time.sleep(0.5)
        for target in reversed(self._mounts):
            subprocess.run(["umount", "-l", str(target)], check=False)
        self._mounts.clear()


def ensure_arm64_caches(log=print) -> dict[str, str]:
    """The cached root file system and the cross-built llama-cpp-python wheel for Debian 12 aarch64 (made here
    the first time, minutes, with progress through ``log``; seconds when cached). Returns the environment that
    points edgectl's cross-build cache and wheelhouses at the shared caches (``EDGECTL_CROSS_CACHE``,
    ``EDGECTL_WHEELHOUSE``)."""
    from edgectl.agents.platform import TargetPlatform
    from edgectl.agents.wheelhouse import cross_build, installed_version

    require_emulation()
    env = {"EDGECTL_CROSS_CACHE": str(cache_dir().parent / "cross"),
           "EDGECTL_WHEELHOUSE": str(cache_dir().parent / "wheels")}
    ensure_rootfs_tarball(log=log)
    shown = [0.0]

    def progress(stage: str, done: int, total: int | None) -> None:
        if time.monotonic() - shown[0] > 30:
            shown[0] = time.monotonic()
            log(f"{stage}: {done}/{total}")

    old = os.environ.get("EDGECTL_CROSS_CACHE")
    os.environ["EDGECTL_CROSS_CACHE"] = env["EDGECTL_CROSS_CACHE"]
    try:
        pi = TargetPlatform(os="linux", arch="aarch64", libc="glibc", libc_version="2.36", python="3.11")
        cross_build("llama-cpp-python", installed_version("llama-cpp-python"), pi, progress)
    finally:
        os.environ.pop("EDGECTL_CROSS_CACHE") if old is None else os.environ.update(EDGECTL_CROSS_CACHE=old)
    return env


if __name__ == "__main__":  # python -m tests.emulated_arm64: fill the cache (CI setup, bench)
    require_emulation()
    print(ensure_rootfs_tarball())

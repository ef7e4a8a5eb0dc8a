"""Local installer: this machine is the device; the agent is a detached process of this Python (nothing to
install) with its own root under edgectl's home (``agents/<device>/``): store, state, token, pid file and log.

When the device's fleet signs deployments, the first agent edgectl starts pins the fleet's public key in its root
(``verify-key.pub``, like an SSH known_hosts entry) and every agent started there after verifies with that file,
whatever key the manifests name later: a changed key is refused until the file is replaced by hand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

from edgectl.agents.installer import VERIFY_KEY_FILE, Installer, pin_verify_key
from edgectl.errors import EdgectlError, TransportError
from edgectl.transport.local import LocalTransport


def agent_argv(root: Path, port: int, *, verify_key_file: Path | None = None) -> list[str]:
    """The command that starts the agent (pure; unit-tested)."""
    return [sys.executable, "-m", "edgectl_agent", "serve", "--root", str(root), "--host", "127.0.0.1",
            "--port", str(port)] + (["--verify-key-file", str(verify_key_file)] if verify_key_file else [])


class LocalInstaller(Installer):
    start_timeout_s: ClassVar[float] = 30.0

    transport: LocalTransport

    def __init__(self, transport: LocalTransport, *, verify_key: bytes | None = None) -> None:
        super().__init__(transport, verify_key=verify_key)
        self._proc: subprocess.Popen | None = None
        self._pinned: Path | None = None

    @property
    def root(self) -> Path:
        return self.transport.root

    @property
    def pid_file(self) -> Path:
        return self.root / "agent.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "agent.log"

    def _our_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def token(self) -> str | None:
        if self._our_pid() is None:
            return None
        try:
            return (self.root / "token").read_text().strip() or None
        except OSError:
            return None

    def not_ours(self, health: dict) -> EdgectlError:
        port = self.transport.port
        return TransportError(
            f"device '{self.name}': port {port} on 127.0.0.1 is answered by a process edgectl did not start for "
            f"this device (it says {health})",
            hint=f"stop that process, or give the device another port: `agent: {{port: {port + 1}}}` in the fleet "
                 "manifest")

    def install(self, runtimes: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pinned = pin_verify_key(self.transport, str(self.root / VERIFY_KEY_FILE), self.verify_key)
        self._pinned = Path(pinned) if pinned else None

    def start(self) -> None:
        argv = agent_argv(self.root, self.transport.port, verify_key_file=self._pinned)
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True, cwd=self.root)
        self.pid_file.write_text(f"{self._proc.pid}\n")

    def running(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            self.pid_file.unlink(missing_ok=True)
            return False
        return self._our_pid() is not None

    def start_failed(self) -> EdgectlError:
        if self._proc is not None and self._proc.poll() is not None:
            return TransportError(f"device '{self.name}': the local agent exited at start (code "
                                  f"{self._proc.returncode}):\n{self._log_tail()}", hint=f"full log: {self.log_file}")
        return TransportError(f"device '{self.name}': the local agent did not answer within "
                              f"{self.start_timeout_s:.0f} s", hint=f"see its log: {self.log_file}")

    def stop(self) -> bool:
        pid = self._our_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            _reap(pid)  # a child of this process (started by an earlier link) stays a zombie kill(0) still finds
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent (or init) reaps it
        pass

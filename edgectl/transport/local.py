"""Local transport: this machine is the device. edgectl runs a detached agent for it.

The agent gets its own root under edgectl's home (``agents/<device>/``) holding its store, state, token, pid file
and log. A running agent of the same version is reused; an older one is stopped and replaced.

When the device's fleet signs deployments, the first agent edgectl starts pins the fleet's public key in its root
(``verify-key.pub``, like an SSH known_hosts entry) and every agent started there after verifies with that file,
whatever key the manifests name later: a changed key is refused until the file is replaced by hand.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import httpx
from edgectl_agent import __version__ as AGENT_VERSION
from edgectl_agent.api import Facts

from edgectl.agent_client import AgentClient, read_token
from edgectl.errors import TransportError
from edgectl.paths import local_agent_root
from edgectl.transport.base import Transport

START_TIMEOUT_S = 30.0


VERIFY_KEY_FILE = "verify-key.pub"


def agent_argv(root: Path, port: int, *, verify_key_file: Path | None = None) -> list[str]:
    """The command that starts the agent (pure; unit-tested)."""
    return [sys.executable, "-m", "edgectl_agent", "serve", "--root", str(root), "--host", "127.0.0.1",
            "--port", str(port)] + (["--verify-key-file", str(verify_key_file)] if verify_key_file else [])


class LocalTransport(Transport):
    def __init__(self, device, *, root: Path | None = None, verify_key: bytes | None = None) -> None:
        super().__init__(device)
        self.root = root or local_agent_root(device.name)
        self.port = device.agent.port
        self.verify_key = verify_key  # public key PEM to pin at the first start, when the fleet signs

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def pid_file(self) -> Path:
        return self.root / "agent.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "agent.log"

    # -- dumb pipes -------------------------------------------------------------------------------------------
    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of arguments, not a shell string")
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)

    def put_file(self, local: Path, remote: Path) -> None:
        remote.parent.mkdir(parents=True, exist_ok=True)
        tmp = remote.with_name(remote.name + ".part")
        shutil.copyfile(local, tmp)
        os.replace(tmp, remote)

    def facts_without_agent(self) -> Facts | None:
        from edgectl_agent.facts import collect_facts

        return collect_facts(self.root if self.root.exists() else Path.home())

    # -- agent lifecycle --------------------------------------------------------------------------------------
    def _health(self) -> dict | None:
        try:
            r = httpx.get(f"{self.base_url}/healthz", timeout=2.0)
            return r.json() if r.status_code == 200 else {"status": f"http {r.status_code}"}
        except (httpx.HTTPError, ValueError):
            return None

    def _our_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def agent(self, *, start: bool, runtimes: Iterable[str] = ()) -> AgentClient | None:
        health = self._health()
        pid = self._our_pid()
        if health is not None:
            if pid is None:
                raise TransportError(
                    f"device '{self.device.name}': port {self.port} on 127.0.0.1 is answered by a process edgectl "
                    f"did not start for this device (it says {health})",
                    hint=f"stop that process, or give the device another port: `agent: {{port: {self.port + 1}}}` "
                         "in the fleet manifest")
            if health.get("version") == AGENT_VERSION:
                return self._client()
            if not start:
                return self._client()
            self.stop()  # older agent of ours: replace it
        elif not start:
            return None
        self._start()
        return self._client()

    def _client(self) -> AgentClient:
        token = read_token(self.root / "token", device=self.device.name)
        return AgentClient(self.base_url, token, device=self.device.name)

    def _start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pinned = self.root / VERIFY_KEY_FILE
        if self.verify_key is not None and not pinned.exists():
            pinned.write_bytes(self.verify_key)
        argv = agent_argv(self.root, self.port, verify_key_file=pinned if pinned.exists() else None)
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=log, start_new_session=True, cwd=self.root)
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise TransportError(
                    f"device '{self.device.name}': the local agent exited at start (code {proc.returncode}):\n"
                    f"{self._log_tail()}",
                    hint=f"full log: {self.log_file}")
            health = self._health()
            if health and health.get("status") == "ok":
                return
            time.sleep(0.1)
        raise TransportError(f"device '{self.device.name}': the local agent did not answer within "
                             f"{START_TIMEOUT_S:.0f} s", hint=f"see its log: {self.log_file}")

    def stop(self) -> bool:
        """Stop the agent edgectl started for this device. True if one was running."""
        pid = self._our_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
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

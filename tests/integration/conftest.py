"""Integration fixtures: real `edgectl-agent serve` processes on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AgentProcess:
    """A real agent process; ``log`` holds its stderr."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = root.parent / f"{root.name}-agent-{port}.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgectl_agent", "serve", "--root", str(root), "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self._wait_healthy()
        self.token = (root / "token").read_text().strip()
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"agent did not answer /healthz:\n{self.log.read_text()}")

    def wait_ready(self) -> dict:
        """Poll /readyz until the deployments in state.json serve (bounded; not a timing assertion)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        body: dict = {}
        while time.monotonic() < deadline:
            r = httpx.get(f"{self.url}/readyz", timeout=5.0)
            body = r.json()
            if r.status_code == 200:
                return body
            if any("failed" in reason for reason in body.get("reasons", [])):
                break
            time.sleep(0.05)
        raise AssertionError(f"agent not ready: {body}\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator:
    """``start_agent(root=None, port=None)`` starts a real agent; every one started is stopped at teardown."""
    started: list[AgentProcess] = []

    def start(root: Path | None = None, port: int | None = None) -> AgentProcess:
        a = AgentProcess(root or tmp_path / "agent-root", port or free_port())
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()

"""The one small interface every transport implements: run an argv, put a file, reach the agent's port.

A transport knows nothing about the agent's lifecycle (edgectl.agents does): it is a pipe to one device.
"""

from __future__ import annotations

import shlex
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Sequence

import httpx
from edgectl_agent.api import Facts

from edgectl.errors import TransportError
from edgectl.spec import Device


class Transport(ABC):
    kind: ClassVar[str]  # the device's transport.type (the key of edgectl.transport.TRANSPORTS)

    def __init__(self, device: Device) -> None:
        self.device = device

    @property
    def name(self) -> str:
        return self.device.name

    @abstractmethod
    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a command on the device. ``argv`` is a list, never a shell string."""

    @abstractmethod
    def put_file(self, local: Path, remote: Path | str) -> None:
        """Copy a file to the device, verified (sha256) before it takes its final name."""

    @abstractmethod
    def http_transport(self) -> httpx.BaseTransport | None:
        """The channel to the agent's port: an httpx transport whose connections reach ``base_url`` as the device
        sees it (None: plain TCP on this machine reaches it)."""

    @property
    @abstractmethod
    def base_url(self) -> str:
        """The agent's URL as requests through ``http_transport()`` address it."""

    @property
    def endpoint(self) -> str:
        """Base URL of the OpenAI-compatible API as a user on the device reaches it."""
        return f"{self.base_url}/v1"

    def facts_without_agent(self) -> Facts | None:
        """Observed hardware when no agent runs yet, if the transport can tell without side effects (else the
        profile stands in)."""
        return None

    def check(self, argv: Sequence[str], *, timeout: float = 60.0, what: str = "") -> str:
        """Run and return stdout; a non-zero exit is a TransportError with the command's output."""
        r = self.run(argv, timeout=timeout)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip()[-1500:]
            raise TransportError(f"device '{self.name}': {what or argv[0]} failed (exit {r.returncode}): {tail}",
                                 hint=f"the command was: {self.show_argv(argv)}")
        return r.stdout

    def show_argv(self, argv: Sequence[str]) -> str:
        return shlex.join(argv)

    def close(self) -> None:
        """Release connections (nothing to do for transports without any)."""

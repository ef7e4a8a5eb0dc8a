"""The one small interface every transport implements."""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Sequence

from edgectl_agent.api import Facts

from edgectl.agent_client import AgentClient
from edgectl.spec import Device


class Transport(ABC):
    def __init__(self, device: Device) -> None:
        self.device = device

    @abstractmethod
    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run a command on the device. ``argv`` is a list, never a shell string."""

    @abstractmethod
    def put_file(self, local: Path, remote: Path) -> None:
        """Copy a file to the device, verified."""

    @abstractmethod
    def agent(self, *, start: bool, runtimes: Iterable[str] = ()) -> AgentClient | None:
        """A client for the device's agent. ``start=True`` installs/starts it when needed (with the libraries of
        ``runtimes``, the ones the plan chose for it); ``start=False`` returns None when no agent answers (used by
        read-only commands: plan, status)."""

    def close(self) -> None:
        """Release connections (nothing to do for transports without any)."""

    @abstractmethod
    def facts_without_agent(self) -> Facts | None:
        """Observed hardware when no agent runs yet, if the transport can tell without side effects."""

    @property
    @abstractmethod
    def endpoint(self) -> str:
        """Base URL of the OpenAI-compatible API as a user on the device reaches it."""

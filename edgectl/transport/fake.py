"""Fake transport, shipped for tests and demos: a "device" that is a folder on this machine, whose agent runs
in-process (edgectl.agents.install_inprocess, the fake runtime) on 127.0.0.1 behind the same interface as every
other transport. Every command it runs is recorded in ``commands``.

Its real counterparts (local, ssh, docker) keep their real tests; this one makes the agent lifecycle testable in
well under a second per case.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import ClassVar, Sequence

from edgectl.paths import edgectl_home
from edgectl.spec import Device
from edgectl.transport.local import LocalTransport


class FakeTransport(LocalTransport):
    kind: ClassVar[str] = "fake"

    def __init__(self, device: Device, *, root: Path | None = None) -> None:
        super().__init__(device, root=root or edgectl_home() / "fake-devices" / device.name)
        self.commands: list[list[str]] = []
        self.puts: list[str] = []

    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of arguments, not a shell string")
        self.commands.append(list(argv))
        return super().run(argv, timeout=timeout)

    def put_file(self, local: Path, remote: Path | str) -> None:
        self.puts.append(str(remote))
        super().put_file(local, remote)

    def facts_without_agent(self):
        return None  # like a remote device: without its agent, the profile stands in

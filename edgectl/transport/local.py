"""Local transport: this machine is the device. Commands run here, files are copied here, the agent is reached on
127.0.0.1 (its lifecycle, a detached process under edgectl's home, is edgectl.agents.install_local)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import ClassVar, Sequence

import httpx
from edgectl_agent.api import Facts

from edgectl.errors import TransportError
from edgectl.paths import local_agent_root
from edgectl.transport.base import Transport


class LocalTransport(Transport):
    kind: ClassVar[str] = "local"

    def __init__(self, device, *, root: Path | None = None) -> None:
        super().__init__(device)
        self.root = root or local_agent_root(device.name)  # the agent's root (its store, state, token, log)
        self.port = device.agent.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess:
        if isinstance(argv, str):
            raise TypeError("argv must be a list of arguments, not a shell string")
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)

    def put_file(self, local: Path, remote: Path | str) -> None:
        """Copy into ``<remote>.part``, check its sha256 against the source's, then rename into place."""
        remote = Path(remote)
        remote.parent.mkdir(parents=True, exist_ok=True)
        tmp = remote.with_name(remote.name + ".part")
        shutil.copyfile(local, tmp)
        if sha256_file(tmp) != sha256_file(local):
            tmp.unlink(missing_ok=True)
            raise TransportError(f"device '{self.name}': {remote} was copied corrupted; the partial file was removed",
                                 hint=f"retry; if it repeats, check the disk holding {remote.parent}")
        os.replace(tmp, remote)

    def http_transport(self) -> httpx.BaseTransport | None:
        return None  # plain TCP to 127.0.0.1

    def facts_without_agent(self) -> Facts | None:
        from edgectl_agent.facts import collect_facts

        return collect_facts(self.root if self.root.exists() else Path.home())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

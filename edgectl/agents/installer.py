"""The interface every agent installer implements, and the one way each pins the fleet's verify key.

An installer knows how one kind of target gets, runs and loses an agent (a detached process in edgectl's home, a
venv + wheelhouse over SSH, an image + container on Docker, an in-process agent for tests); the lifecycle
(edgectl.agents.lifecycle) decides when. Per-platform wheelhouses and pull enrolment plug in here: a new target is
one more Installer, registered in edgectl.agents.INSTALLERS.
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Iterable

from edgectl.errors import EdgectlError
from edgectl.paths import VERIFY_KEY_FILE
from edgectl.progress import StageProgress
from edgectl.transport.base import Transport

# prints "yes" when the verify key file exists (the agent root is pinned), nothing otherwise
PINNED_SCRIPT = 'if [ -e "$1" ]; then echo yes; fi'


class Installer(ABC):
    """How one kind of target gets, runs and loses an agent. ``verify_key``: the fleet's public signing key (PEM)
    that the agent is pinned to, or None when the fleet does not sign."""

    start_timeout_s: ClassVar[float] = 60.0
    # the target restarts a crashed agent by itself (Docker's restart policy): a running agent found on reuse may
    # be reloading its deployments, so the lifecycle waits for that as after its own starts
    restarts_by_itself: ClassVar[bool] = False

    def __init__(self, transport: Transport, *, verify_key: bytes | None = None) -> None:
        self.transport = transport
        self.verify_key = verify_key
        # long work of an install (a cross-build, pushing and building sources on the device) reports here
        self.progress: StageProgress | None = None

    @property
    def name(self) -> str:
        return self.transport.name

    @abstractmethod
    def token(self) -> str | None:
        """The device token of the agent this installer manages; None when none of ours is there (yet)."""

    @abstractmethod
    def not_ours(self, health: dict) -> EdgectlError:
        """The error for an agent that answers on the device's port without a token of ours (another process)."""

    def current(self, runtimes: list[str]) -> bool:
        """Whether what is installed runs ``runtimes`` as this version of edgectl wants it (beyond the running
        agent's version, which the lifecycle checks)."""
        return True

    @abstractmethod
    def install(self, runtimes: list[str]) -> None:
        """Make this agent version with the libraries of ``runtimes`` ready to start, pinned to ``verify_key``."""

    @abstractmethod
    def start(self) -> None:
        """Start the installed agent (it answers on the device's port soon after)."""

    @abstractmethod
    def running(self) -> bool:
        """Whether the agent started last is still alive (the wait for it stops early when not)."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop the agent this installer manages. True if one was running."""

    @abstractmethod
    def start_failed(self) -> EdgectlError:
        """The error for an agent that did not come up: what its log says, where the full log is."""


def pinned_path_argv(path: str) -> list[str]:
    return ["sh", "-c", PINNED_SCRIPT, "edgectl-agent-pinned", path]


def pin_verify_key(transport: Transport, path: str, verify_key: bytes | None) -> str | None:
    """The agent root's pinned verify key file ``path``, written through the transport from ``verify_key`` when the
    fleet signs and the root has none (trust on first use; an existing file is never replaced: a changed fleet key
    is refused by apply until someone replaces it by hand). None: the root is not pinned, its agent does not
    verify. A root pinned earlier stays pinned even when its fleet no longer signs."""
    if transport.check(pinned_path_argv(path), what="looking for the agent's verify key").strip() == "yes":
        return path
    if verify_key is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / VERIFY_KEY_FILE
        key.write_bytes(verify_key)
        transport.put_file(key, path)
    return path


def sorted_runtimes(runtimes: Iterable[str]) -> list[str]:
    return sorted(set(runtimes))

"""What apply reports: events while it works (the CLI renders them), and per device what happened at the end."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from edgectl.plan import Plan
from edgectl.runs import RunRecord


class Events:
    """What apply reports while it works. The CLI subclasses this to render with Rich; the default is silent.
    Devices of a wave report from several threads."""

    def info(self, device: str | None, message: str) -> None:  # noqa: D401 - callback
        pass

    def progress(self, key: str, description: str, done: int, total: int) -> None:
        pass


class Recorded(Events):
    """Forwards events (one at a time) and copies the messages into the run record."""

    def __init__(self, inner: Events, record: RunRecord | None) -> None:
        self.inner, self.record, self._lock = inner, record, threading.Lock()

    def info(self, device: str | None, message: str) -> None:
        with self._lock:
            self.inner.info(device, message)
        if self.record is not None:
            self.record.event(device, message)

    def progress(self, key: str, description: str, done: int, total: int) -> None:
        with self._lock:
            self.inner.progress(key, description, done, total)


@dataclass
class DeviceResult:
    device: str
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    endpoint: str | None = None
    serving: list[str] = field(default_factory=list)


@dataclass
class ApplyResult:
    plan: Plan
    devices: list[DeviceResult]
    halted: list[str] = field(default_factory=list)  # why a deployment's rollout stopped early

    @property
    def ok(self) -> bool:
        return not self.failed and not self.halted

    @property
    def failed(self) -> list[DeviceResult]:
        return [d for d in self.devices if d.error]

    @property
    def changed(self) -> bool:
        return any(d.actions for d in self.devices)

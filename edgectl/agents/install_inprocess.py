"""In-process installer, for the fake transport: the agent app (``create_app`` with the fake runtime) served by
uvicorn in a thread of this process on the device's 127.0.0.1 port, its root in the fake device's folder.

Nothing is installed; the verify key is pinned through the transport exactly as on every other target. Agents
outlive the links that started them (as on a real device): they are kept per root until ``stop()``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from edgectl.agents.installer import VERIFY_KEY_FILE, Installer, pin_verify_key
from edgectl.errors import EdgectlError, TransportError
from edgectl.transport.fake import FakeTransport


@dataclass
class _Served:
    server: object  # uvicorn.Server
    thread: threading.Thread


_SERVED: dict[Path, _Served] = {}  # agent root -> the agent serving it in this process
_SERVED_LOCK = threading.Lock()


class InProcessInstaller(Installer):
    start_timeout_s: ClassVar[float] = 10.0

    transport: FakeTransport

    def __init__(self, transport: FakeTransport, *, verify_key: bytes | None = None) -> None:
        super().__init__(transport, verify_key=verify_key)
        self._pinned: Path | None = None

    @property
    def root(self) -> Path:
        return self.transport.root.resolve()

    def _served(self) -> _Served | None:
        with _SERVED_LOCK:
            served = _SERVED.get(self.root)
        return served if served is not None and served.thread.is_alive() else None

    def token(self) -> str | None:
        if self._served() is None:
            return None
        try:
            return (self.root / "token").read_text().strip() or None
        except OSError:
            return None

    def not_ours(self, health: dict) -> EdgectlError:
        return TransportError(f"device '{self.name}': port {self.transport.port} on 127.0.0.1 is answered by a "
                              f"process that is not this device's in-process agent (it says {health})",
                              hint="stop that process, or give the fake device another agent.port")

    def install(self, runtimes: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pinned = pin_verify_key(self.transport, str(self.root / VERIFY_KEY_FILE), self.verify_key)
        self._pinned = Path(pinned) if pinned else None

    def start(self) -> None:
        import uvicorn
        from edgectl_agent.app import create_app
        from edgectl_agent.cli import bind_socket
        from edgectl_agent.runtimes.fake import FakeRuntime
        from edgectl_agent.settings import AgentSettings

        settings = AgentSettings(root=self.root, host="127.0.0.1", port=self.transport.port,
                                 verify_key_file=self._pinned)
        sock = bind_socket(settings.host, settings.port)
        app = create_app(settings, runtimes={"fake": FakeRuntime()})
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                  name=f"edgectl-agent-{self.name}")
        thread.start()
        with _SERVED_LOCK:
            _SERVED[self.root] = _Served(server, thread)

    def running(self) -> bool:
        return self._served() is not None

    def stop(self) -> bool:
        with _SERVED_LOCK:
            served = _SERVED.pop(self.root, None)
        if served is None or not served.thread.is_alive():
            return False
        served.server.should_exit = True
        served.thread.join(timeout=10)
        return True

    def start_failed(self) -> EdgectlError:
        return TransportError(f"device '{self.name}': the in-process agent did not answer within "
                              f"{self.start_timeout_s:.0f} s", hint="run with log level debug to see uvicorn's output")

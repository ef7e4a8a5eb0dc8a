"""A real CNCF Distribution registry (Debian's docker-registry) on 127.0.0.1 for the pull-mode tests.

The test writes its config: filesystem storage under a temp folder, htpasswd auth (bcrypt lines written with
`htpasswd -B`, apache2-utils), a free port. ``scripts/setup.sh test`` installs both packages; a missing one fails
the test (never a silent skip)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx

REGISTRY_BIN = "/usr/bin/docker-registry"
CONFIG = """\
version: 0.1
log: {{level: warn}}
storage:
  filesystem: {{rootdirectory: {root}}}
  delete: {{enabled: true}}
http:
  addr: 127.0.0.1:{port}
"""
AUTH = """\
auth:
  htpasswd: {{realm: edgectl-test, path: {htpasswd}}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """``users``: name -> password (htpasswd; empty: no auth). Start/stop keeps its storage, so a restarted registry serves the
    same content."""

    def __init__(self, base: Path, users: dict[str, str], *, proxy_of: tuple[str, str, str] | None = None) -> None:
        """``proxy_of``: (origin URL, user, password): a pull-through cache (a site mirror) of that registry."""
        missing = [b for b in (REGISTRY_BIN, "htpasswd") if shutil.which(b) is None]
        if missing:
            raise AssertionError(f"{', '.join(missing)} not installed: run `scripts/setup.sh test` (Debian packages "
                                 "docker-registry and apache2-utils)")
        base.mkdir(parents=True, exist_ok=True)
        self.base, self.port = base, _free_port()
        self.address = f"127.0.0.1:{self.port}"
        htpasswd = base / "htpasswd"
        for i, (user, password) in enumerate(users.items()):
            subprocess.run(["htpasswd", "-B", "-b", *(["-c"] if i == 0 else []), str(htpasswd), user, password],
                           check=True, capture_output=True)
        self.config = base / "config.yml"
        config = CONFIG.format(root=base / "storage", port=self.port)
        if users:  # none: anonymous (Distribution 2.8's proxy mode logs in upstream only with token auth)
            config += AUTH.format(htpasswd=htpasswd)
        if proxy_of is not None:
            url, user, password = proxy_of
            config += f"proxy: {{remoteurl: {url}, username: {user}, password: {password}}}\n"
        self.config.write_text(config)
        self.log = base / "registry.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Registry:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(self.config)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"docker-registry exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                httpx.get(f"http://{self.address}/v2/", timeout=1.0)
                return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"docker-registry did not answer:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

"""Crash-loop protection: an artifact whose loading kills the agent again and again is marked broken.

Before the agent loads an artifact (at activation or at start) it records the attempt in ``<root>/attempts.json``
(written atomically), and removes it once the load and the smoke inference returned, whatever their outcome. An
attempt still recorded at the next start is one that died with the process: a crash. ``limit`` crashes of one
artifact within ``window_s`` mark it broken for good: the agent serves the previous artifact instead and refuses
to load it again. A rebuilt artifact (another digest) starts with a clean record; deleting attempts.json forgets
every record.

A failure to write the record (a full disk) is logged and loading goes on: the protection is lost for that load,
the service is not.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from edgectl_agent.errors import BadRequest, Unprocessable
from edgectl_agent.store import digest_hex, write_atomic

log = logging.getLogger(__name__)

ATTEMPTS_VERSION = 1


class LoadAttempts:
    def __init__(self, root: Path, *, limit: int, window_s: float, clock: Callable[[], float] = time.time) -> None:
        self.path = root / "attempts.json"
        self.limit, self.window_s, self._clock = limit, window_s, clock
        self._open: dict[str, list[float]] = {}  # digest -> start times of attempts not known to have finished
        self._broken: dict[str, float] = {}  # digest -> when it was marked broken
        self._read()

    def _read(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
            since = self._clock() - self.window_s  # older attempts no longer count: the file stays small
            self._open = {d: [float(t) for t in ts if float(t) >= since] for d, ts in raw.get("open", {}).items()
                          if _valid(d)}
            self._broken = {d: float(t) for d, t in raw.get("broken", {}).items() if _valid(d)}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, AttributeError) as e:
            log.warning("ignoring unreadable %s (crash-loop records start empty): %s", self.path, e)

    def _write(self) -> None:
        body = {"version": ATTEMPTS_VERSION, "open": {d: ts for d, ts in sorted(self._open.items()) if ts},
                "broken": dict(sorted(self._broken.items()))}
        write_atomic(self.path, (json.dumps(body, indent=2) + "\n").encode())

    def crashes(self, digest: str) -> int:
        """Attempts to load ``digest`` that died with the agent within the window."""
        since = self._clock() - self.window_s
        return sum(1 for t in self._open.get(digest, ()) if t >= since)

    def check(self, digest: str) -> None:
        """Unprocessable when ``digest`` is broken (marking it so when it just reached the limit)."""
        if digest not in self._broken and self.crashes(digest) >= self.limit:
            self._broken[digest] = self._clock()
            log.error("artifact %s crashed the agent %d times within %.0f s: marked broken", digest,
                      self.crashes(digest), self.window_s)
            self._save("marking it broken")
        if digest in self._broken:
            raise Unprocessable(
                f"artifact {digest} crashed the agent {self.limit} times while loading within "
                f"{self.window_s / 60:g} min and is marked broken; the agent will not load it again",
                hint="rebuild the artifact or choose another one (another quant type or runtime); to try this exact "
                     f"artifact again anyway, delete {self.path} on the device", type="artifact_broken",
                code=digest)

    def begin(self, digest: str) -> float:
        """Record an attempt to load ``digest`` (durably, before loading); returns its token for ``end``."""
        started = self._clock()
        self._open.setdefault(digest, []).append(started)
        self._save("recording the load attempt")
        return started

    def end(self, digest: str, token: float) -> None:
        """The attempt ``token`` returned (loaded or failed, without killing the agent): it was no crash."""
        started = self._open.get(digest, [])
        if token in started:
            started.remove(token)
            self._save("clearing the load attempt")

    def _save(self, doing: str) -> None:
        try:
            self._write()
        except OSError as e:
            log.warning("cannot write %s while %s (crash-loop protection skips this load): %s", self.path, doing, e)


def _valid(digest: str) -> bool:
    try:
        digest_hex(digest)
    except BadRequest:
        return False
    return True

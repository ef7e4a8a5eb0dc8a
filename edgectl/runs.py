"""Run records: every `edgectl apply` (and rollback) writes what it planned, what happened per device, and the
outcome, as one JSON file under ``<EDGECTL_HOME>/runs/``. `edgectl runs` lists and shows them."""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgectl.errors import NotFoundError
from edgectl.paths import edgectl_home

RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
KEEP = 200  # newest records kept; older ones are deleted when a new run is written


def runs_dir() -> Path:
    return edgectl_home() / "runs"


class RunRecord:
    """Collects one run's events (thread-safe: devices of a wave report concurrently) and writes the record."""

    def __init__(self, command: str, manifests: list[str] | None = None) -> None:
        now = datetime.now(timezone.utc)
        self.id = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
        self.data: dict[str, Any] = {"id": self.id, "command": command, "manifests": manifests or [],
                                     "started_at": now.isoformat(), "finished_at": None, "outcome": None,
                                     "plan": None, "waves": [], "devices": [], "events": []}
        self._lock = threading.Lock()

    def event(self, device: str | None, message: str) -> None:
        with self._lock:
            self.data["events"].append({"t": datetime.now(timezone.utc).isoformat(), "device": device,
                                        "message": message})

    def wave(self, deployment: str, index: int, devices: list[str], *, canary: bool) -> dict:
        with self._lock:
            w = {"deployment": deployment, "index": index, "canary": canary, "devices": devices, "outcome": None}
            self.data["waves"].append(w)
            return w

    def finish(self, outcome: str, *, plan: dict | None = None, devices: list[dict] | None = None) -> Path:
        self.data.update(finished_at=datetime.now(timezone.utc).isoformat(), outcome=outcome)
        if plan is not None:
            self.data["plan"] = plan
        if devices is not None:
            self.data["devices"] = devices
        folder = runs_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.id}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(tmp, path)
        for old in sorted(folder.glob("*.json"))[:-KEEP]:
            old.unlink(missing_ok=True)
        return path


def list_runs() -> list[dict]:
    """Every kept record, newest first (without their events)."""
    out = []
    for path in sorted(runs_dir().glob("*.json"), reverse=True):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data.pop("events", None)
        out.append(data)
    return out


def load_run(run_id: str) -> dict:
    """One record by id, or by a unique prefix of it; 'last' is the newest."""
    paths = sorted(runs_dir().glob("*.json"))
    if run_id == "last":
        matches = paths[-1:]
    else:
        if not re.fullmatch(r"[0-9TZ-]{1,24}[0-9a-f]{0,6}", run_id):
            raise NotFoundError(f"{run_id!r} is not a run id", hint="run ids look like 20261123T104800Z-1a2b3c; "
                                                                    "`edgectl runs` lists them")
        matches = [p for p in paths if p.stem.startswith(run_id)]
    if len(matches) != 1:
        what = "no run" if not matches else f"{len(matches)} runs"
        raise NotFoundError(f"{what} with id {run_id!r}", hint="`edgectl runs` lists them; give more of the id")
    return json.loads(matches[0].read_text())

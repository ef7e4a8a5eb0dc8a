"""Shared by the bench scripts: machine and version facts, and docs/benchmarks.md, one section per script.

Each script replaces its own section (between ``<!-- bench:NAME -->`` markers) with a fresh table headed by the date,
the machine and the versions it ran with; the other sections are left as they were.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Written by the scripts in `bench/` (each replaces its own section). Peers are measured in the same run on the same
machine and the figures that matter are their ratios: absolute times on a shared machine are noisy. Targets are
goals, not test assertions; a missed target is reported as missed.
"""


# read when a script imports this module, i.e. when it starts (a section is written at the end, when the script's
# own work has raised the load)
LOAD_AT_START = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = 0
    return f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, load {LOAD_AT_START:.1f} at start"


def versions(*dists: str) -> str:
    out = [f"Python {sys.version.split()[0]}"]
    for d in ("edgectl", *dists):
        try:
            out.append(f"{d} {metadata.version(d)}")
        except metadata.PackageNotFoundError:
            out.append(f"{d} (not installed)")
    return ", ".join(out)


def table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, *, dists: tuple[str, ...] = ()) -> Path:
    """Replace section ``name`` of docs/benchmarks.md with ``body`` (markdown) under a dated header."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- bench:{name} -->\n## {title}\n\n`bench/{name}.py`, {stamp}; {machine()}; "
               f"{versions(*dists)}.\n\n{body.strip()}\n<!-- /bench:{name} -->")
    text = DOC.read_text() if DOC.exists() else HEADER
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _m: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    return DOC

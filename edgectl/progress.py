"""Progress reporting shared by long work (builds, conversions, pushes): the library never prints.

A ``StageProgress`` is a callback ``(stage, done, total)``: e.g. ("quantize", 3, 10); ``total`` is None when unknown.
The CLI passes a ``rich.progress.Progress``; :func:`stage_callback` adapts it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

StageProgress = Callable[[str, int, int | None], None]


def stage_callback(progress: Any, label: str) -> StageProgress | None:
    """Accept a plain callback, or adapt a rich Progress (one task per stage, described with ``label``)."""
    if progress is None or not hasattr(progress, "add_task"):
        return progress
    tasks: dict[str, Any] = {}

    def report(stage: str, done: int, total: int | None) -> None:
        if stage not in tasks:
            tasks[stage] = progress.add_task(f"{stage} {label}", total=total)
        progress.update(tasks[stage], completed=done, total=total)

    return report

"""One device as an inventory file writes it, before validation: its fields and where it was written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One device as read from a file: its fields (as the manifest would hold them) and where it was written."""

    data: dict[str, Any]
    file: str
    line: int
    columns: dict[str, str] = field(default_factory=dict)  # field path -> the CSV column or Ansible variable

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:1"


class RowNode:
    """A stand-in node for :func:`edgectl.spec_errors.translate`: every field of a row is at the row's line."""

    id = "scalar"
    value = None

    def __init__(self, line: int) -> None:
        self.start_mark = type("Mark", (), {"line": line - 1, "column": 0})()


def number(text: str) -> int | str:
    """A port as a number when it is one (so an error reads 'got 99999'); anything else for pydantic to refuse."""
    return int(text) if text.isdigit() else text

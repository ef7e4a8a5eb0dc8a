"""CSV inventories: a header row, then one device per row (columns in edgectl/inventory/__init__.py)."""

from __future__ import annotations

import csv
import difflib
from typing import Any

from edgectl.errors import SpecError
from edgectl.inventory.rows import Row, number
from edgectl.spec_errors import join_path

CSV_COLUMNS = ("name", "profile", "transport", "host", "user", "port", "key_file")
LABEL_COLUMN = "label."


def read_csv(text: str, file: str, errors: list[SpecError]) -> list[Row]:
    lines = text.splitlines()
    reader = csv.reader(lines, strict=True)
    rows: list[Row] = []
    try:
        header = next(reader, None)
        if header is None:
            errors.append(SpecError("empty CSV file", where=file,
                                    hint="start with a header row, e.g. name,profile,host,user,label.site"))
            return []
        header = [h.strip() for h in header]
        if not _csv_header_ok(header, file, errors):
            return []
        start = reader.line_num + 1
        for cells in reader:
            line = start
            start = reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue  # a blank line
            if len(cells) != len(header):
                errors.append(SpecError(f"this row has {len(cells)} cells, the header {len(header)}",
                                        where=f"{file}:{line}:1",
                                        hint="give every row one cell per header column (empty cells are allowed: "
                                             "a,,b); quote cells that contain a comma"))
                continue
            rows.append(_csv_row(dict(zip(header, (c.strip() for c in cells))), file, line))
    except csv.Error as e:
        errors.append(SpecError(f"invalid CSV: {e}", where=f"{file}:{reader.line_num}:1",
                                hint="check the quoting on this line"))
    return rows


def _csv_header_ok(header: list[str], file: str, errors: list[SpecError]) -> bool:
    ok = True
    for i, h in enumerate(header):
        if h in CSV_COLUMNS or (h.startswith(LABEL_COLUMN) and len(h) > len(LABEL_COLUMN)):
            if header.index(h) != i:
                errors.append(SpecError(f"column '{h}' appears twice", where=f"{file}:1:1", hint="keep one of them"))
                ok = False
            continue
        close = difflib.get_close_matches(h, CSV_COLUMNS, n=1, cutoff=0.6)
        errors.append(SpecError(f"unknown column '{h}'", where=f"{file}:1:1",
                                hint=(f"did you mean '{close[0]}'? " if close else "") +
                                     f"columns: {', '.join(CSV_COLUMNS)}, and label.<key> for each label"))
        ok = False
    if "name" not in header:
        errors.append(SpecError("no 'name' column", where=f"{file}:1:1",
                                hint="add a 'name' column: every device needs a unique name"))
        ok = False
    return ok


def _csv_row(cells: dict[str, str], file: str, line: int) -> Row:
    kind = cells.get("transport") or "ssh"
    transport: dict[str, Any] = {"type": kind}
    data: dict[str, Any] = {"transport": transport}
    columns = {"transport": "transport"}
    labels: dict[str, str] = {}
    for column, value in cells.items():
        if not value or column == "transport":
            continue
        if column.startswith(LABEL_COLUMN):
            labels[column[len(LABEL_COLUMN):]] = value
            columns[join_path("labels", column[len(LABEL_COLUMN):])] = column
        elif column in ("host", "user", "port", "key_file"):
            transport[column] = number(value) if column == "port" else value
            columns[f"transport.{column}"] = column
        else:
            data[column] = value
            columns[column] = column
    if labels:
        data["labels"] = labels
    return Row(data, file, line, columns)

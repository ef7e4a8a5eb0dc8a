"""Device inventories for large fleets: a Fleet's ``spec.inventory`` names CSV files and Ansible inventories (INI or
YAML) next to the manifest; each row or host becomes a :class:`~edgectl.spec.Device`, checked like a device written
in the manifest, with ``file:line`` in every error.

CSV: a header row, then one device per row. Columns: ``name`` (required), ``profile``, ``transport`` (``ssh`` or
``pull``; default ``ssh``), ``host``, ``user``, ``port``, ``key_file``, and ``label.<key>`` per label; an empty cell
is an absent value.

Ansible: every host is an SSH device named after the host; ``ansible_host`` (default: the host name),
``ansible_user``, ``ansible_port`` and ``ansible_ssh_private_key_file`` make its transport
(``ansible_connection=local``: this machine), ``edgectl_profile`` its profile, and every group it belongs to (not
``all`` or ``ungrouped``) a label ``<group>: "true"``. Group variables apply to the hosts of the group and of its
children, host variables win. Host ranges (``pi-[01:50].shop``, ``[a:f]``, ``[01:50:2]``) are expanded. Other
variables are Ansible's business and ignored.

The source's ``profile`` fills in a device with none; its ``labels`` are added to every device (a device's own
label of the same key wins). Reads files, writes nothing; no Ansible needed.
"""

from __future__ import annotations

import csv
import re
import shlex
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from edgectl.errors import SpecError
from edgectl.spec import Device, Fleet
from edgectl.spec.fleet import FleetSpec, InventorySource
from edgectl.spec_errors import join_path, translate

CSV_COLUMNS = ("name", "profile", "transport", "host", "user", "port", "key_file")
LABEL_COLUMN = "label."
SKIPPED_GROUPS = ("all", "ungrouped")
MAX_INVENTORY_BYTES = 64 * 2**20
MAX_RANGE = 100_000  # hosts one pattern may expand to


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


class _At:
    """A stand-in node for :func:`edgectl.spec_errors.translate`: every field of a row is at the row's line."""

    id = "scalar"
    value = None

    def __init__(self, line: int) -> None:
        self.start_mark = type("Mark", (), {"line": line - 1, "column": 0})()


# ---------------------------------------------------------------------------------------------------------------
# The fleet


def expand_fleet(fleet: Fleet, base: Path, where: Callable[[tuple], str], errors: list[SpecError],
                 read_names: set[str]) -> tuple[Fleet, dict[int, str]] | None:
    """``fleet`` with the devices of its inventory files appended, and the place (``file:line:column``) of each of
    those devices by index; None (and ``errors`` extended) when a file is missing or a row is invalid.
    ``base`` is the manifest's folder; ``where(loc)`` the position of a path in the manifest. ``read_names``
    receives the name of every device read (so a broken inventory causes no knock-on 'unknown device' errors)."""
    before = len(errors)
    spec = fleet.spec
    places: dict[str, Callable[[], str]] = {
        d.name: (lambda i=i: where(("spec", "devices", i, "name"))) for i, d in enumerate(spec.devices)}
    devices = list(spec.devices)
    device_places: dict[int, str] = {}
    for i, source in enumerate(spec.inventory):
        for row in read_source(source, base, where(("spec", "inventory", i)), errors):
            if isinstance(row.data.get("name"), str):
                read_names.add(row.data["name"])
            device = validate_row(row, source, errors)
            if device is None:
                continue
            if device.name in places:
                errors.append(SpecError(
                    f"duplicate device name '{device.name}'", where=row.where, field="name",
                    hint=f"'{device.name}' is already a device at {places[device.name]()}; device names must be "
                         "unique in a fleet: rename or remove one"))
                continue
            places[device.name] = (lambda w=row.where: w)
            device_places[len(devices)] = row.where
            devices.append(device)
    if len(errors) > before:
        return None
    try:
        merged = FleetSpec.model_validate({**{k: getattr(spec, k) for k in FleetSpec.model_fields}, "devices": devices})
    except ValidationError as e:
        for err in e.errors():
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            errors.append(SpecError(msg, where=where(("spec", "inventory")), field="spec.inventory",
                                    hint="fix the devices this inventory lists, or the fleet's settings"))
        return None
    return fleet.model_copy(update={"spec": merged}), device_places


def validate_row(row: Row, source: InventorySource, errors: list[SpecError]) -> Device | None:
    """The Device a row describes (the source's profile and labels filled in), or None with its errors added."""
    data = dict(row.data)
    if "profile" not in data and source.profile is not None:
        data["profile"] = source.profile
    data["labels"] = {**source.labels, **data.get("labels", {})}
    try:
        return Device.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            spec_error = translate(err, Device, _At(row.line), row.file)
            column = _column_of(spec_error.field or "", row.columns)
            if column is not None:
                spec_error.field = column
            if spec_error.message == "missing required field":
                spec_error.hint = _missing_hint(spec_error.field or "", row)
            errors.append(spec_error)
        return None


def _column_of(field_path: str, columns: dict[str, str]) -> str | None:
    for path in sorted(columns, key=len, reverse=True):
        if field_path == path or field_path.startswith((path + "[", path + ".")):
            return columns[path]
    return None


def _missing_hint(field_path: str, row: Row) -> str:
    name = field_path.split(".")[-1]
    if row.file.lower().endswith(".csv"):
        return (f"fill the '{name}' column of this row" + (", or set 'profile:' on this inventory source in the "
                                                           "manifest" if name == "profile" else ""))
    return ("set it on this host (e.g. edgectl_profile=<profile>), on a group (:vars), or 'profile:' on this "
            "inventory source in the manifest" if name == "profile" else f"set {name} on this host")


# ---------------------------------------------------------------------------------------------------------------
# Files


def read_source(source: InventorySource, base: Path, entry: str, errors: list[SpecError]) -> list[Row]:
    """The rows of one inventory file. ``entry``: where the manifest names it (for missing files)."""
    path = base / source.path
    try:
        inside = path.resolve().is_relative_to(base.resolve())
    except OSError:
        inside = False
    if not inside:
        errors.append(SpecError(f"inventory file '{source.path}' leads outside the manifest's folder (a symlink)",
                                where=entry, hint="keep the inventory file itself in the manifest's folder or below"))
        return []
    display = str(path)
    try:
        if path.stat().st_size > MAX_INVENTORY_BYTES:
            errors.append(SpecError(f"inventory file is larger than {MAX_INVENTORY_BYTES // 2**20} MiB",
                                    where=display, hint="split it into several inventory sources"))
            return []
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        errors.append(SpecError(f"not UTF-8 text ({e.reason} at byte {e.start})", where=display,
                                hint="save the inventory as UTF-8"))
        return []
    except OSError as e:
        errors.append(SpecError(f"cannot read inventory file '{source.path}': {e.strerror or e}", where=entry,
                                hint="check the path: it is relative to this manifest's folder"))
        return []
    if source.csv is not None:
        return read_csv(text, display, errors)
    if path.suffix in (".yml", ".yaml"):
        return read_ansible_yaml(text, display, errors)
    return read_ansible_ini(text, display, errors)


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


def _number(text: str) -> int | str:
    """A port as a number when it is one (so an error reads 'got 99999'); anything else for pydantic to refuse."""
    return int(text) if text.isdigit() else text


def _csv_header_ok(header: list[str], file: str, errors: list[SpecError]) -> bool:
    import difflib

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
            transport[column] = _number(value) if column == "port" else value
            columns[f"transport.{column}"] = column
        else:
            data[column] = value
            columns[column] = column
    if labels:
        data["labels"] = labels
    return Row(data, file, line, columns)


# ---------------------------------------------------------------------------------------------------------------
# Ansible inventories


@dataclass
class _Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


@dataclass
class _Inventory:
    groups: dict[str, _Group] = field(default_factory=dict)
    host_vars: dict[str, dict[str, str]] = field(default_factory=dict)
    host_line: dict[str, int] = field(default_factory=dict)

    def group(self, name: str) -> _Group:
        return self.groups.setdefault(name, _Group(name))

    def add_host(self, group: str, host: str, variables: dict[str, str], line: int) -> None:
        self.group(group).hosts.append(host)
        self.host_line.setdefault(host, line)
        self.host_vars.setdefault(host, {}).update(variables)


_RANGE = re.compile(r"\[([0-9a-z]+):([0-9a-z]+)(?::([0-9]+))?\]")


def expand_hosts(pattern: str) -> list[str]:
    """Ansible's host ranges: ``pi-[01:03]`` -> pi-01, pi-02, pi-03; ``[a:c]``; ``[0:10:5]``. ValueError when
    a range is malformed or too large."""
    m = _RANGE.search(pattern)
    if m is None:
        return [pattern]
    first, last, step = m.group(1), m.group(2), int(m.group(3) or 1)
    if first.isdigit() and last.isdigit():
        width = len(first) if first.startswith("0") else 0
        items = [str(n).zfill(width) for n in range(int(first), int(last) + 1, max(step, 1))]
    elif len(first) == len(last) == 1 and first.isalpha() and last.isalpha():
        letters = string.ascii_lowercase
        items = list(letters[letters.index(first):letters.index(last) + 1:max(step, 1)])
    else:
        raise ValueError(f"host range [{m.group(0)[1:-1]}] is neither numbers nor single letters")
    if not items or len(items) > MAX_RANGE:
        raise ValueError(f"host range {m.group(0)} gives {len(items)} hosts (allowed: 1 to {MAX_RANGE})")
    head, tail = pattern[:m.start()], pattern[m.end():]
    return [h for item in items for h in expand_hosts(head + item + tail)]


def _key_values(words: list[str], file: str, line: int, errors: list[SpecError]) -> dict[str, str]:
    out: dict[str, str] = {}
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            errors.append(SpecError(f"expected key=value, got {w!r}", where=f"{file}:{line}:1",
                                    hint="write host variables as key=value after the host name"))
            continue
        out[key] = value
    return out


def read_ansible_ini(text: str, file: str, errors: list[SpecError]) -> list[Row]:
    inv = _Inventory()
    section, kind = "ungrouped", "hosts"
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            m = re.fullmatch(r"\[([A-Za-z0-9_.-]+)(?::(vars|children))?\]", line)
            if m is None:
                errors.append(SpecError(f"invalid section header {line!r}", where=f"{file}:{n}:1",
                                        hint="write [group], [group:vars] or [group:children]"))
                section, kind = "", "skip"
                continue
            section, kind = m.group(1), m.group(2) or "hosts"
            inv.group(section)
            continue
        if kind == "skip":
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as e:
            errors.append(SpecError(f"cannot split this line: {e}", where=f"{file}:{n}:1", hint="close the quote"))
            continue
        if not words:
            continue
        if kind == "vars":
            key, eq, value = line.partition("=")
            if not eq:
                errors.append(SpecError(f"expected key=value in [{section}:vars], got {line!r}",
                                        where=f"{file}:{n}:1", hint="write one variable per line: key=value"))
                continue
            parts = shlex.split(value, comments=True)
            inv.group(section).vars[key.strip()] = parts[0] if parts else ""
        elif kind == "children":
            inv.group(section).children.append(words[0])
            inv.group(words[0])
        else:
            variables = _key_values(words[1:], file, n, errors)
            try:
                hosts = expand_hosts(words[0])
            except ValueError as e:
                errors.append(SpecError(str(e), where=f"{file}:{n}:1", hint="write ranges like [01:50] or [a:f]"))
                continue
            for host in hosts:
                inv.add_host(section, host, variables, n)
    return _rows(inv, file, errors)


def read_ansible_yaml(text: str, file: str, errors: list[SpecError]) -> list[Row]:
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.CBaseLoader if hasattr(yaml, "CBaseLoader") else yaml.BaseLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark is not None else file
        errors.append(SpecError(f"invalid YAML: {getattr(e, 'problem', None) or e}", where=where,
                                hint="check indentation and ':' after keys"))
        return []
    inv = _Inventory()
    if root is None:
        return []
    if root.id != "mapping":
        errors.append(SpecError("an Ansible YAML inventory is a mapping of groups (all: {hosts: ..., children: ...})",
                                where=_at(file, root), hint="start the file with 'all:'"))
        return []
    for key, value in root.value:
        _yaml_group(inv, key.value, value, file, errors, depth=0)
    return _rows(inv, file, errors)


def _at(file: str, node: Any) -> str:
    return f"{file}:{node.start_mark.line + 1}:{node.start_mark.column + 1}"


def _mapping(node: Any) -> Iterator[tuple[Any, Any]]:
    if node is not None and node.id == "mapping":
        yield from node.value


def _yaml_group(inv: _Inventory, name: str, node: Any, file: str, errors: list[SpecError], depth: int) -> None:
    group = inv.group(name)
    if depth > 32:
        errors.append(SpecError("groups nest deeper than 32 levels", where=_at(file, node),
                                hint="flatten the inventory's children"))
        return
    if node.id == "scalar" and node.value in ("", "~", "null"):
        return
    if node.id != "mapping":
        errors.append(SpecError(f"group '{name}' must be a mapping (hosts, vars, children)", where=_at(file, node),
                                hint="write hosts:, vars: and children: under the group"))
        return
    for key, value in node.value:
        if key.value == "hosts":
            for host_key, host_value in _mapping(value):
                variables = {k.value: _scalar(v) for k, v in _mapping(host_value)}
                try:
                    hosts = expand_hosts(host_key.value)
                except ValueError as e:
                    errors.append(SpecError(str(e), where=_at(file, host_key), hint="write ranges like [01:50]"))
                    continue
                for host in hosts:
                    inv.add_host(name, host, variables, host_key.start_mark.line + 1)
        elif key.value == "vars":
            group.vars.update({k.value: _scalar(v) for k, v in _mapping(value)})
        elif key.value == "children":
            for child_key, child_value in _mapping(value):
                group.children.append(child_key.value)
                _yaml_group(inv, child_key.value, child_value, file, errors, depth + 1)
        else:
            errors.append(SpecError(f"unknown key '{key.value}' in group '{name}'", where=_at(file, key),
                                    hint="a group holds hosts:, vars: and children:"))


def _scalar(node: Any) -> str:
    return node.value if node.id == "scalar" else ""


def _rows(inv: _Inventory, file: str, errors: list[SpecError]) -> list[Row]:
    """Every host once, with its groups (ancestors included) and variables resolved."""
    parents: dict[str, set[str]] = {}
    for g in inv.groups.values():
        for child in g.children:
            parents.setdefault(child, set()).add(g.name)

    def ancestors(name: str) -> list[str]:
        seen: list[str] = []
        todo = [name]
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.append(n)
                todo += sorted(parents.get(n, ()))
        return seen

    host_groups: dict[str, set[str]] = {}
    for g in inv.groups.values():
        for host in g.hosts:
            host_groups.setdefault(host, set()).update(ancestors(g.name))
    depth_of = {g: len(ancestors(g)) for g in inv.groups}
    all_vars = inv.groups["all"].vars if "all" in inv.groups else {}
    rows = []
    for host in sorted(host_groups, key=lambda h: inv.host_line[h]):
        variables = dict(all_vars)
        for g in sorted(host_groups[host] - {"all"}, key=lambda g: (depth_of[g], g)):
            variables.update(inv.groups[g].vars)
        variables.update(inv.host_vars.get(host, {}))
        labels = {g: "true" for g in sorted(host_groups[host]) if g not in SKIPPED_GROUPS}
        rows.append(_host_row(host, variables, labels, file, inv.host_line[host]))
    return rows


def _host_row(host: str, variables: dict[str, str], labels: dict[str, str], file: str, line: int) -> Row:
    columns = {"name": "host name"}
    if variables.get("ansible_connection") == "local":
        transport: dict[str, Any] = {"type": "local"}
    else:
        transport = {"type": "ssh", "host": variables.get("ansible_host", host)}
        columns["transport.host"] = "ansible_host" if "ansible_host" in variables else "host name"
        for var, key in (("ansible_user", "user"), ("ansible_port", "port"),
                         ("ansible_ssh_private_key_file", "key_file")):
            if var in variables:
                transport[key] = _number(variables[var]) if key == "port" else variables[var]
                columns[f"transport.{key}"] = var
    data: dict[str, Any] = {"name": host, "transport": transport, "labels": labels}
    if "edgectl_profile" in variables:
        data["profile"] = variables["edgectl_profile"]
        columns["profile"] = "edgectl_profile"
    columns["labels"] = "group"
    return Row(data, file, line, columns)

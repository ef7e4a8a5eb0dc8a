"""Ansible inventories, INI and YAML, read without Ansible: hosts, groups (with children), variables, host ranges
(the mapping to devices is in edgectl/inventory/__init__.py)."""

from __future__ import annotations

import re
import shlex
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from edgectl.errors import SpecError
from edgectl.inventory.rows import Row, number

SKIPPED_GROUPS = ("all", "ungrouped")
MAX_RANGE = 100_000  # hosts one pattern may expand to


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
                transport[key] = number(variables[var]) if key == "port" else variables[var]
                columns[f"transport.{key}"] = var
    data: dict[str, Any] = {"name": host, "transport": transport, "labels": labels}
    if "edgectl_profile" in variables:
        data["profile"] = variables["edgectl_profile"]
        columns["profile"] = "edgectl_profile"
    columns["labels"] = "group"
    return Row(data, file, line, columns)

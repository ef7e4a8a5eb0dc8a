"""A Fleet's spec.inventory read into its devices: each file's rows (or the registry's enrolment records,
edgectl.inventory.registry) validated as Devices (file:line errors), names unique across the fleet, the merged
FleetSpec checked again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from edgectl.errors import SpecError
from edgectl.inventory.ansible import read_ansible_ini, read_ansible_yaml
from edgectl.inventory.csv_rows import read_csv
from edgectl.inventory.registry import RegistryRow, read_registry
from edgectl.inventory.rows import Row, RowNode
from edgectl.spec import Device, Fleet
from edgectl.spec.fleet import FleetSpec, InventorySource
from edgectl.spec_errors import translate

MAX_INVENTORY_BYTES = 64 * 2**20


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
        entry = (lambda i=i: where(("spec", "inventory", i)))
        rows = (read_registry(source.registry, spec.pull, entry, errors) if source.registry is not None
                else read_source(source, base, entry, errors))
        for row in rows:
            if isinstance(row.data.get("name"), str):
                read_names.add(row.data["name"])
            seen = len(errors)
            device = validate_row(row, source, errors)
            if isinstance(row, RegistryRow):  # no line in a registry: the error names the record
                for e in errors[seen:]:
                    e.where = row.where
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
            spec_error = translate(err, Device, RowNode(row.line), row.file)
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
    if isinstance(row, RegistryRow):
        return (f"enrol the device again with its {name}" + (", or set 'profile:' on this inventory source in the "
                                                             "manifest" if "profile" in name else ""))
    if row.file.lower().endswith(".csv"):
        return (f"fill the '{name}' column of this row" + (", or set 'profile:' on this inventory source in the "
                                                           "manifest" if name == "profile" else ""))
    return ("set it on this host (e.g. edgectl_profile=<profile>), on a group (:vars), or 'profile:' on this "
            "inventory source in the manifest" if name == "profile" else f"set {name} on this host")


def read_source(source: InventorySource, base: Path, entry: Callable[[], str], errors: list[SpecError]) -> list[Row]:
    """The rows of one inventory file. ``entry()``: where the manifest names it (for missing files; only errors
    need it, and finding it composes the manifest's node tree)."""
    path = base / source.path
    try:
        inside = path.resolve().is_relative_to(base.resolve())
    except OSError:
        inside = False
    if not inside:
        errors.append(SpecError(f"inventory file '{source.path}' leads outside the manifest's folder (a symlink)",
                                where=entry(), hint="keep the inventory file itself in the manifest's folder or below"))
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
        errors.append(SpecError(f"cannot read inventory file '{source.path}': {e.strerror or e}", where=entry(),
                                hint="check the path: it is relative to this manifest's folder"))
        return []
    if source.csv is not None:
        return read_csv(text, display, errors)
    if path.suffix in (".yml", ".yaml"):
        return read_ansible_yaml(text, display, errors)
    return read_ansible_ini(text, display, errors)

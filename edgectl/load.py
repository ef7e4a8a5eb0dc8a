"""YAML manifests -> frozen spec objects, with ``file:line:column`` in every error.

Documents are Kubernetes-style (``apiVersion: edgectl.dev/v1alpha1``, ``kind``, ``metadata``, ``spec``); a file may
hold several (``---``); a directory means every ``*.yaml``/``*.yml`` below it, sorted. Built-in device profiles and
catalog models are loaded first; a user document with the same kind and name overrides the built-in.

How it works: ruamel.yaml *composes* each document into a node tree (every key and value keeps its start mark, and
duplicate keys are still visible there), then constructs plain Python data (dict/list/str/int/float/bool/None) that
pydantic validates. Each pydantic error is mapped back onto the node tree by its ``loc`` path, so the message points
at the offending key (unknown fields) or value (wrong value), or at the enclosing mapping (missing fields).

Every error of every file is collected and raised at once as :class:`~edgectl.errors.SpecErrors` (exit code 2).

Relative ``path:`` entries of Model sources are resolved against the directory of the manifest that declares them
and stored as absolute paths (``Model.model_copy(update=...)``), so the Spec means the same thing wherever it is
used. ``Spec.sources`` still maps ``(kind, name)`` to ``"file:line"`` of the document, for messages.

Pure: reads files, writes nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

import edgectl
from edgectl.errors import SpecError, SpecErrors
from edgectl.inventory import expand_fleet
from edgectl.spec import API_VERSION, AUTO_PROFILE, KINDS, Deployment, DeviceProfile, Fleet, Model, Spec
from edgectl.spec_errors import locate, position, short, translate
from edgectl.yaml_bounds import MAX_NESTING, duplicate_keys, nesting_error, shape_error
from edgectl.yaml_events import BoundsError, NeedsFullComposer, lazy_nodes, read_documents

YAML_SUFFIXES = (".yaml", ".yml")

# ---------------------------------------------------------------------------------------------------------------
# Public API


def builtin_profiles_dir() -> Path:
    """Built-in device profiles: package data in an installed wheel, else the repository's ``profiles/``."""
    packaged = Path(edgectl.__file__).parent / "builtin_profiles"
    if packaged.is_dir():
        return packaged
    return Path(edgectl.__file__).parent.parent / "profiles"


def builtin_catalog_dir() -> Path:
    """Built-in catalog models (``edgectl/catalog/models/*.yaml``)."""
    return Path(edgectl.__file__).parent / "catalog" / "models"


def load_text(text: str, filename: str = "<string>") -> list[BaseModel]:
    """Parse and validate the documents of one YAML text (no built-ins, no cross references). For tests."""
    errors: list[SpecError] = []
    docs = _parse_and_validate(text, filename, errors)
    if errors:
        raise SpecErrors(_sorted(errors))
    return [d.obj for d in docs]


def load_paths(paths: Sequence[str | Path], *, builtins: bool = True) -> Spec:
    """Load manifests (files or directories) plus, unless ``builtins=False``, the built-in profiles and catalog.

    Raises :class:`SpecErrors` listing every problem found (schema, duplicates, unresolved references).
    """
    errors: list[SpecError] = []
    broken: set[tuple[str, str]] = set()  # (kind, name) of documents that failed: no knock-on reference errors
    seen: set[Path] = set()  # a file named twice (or inside a named directory) is read once
    builtin_docs: list[_Doc] = []
    if builtins:
        for d in (builtin_profiles_dir(), builtin_catalog_dir()):
            if d.is_dir():
                for f in _yaml_files(d):
                    seen.add(f.resolve())
                    builtin_docs += _load_file(f, str(f), errors, broken)
    user_docs: list[_Doc] = []
    if not paths:
        errors.append(SpecError("no manifest paths given", hint="pass manifest files or directories, e.g. manifests/"))
    per_file: dict[Path, tuple[list[_Doc], list[SpecError], set[tuple[str, str]]]] = {}
    inventories: set[Path] = set()  # a YAML inventory in a manifest folder is read by its Fleet, not as manifests
    for p in paths:
        _load_path(Path(p), errors, per_file, seen, inventories)
    for f, (docs, file_errors, file_broken) in per_file.items():
        if f not in inventories:
            user_docs += docs
            errors += file_errors
            broken |= file_broken

    spec = _assemble(builtin_docs, user_docs, errors, broken)
    if errors:
        raise SpecErrors(_sorted(errors))
    return spec


# ---------------------------------------------------------------------------------------------------------------
# Files and documents


@dataclass
class _Doc:
    obj: BaseModel
    node_of: Callable[[], MappingNode]  # composed on first use: only errors need the node tree
    file: str
    line: int
    device_places: dict[int, str] = dataclasses.field(default_factory=dict)  # Fleet: devices read from inventories

    @property
    def node(self) -> MappingNode:
        return self.node_of()

    def device_where(self, i: int, key: str) -> str:
        """Where the i-th device of a Fleet (or its ``key``) is written: the manifest, or an inventory file's row."""
        return self.device_places.get(i) or self.where(("spec", "devices", i, key))

    @property
    def kind(self) -> str:
        return self.obj.kind  # type: ignore[attr-defined]

    @property
    def name(self) -> str:
        return self.obj.metadata.name  # type: ignore[attr-defined]

    def where(self, loc: tuple = ()) -> str:
        return position(self.file, locate(self.node, loc, point_at_key=False))


def _yaml_files(directory: Path) -> list[Path]:
    """*.yaml / *.yml below ``directory``, sorted; hidden directories (.git, .venv) are skipped, symlinked
    directories are not followed (no loops)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if f.endswith(YAML_SUFFIXES) and not f.startswith(".")]
    return sorted(found)


def _load_path(path: Path, errors: list[SpecError], per_file: dict[Path, tuple[list[_Doc], list[SpecError], set]],
               seen: set[Path], inventories: set[Path]) -> None:
    if path.is_dir():
        files = _yaml_files(path)
        if not files:
            errors.append(SpecError(f"directory '{path}' holds no *.yaml or *.yml files",
                                    hint="point at the manifest files, or at a directory that contains them"))
    elif path.exists():
        files = [path]
    else:
        errors.append(SpecError(f"'{path}' does not exist",
                                hint="check the path (relative to the current directory); "
                                     "pass manifest files or directories of *.yaml files"))
        return
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            file_errors: list[SpecError] = []
            file_broken: set[tuple[str, str]] = set()
            per_file[f.resolve()] = (_load_file(f, str(f), file_errors, file_broken, inventories), file_errors,
                                     file_broken)


def _load_file(path: Path, display: str, errors: list[SpecError], broken: set[tuple[str, str]],
               inventories: set[Path] | None = None) -> list[_Doc]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        errors.append(SpecError(f"not UTF-8 text ({e.reason} at byte {e.start})", where=display,
                                hint="save the manifest as UTF-8"))
        return []
    except OSError as e:
        errors.append(SpecError(f"cannot read: {e.strerror or e}", where=display, hint="check the path and permissions"))
        return []
    docs = _parse_and_validate(text, display, errors, broken)
    for d in docs:
        if isinstance(d.obj, Model):
            d.obj = _resolve_source_paths(d.obj, path.parent)
        elif isinstance(d.obj, Fleet):
            d.obj = _resolve_signing_key(d.obj, path.parent)
            if inventories is not None:
                inventories.update((path.parent / s.path).resolve() for s in d.obj.spec.inventory)
    return [d for d in docs if not isinstance(d.obj, Fleet) or _read_inventory(d, path.parent, errors, broken)]


def _read_inventory(doc: _Doc, base: Path, errors: list[SpecError], broken: set[tuple[str, str]]) -> bool:
    """Add the devices of a Fleet's inventory files to it; False (errors added) when they cannot be read."""
    if not doc.obj.spec.inventory:  # type: ignore[attr-defined]
        return True
    names: set[str] = set()
    expanded = expand_fleet(doc.obj, base, doc.where, errors, names)  # type: ignore[arg-type]
    if expanded is None:
        broken.add(("Fleet", doc.name))
        broken.update(("Device", n) for n in names | {d.name for d in doc.obj.spec.devices})  # type: ignore
        return False
    doc.obj, doc.device_places = expanded
    return True


def _resolve_source_paths(model: Model, base: Path) -> Model:
    # '~/...' is left as written: it is relative to the user's home, not to the manifest.
    sources = [s.model_copy(update={"path": str((base / s.path).absolute())})
               if s.path and not s.path.startswith("~") and not Path(s.path).is_absolute() else s
               for s in model.spec.sources]
    if sources == list(model.spec.sources):
        return model
    return model.model_copy(update={"spec": model.spec.model_copy(update={"sources": sources})})


def _resolve_signing_key(fleet: Fleet, base: Path) -> Fleet:
    signing = fleet.spec.signing
    if signing is None or signing.key_file.startswith("~") or Path(signing.key_file).is_absolute():
        return fleet
    signing = signing.model_copy(update={"key_file": str((base / signing.key_file).absolute())})
    return fleet.model_copy(update={"spec": fleet.spec.model_copy(update={"signing": signing})})


def _compose(text: str, filename: str, errors: list[SpecError]) -> list[Node]:
    nesting = nesting_error(text, filename)
    if nesting is not None:
        errors.append(nesting)
        return []
    yaml = YAML(typ="safe", pure=True)
    nodes: list[Node] = []
    try:
        for node in yaml.compose_all(io.StringIO(text)):
            nodes.append(node)
    except YAMLError as e:
        errors.append(_yaml_error(e, filename))
    except RecursionError:  # backstop: _nesting_error stops every nesting that deep first
        errors.append(SpecError(f"a document nests deeper than {MAX_NESTING} levels", where=filename,
                                hint="look for an unclosed '[' or '{', or runaway indentation; manifests nest only "
                                     "a few levels"))
    return nodes


def _yaml_error(e: YAMLError, filename: str) -> SpecError:
    if isinstance(e, MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = position(filename, mark) if mark else filename
        problem = " ".join(str(x) for x in (e.context, e.problem) if x) or str(e)
        if "'\\t'" in problem:
            hint = "indent with spaces; YAML does not allow tabs"
        elif "constructor for the tag" in problem:
            hint = "remove the '!' tag: manifests hold plain strings, numbers, lists and mappings"
        else:
            hint = "check indentation, quoting and ':' after keys near this position"
        return SpecError(f"invalid YAML: {problem}", where=where, hint=hint)
    return SpecError(f"invalid YAML: {e}", where=filename, hint="check the YAML syntax")


def _construct(node: Node) -> Any:
    yaml = YAML(typ="safe", pure=True)
    yaml.constructor.allow_duplicate_keys = True  # duplicates are reported from the node tree, with locations
    return yaml.constructor.construct_document(node)


def _parse_and_validate(text: str, filename: str, errors: list[SpecError],
                        broken: set[tuple[str, str]] | None = None) -> list[_Doc]:
    """The documents of one text, validated. The fast reader (libyaml events, no node tree) reads what it can; a
    text it leaves to ruamel.yaml (tags, merge keys, duplicate keys, syntax errors...) takes the full path."""
    broken = set() if broken is None else broken
    try:
        fast = read_documents(text, filename)
    except BoundsError as e:
        errors.append(e.error)
        return []
    except NeedsFullComposer:
        return _parse_and_validate_composed(text, filename, errors, broken)
    node = lazy_nodes(text)
    docs: list[_Doc] = []
    for i, doc in enumerate(fast):
        if doc.data is None:
            continue  # an empty document, e.g. after a trailing '---'
        valid = _validate_document(doc.data, (lambda i=i: node(i)), filename, errors, doc.line)
        if valid is not None:
            docs.append(valid)
        else:
            broken.update(_names_in(doc.data))
    if not any(doc.data is not None for doc in fast):
        errors.append(_no_documents(filename))
    return docs


def _no_documents(filename: str) -> SpecError:
    return SpecError("no documents in this file", where=filename,
                     hint=f"add a document: 'apiVersion: {API_VERSION}', 'kind', 'metadata', 'spec' "
                          "(or remove the file)")


def _parse_and_validate_composed(text: str, filename: str, errors: list[SpecError],
                                 broken: set[tuple[str, str]]) -> list[_Doc]:
    before = len(errors)
    nodes = _compose(text, filename, errors)
    docs: list[_Doc] = []
    seen_any = False
    for node in nodes:
        if isinstance(node, ScalarNode) and node.tag.endswith(":null"):
            continue  # an empty document, e.g. after a trailing '---'
        seen_any = True
        where = position(filename, node.start_mark)
        if not isinstance(node, MappingNode):
            errors.append(SpecError(
                f"a document must be a mapping (apiVersion, kind, metadata, spec), got {_node_kind(node)}",
                where=where, hint=f"start the document with 'apiVersion: {API_VERSION}' and 'kind: ...'"))
            continue
        shape = shape_error(node, filename)
        if shape is not None:
            errors.append(shape)
            continue
        dup_errors = duplicate_keys(node, filename)
        errors += dup_errors
        try:
            data = _construct(node)
        except YAMLError as e:
            errors.append(_yaml_error(e, filename))
            continue
        doc = _validate_document(data, (lambda node=node: node), filename, errors, node.start_mark.line + 1)
        if doc is not None and not dup_errors:
            docs.append(doc)
        else:
            broken.update(_names_in(data))
    if not seen_any and len(errors) == before:
        errors.append(_no_documents(filename))
    return docs


def _node_kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, ScalarNode):
        return f"the scalar {short(node.value)!s}"
    return "something else"


def _names_in(data: Any) -> set[tuple[str, str]]:
    """(kind, name) a broken document meant to define, including a broken Fleet's devices."""
    names: set[tuple[str, str]] = set()
    if not isinstance(data, dict):
        return names
    kind, meta, spec = data.get("kind"), data.get("metadata"), data.get("spec")
    if isinstance(kind, str) and isinstance(meta, dict) and isinstance(meta.get("name"), str):
        names.add((kind, meta["name"]))
    if kind == "Fleet" and isinstance(spec, dict) and isinstance(spec.get("devices"), list):
        names |= {("Device", d["name"]) for d in spec["devices"] if isinstance(d, dict) and isinstance(d.get("name"), str)}
    return names


def _validate_document(data: Any, node_of: Callable[[], MappingNode], filename: str, errors: list[SpecError],
                       line: int) -> _Doc | None:
    """Envelope checks (apiVersion, kind) with precise hints, then the kind's pydantic model. ``node_of()`` gives
    the document's node tree, for the locations of errors."""
    kind = data.get("kind")
    api = data.get("apiVersion")
    if "apiVersion" not in data:
        errors.append(SpecError("missing required field", where=position(filename, node_of().start_mark), field="apiVersion",
                                hint=f"add 'apiVersion: {API_VERSION}' at the top of the document"))
    elif api != API_VERSION:
        errors.append(SpecError(f"unsupported apiVersion {short(api)}",
                                where=position(filename, locate(node_of(), ("apiVersion",))), field="apiVersion",
                                hint=f"use 'apiVersion: {API_VERSION}'"))
    known = ", ".join(KINDS)
    if "kind" not in data:
        errors.append(SpecError("missing required field", where=position(filename, node_of().start_mark), field="kind",
                                hint=f"add 'kind: ...', one of: {known}"))
        return None
    if not isinstance(kind, str) or kind not in KINDS:
        close = difflib.get_close_matches(str(kind), list(KINDS), n=1, cutoff=0.5)
        close += [k for k in KINDS if isinstance(kind, str) and k.lower() == kind.lower() and k not in close]
        hint = f"did you mean '{close[0]}'? " if close else ""
        errors.append(SpecError(f"unknown kind {short(kind)}", where=position(filename, locate(node_of(), ("kind",))),
                                field="kind", hint=f"{hint}known kinds: {known}"))
        return None
    cls = KINDS[kind]
    try:
        obj = cls.model_validate(data)
    except ValidationError as e:
        for err in e.errors():
            if tuple(err["loc"]) == ("apiVersion",):
                continue  # reported above, with a better hint
            errors.append(translate(err, cls, node_of(), filename))
        return None
    return _Doc(obj, node_of, filename, line)


# ---------------------------------------------------------------------------------------------------------------
# Spec assembly: duplicates, overrides, references


_KIND_FIELD = {DeviceProfile: "profiles", Model: "models", Fleet: "fleets", Deployment: "deployments"}


def _assemble(builtin_docs: list[_Doc], user_docs: list[_Doc], errors: list[SpecError],
              broken: set[tuple[str, str]]) -> Spec:
    buckets: dict[str, dict[str, Any]] = {f: {} for f in _KIND_FIELD.values()}
    sources: dict[tuple[str, str], str] = {}
    origin: dict[tuple[str, str], _Doc] = {}
    builtin_ids = {id(d) for d in builtin_docs}
    overrides: dict[tuple[str, str], str] = {}

    def add(doc: _Doc, *, builtin: bool) -> None:
        key = (doc.kind, doc.name)
        prev = origin.get(key)
        if prev is not None and not (id(prev) in builtin_ids and not builtin):
            errors.append(SpecError(
                f"duplicate {doc.kind} name '{doc.name}'", where=doc.where(("metadata", "name")), field="metadata.name",
                hint=f"'{doc.name}' is already defined at {prev.where(('metadata', 'name'))}; rename or remove one"))
            return
        if prev is not None:
            overrides[key] = f"{doc.file}:{doc.line} overrides built-in {prev.file}:{prev.line}"
        origin[key] = doc
        buckets[_KIND_FIELD[type(doc.obj)]][doc.name] = doc.obj
        sources[key] = f"{doc.file}:{doc.line}"

    for d in builtin_docs:
        add(d, builtin=True)
    for d in user_docs:
        add(d, builtin=False)

    _check_references(buckets, origin, errors, broken)
    extra = {"overrides": overrides} if any(f.name == "overrides" for f in dataclasses.fields(Spec)) else {}
    return Spec(profiles=buckets["profiles"], models=buckets["models"], fleets=buckets["fleets"],
                deployments=buckets["deployments"], sources=sources, **extra)


def _known(name: str, known: Iterable[str]) -> str:
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    rest = [n for n in names if n not in close]
    listed = close + rest
    if not listed:
        return "none are defined"
    shown = ", ".join(listed[:12]) + (f", ... ({len(listed) - 12} more)" if len(listed) > 12 else "")
    return (f"did you mean '{close[0]}'? " if close else "") + f"known: {shown}"


def _check_references(buckets: dict[str, dict[str, Any]], origin: dict[tuple[str, str], _Doc],
                      errors: list[SpecError], broken: set[tuple[str, str]]) -> None:
    profiles, models = buckets["profiles"], buckets["models"]
    devices: dict[str, tuple[str, int]] = {}  # device name -> (fleet, index)
    for fleet in buckets["fleets"].values():
        doc = origin[("Fleet", fleet.name)]
        for i, dev in enumerate(fleet.spec.devices):
            if dev.name in devices:
                other_fleet, j = devices[dev.name]
                first = origin[("Fleet", other_fleet)].device_where(j, "name")
                errors.append(SpecError(
                    f"duplicate device name '{dev.name}'", where=doc.device_where(i, "name"),
                    field=f"spec.devices[{i}].name",
                    hint=f"'{dev.name}' is already a device at {first}; device names must be unique across fleets"))
            else:
                devices[dev.name] = (fleet.name, i)
            missing = dev.profile != AUTO_PROFILE and dev.profile not in profiles
            if missing and ("DeviceProfile", dev.profile) not in broken:
                errors.append(SpecError(
                    f"unknown device profile '{dev.profile}'", where=doc.device_where(i, "profile"),
                    field=f"spec.devices[{i}].profile",
                    hint=f"use '{AUTO_PROFILE}' or a DeviceProfile name; " + _known(dev.profile, profiles)))
    for dep in buckets["deployments"].values():
        doc = origin[("Deployment", dep.name)]
        if dep.spec.model not in models and ("Model", dep.spec.model) not in broken:
            errors.append(SpecError(
                f"unknown model '{dep.spec.model}'", where=doc.where(("spec", "model")), field="spec.model",
                hint="define it in a Model document or use a catalog model; " + _known(dep.spec.model, models)))
        for i, name in enumerate(dep.spec.selector.devices):
            if name not in devices and ("Device", name) not in broken:
                errors.append(SpecError(
                    f"unknown device '{name}'", where=doc.where(("spec", "selector", "devices", i)),
                    field=f"spec.selector.devices[{i}]",
                    hint="add it to a Fleet document, or fix the name; " + _known(name, devices)))


def _sorted(errors: list[SpecError]) -> list[SpecError]:
    """Stable order: by file, then line and column (as numbers); errors without a location first."""

    def key(e: SpecError) -> tuple:
        m = re.match(r"^(.*):(\d+):(\d+)$", e.where or "")
        if m:
            return (m.group(1), int(m.group(2)), int(m.group(3)))
        return (e.where or "", 0, 0)

    return sorted(errors, key=key)

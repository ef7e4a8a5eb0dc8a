"""Validation errors mapped back onto the YAML node tree: ``file:line:column``, the field path, what was expected,
what was given, and a hint — the words every manifest error of edgectl.load is written in.

``translate`` turns one pydantic error of a document into a :class:`~edgectl.errors.SpecError` pointing at the
offending key (unknown fields), value (wrong value) or enclosing mapping (missing fields).
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal, Sequence, get_args, get_origin

from edgectl_agent.names import DIGEST_PATTERN, NAME_PATTERN, SHA256_HEX_PATTERN
from pydantic import BaseModel

from edgectl.errors import SpecError
from edgectl.spec.common import LABEL_PATTERN, is_union, unwrap_annotation
from edgectl.spec.fleet import HOST_PATTERN, INVENTORY_PATH_PATTERN, JUMP_PATTERN, PROGRAM_PATTERN, REMOTE_PATH_PATTERN

NAME_RULES = ("lowercase letters, digits, '.', '_' and '-'; starting and ending with a letter or digit; "
              "at most 63 characters (no spaces, '/', shell characters or a leading '-')")
LABEL_RULES = ("letters, digits, '.', '_', '/' and '-'; starting and ending with a letter or digit; "
               "at most 63 characters")

# Pattern (as pydantic reports it) -> (what it is, the rule in words).
_PATTERN_WORDS = {
    NAME_PATTERN: ("name", NAME_RULES),
    LABEL_PATTERN: ("label", LABEL_RULES),
    HOST_PATTERN: ("host", "a host name or IP address: letters, digits, '.', ':', '-'"),
    JUMP_PATTERN: ("jump host", "[user@]host[:port] with letters, digits, '.', '-' (no leading '-')"),
    REMOTE_PATH_PATTERN: ("device path", "an absolute path or one starting with '~/', of letters, digits and "
                                         "'._+-/' (no spaces or shell metacharacters)"),
    PROGRAM_PATTERN: ("program", "a command name or absolute path of letters, digits and '._+-/', not starting "
                                 "with '-'"),
    INVENTORY_PATH_PATTERN: ("inventory path", "a path relative to the manifest's folder, of segments of letters, "
                                               "digits and '._+-' that do not start with '.' or '-' (no '..', no "
                                               "absolute path)"),
    SHA256_HEX_PATTERN: ("sha256", "64 lowercase hex digits (the output of `sha256sum`)"),
    DIGEST_PATTERN: ("digest", "'sha256:' followed by 64 lowercase hex digits"),
}

_TYPE_WORDS = {
    "string_type": "a string", "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}



# ---------------------------------------------------------------------------------------------------------------
# Locations


def position(filename: str, mark: Any) -> str:
    return f"{filename}:{mark.line + 1}:{mark.column + 1}"


# A node is one of a composed YAML tree: ruamel.yaml's (the full path) or PyYAML's (libyaml, the fast path); both
# have ``id`` ('scalar', 'sequence', 'mapping'), ``value`` and ``start_mark`` (0-based line and column).
Node = Any


def _child(node: Node, step: Any) -> tuple[Node | None, Node | None]:
    """(key node, value node) of ``step`` in ``node``; (None, None) when absent."""
    if node.id == "mapping" and isinstance(step, str):
        for k, v in node.value:
            if k.id == "scalar" and k.value == step:
                return k, v
    if node.id == "sequence" and isinstance(step, int) and 0 <= step < len(node.value):
        return None, node.value[step]
    return None, None


def locate(root: Node, path: Sequence[Any], *, point_at_key: bool = False) -> Any:
    """Start mark of the value at ``path`` (a document path: keys and list indexes), or of its key with
    ``point_at_key``. When the path leaves the document (a missing field), the deepest existing node."""
    node, key = root, None
    for step in path:
        k, v = _child(node, step)
        if v is None:
            break
        node, key = v, k
    else:
        if point_at_key and key is not None:
            return key.start_mark
    return node.start_mark


def join_path(path: str, step: Any) -> str:
    if isinstance(step, int):
        return f"{path}[{step}]"
    s = str(step)
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s):
        return f"{path}.{s}" if path else s
    return f"{path}[{s!r}]"


def _field_path(data_loc: Sequence[Any]) -> str:
    path = ""
    for step in data_loc:
        path = join_path(path, step)
    return path


# ---------------------------------------------------------------------------------------------------------------
# pydantic error -> SpecError


def _model_at(cls: type[BaseModel], loc: Sequence[Any]) -> tuple[type[BaseModel] | None, list[Any]]:
    """Walk the model classes along ``loc``. Returns the model that holds the last step, and ``loc`` with the
    union tags removed (the path as it appears in the document)."""
    current: Any = cls
    data_loc: list[Any] = []
    holder: type[BaseModel] | None = None
    for step in loc:
        if step == "[key]":
            continue
        ann = unwrap_annotation(current)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if isinstance(step, str) and step in ann.model_fields:
                holder = ann
                data_loc.append(step)
                current = ann.model_fields[step].annotation
            else:
                holder = ann
                data_loc.append(step)
                current = None
            continue
        origin = get_origin(ann)
        args = get_args(ann)
        if origin in (list, tuple, set, frozenset) and isinstance(step, int):
            data_loc.append(step)
            current = args[0] if args else None
        elif origin is dict:
            data_loc.append(step)
            current = args[1] if len(args) == 2 else None
        elif is_union(ann):
            members = [unwrap_annotation(a) for a in args]
            chosen = _union_member(members, step)
            if chosen is not None:
                current = chosen  # a tag: not part of the document path
            else:
                data_loc.append(step)
                current = None
        else:
            data_loc.append(step)
            current = None
    return holder, data_loc


def _union_member(members: list[Any], tag: Any) -> Any:
    for m in members:
        if not (isinstance(m, type) and issubclass(m, BaseModel)):
            continue
        if m.__name__ == tag:
            return m
        for f in m.model_fields.values():
            if get_origin(f.annotation) is Literal and tag in get_args(f.annotation):
                return m
    return None


def short(value: Any, limit: int = 40) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _got(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value} (a number)"
    if isinstance(value, str):
        return f"{short(value)} (a string)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{short(value)} (a {type(value).__name__})"


def translate(err: dict, cls: type[BaseModel], root: Node, filename: str) -> SpecError:
    loc = tuple(err["loc"])
    etype = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    holder, data_loc = _model_at(cls, loc)
    field = _field_path(data_loc)
    last = data_loc[-1] if data_loc else None
    info = holder.model_fields.get(last) if holder is not None and isinstance(last, str) else None
    desc = f" - {info.description.rstrip('.')}" if info is not None and info.description else ""

    if etype == "extra_forbidden":
        allowed = sorted(holder.model_fields) if holder is not None else []
        close = difflib.get_close_matches(str(last), allowed, n=1, cutoff=0.6)
        nested = _nested_fields(holder) if holder is not None else {}
        deeper = difflib.get_close_matches(str(last), list(nested), n=1, cutoff=0.75) if not close else []
        if close:
            hint = f"did you mean '{close[0]}'?"
        elif deeper:
            hint = f"did you mean '{nested[deeper[0]]}' (it belongs under '{nested[deeper[0]].split('.')[0]}')?"
        else:
            hint = f"allowed keys here: {', '.join(allowed)}"
        return SpecError("unknown field", where=position(filename, locate(root, data_loc, point_at_key=True)),
                         field=field, hint=hint)
    # An invalid dict key ('[key]' in pydantic's loc) is pointed at itself, not at its value.
    where = position(filename, locate(root, data_loc, point_at_key=bool(loc) and loc[-1] == "[key]"))
    if etype == "missing":
        return SpecError("missing required field", where=where, field=field, hint=f"add '{last}:' here{desc}")
    if etype == "union_tag_not_found":
        disc = str(ctx.get("discriminator", "type")).strip("'")
        return SpecError(f"missing '{disc}'", where=where, field=join_path(field, disc),
                         hint=f"add '{disc}:' here, one of: {_union_tags(cls, loc)}")
    if etype == "union_tag_invalid":
        disc = str(ctx.get("discriminator", "type")).strip("'")
        tags = [t.strip().strip("'") for t in str(ctx.get("expected_tags", "")).split(",")]
        close = difflib.get_close_matches(str(ctx.get("tag")), tags, n=1, cutoff=0.5)
        hint = (f"did you mean '{close[0]}'? " if close else "") + f"known {disc}s: {', '.join(tags)}"
        return SpecError(f"unknown {disc} {short(ctx.get('tag'))}",
                         where=position(filename, locate(root, [*data_loc, disc])), field=join_path(field, disc), hint=hint)
    if etype == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = re.findall(r"'([^']*)'", expected)
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        hint = (f"did you mean '{close[0]}'? " if close else "") + f"allowed values: {', '.join(options) or expected}"
        return SpecError(f"unsupported value {short(value)}", where=where, field=field, hint=hint)
    if etype == "string_pattern_mismatch":
        what, rule = _PATTERN_WORDS.get(str(ctx.get("pattern")), ("value", f"must match {ctx.get('pattern')}"))
        if loc and loc[-1] == "[key]":
            what = f"{what} key"
        return SpecError(f"invalid {what} {short(value)}", where=where, field=field, hint=f"use {rule}")
    if etype in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[etype]
        bound = next(iter(ctx.values()), "?")
        return SpecError(f"must be {op} {bound}, got {short(value)}", where=where, field=field,
                         hint=f"use a value {op} {bound}{desc}")
    if etype in ("too_short", "too_long"):
        n = ctx.get("min_length") if etype == "too_short" else ctx.get("max_length")
        more = "at least" if etype == "too_short" else "at most"
        return SpecError(f"needs {more} {n} item(s), got {ctx.get('actual_length', '?')}", where=where, field=field,
                         hint=f"list {more} {n} entr{'y' if n == 1 else 'ies'} here{desc}")
    if etype in _TYPE_WORDS:
        want = _TYPE_WORDS[etype]
        hint = f"write {want} here{desc}"
        if etype == "string_type" and value is not None and not isinstance(value, (dict, list)):
            hint = f"quote it: \"{value}\""
        return SpecError(f"expected {want}, got {_got(value)}", where=where, field=field, hint=hint)
    if etype == "value_error":
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        return SpecError(msg, where=where, field=field or None, hint=_value_error_hint(msg))
    return SpecError(f"{err.get('msg', etype)}, got {_got(value)}", where=where, field=field or None,
                     hint=f"check this value{desc}" if desc else None)


def _value_error_hint(msg: str) -> str | None:
    if "selector" in msg:
        return "add 'devices: [name, ...]' or 'labels: {key: value}' under selector"
    if "duplicate device name" in msg:
        return "give every device of the fleet its own name"
    if "from_source" in msg:
        return "add install: on-device to this device's transport, or delete from_source"
    if "source" in msg:
        return "see docs/manifest-reference.md, Model: spec.sources"
    if "not a quant type edgectl builds" in msg:
        return "use one of the valid names (case matters), or change or remove quantization.format"
    return None


def _nested_fields(holder: type[BaseModel]) -> dict[str, str]:
    """Fields of the models one level down: {'memory_gb': 'overrides.memory_gb', ...}, for did-you-mean."""
    out: dict[str, str] = {}
    for name, info in holder.model_fields.items():
        ann = unwrap_annotation(info.annotation)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            for sub in ann.model_fields:
                out.setdefault(sub, f"{name}.{sub}")
    return out


def _union_tags(cls: type[BaseModel], loc: Sequence[Any]) -> str:
    holder, data_loc = _model_at(cls, loc)
    if holder is None or not data_loc or not isinstance(data_loc[-1], str):
        return "?"
    info = holder.model_fields.get(data_loc[-1])
    if info is None:
        return "?"
    tags: list[str] = []
    for m in get_args(unwrap_annotation(info.annotation)):
        m = unwrap_annotation(m)
        if isinstance(m, type) and issubclass(m, BaseModel):
            for f in m.model_fields.values():
                if get_origin(f.annotation) is Literal:
                    tags += [str(a) for a in get_args(f.annotation)]
                    break
    return ", ".join(tags) or "?"



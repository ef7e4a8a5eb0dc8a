"""JSON Schema and the Markdown manifest reference, both generated from the pydantic spec models.

``json_schema()`` is one JSON Schema (draft 2020-12) for any edgectl document; the document's ``kind`` selects the
kind's schema (``if``/``then``), which gives editors precise messages. Use it with yaml-language-server::

    # yaml-language-server: $schema=../docs/edgectl.schema.json

``manifest_reference_markdown()`` renders docs/manifest-reference.md: per kind, every field (nested objects
expanded) with its type, whether it is required, its default and its description, plus an example that the test
suite validates. Both outputs are deterministic, so the committed files can be checked for drift.

Regenerate the committed files with::

    python -m edgectl.schema --write-docs
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal, Sequence, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from edgectl.spec import API_VERSION, KINDS
from edgectl.spec.common import LABEL_PATTERN, NAME_PATTERN, is_union, unwrap_annotation

SCHEMA_ID = "https://edgectl.dev/schemas/v1alpha1/manifest.schema.json"
REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_PATH = REPO_ROOT / "docs" / "manifest-reference.md"
SCHEMA_PATH = REPO_ROOT / "docs" / "edgectl.schema.json"
REGENERATE = "python -m edgectl.schema --write-docs"

# One short, valid example per kind (tests/unit/test_schema.py loads each one).
EXAMPLES: dict[str, str] = {
    "DeviceProfile": """\
apiVersion: edgectl.dev/v1alpha1
kind: DeviceProfile
metadata:
  name: rpi5-8gb
  description: Raspberry Pi 5, 8 GB
spec:
  arch: aarch64
  cpu:
    model: Broadcom BCM2712 (4x Cortex-A76)
    cores: 4
    isa: [neon, dotprod]
  memory_gb: 8
  os_reserved_gb: 1.0
  disk_gb: 32
  runtimes: [llamacpp]
  default_threads: 4
""",
    "Fleet": """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata:
  name: lab
spec:
  signing: {key_file: keys/fleet}   # optional: sign deployments (edgectl keygen keys/fleet)
  devices:
    - name: pi-kitchen
      profile: rpi5-8gb
      labels: {room: kitchen}
      transport:
        type: ssh
        host: pi-kitchen.local
        user: edge
    - name: this-machine
      profile: auto            # derive the profile from the observed hardware
      transport:
        type: local
      overrides:
        memory_gb: 12          # plan with less RAM than the machine has
""",
    "Model": """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata:
  name: my-llama
spec:
  task: chat
  architecture:
    family: llama
    parameters: 134515008
    layers: 30
    hidden_size: 576
    attention_heads: 9
    kv_heads: 3
    head_dim: 64
    vocab_size: 49152
    max_context: 8192
    tied_embeddings: true
  sources:
    - type: gguf
      precision: F16
      path: weights/my-llama-f16.gguf   # relative to this manifest's directory
""",
    "Deployment": """\
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata:
  name: assistant          # the model id clients send
spec:
  model: my-llama
  selector:
    labels: {room: kitchen}
  context_length: 4096
  parallel: 2
  quantization:
    allow: [Q4_K_M, Q8_0]
""",
}


# ---------------------------------------------------------------------------------------------------------------
# JSON Schema


def json_schema() -> dict[str, Any]:
    """One JSON Schema (draft 2020-12) for any edgectl document, selected by ``kind``."""
    defs: dict[str, Any] = {}
    branches = []
    for kind, cls in KINDS.items():
        schema = cls.model_json_schema(ref_template="#/$defs/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            defs[name] = sub
        defs[cls.__name__] = schema
        branches.append({"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                         "then": {"$ref": f"#/$defs/{cls.__name__}"}})
    root = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "edgectl manifest",
        "description": f"One edgectl document ({API_VERSION}): {', '.join(KINDS)}.",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION, "description": f"Always {API_VERSION}."},
            "kind": {"enum": list(KINDS), "description": "What this document declares."},
        },
        "allOf": branches,
        "$defs": {k: defs[k] for k in sorted(defs)},
    }
    return _close_maps(root)


def _close_maps(node: Any) -> Any:
    """pydantic writes dict keys with a pattern as ``patternProperties``, which lets other keys through;
    ``propertyNames`` + ``additionalProperties`` says what the loader enforces."""
    if isinstance(node, list):
        return [_close_maps(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _close_maps(v) for k, v in node.items()}
    pp = out.get("patternProperties")
    if isinstance(pp, dict) and len(pp) == 1 and "additionalProperties" not in out:
        (pattern, value), = pp.items()
        del out["patternProperties"]
        out["propertyNames"] = {"pattern": pattern}
        out["additionalProperties"] = value
    return out


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Markdown reference


def manifest_reference_markdown() -> str:
    """docs/manifest-reference.md, generated from the spec models (deterministic)."""
    out = [
        "# Manifest reference",
        "",
        f"<!-- Generated from edgectl/spec by `{REGENERATE}`. Do not edit by hand. -->",
        "",
        "Every edgectl document has the same envelope:",
        "",
        "```yaml",
        f"apiVersion: {API_VERSION}",
        "kind: Fleet            # " + " | ".join(KINDS),
        "metadata:",
        "  name: lab            # unique within its kind",
        "spec: {}",
        "```",
        "",
        "A file may hold several documents separated by `---`; `edgectl validate DIR` reads every `*.yaml` and `*.yml`",
        "below `DIR`. Built-in device profiles and catalog models are always loaded; a document with the same kind and",
        "name as a built-in overrides it. Every error names `file:line:column`, the field path, what was expected and",
        "one way to fix it.",
        "",
        "**Names** (`metadata.name`, device names, references): lowercase letters, digits, `.`, `_` and `-`, starting",
        f"and ending with a letter or digit, at most 63 characters (pattern `{NAME_PATTERN}`).",
        f"**Labels** (keys and values): letters, digits, `.`, `_`, `/` and `-` (pattern `{LABEL_PATTERN}`).",
        "",
        "**Editor support**: [docs/edgectl.schema.json](edgectl.schema.json) is the JSON Schema of these documents",
        "(also printed by `edgectl schema`). Point yaml-language-server at it with a first line such as",
        "`# yaml-language-server: $schema=../docs/edgectl.schema.json`.",
        "",
        "Kinds: " + ", ".join(f"[{k}](#{k.lower()})" for k in KINDS) + ".",
    ]
    for kind, cls in KINDS.items():
        out += ["", f"## {kind}", ""]
        doc = _module_summary(cls)
        if doc:
            out += [doc, ""]
        out += ["| Field | Type | Required | Default | Description |", "|---|---|---|---|---|"]
        for row in _rows(cls, prefix="", condition=""):
            out.append("| " + " | ".join(_cell(c) for c in row) + " |")
        out += ["", "Example:", "", "```yaml", EXAMPLES[kind].rstrip("\n"), "```"]
    return "\n".join(out) + "\n"


def _module_summary(cls: type[BaseModel]) -> str:
    text = (sys.modules[cls.__module__].__doc__ or "").strip().split("\n\n")[0]
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(cls: type[BaseModel], prefix: str, condition: str) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for name, info in cls.model_fields.items():
        path = f"{prefix}{name}"
        ann = info.annotation
        desc = (condition + (info.description or "")).strip()
        rows.append((f"`{path}`", _type_name(ann, info), "yes" if info.is_required() else "no",
                     _default(info), desc))
        rows += _nested_rows(ann, path, condition)
    return rows


def _nested_rows(ann: Any, path: str, condition: str) -> list[tuple[str, str, str, str, str]]:
    ann = unwrap_annotation(ann)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _rows(ann, f"{path}.", condition)
    origin, args = get_origin(ann), get_args(ann)
    if origin is list and args:
        return _nested_rows(args[0], f"{path}[]", condition)
    if origin is dict and len(args) == 2:
        return _nested_rows(args[1], f"{path}.<key>", condition)
    if is_union(ann):
        members = [unwrap_annotation(a) for a in args if a is not type(None)]
        rows = []
        for m in members:
            if isinstance(m, type) and issubclass(m, BaseModel):
                tag = _tag(m)
                rows += _rows(m, f"{path}.", f"*({tag})* " if tag else condition)
        return rows
    return []


def _tag(model: type[BaseModel]) -> str:
    for name, info in model.model_fields.items():
        if get_origin(info.annotation) is Literal and len(get_args(info.annotation)) == 1:
            return f"{name}: {get_args(info.annotation)[0]}"
    return ""


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _constraints(metadata: Sequence[Any]) -> tuple[list[str], str | None]:
    """Bounds in words, and the pattern if any."""
    words: list[str] = []
    pattern = None
    for m in metadata:
        for attr, op in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            v = getattr(m, attr, None)
            if v is not None:
                words.append(f"{op} {v}")
        if getattr(m, "min_length", None):
            words.append(f"at least {m.min_length} item(s)")
        if getattr(m, "pattern", None):
            pattern = m.pattern
    return words, pattern


def _type_name(ann: Any, info: FieldInfo | None = None) -> str:
    metadata: list[Any] = list(info.metadata) if info is not None else []
    if hasattr(ann, "__metadata__"):
        metadata += list(ann.__metadata__)
        ann = get_args(ann)[0]
    if is_union(ann):
        args = [a for a in get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return _type_name_with(args[0], metadata)
        names = [f"`{_tag(unwrap_annotation(a))}`" if isinstance(unwrap_annotation(a), type) and issubclass(unwrap_annotation(a), BaseModel)
                 else _type_name(a) for a in args]
        return "object, one of: " + ", ".join(names)
    return _type_name_with(ann, metadata)


def _type_name_with(ann: Any, metadata: list[Any]) -> str:
    if hasattr(ann, "__metadata__"):
        metadata = metadata + list(ann.__metadata__)
        ann = get_args(ann)[0]
    if is_union(ann):
        return _type_name(ann)
    words, pattern = _constraints(metadata)
    origin, args = get_origin(ann), get_args(ann)
    if origin is Literal:
        base = " or ".join(f"`{a}`" for a in args) if len(args) <= 2 else "one of " + ", ".join(f"`{a}`" for a in args)
    elif origin is list:
        base = f"list of {_type_name(args[0]) if args else 'any'}"
    elif origin is dict:
        base = f"map of {_type_name(args[0])} to {_type_name(args[1])}" if len(args) == 2 else "map"
    elif isinstance(ann, type) and issubclass(ann, BaseModel):
        base = "object"
    elif ann in _SCALARS:
        base = _SCALARS[ann]
    else:
        base = "any"
    if pattern == NAME_PATTERN:
        base = "name"
        pattern = None
    elif pattern == LABEL_PATTERN:
        base = "label"
        pattern = None
    if pattern:
        words.append(f"pattern `{pattern}`")
    return base + (f" ({', '.join(words)})" if words else "")


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return ""
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return ""  # see the nested fields
    if value is None:
        return ""
    return f"`{json.dumps(value)}`"


# ---------------------------------------------------------------------------------------------------------------
# Command line: python -m edgectl.schema [--write-docs | --check]


def generated_files() -> dict[Path, str]:
    return {REFERENCE_PATH: manifest_reference_markdown(), SCHEMA_PATH: json_schema_text()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgectl.schema", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-docs", action="store_true",
                        help="write docs/manifest-reference.md and docs/edgectl.schema.json")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed files are out of date")
    parser.add_argument("--markdown", action="store_true", help="print the Markdown reference instead of the schema")
    args = parser.parse_args(argv)
    if args.write_docs:
        for path, text in generated_files().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}", file=sys.stderr)
        return 0
    if args.check:
        stale = [str(p) for p, text in generated_files().items()
                 if not p.is_file() or p.read_text(encoding="utf-8") != text]
        for p in stale:
            print(f"{p} is out of date; run: {REGENERATE}", file=sys.stderr)
        return 1 if stale else 0
    sys.stdout.write(manifest_reference_markdown() if args.markdown else json_schema_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

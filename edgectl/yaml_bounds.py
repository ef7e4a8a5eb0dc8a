"""Bounds on the shape of one YAML document, checked before anything walks it, and the errors that say so (plus
the duplicate-key check of a composed tree).

Manifests nest a handful of levels. Beyond :data:`MAX_NESTING`, a document is refused before it is built: deep
nesting would exhaust Python's recursion. Aliases (``*x``) share one value; a document whose aliases expand it by
more than :data:`MAX_ALIAS_EXPANSION` values beyond those written in the file (a "billion laughs": an alias of a
list of aliases of ...) is refused, or every later step that walks the data (plan, JSON to the agent) would hang.
Values that are written out are never counted against that bound: a 10,000-device Fleet is big, not a bomb.

The rule for aliases, applied to each value when it is complete: its size with every alias expanded must not exceed
the number of values written in the document so far plus :data:`MAX_ALIAS_EXPANSION`. Everything inside a value is
written before the value ends, so a value over that bound has at least that many values added by aliases: no
document without aliases is ever refused, and a bomb is refused at the first value that crosses the bound.

Two readers apply these bounds: :mod:`edgectl.yaml_events` (libyaml events, the fast path) and the functions here
(ruamel.yaml's token stream and node tree, the full path for the constructs the fast reader leaves to it).
"""

from __future__ import annotations

import io
from typing import Any
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.tokens import (BlockEndToken, BlockMappingStartToken, BlockSequenceStartToken, FlowMappingEndToken,
                                FlowMappingStartToken, FlowSequenceEndToken, FlowSequenceStartToken)

from edgectl.errors import SpecError
from edgectl.spec_errors import join_path, position

MAX_NESTING = 64
MAX_ALIAS_EXPANSION = 100_000

_OPENING = (BlockMappingStartToken, BlockSequenceStartToken, FlowMappingStartToken, FlowSequenceStartToken)
_CLOSING = (BlockEndToken, FlowMappingEndToken, FlowSequenceEndToken)


def too_deep(where: str) -> SpecError:
    return SpecError(f"this value nests deeper than {MAX_NESTING} levels", where=where,
                     hint="look for an unclosed '[' or '{', or runaway indentation; manifests nest only a few levels")


def alias_bomb(where: str, expanded: int, written: int) -> SpecError:
    return SpecError(f"YAML aliases (*name) expand this value to more than {MAX_ALIAS_EXPANSION} values beyond the "
                     f"{written} written (it holds {expanded} once expanded)", where=where,
                     hint="write the values out, or use fewer aliases: an alias of a list of aliases multiplies "
                          "them (a 'billion laughs'); no manifest needs this")


def alias_loop(where: str) -> SpecError:
    return SpecError("a YAML alias (*name) refers to a value that contains it (a loop)", where=where,
                     hint="make the alias refer to a value defined outside itself, or write it out")


def expands_too_far(expanded: int, written: int) -> bool:
    """The alias rule: ``expanded`` values in a complete value, ``written`` values in the document so far."""
    return expanded > written + MAX_ALIAS_EXPANSION


def nesting_error(text: str, filename: str) -> SpecError | None:
    """A SpecError at the first token that opens level MAX_NESTING + 1; None when the text stays below it.
    Runs on ruamel's token stream, which it stops reading there: its scanner slows down with every open flow level
    (4000 unclosed '[' take half a minute to parse), and its composer recurses once per level."""
    depth = 0
    try:
        for token in YAML(typ="safe", pure=True).scan(io.StringIO(text)):
            if isinstance(token, _OPENING):
                depth += 1
                if depth > MAX_NESTING:
                    return too_deep(position(filename, token.start_mark))
            elif isinstance(token, _CLOSING):
                depth -= 1
    except YAMLError:
        return None  # a syntax error: composing reports it, with its position
    return None


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def shape_error(root: Node, filename: str) -> SpecError | None:
    """Why ``root`` (a composed node tree) is too deep, too large once its aliases are expanded, or recursive;
    None when it is fine. Iterative (no recursion), each node visited once: aliased nodes are shared in the tree."""
    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            kids = _children(node)
            size[key] = 1 + sum(size[id(k)] for k in kids)
            height[key] = 1 + max((height[id(k)] for k in kids), default=0)
            if height[key] > MAX_NESTING:
                return too_deep(position(filename, node.start_mark))
            if expands_too_far(size[key], written=len(size)):  # every node finished so far was written once
                return alias_bomb(position(filename, node.start_mark), size[key], len(size))
            continue
        if key in size:
            continue
        on_path.add(key)
        stack.append((node, True))
        for kid in _children(node):
            if id(kid) in on_path:
                return alias_loop(position(filename, kid.start_mark))
            if id(kid) not in size:
                stack.append((kid, False))
    return None


def duplicate_keys(node: Node, filename: str) -> list[SpecError]:
    """A SpecError per key written twice in one mapping of a composed tree (constructing would keep only one)."""
    out: list[SpecError] = []
    stack = [(node, "")]
    visited: set[int] = set()  # aliases share nodes (and may be recursive): check each node once
    while stack:
        n, path = stack.pop()
        if id(n) in visited:
            continue
        visited.add(id(n))
        if isinstance(n, MappingNode):
            first: dict[Any, Node] = {}
            for k, v in n.value:
                key = k.value if isinstance(k, ScalarNode) else id(k)
                child = join_path(path, key)
                if key in first:
                    m = first[key].start_mark
                    out.append(SpecError(
                        f"duplicate key '{key}'", where=position(filename, k.start_mark), field=child,
                        hint=f"it is already set at line {m.line + 1}, column {m.column + 1}; keep one of them"))
                else:
                    first[key] = k
                stack.append((v, child))
        elif isinstance(n, SequenceNode):
            for i, item in enumerate(n.value):
                stack.append((item, f"{path}[{i}]"))
    return out

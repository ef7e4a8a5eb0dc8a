"""The fast YAML reader: libyaml's event stream -> plain Python data, within the bounds of :mod:`edgectl.yaml_bounds`.

ruamel.yaml composes in pure Python (about 14 s for a 10,000-device Fleet); libyaml's parser (PyYAML's C
extension) produces the same events in a fraction of that, and this module builds the data from them in one pass
with no node tree, checking nesting, alias expansion and alias loops as it goes. Plain scalars mean what they mean
to ruamel.yaml (YAML 1.2: ``yes`` is a string, ``017`` is 17): any plain scalar that is not obviously a string is
resolved and constructed by ruamel's own resolver and constructor.

Node trees are composed only when an error needs a location (:func:`compose_for_locations`, libyaml again), so a
valid manifest never pays for marks it does not use.

What this reader leaves to the full path (ruamel.yaml, :class:`NeedsFullComposer`): syntax errors, tags, merge keys
(``<<``), keys that are not plain or quoted scalars, duplicate keys, undefined aliases, documents that are not
mappings, ``%`` directives, and text with a tab or a byte order mark after the start. The full path reports them with the messages it always had; the reader never guesses at them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from edgectl.errors import SpecError
from edgectl.spec_errors import position
from edgectl.yaml_bounds import MAX_NESTING, alias_bomb, alias_loop, expands_too_far, too_deep

try:  # PyYAML with libyaml; without it every file takes the full path
    from yaml import CBaseLoader
    from yaml import YAMLError as LibyamlError
    from yaml.events import (AliasEvent, DocumentEndEvent, DocumentStartEvent, MappingEndEvent, MappingStartEvent,
                             ScalarEvent, SequenceEndEvent, SequenceStartEvent, StreamEndEvent)
    AVAILABLE = True
except ImportError:  # pragma: no cover - PyYAML is a dependency; only a build without libyaml lands here
    AVAILABLE = False

_DIFFERS = re.compile("[\t\ufeff\x85\u2028\u2029]")
_DOCUMENT_END = re.compile(r"^\.\.\.", re.M)
# An anchor or alias name with a character libyaml ends the name at and YAML 1.2 does not (e.g. '&a: b').
_ODD_ANCHOR = re.compile(r"(?:^|[\s\[{,])[&*][A-Za-z0-9_-]*[^A-Za-z0-9_\s,\[\]{}-]", re.M)


class NeedsFullComposer(Exception):
    """The text holds a construct this reader leaves to ruamel.yaml (see the module docstring)."""


class BoundsError(Exception):
    """The text breaks a bound of :mod:`edgectl.yaml_bounds`; ``error`` says where and how to fix it."""

    def __init__(self, error: SpecError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class Document:
    data: Any
    line: int  # 1-based line of the document's top-level value
    column: int


class _PlainScalars:
    """Plain scalar text -> the value ruamel.yaml (YAML 1.2, safe) gives it. ruamel's own implicit resolvers (a
    regular expression per tag, by first character) decide the tag, exactly as its ``Resolver.resolve`` does, and its
    constructor builds the value; text no resolver matches is a string. Values are cached: fleets repeat them."""

    def __init__(self) -> None:
        from ruamel.yaml import YAML
        from ruamel.yaml.nodes import ScalarNode
        from ruamel.yaml.tag import Tag

        yaml = YAML(typ="safe", pure=True)
        table = yaml.resolver.versioned_resolver  # YAML 1.2: the reader leaves '%YAML' directives to ruamel
        anywhere = list(table.get(None, []))
        self._by_first = {first: list(found) + anywhere for first, found in table.items() if first is not None}
        self._anywhere = anywhere
        self._constructor, self._node, self._tag = yaml.constructor, ScalarNode, Tag
        self._cache: dict[str, Any] = {}

    def value(self, text: str) -> Any:
        try:
            return self._cache[text]
        except KeyError:
            pass
        for tag, regexp in self._by_first.get(text[0] if text else "", self._anywhere):
            if regexp.match(text):
                if tag.endswith(":merge"):
                    raise NeedsFullComposer("a merge key")
                try:
                    value = self._constructor.construct_object(self._node(self._tag(suffix=tag), text, None, None))
                except Exception as e:  # e.g. '=' (the 'value' tag), which ruamel refuses with its own message
                    raise NeedsFullComposer(f"a scalar ruamel.yaml cannot construct: {e}") from e
                self._cache[text] = value
                return value
        return text


class _Open:
    """A mapping or list being read."""

    __slots__ = ("value", "is_map", "anchor", "mark", "size", "height", "key", "has_key")

    def __init__(self, value: Any, anchor: str | None, mark: Any) -> None:
        self.value, self.anchor, self.mark = value, anchor, mark
        self.is_map = isinstance(value, dict)
        self.size, self.height = 1, 1  # this value, with every alias expanded; levels below and including it
        self.key: Any = None
        self.has_key = False


def read_documents(text: str, filename: str) -> list[Document]:
    """Every document of ``text`` as plain data. Raises :class:`BoundsError` or :class:`NeedsFullComposer`."""
    if not AVAILABLE:
        raise NeedsFullComposer("PyYAML's libyaml extension is not installed")
    if (_DIFFERS.search(text, 1 if text.startswith("\ufeff") else 0) or _DOCUMENT_END.search(text)
            or _ODD_ANCHOR.search(text)):
        # Where libyaml (YAML 1.1) and ruamel.yaml (1.2) read text differently, found by a differential fuzz: tabs,
        # byte order marks after the start, NEL and Unicode line breaks, '...' document ends, anchor names with
        # other characters than letters, digits, '_' and '-'. Such a file keeps
        # ruamel's reading (and its 'indent with spaces' hint).
        raise NeedsFullComposer("a tab, byte order mark, NEL or Unicode line break, '...' line or odd anchor name")
    plain = _PlainScalars()
    parser = CBaseLoader(text)
    docs: list[Document] = []
    stack: list[_Open] = []
    anchors: dict[str, tuple[Any, int, int]] = {}  # anchor -> (value, expanded size, height)
    open_anchors: dict[str, Any] = {}  # anchor of a value still being read -> its start mark
    written = 0
    root: list[tuple[Any, Any]] = []  # (value, start mark) of the current document

    def add(value: Any, size: int, height: int, mark: Any) -> None:
        if not stack:
            root.append((value, mark))
            return
        top = stack[-1]
        if top.is_map and not top.has_key:
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise NeedsFullComposer("a key that is not a scalar")
            if value in top.value:
                raise NeedsFullComposer("duplicate key")
            top.key, top.has_key = value, True
        elif top.is_map:
            top.value[top.key] = value
            top.has_key = False
        else:
            top.value.append(value)
        top.size += size
        if height + 1 > top.height:
            top.height = height + 1

    try:
        while True:
            event = parser.get_event()
            kind = type(event)
            if kind is ScalarEvent:
                if event.tag is not None:
                    raise NeedsFullComposer("a tag")
                written += 1
                value = plain.value(event.value) if event.implicit[0] else event.value  # plain, else quoted
                if event.anchor is not None:
                    anchors[event.anchor] = (value, 1, 1)
                add(value, 1, 1, event.start_mark)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                if event.tag is not None:
                    raise NeedsFullComposer("a tag")
                if len(stack) >= MAX_NESTING:
                    raise BoundsError(too_deep(position(filename, event.start_mark)))
                written += 1
                stack.append(_Open({} if kind is MappingStartEvent else [], event.anchor, event.start_mark))
                if event.anchor is not None:
                    open_anchors[event.anchor] = event.start_mark
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                done = stack.pop()
                if done.height > MAX_NESTING:
                    raise BoundsError(too_deep(position(filename, done.mark)))
                if expands_too_far(done.size, written):
                    raise BoundsError(alias_bomb(position(filename, done.mark), done.size, written))
                if done.anchor is not None:
                    open_anchors.pop(done.anchor, None)
                    anchors[done.anchor] = (done.value, done.size, done.height)
                add(done.value, done.size, done.height, done.mark)
            elif kind is AliasEvent:
                if event.anchor in open_anchors:
                    raise BoundsError(alias_loop(position(filename, open_anchors[event.anchor])))
                if event.anchor not in anchors:
                    raise NeedsFullComposer("an undefined alias")
                value, size, height = anchors[event.anchor]
                add(value, size, height, event.start_mark)
            elif kind is DocumentStartEvent:
                if event.version is not None or event.tags:
                    raise NeedsFullComposer("a %YAML or %TAG directive")
                root.clear()
                anchors.clear()
                written = 0
            elif kind is DocumentEndEvent:
                value, mark = root[0]
                if value is not None and not isinstance(value, dict):
                    raise NeedsFullComposer("a document that is not a mapping")
                docs.append(Document(value, mark.line + 1, mark.column + 1))
            elif kind is StreamEndEvent:
                return docs
    except LibyamlError as e:
        raise NeedsFullComposer("a syntax error") from e


def compose_for_locations(text: str) -> list[Any]:
    """The node tree of every document of ``text`` (libyaml; marks, keys and structure, no tags resolved): what
    :func:`edgectl.spec_errors.locate` walks to put a line and column on an error. Only for text
    :func:`read_documents` read."""
    import yaml

    return list(yaml.compose_all(text, Loader=CBaseLoader))


def lazy_nodes(text: str) -> Callable[[int], Any]:
    """``node(i)``: the i-th document's node tree, composed on first use, once for the whole text."""
    composed: list[list[Any]] = []

    def node(i: int) -> Any:
        if not composed:
            composed.append(compose_for_locations(text))
        return composed[0][i]

    return node

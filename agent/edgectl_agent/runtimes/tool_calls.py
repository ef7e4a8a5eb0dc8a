"""Tool calling by constrained decoding, for runtimes that compile a JSON Schema into a grammar (llamacpp).

The model is told the tools in a system message and its reply is constrained to a JSON Schema built from them, so
what it produces always parses into calls of the declared functions with arguments valid against their
``parameters``:

- ``tool_choice`` names a function: the reply is that function's arguments (one call);
- ``"required"``: ``{"tool_calls": [{"name", "arguments"}, ...]}`` (one call unless ``parallel_tool_calls``);
- ``"auto"`` (the default with tools): that, or ``{"content": "..."}`` to answer in words;
- ``"none"``: plain generation, the tools unused.

Pure functions (unit-tested without a model): ``reply_schema``, ``tools_message``, ``with_tools_message`` and
``parse_reply``, which turns the constrained reply back into an OpenAI assistant message and finish reason, and
``StreamedCalls``, which turns it into OpenAI's streamed tool-call deltas as it is written.
"""

from __future__ import annotations

import json
import uuid
from typing import Any


def function_of(tool: dict[str, Any]) -> dict[str, Any]:
    return tool["function"]


def forced_name(tool_choice: str | dict[str, Any] | None) -> str | None:
    """The function a ``tool_choice`` names, if it names one."""
    if isinstance(tool_choice, dict):
        return tool_choice["function"]["name"]
    return None


def arguments_schema(tool: dict[str, Any]) -> dict[str, Any]:
    return function_of(tool).get("parameters") or {"type": "object", "properties": {}}


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
            "properties": {"name": {"const": function_of(tool)["name"]}, "arguments": arguments_schema(tool)}}


def reply_schema(tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None,
                 parallel: bool) -> dict[str, Any] | None:
    """The JSON Schema the reply is constrained to; None for ``"none"`` (plain generation)."""
    if tool_choice == "none":
        return None
    name = forced_name(tool_choice)
    if name is not None:
        return arguments_schema(next(t for t in tools if function_of(t)["name"] == name))
    calls: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": [_call_schema(t) for t in tools]}}
    if not parallel:
        calls["maxItems"] = 1
    call_reply = {"type": "object", "additionalProperties": False, "required": ["tool_calls"],
                  "properties": {"tool_calls": calls}}
    if tool_choice == "required":
        return call_reply
    answer = {"type": "object", "additionalProperties": False, "required": ["content"],
              "properties": {"content": {"type": "string"}}}
    return {"anyOf": [call_reply, answer]}


def tools_message(tools: list[dict[str, Any]], tool_choice: str | dict[str, Any] | None, parallel: bool) -> str:
    """What the model is told: the functions, and the JSON its reply must be."""
    listed = json.dumps([{k: v for k, v in function_of(t).items() if k in ("name", "description", "parameters")}
                         for t in tools])
    name = forced_name(tool_choice)
    if name is not None:
        how = f"Call the function {name}: reply with only its arguments, as a JSON object."
    else:
        many = "one or more calls" if parallel else "exactly one call"
        how = (f'To call functions, reply with only {{"tool_calls": [{{"name": <function name>, "arguments": '
               f'<arguments object>}}]}} ({many}).')
        if tool_choice != "required":
            how += ' To answer without calling a function, reply with only {"content": <your answer>}.'
    return f"You can call these functions:\n{listed}\n{how}"


def with_tools_message(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``messages`` with ``text`` in the system message (added first, or appended to the one there: many chat
    templates take a single system message, at the start). Assistant turns that called tools are written the way
    the model was asked to reply, so it sees its own calls in the conversation."""
    out = [_as_text(m) for m in messages]
    if out and out[0]["role"] in ("system", "developer"):
        return [{**out[0], "role": "system", "content": f"{out[0]['content']}\n\n{text}"}] + out[1:]
    return [{"role": "system", "content": text}] + out


def _as_text(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    plain = {"role": message["role"], "content": message.get("content") or ""}
    if not calls:
        return plain
    written = [{"name": c["function"]["name"], "arguments": _loads_or_text(c["function"].get("arguments", "{}"))}
               for c in calls]
    return {**plain, "content": json.dumps({"tool_calls": written})}


def _loads_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}}


def parse_reply(text: str, finish_reason: str | None, tool_choice: str | dict[str, Any] | None
                ) -> tuple[dict[str, Any], str | None]:
    """The OpenAI assistant message and finish reason for a constrained reply. A reply cut short (by max_tokens,
    or by a stop string the request gave) is not complete JSON: it is returned as text, with its finish reason."""
    try:
        reply = json.loads(text)
    except ValueError:
        return {"role": "assistant", "content": text}, finish_reason
    if finish_reason == "length":
        return {"role": "assistant", "content": text}, "length"
    name = forced_name(tool_choice)
    if name is not None:
        return {"role": "assistant", "content": None, "tool_calls": [_call(name, text.strip())]}, "tool_calls"
    if "tool_calls" in reply:
        calls = [_call(c["name"], c["arguments"]) for c in reply["tool_calls"]]
        return {"role": "assistant", "content": None, "tool_calls": calls}, "tool_calls"
    return {"role": "assistant", "content": reply["content"]}, finish_reason or "stop"


class StreamedCalls:
    """OpenAI's streamed ``tool_calls`` deltas from a constrained reply's text as the model writes it: a call's
    first delta has its index, id, type and name (once the name is complete), the next ones pieces of its
    ``arguments`` JSON text, as OpenAI streams them. ``feed`` takes the next piece of text and returns the deltas
    it completes; ``calls`` is how many calls were started. A reply in words (``{"content": ...}``) gives none.

    The grammar fixes the reply's shape (``reply_schema``): a forced function's reply is its arguments; otherwise
    ``{"tool_calls": [{"name": ..., "arguments": ...}, ...]}``, each call's name before its arguments. The scanner
    tracks JSON strings and nesting one character at a time (no re-parsing: a reply of n characters costs O(n))."""

    def __init__(self, tool_choice: str | dict[str, Any] | None) -> None:
        self.forced = forced_name(tool_choice)
        self.calls = 0
        self._stack: list[str] = []  # open containers, "{" or "["
        self._keys: list[str | None] = []  # per open container: an object's current key
        self._in_string = self._escaped = False
        self._string: list[str] | None = None  # the string being read, when it is a key or a call's name
        self._expect_key = False
        self._capture = False  # inside a call's arguments value
        self._capture_next = False  # the next non-blank character starts a call's arguments value
        self._scalar = False  # the arguments value being captured is a number, true, false or null

    def _header(self, name: str) -> dict[str, Any]:
        self.calls += 1
        return {"index": self.calls - 1, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": name, "arguments": ""}}

    def feed(self, text: str) -> list[dict[str, Any]]:
        if self.forced is not None:
            out = [] if self.calls else [self._header(self.forced)]
            if text:
                out.append({"index": 0, "function": {"arguments": text}})
            return out
        out: list[dict[str, Any]] = []
        args: list[str] = []
        for c in text:
            self._char(c, args, out)
        self._flush(args, out)
        return out

    def _flush(self, args: list[str], out: list[dict[str, Any]]) -> None:
        """The arguments text read since the last delta, as a delta of the call being read."""
        if args:
            out.append({"index": self.calls - 1, "function": {"arguments": "".join(args)}})
            args.clear()

    def _char(self, c: str, args: list[str], out: list[dict[str, Any]]) -> None:
        at_call = len(self._stack) == 3 and self._keys[0] == "tool_calls"
        if self._in_string:
            if self._capture:
                args.append(c)
            if self._escaped:
                self._escaped = False
            elif c == "\\":
                self._escaped = True
            elif c == '"':
                self._in_string = False
                self._string_done(at_call, args, out)
                if self._capture and at_call:  # a string value of arguments ended
                    self._capture = False
                return
            if self._string is not None:
                self._string.append(c)
            return
        if self._capture_next and not c.isspace():
            self._capture_next, self._capture = False, True
            self._scalar = c not in '{["'
        if self._capture and self._scalar and at_call and (c in ",}" or c.isspace()):
            self._capture = self._scalar = False
        if self._capture:
            args.append(c)
        if c == '"':
            self._in_string = True
            keyed = self._expect_key or (at_call and self._keys[-1] == "name")
            self._string = [] if keyed else None
        elif c in "{[":
            self._stack.append(c)
            self._keys.append(None)
            self._expect_key = c == "{"
        elif c in "}]":
            if self._stack:
                self._stack.pop()
                self._keys.pop()
            if self._capture and len(self._stack) == 3 and self._keys[0] == "tool_calls":
                self._capture = False  # an object or array value of arguments closed
            self._expect_key = False
        elif c == ",":
            self._expect_key = bool(self._stack) and self._stack[-1] == "{"
        elif c == ":":
            self._expect_key = False
            if at_call and self._keys[-1] == "arguments":
                self._capture_next = True

    def _string_done(self, at_call: bool, args: list[str], out: list[dict[str, Any]]) -> None:
        if self._string is None:
            return
        value = "".join(self._string)
        self._string = None
        if self._expect_key:
            self._keys[-1] = value
            self._expect_key = False
        elif at_call and self._keys[-1] == "name":
            self._flush(args, out)  # the previous call's last arguments text
            out.append(self._header(value))

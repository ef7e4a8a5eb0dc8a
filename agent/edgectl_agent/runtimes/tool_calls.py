"""Tool calling by constrained decoding, for runtimes that compile a JSON Schema into a grammar (llamacpp).

The model is told the tools in a system message and its reply is constrained to a JSON Schema built from them, so
what it produces always parses into calls of the declared functions with arguments valid against their
``parameters``:

- ``tool_choice`` names a function: the reply is that function's arguments (one call);
- ``"required"``: ``{"tool_calls": [{"name", "arguments"}, ...]}`` (one call unless ``parallel_tool_calls``);
- ``"auto"`` (the default with tools): that, or ``{"content": "..."}`` to answer in words;
- ``"none"``: plain generation, the tools unused.

Pure functions (unit-tested without a model): ``reply_schema``, ``tools_message``, ``with_tools_message`` and
``parse_reply``, which turns the constrained reply back into an OpenAI assistant message and finish reason.
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

"""Ollama Modelfiles: written so that `ollama create` reads back exactly what was meant, and read the way Ollama's
own parser (ollama/ollama parser/parser.go) reads them.

The format (docs/modelfile.md in the Ollama repository): one ``INSTRUCTION arguments`` per line, instructions case
insensitive, ``#`` comments, FROM required. A value is bare, in ``"..."`` or in ``\"\"\"...\"\"\"`` (which may span
lines). There are no escapes: a value that holds ``\"\"\"`` cannot be written at all, so ``write`` refuses it rather
than produce a file Ollama would cut short. PARAMETER names and their types are Ollama's documented ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgectl.errors import EdgectlError

# Ollama's documented PARAMETERs and the type `ollama create` parses each value as.
PARAMETERS: dict[str, type] = {
    "num_ctx": int, "repeat_last_n": int, "repeat_penalty": float, "temperature": float, "seed": int,
    "stop": str, "num_predict": int, "top_k": int, "top_p": float, "min_p": float, "num_thread": int,
    "num_gpu": int,
}
COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser", "parameter",
            "message", "requires")


@dataclass
class Modelfile:
    """What a Modelfile says: ``from_`` is the GGUF path (relative to the Modelfile) or a model name."""

    from_: str
    template: str | None = None
    system: str | None = None
    parameters: list[tuple[str, str]] = field(default_factory=list)  # in order; ``stop`` may repeat
    comments: list[str] = field(default_factory=list)


def _quote(value: str, what: str) -> str:
    if '"""' in value:
        raise EdgectlError(f"the {what} holds '\"\"\"', which a Modelfile cannot quote (Ollama's parser has no "
                           "escapes)", hint="remove the triple quote from the model's chat template or system "
                           "prompt, or write the Modelfile's TEMPLATE by hand")
    if "\n" in value or "\r" in value or value != value.strip() or '"' in value or not value:
        return f'"""{value}"""'
    return value


def write(mf: Modelfile) -> str:
    """The Modelfile's text. Refuses values Ollama could not read back (see ``parse``)."""
    lines = [f"# {c}" for c in mf.comments]
    lines.append(f"FROM {_quote(mf.from_, 'FROM path')}")
    if mf.template is not None:
        lines.append(f"TEMPLATE {_quote(mf.template, 'template')}")
    if mf.system is not None:
        lines.append(f"SYSTEM {_quote(mf.system, 'system prompt')}")
    for name, value in mf.parameters:
        kind = PARAMETERS.get(name)
        if kind is None:
            raise EdgectlError(f"'{name}' is not a parameter Ollama documents",
                               hint=f"use one of: {', '.join(sorted(PARAMETERS))}")
        kind(value)  # an int/float parameter must parse as one
        lines.append(f"PARAMETER {name} {_quote(value, f'parameter {name}')}")
    return "\n".join(lines) + "\n"


def _unquote(s: str) -> tuple[str, bool]:
    if s.startswith('"""'):
        return (s[3:-3], True) if len(s) >= 6 and s.endswith('"""') else ("", False)
    if s.startswith('"'):
        return (s[1:-1], True) if len(s) >= 2 and s.endswith('"') else ("", False)
    return s, True


def parse(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama's parser reads them: its state machine, so a value that would end early
    (or never) there does here too. Raises ValueError where Ollama would refuse the file."""
    commands: list[tuple[str, str]] = []
    state, buf, name, line = "nil", "", "", 1
    for ch in text:
        if ch in "\r\n":
            line += 1
        if state == "nil":
            if ch == "#":
                state = "comment"
            elif ch not in " \t\r\n":
                state, buf = "name", ch
            continue
        if state == "comment":
            if ch in "\r\n":
                state = "nil"
            continue
        if state == "name":
            if ch.isascii() and ch.isalpha():
                buf += ch
                continue
            if ch not in " \t" or buf.lower() not in COMMANDS:
                raise ValueError(f"line {line}: command must be one of {', '.join(COMMANDS)} (got {buf!r})")
            name = "model" if buf.lower() == "from" else buf.lower()
            state, buf = ("parameter" if name == "parameter" else "value"), ""
            continue
        if state == "parameter":
            if ch.isascii() and (ch.isalnum() or ch == "_"):
                buf += ch
                continue
            if ch not in " \t":
                raise ValueError(f"line {line}: unexpected {ch!r} in a PARAMETER name")
            name, state, buf = buf, "value", ""
            continue
        # state == "value": a newline ends the value once what was read so far unquotes (a space never does)
        if ch in "\r\n":
            value, ok = _unquote(buf.strip())
            if ok:
                commands.append((name, value))
                state, buf = "nil", ""
                continue
        if ch.isprintable() or ch in " \t\r\n":
            buf += ch
    if state == "value":
        value, ok = _unquote(buf.strip())
        if not ok:
            raise ValueError("unexpected end of file inside a quoted value")
        commands.append((name, value))
    elif state not in ("nil", "comment"):
        raise ValueError("unexpected end of file")
    if not any(n == "model" for n, _ in commands):
        raise ValueError("no FROM line")
    for n, v in commands:
        if n in PARAMETERS:
            PARAMETERS[n](v)
    return commands

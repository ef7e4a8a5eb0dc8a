"""A GGUF's chat template (Jinja, as Hugging Face and llama.cpp run it) as the Go template an Ollama Modelfile takes.

Jinja cannot be translated into Go templates in general, so this does not try. It recognises the turn markers of a
few template families (ChatML, Llama 3, Gemma, Phi-3), writes that family's Go template, and then proves it: the
model's own Jinja template and the written Go template both render a set of sample conversations, the Go one the
way Ollama fills it in (``.System`` = the request's system message, else the Modelfile's SYSTEM; ``.Messages`` the
turns), and the template is used only if every prompt is byte for byte the same. A default system prompt that the
Jinja template adds by itself (SmolLM2's does) becomes the Modelfile's SYSTEM. Anything else gets no TEMPLATE, with
the reason: Ollama then picks a template from the GGUF's own metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    markers: tuple[str, ...]  # all present in a Jinja template of this family
    system: tuple[str, str] | None  # (prefix, suffix) of a system turn; None: the family has no system turn
    user: tuple[str, str]
    assistant: tuple[str, str]
    generation: str  # what opens the assistant's reply
    stops: tuple[str, ...]


def _llama3(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


FAMILIES: tuple[Family, ...] = (
    Family("chatml", ("<|im_start|>", "<|im_end|>"), ("<|im_start|>system\n", "<|im_end|>\n"),
           ("<|im_start|>user\n", "<|im_end|>\n"), ("<|im_start|>assistant\n", "<|im_end|>\n"),
           "<|im_start|>assistant\n", ("<|im_end|>", "<|im_start|>")),
    Family("llama3", ("<|start_header_id|>", "<|eot_id|>"), (_llama3("system"), "<|eot_id|>"),
           (_llama3("user"), "<|eot_id|>"), (_llama3("assistant"), "<|eot_id|>"), _llama3("assistant"),
           ("<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>")),
    Family("gemma", ("<start_of_turn>", "<end_of_turn>"), None, ("<start_of_turn>user\n", "<end_of_turn>\n"),
           ("<start_of_turn>model\n", "<end_of_turn>\n"), "<start_of_turn>model\n", ("<end_of_turn>",)),
    Family("phi3", ("<|user|>", "<|assistant|>", "<|end|>"), ("<|system|>\n", "<|end|>\n"),
           ("<|user|>\n", "<|end|>\n"), ("<|assistant|>\n", "<|end|>\n"), "<|assistant|>\n",
           ("<|end|>", "<|endoftext|>")),
)

# Sample conversations both templates must render identically (content words that no template contains).
SAMPLES: tuple[tuple[tuple[str, str], ...], ...] = (
    (("user", "Quokka question one?"),),
    (("system", "Wombat rules apply."), ("user", "Quokka question one?")),
    (("user", "Quokka question one?"), ("assistant", "Numbat answer one."), ("user", "Quokka question two?")),
    (("system", "Wombat rules apply."), ("user", "Quokka question one?"), ("assistant", "Numbat answer one."),
     ("user", "Quokka question two?")),
)


def go_template(f: Family) -> str:
    """The family's Go template over Ollama's ``.System`` and ``.Messages``."""
    system = f"{{{{ if .System }}}}{f.system[0]}{{{{ .System }}}}{f.system[1]}{{{{ end }}}}" if f.system else ""
    return (f'{system}{{{{ range .Messages }}}}{{{{ if eq .Role "user" }}}}{f.user[0]}{{{{ .Content }}}}{f.user[1]}'
            f'{{{{ else if eq .Role "assistant" }}}}{f.assistant[0]}{{{{ .Content }}}}{f.assistant[1]}'
            f"{{{{ end }}}}{{{{ end }}}}{f.generation}")


@dataclass(frozen=True)
class Converted:
    family: str | None
    template: str | None  # the Go template, or None (then ``reason`` says why)
    system: str | None  # a default system prompt the model's template adds by itself
    stops: tuple[str, ...]
    reason: str = ""


def _jinja(chat_template: str, bos_token: str, eos_token: str):
    from jinja2.exceptions import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    # the environment transformers (and so the model's authors) render chat templates with
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = raise_exception
    template = env.from_string(chat_template)

    def render(messages: list[dict]) -> str:
        return template.render(messages=messages, add_generation_prompt=True, bos_token=bos_token,
                               eos_token=eos_token)

    return render


def convert(chat_template: str | None, *, bos_token: str = "", eos_token: str = "") -> Converted:
    """The Go template for ``chat_template`` when one of FAMILIES renders every sample exactly like it."""
    if not chat_template:
        return Converted(None, None, None, (), "the GGUF carries no chat template")
    family = next((f for f in FAMILIES if all(m in chat_template for m in f.markers)), None)
    if family is None:
        return Converted(None, None, None, (), "its chat template is none of the families edgectl converts ("
                         + ", ".join(f.name for f in FAMILIES) + ")")
    try:
        render = _jinja(chat_template, bos_token, eos_token)
        rendered = {i: _try(render, conv) for i, conv in enumerate(SAMPLES)}
    except Exception as e:  # a template jinja2 cannot even compile
        return Converted(family.name, None, None, family.stops, f"jinja2 cannot read its chat template: {e}")
    first = rendered[0]
    if first is None:
        return Converted(family.name, None, None, family.stops, "its chat template fails on a one-message chat")
    default_system = None
    if family.system and first.startswith(family.system[0]):
        end = first.find(family.system[1], len(family.system[0]))
        if end > 0:
            default_system = first[len(family.system[0]):end]
    template = go_template(family)
    for i, conv in enumerate(SAMPLES):
        has_system = any(role == "system" for role, _ in conv)
        if rendered[i] is None:
            if has_system and family.system is None:
                continue  # the model refuses system messages; so does the Go template (it has no system turn)
            return Converted(family.name, None, default_system, family.stops,
                             f"its chat template fails on the sample chat {i + 1}")
        ollama = render_go(template, _ollama_values(conv, default_system))
        if ollama != rendered[i]:
            return Converted(family.name, None, default_system, family.stops,
                             f"its {family.name}-like chat template renders sample chat {i + 1} differently from "
                             f"the {family.name} template edgectl writes ({rendered[i]!r} vs {ollama!r})")
    return Converted(family.name, template, default_system, family.stops)


def _try(render, conv) -> str | None:
    try:
        return render([{"role": r, "content": c} for r, c in conv])
    except Exception:  # the template's raise_exception: a chat it refuses
        return None


def _ollama_values(conv, default_system: str | None) -> dict:
    """What Ollama hands a Modelfile's TEMPLATE for this chat: its system messages joined (or the Modelfile's
    SYSTEM when it has none) and every message."""
    systems = [c for r, c in conv if r == "system"]
    return {"System": "\n\n".join(systems) if systems else (default_system or ""),
            "Messages": [{"Role": r, "Content": c} for r, c in conv]}


# --- a Go text/template evaluator for the constructs go_template() writes -------------------------------------------

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)
_COND = re.compile(r'^(?:eq\s+\.(\w+)\s+"([^"]*)"|\.(\w+))$')


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(text):
        literal = text[pos:m.start()]
        if trim_next:
            literal = literal.lstrip()
        if m.group(1):
            literal = literal.rstrip()
        if literal:
            out.append(("text", literal))
        out.append(("action", m.group(2)))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = text[pos:]
    if tail.lstrip() if trim_next else tail:
        out.append(("text", tail.lstrip() if trim_next else tail))
    return out


def _parse(tokens: list[tuple[str, str]], i: int = 0, closers: tuple[str, ...] = ()) -> tuple[list, int, str]:
    nodes: list = []
    while i < len(tokens):
        kind, value = tokens[i]
        i += 1
        if kind == "text":
            nodes.append(("text", value))
        elif value == "end" or value.startswith("else"):
            if not closers or (value != "end" and "else" not in closers):
                raise ValueError(f"unexpected {{{{ {value} }}}}")
            return nodes, i, value
        elif value.startswith("if "):
            branches, otherwise = [(value[3:].strip(), None)], []
            body, i, closed = _parse(tokens, i, ("end", "else"))
            branches[0] = (branches[0][0], body)
            while closed != "end":
                if closed.startswith("else if "):
                    cond = closed[len("else if "):].strip()
                    body, i, closed = _parse(tokens, i, ("end", "else"))
                    branches.append((cond, body))
                else:
                    otherwise, i, closed = _parse(tokens, i, ("end",))
            nodes.append(("if", branches, otherwise))
        elif value.startswith("range "):
            body, i, _ = _parse(tokens, i, ("end",))
            nodes.append(("range", value[6:].strip().lstrip("."), body))
        elif value.startswith(".") and value[1:].isidentifier():
            nodes.append(("field", value[1:]))
        else:
            raise ValueError(f"unsupported action {{{{ {value} }}}}")
    if closers:
        raise ValueError("a block is not closed with {{ end }}")
    return nodes, i, ""


def _truth(cond: str, dot: dict) -> bool:
    m = _COND.match(cond)
    if m is None:
        raise ValueError(f"unsupported condition {cond!r}")
    if m.group(1):
        return str(dot.get(m.group(1), "")) == m.group(2)
    return bool(dot.get(m.group(3)))


def _run(nodes: list, dot: dict) -> str:
    out = []
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "field":
            out.append(str(dot.get(node[1], "")))
        elif node[0] == "if":
            body = next((b for cond, b in node[1] if _truth(cond, dot)), node[2])
            out.append(_run(body, dot))
        else:
            out.extend(_run(node[2], item) for item in dot.get(node[1], []))
    return "".join(out)


def render_go(template: str, values: dict) -> str:
    """``template`` rendered with ``values`` the way Go's text/template does, for the constructs edgectl writes
    (text, ``{{ .Field }}``, ``if`` / ``else if`` / ``else`` on a field or ``eq .Field "literal"``, ``range``)."""
    nodes, _, _ = _parse(_tokens(template))
    return _run(nodes, values)

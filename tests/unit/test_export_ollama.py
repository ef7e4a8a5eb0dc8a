"""`edgectl export` for Ollama: Modelfiles read the way Ollama's parser reads them, chat templates converted only
when they render the same prompts, and the export's refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from edgectl.apply import Events
from edgectl.builders import ArtifactStore
from edgectl.errors import EdgectlError
from edgectl.export import export_ollama, modelfile
from edgectl.export.chat_template import FAMILIES, _jinja, convert, go_template, render_go
from edgectl.load import load_paths

SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>"
           "system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
           "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
          "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
          "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
          "{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
         "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
         "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
        "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
        "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")

CHAT = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Capital of France?"),
        ("assistant", "Paris."), ("user", "And Spain?")]


# --- Modelfiles ----------------------------------------------------------------------------------------------------

def test_a_modelfile_reads_back_as_ollama_parses_it() -> None:
    mf = modelfile.Modelfile(from_="./m.gguf", template='{{ if eq .Role "user" }}x\n{{ end }}', system="Be kind.",
                             parameters=[("num_ctx", "2048"), ("stop", "<|im_end|>"), ("stop", " spaced ")],
                             comments=["made here"])
    text = modelfile.write(mf)
    assert text.startswith("# made here\nFROM ./m.gguf\nTEMPLATE \"\"\"")
    assert modelfile.parse(text) == [("model", "./m.gguf"), ("template", mf.template), ("system", "Be kind."),
                                     ("num_ctx", "2048"), ("stop", "<|im_end|>"), ("stop", " spaced ")]


@pytest.mark.parametrize("text, read", [
    ("from llama3.2\nSYSTEM You are Mario from super mario bros.\n",  # case-insensitive; spaces stay in a bare value
     [("model", "llama3.2"), ("system", "You are Mario from super mario bros.")]),
    ('FROM x\nTEMPLATE """a\n\nb"""\nPARAMETER stop "<|end|>"\n',  # quotes removed; newlines kept inside """
     [("model", "x"), ("template", "a\n\nb"), ("stop", "<|end|>")]),
    ("# only a comment\nFROM ./a.gguf", [("model", "./a.gguf")]),  # no newline at the end
])
def test_parse_follows_ollamas_parser(text: str, read: list) -> None:
    assert modelfile.parse(text) == read


@pytest.mark.parametrize("text, message", [
    ("SYSTEM hi\n", "no FROM line"),
    ("FROM x\nTEMPLAT y\n", "command must be one of"),
    ('FROM x\nTEMPLATE """never closed\n', "end of file"),
    ("FROM x\nPARAMETER num_ctx lots\n", "invalid literal"),
])
def test_parse_refuses_what_ollama_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        modelfile.parse(text)


def test_write_refuses_a_value_ollama_would_cut_short() -> None:
    with pytest.raises(EdgectlError, match="cannot quote"):
        modelfile.write(modelfile.Modelfile(from_="./m.gguf", system='say """ then stop'))
    with pytest.raises(EdgectlError, match="not a parameter Ollama documents"):
        modelfile.write(modelfile.Modelfile(from_="./m.gguf", parameters=[("n_ctx", "2048")]))
    with pytest.raises(ValueError):
        modelfile.write(modelfile.Modelfile(from_="./m.gguf", parameters=[("num_ctx", "big")]))


# --- chat templates ------------------------------------------------------------------------------------------------

def _ollama_prompt(template: str, chat, default_system: str | None) -> str:
    systems = [c for r, c in chat if r == "system"]
    return render_go(template, {"System": systems[0] if systems else (default_system or ""),
                                "Messages": [{"Role": r, "Content": c} for r, c in chat]})


@pytest.mark.parametrize("jinja, family, default_system", [
    (SMOLLM2, "chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    (LLAMA3, "llama3", None), (GEMMA, "gemma", None), (PHI3, "phi3", None),
])
def test_a_converted_template_renders_the_models_own_prompt(jinja: str, family: str, default_system) -> None:
    conv = convert(jinja)
    assert (conv.family, conv.system) == (family, default_system), conv.reason
    assert conv.template == go_template(next(f for f in FAMILIES if f.name == family))
    render = _jinja(jinja, "", "")
    chats = [CHAT, CHAT[1:], CHAT[1:2]] if family != "gemma" else [CHAT[1:], CHAT[1:4]]
    for chat in chats:  # conversations longer than the ones convert() checks itself
        want = render([{"role": r, "content": c} for r, c in chat])
        assert _ollama_prompt(conv.template, chat, conv.system) == want


def test_a_template_that_differs_from_its_family_gets_no_template_and_says_why() -> None:
    near_chatml = SMOLLM2.replace("'<|im_end|>' + '\\n'", "'<|im_end|>' + '\\n\\n'").replace(
        "+ '<|im_end|>' + '\n'", "+ '<|im_end|>' + '\n\n'")
    conv = convert(near_chatml)
    assert conv.template is None and conv.family == "chatml"
    assert "renders sample chat 1 differently" in conv.reason
    assert convert("{{ messages[0]['content'] }}").reason.startswith("its chat template is none of the families")
    assert convert(None).reason == "the GGUF carries no chat template"


def test_render_go_follows_go_template_rules() -> None:
    t = '{{- if .System }}S:{{ .System }}\n{{ else if .Prompt -}}  P:{{ .Prompt }}{{ else }}none{{ end }}'
    assert render_go(t, {"System": "a"}) == "S:a\n"
    assert render_go(t, {"Prompt": "b"}) == "P:b"
    assert render_go(t, {}) == "none"
    assert render_go('{{ range .Messages }}[{{ .Role }}]{{ end }}', {"Messages": [{"Role": "x"}, {"Role": "y"}]}) \
        == "[x][y]"
    with pytest.raises(ValueError, match="not closed"):
        render_go("{{ if .System }}x", {})


# --- the command's refusals (planning only: nothing is built) ---------------------------------------------------------

FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {name: f}
spec:
  devices:
    - {name: pc, profile: intel-ai-pc, transport: {type: ssh, host: 127.0.0.1, user: u}}
    - {name: pi, profile: raspberry-pi-5, transport: {type: ssh, host: 127.0.0.1, user: u}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {name: chat}
spec: {model: smollm2-135m-instruct, selector: {devices: [pc, pi]}, quantization: {format: openvino}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {name: chat2}
spec: {model: smollm2-135m-instruct, selector: {devices: [pi]}, quantization: {format: openvino}}
"""


def test_export_refuses_a_non_gguf_choice_and_an_ambiguous_deployment(tmp_path: Path) -> None:
    (tmp_path / "f.yaml").write_text(FLEET)
    spec = load_paths([tmp_path / "f.yaml"])
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(EdgectlError, match="Ollama runs GGUF files only") as e:
        export_ollama(spec, "pc", "chat", tmp_path / "out", store, Events())
    assert "quantization.format: gguf" in e.value.hint
    with pytest.raises(EdgectlError, match="has 2 deployments planned") as e:
        export_ollama(spec, "pi", None, tmp_path / "out", store, Events())
    assert "--deployment" in e.value.hint and "chat, chat2" in e.value.hint
    with pytest.raises(EdgectlError, match="not planned for device 'pc'"):
        export_ollama(spec, "pc", "chat2", tmp_path / "out", store, Events())
    assert not (tmp_path / "out").exists() and not store.list()

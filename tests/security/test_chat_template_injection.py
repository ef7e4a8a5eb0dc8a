"""Case 7 of the faults-and-attacks suite: chat templates that reach for Python internals.

A GGUF's ``tokenizer.chat_template`` (and a Hugging Face folder's ``chat_template``) is Jinja written by whoever made
the file. Rendered in a plain Jinja environment it runs arbitrary code (CVE-2024-34359 in llama-cpp-python < 0.2.72).
Both template paths of the agent must render in Jinja's ImmutableSandboxedEnvironment: llama-cpp-python's
Jinja2ChatFormatter (llamacpp runtime) and edgectl_agent.runtimes.textgen.compile_chat_template (onnxruntime-genai,
openvino-genai, mlx). Each payload must either be refused with the agent's error or render with nothing leaked,
nothing executed (a marker file the payload tries to create stays absent) and nothing mutated.

The control test runs the same payloads in a plain jinja2.Environment and sees the marker created: the payloads are
real, so these tests can fail. The integration test loads tiny GGUFs carrying such templates into a real agent with
real llama.cpp.
"""

from __future__ import annotations

import copy
from pathlib import Path

import httpx
import pytest

from edgectl_agent.errors import AgentError, BadRequest, RuntimeFailure
from edgectl_agent.runtimes.textgen import compile_chat_template
from tests.integration.conftest import start_agent  # noqa: F401 - the real-agent fixture

jinja2 = pytest.importorskip("jinja2")

MESSAGES = [{"role": "user", "content": "hello"}]

# Payloads by what they try; MARKER is replaced with a path the payload tries to create.
PAYLOADS = {
    "str class mro subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "cycler globals os.popen": "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "joiner globals os.system": "{{ joiner.__init__.__globals__['os'].system('touch MARKER') }}",
    "lipsum globals os.popen": "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "namespace builtins import": ("{{ namespace.__init__.__globals__['__builtins__']['__import__']('os')"
                                  ".system('touch MARKER') }}"),
    "attr filter to dunder": "{{ (messages|attr('__class__')).__mro__[1].__subclasses__() }}",
    "format string to globals": "{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}",
    "template reference context": "{{ self._TemplateReference__context }}",
    "raise_exception globals": "{{ raise_exception.__globals__ }}",
    "append to messages": "{% set _ = messages.append({'role': 'system', 'content': 'pwned'}) %}{{ messages }}",
    "update a message": "{{ messages[0].update({'content': 'pwned'}) }}{{ messages }}",
    "pop a message": "{{ messages.pop() }}{{ messages }}",
}
# Payloads that run a shell command when not sandboxed (the control test proves it).
EXECUTING = ("cycler globals os.popen", "joiner globals os.system", "lipsum globals os.popen",
             "namespace builtins import")
# Payloads that read an unsafe attribute without using it: the sandbox renders it as nothing (Jinja's Undefined).
SILENT = ("template reference context", "raise_exception globals")
# What a leak of Python internals looks like in rendered text.
LEAKS = ("<class", "<function", "<module", "<built-in", "__builtins__", "subclasses", "Context", "pwned")


def payload(name: str, marker: Path) -> str:
    return PAYLOADS[name].replace("MARKER", str(marker))


def no_leak(text: str) -> None:
    assert not any(leak in text for leak in LEAKS), f"leaked: {text[:300]!r}"


@pytest.mark.parametrize("name", EXECUTING)
def test_control_the_payloads_execute_in_a_plain_jinja_environment(tmp_path, name):
    marker = tmp_path / "pwned"
    jinja2.Environment().from_string(payload(name, marker)).render(messages=copy.deepcopy(MESSAGES))
    assert marker.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_the_agent_s_own_template_renderer_refuses_or_contains_each_payload(tmp_path, name):
    """textgen.compile_chat_template (onnxruntime-genai, openvino-genai, mlx): refused with a 400 naming the sandbox's
    SecurityError, or (unsafe value unused) rendered as nothing; no command runs, the messages are unchanged."""
    marker = tmp_path / "pwned"
    render = compile_chat_template(payload(name, marker), {"bos_token": "<s>", "eos_token": "</s>"})
    messages = copy.deepcopy(MESSAGES)
    if name in SILENT:
        assert render(messages) == ""
    else:
        with pytest.raises(BadRequest, match="chat template failed on these messages: SecurityError") as exc:
            render(messages)
        assert exc.value.status == 400 and exc.value.hint
        assert isinstance(exc.value.__cause__, jinja2.exceptions.SecurityError)
        no_leak(exc.value.message)
    assert not marker.exists() and messages == MESSAGES


def llama_chat_format():
    pytest.importorskip("llama_cpp")
    from llama_cpp import llama_chat_format

    return llama_chat_format


def test_llama_cpp_python_renders_gguf_templates_in_the_immutable_sandbox():
    """The agent relies on this: a llama-cpp-python that rendered outside the sandbox must fail here."""
    formatter = llama_chat_format().Jinja2ChatFormatter(template="{{ messages[0]['content'] }}", eos_token="</s>",
                                                        bos_token="<s>")
    assert isinstance(formatter._environment.environment, jinja2.sandbox.ImmutableSandboxedEnvironment)


@pytest.mark.parametrize("name", PAYLOADS)
def test_llama_cpp_python_s_formatter_refuses_or_contains_each_payload(tmp_path, name):
    marker = tmp_path / "pwned"
    formatter = llama_chat_format().Jinja2ChatFormatter(template=payload(name, marker), eos_token="</s>",
                                                        bos_token="<s>")
    messages = copy.deepcopy(MESSAGES)
    if name in SILENT:
        assert formatter(messages=messages).prompt == ""
    else:
        with pytest.raises(jinja2.exceptions.SecurityError) as exc:
            formatter(messages=messages)
        no_leak(str(exc.value))
    assert not marker.exists() and messages == MESSAGES


@pytest.mark.parametrize("name", PAYLOADS)
def test_the_llamacpp_runtime_refuses_at_load_what_the_sandbox_stops(tmp_path, name):
    """check_chat_template (run before llama.cpp loads a GGUF) renders one user turn in llama-cpp-python's
    formatter: a template the sandbox stops there is refused (422 unsafe_chat_template); one that renders an unsafe
    value as nothing loads, and stays in the sandbox at request time."""
    from edgectl_agent.runtimes.llamacpp import check_chat_template

    llama_chat_format()
    marker = tmp_path / "pwned"
    if name in SILENT:
        check_chat_template(payload(name, marker), "artifact sha256:x")
    else:
        with pytest.raises(RuntimeFailure, match="tries to reach Python internals, which the sandbox refused") as exc:
            check_chat_template(payload(name, marker), "artifact sha256:x")
        assert exc.value.status == 422 and exc.value.type == "unsafe_chat_template" and exc.value.hint
        assert "artifact sha256:x" in exc.value.message
    assert not marker.exists()


def test_a_template_that_does_not_compile_is_refused_at_load():
    from edgectl_agent.runtimes.llamacpp import check_chat_template

    llama_chat_format()
    with pytest.raises(RuntimeFailure, match="chat template does not compile: TemplateSyntaxError") as exc:
        check_chat_template("{% for m in messages %}{{ m.content }}", "artifact sha256:x")
    assert exc.value.type == "invalid_chat_template" and isinstance(exc.value, AgentError)


# -- a real agent, real llama.cpp ---------------------------------------------------------------------------------
# Renders ChatML, except for two trigger words: one runs a shell command (stopped by the sandbox at request time),
# one reads the template's context (an unsafe attribute: rendered as nothing).
CONDITIONAL = (
    "{% for message in messages %}"
    "{% if message['content'] == 'open sesame' %}{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}"
    "{% elif message['content'] == 'show context' %}{{ self._TemplateReference__context }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.mark.integration
def test_a_real_agent_never_runs_a_gguf_s_template_code(tmp_path, start_agent):
    pytest.importorskip("llama_cpp")
    from tests.integration.test_agent_llamacpp import activate, upload_in_two_cuts
    from tests.tinymodels import write_tiny_llama_gguf

    marker = tmp_path / "pwned"
    good = write_tiny_llama_gguf(tmp_path / "good.gguf", seed=1)
    hostile = write_tiny_llama_gguf(tmp_path / "hostile.gguf", seed=2,
                                    chat_template=payload("cycler globals os.popen", marker))
    conditional = write_tiny_llama_gguf(tmp_path / "conditional.gguf", seed=3,
                                        chat_template=CONDITIONAL.replace("MARKER", str(marker)))
    agent = start_agent()

    def chat(content: str) -> httpx.Response:
        return httpx.post(f"{agent.url}/v1/chat/completions", headers=agent.auth, timeout=60,
                          json={"model": "chat", "max_tokens": 2, "temperature": 0,
                                "messages": [{"role": "user", "content": content}]})

    a = upload_in_two_cuts(agent, good)
    assert activate(agent, "chat", good, a).status_code == 200

    # A template that reaches for os on every conversation is refused at load; the good model keeps serving.
    r = activate(agent, "chat", hostile, upload_in_two_cuts(agent, hostile))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "unsafe_chat_template" and "sandbox refused" in err["message"] and err["hint"]
    assert chat("hello").json()["system_fingerprint"] == a

    # One that does so only on a trigger loads; the trigger gets a 400 from the sandbox, the rest is served.
    c = upload_in_two_cuts(agent, conditional)
    assert activate(agent, "chat", conditional, c).json()["state"] == "serving"
    ok = chat("hello")
    assert ok.status_code == 200 and ok.json()["system_fingerprint"] == c
    baseline = ok.json()["usage"]["prompt_tokens"]
    stopped = chat("open sesame")
    assert stopped.status_code == 400, stopped.text
    err = stopped.json()["error"]
    assert err["code"] == "chat_template_failed" and "SecurityError" in err["message"] and err["hint"]
    no_leak(stopped.text)
    # The unsafe attribute renders as nothing: the prompt grows by the message's text (at most a token per
    # character), not by a repr of the template's context (thousands of tokens, past the 256-token context).
    hidden = chat("show context")
    assert hidden.status_code == 200, hidden.text
    assert hidden.json()["usage"]["prompt_tokens"] <= baseline + len("show context")
    no_leak(hidden.text)

    assert not marker.exists()
    assert agent.proc.poll() is None and chat("hello").json()["system_fingerprint"] == c

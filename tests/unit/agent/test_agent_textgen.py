"""The OpenAI layer shared by the genai/openvino-genai/mlx runtimes, on a toy generator: chat templates in a sandbox,
stop strings across pieces, max_tokens, stream chunks shaped like llama.cpp's."""

from __future__ import annotations

import json

import pytest

from edgectl_agent.errors import BadRequest, RuntimeFailure
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.textgen import TextGenModel
from tests.tinymodels import CHATML_TEMPLATE


class Toy(TextGenModel):
    """Generates the pieces it was given; counts whitespace-separated words."""

    def __init__(self, folder, pieces):
        super().__init__("toy", folder)
        self.pieces, self.prompts, self.freed = pieces, [], False

    def _count(self, text):
        return len(text.split())

    def _pieces(self, prompt, params, max_tokens):
        self.prompts.append(prompt)
        yield from self.pieces[:max_tokens]

    def _free(self):
        self.freed = True


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML_TEMPLATE,
                                                                "eos_token": "<|im_end|>"}))
    return tmp_path


def test_chat_renders_the_template_and_counts_usage(folder):
    m = Toy(folder, ["Par", "is", "!"])
    out = m.chat([{"role": "user", "content": "capital of France?"}], GenerationParams(max_tokens=8))
    assert m.prompts == ["<|im_start|>user\ncapital of France?<|im_end|>\n<|im_start|>assistant\n"]
    assert out["object"] == "chat.completion" and out["choices"][0]["message"]["content"] == "Paris!"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == 1 and out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + 1


def test_max_tokens_gives_length_and_stop_strings_cut_across_pieces(folder):
    m = Toy(folder, ["a", "b", "c", "d"])
    assert m.complete("x", GenerationParams(max_tokens=2))["choices"][0] == {
        "index": 0, "text": "ab", "logprobs": None, "finish_reason": "length"}
    m = Toy(folder, ["hel", "lo wo", "rld", "!"])
    out = m.complete("x", GenerationParams(max_tokens=10, stop=["o wor"]))
    assert out["choices"][0]["text"] == "hell" and out["choices"][0]["finish_reason"] == "stop"


def test_streamed_chunks_concatenate_to_the_full_answer(folder):
    m = Toy(folder, ["one", " two", " three"])
    chunks = list(m.chat([{"role": "user", "content": "hi"}], GenerationParams(max_tokens=3), stream=True))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "one two three"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    done = list(m.complete("hi", GenerationParams(max_tokens=5), stream=True))
    assert "".join(c["choices"][0]["text"] for c in done) == "one two three"


def test_an_abandoned_stream_releases_the_model(folder):
    m = Toy(folder, ["a"] * 10)
    it = m.complete("x", GenerationParams(max_tokens=10), stream=True)
    next(it)
    it.close()
    assert m.complete("x", GenerationParams(max_tokens=1))["choices"][0]["text"] == "a"  # not deadlocked
    m.close()
    assert m.freed


def test_hostile_template_cannot_reach_python_internals(tmp_path):
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": evil}))
    m = Toy(tmp_path, ["x"])
    with pytest.raises(BadRequest, match="SecurityError|UndefinedError"):
        m.chat([{"role": "user", "content": "hi"}], GenerationParams())
    mutate = "{% set _ = messages.append({'role': 'system'}) %}{{ messages|length }}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": mutate}))
    with pytest.raises(BadRequest):
        Toy(tmp_path, ["x"]).chat([{"role": "user", "content": "hi"}], GenerationParams())


def test_broken_template_fails_the_load_and_no_template_falls_back(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{% for %}"}))
    with pytest.raises(RuntimeFailure, match="does not compile"):
        Toy(tmp_path, [])
    (tmp_path / "tokenizer_config.json").unlink()
    m = Toy(tmp_path, ["ok"])
    m.chat([{"role": "user", "content": "hi"}], GenerationParams())
    assert m.prompts == ["user: hi\nassistant:"]


class Bounded(Toy):
    """A toy whose deployment holds ``context`` tokens."""

    def __init__(self, folder, pieces, context, *, must_fit=False):
        TextGenModel.__init__(self, "toy", folder, context_length=context)
        self.pieces, self.prompts, self.freed = pieces, [], False
        self.max_tokens_must_fit = must_fit

    def _pieces(self, prompt, params, max_tokens):
        max_tokens = self._fit_to_context(self._count(prompt), max_tokens)
        yield from self.pieces[:max_tokens]


def test_the_context_bounds_a_generation_and_refuses_a_prompt_that_fills_it(folder):
    m = Bounded(folder, ["a", "b", "c", "d"], context=4)
    assert m.complete("x y", GenerationParams(max_tokens=10))["choices"][0]["text"] == "ab"  # 2 + 2 = 4
    with pytest.raises(BadRequest, match="the prompt is 4 tokens; deployment 'toy' has a context of 4"):
        m.complete("w x y z", GenerationParams(max_tokens=1))
    strict = Bounded(folder, ["a", "b", "c", "d"], context=4, must_fit=True)
    assert strict.complete("x y", GenerationParams(max_tokens=2))["choices"][0]["text"] == "ab"
    with pytest.raises(BadRequest, match=r"prompt \(2 tokens\) \+ max_tokens \(3\) exceed the context length 4") as e:
        strict.complete("x y", GenerationParams(max_tokens=3))
    assert e.value.param == "max_tokens"

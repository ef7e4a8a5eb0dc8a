"""The tiny test model is a real llama GGUF: llama.cpp loads it, chats with its template, and completes text."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.tinymodels import TINY_HIDDEN, tiny_vocab, write_tiny_llama_gguf

pytestmark = pytest.mark.integration


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = write_tiny_llama_gguf(tmp_path / "a.gguf", seed=3)
    b = write_tiny_llama_gguf(tmp_path / "b.gguf", seed=3)
    c = write_tiny_llama_gguf(tmp_path / "c.gguf", seed=4)
    assert _sha256(a) == _sha256(b)
    assert _sha256(a) != _sha256(c)
    assert a.stat().st_size < 10 * 1024 * 1024


@pytest.mark.parametrize("ftype", ["F32", "F16"])
def test_llama_cpp_loads_chats_and_completes(tmp_path: Path, ftype: str) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", ftype=ftype)
    llm = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, verbose=False)
    assert llm.n_embd() == TINY_HIDDEN
    assert llm.n_vocab() == len(tiny_vocab()[0])
    assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]

    chat = llm.create_chat_completion(
        messages=[{"role": "user", "content": "hello world"}], max_tokens=6, temperature=0)
    assert chat["choices"][0]["finish_reason"] == "length"
    # usage counts re-tokenized text, which for random tokens need not equal the tokens sampled
    assert chat["usage"]["completion_tokens"] > 0

    completion = llm.create_completion("the capital of France is", max_tokens=6, temperature=0)
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] > 0
    again = llm.create_completion("the capital of France is", max_tokens=6, temperature=0)
    assert again["choices"][0]["text"] == completion["choices"][0]["text"]


def test_tokenizer_prefers_whole_words(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=1, verbose=False, vocab_only=True)
    tokens = llm.tokenize(b"the capital of France is Paris", add_bos=False)
    assert len(tokens) == 6
    assert llm.detokenize(tokens) == b" the capital of France is Paris"

"""Every llama.cpp call of a loaded model runs on the model's own thread (edgectl_agent.runtimes.llamacpp
.ModelThread): here with a stand-in for llama_cpp.Llama that records the thread of each call (fast), and in
tests/integration/test_llamacpp_concurrency.py with real llama.cpp and its OpenMP threads counted."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from edgectl_agent.errors import BadRequest, ModelUnavailable
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.llamacpp import LlamaCppModel, ModelThread


class RecordingLlama:
    """The methods of llama_cpp.Llama the model calls, each noting the thread it ran on."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.closed = False

    def _note(self) -> None:
        self.threads.append(threading.current_thread().name)

    def create_completion(self, prompt, stream=False, **kw):
        self._note()
        if prompt == "too long":
            raise ValueError("Requested tokens (9999) exceed context window of 256")
        if not stream:
            return {"choices": [{"text": "ok", "index": 0, "finish_reason": "stop"}]}

        def chunks():
            try:
                for word in ("a", "b", "c"):
                    self._note()
                    yield {"choices": [{"text": word, "index": 0, "finish_reason": None}]}
            finally:
                self._note()  # the generator's close runs here too

        return chunks()

    def close(self) -> None:
        self._note()
        self.closed = True


def model_threads(llm: RecordingLlama) -> set[str]:
    return set(llm.threads)


def test_whole_and_streamed_calls_and_close_run_on_the_model_thread_only():
    llm = RecordingLlama()
    model = LlamaCppModel(llm, embeddings=False, name="m", thread=ModelThread("m"))
    callers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="server-worker")
    outs = list(callers.map(lambda _: model.complete("hi", GenerationParams(max_tokens=2)), range(8)))
    assert all(o["choices"][0]["text"] == "ok" for o in outs)
    streams = list(callers.map(lambda _: [c["choices"][0]["text"] for c in model.complete(
        "hi", GenerationParams(max_tokens=3), stream=True)], range(4)))
    assert streams == [["a", "b", "c"]] * 4
    model.close()
    assert llm.closed
    assert model_threads(llm) == {"llama.cpp:m_0"}, llm.threads
    assert len(llm.threads) == 8 + 4 * 5 + 1


def test_a_stream_closed_early_is_closed_on_the_model_thread_and_frees_the_model():
    llm = RecordingLlama()
    model = LlamaCppModel(llm, embeddings=False, name="m")
    stream = model.complete("hi", GenerationParams(max_tokens=3), stream=True)
    assert next(stream)["choices"][0]["text"] == "a"
    stream.close()  # what the server does when the client goes away
    assert model_threads(llm) == {"llama.cpp:m_0"}
    out = model.complete("hi", GenerationParams())  # the lock was released: no wait
    assert out["choices"][0]["text"] == "ok"
    model.close()


def test_llama_cpp_errors_raised_on_the_model_thread_reach_the_request_translated():
    model = LlamaCppModel(RecordingLlama(), embeddings=False, name="m")
    with pytest.raises(BadRequest, match="exceed context window"):
        model.complete("too long", GenerationParams())
    assert model.complete("hi", GenerationParams())["choices"]  # the thread still serves
    model.close()


def test_a_closed_model_ends_its_thread_and_refuses_later_calls():
    model = LlamaCppModel(RecordingLlama(), embeddings=False, name="m")
    model.close()
    with pytest.raises(ModelUnavailable):
        model.complete("hi", GenerationParams())
    assert not any(t.name.startswith("llama.cpp:m") for t in threading.enumerate())

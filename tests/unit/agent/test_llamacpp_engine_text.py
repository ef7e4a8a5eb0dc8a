"""The pure parts of the continuous-batching llamacpp runtime: stop strings held back across tokens, the prompt
prefix a free slot can reuse, OpenAI's logprobs shape, and the llama.cpp params taken from runtime_options. The
engine itself runs for real in tests/integration/test_llamacpp_batching.py."""

from __future__ import annotations


from edgectl_agent.runtimes.llamacpp import engine_options
from edgectl_agent.runtimes.llamacpp_batched import chat_logprobs
from edgectl_agent.runtimes.llamacpp_engine import (Sampling, Sequence, common_prefix, held_back, stop_position,
                                                    text_events)


def test_held_back_keeps_only_what_may_start_a_stop_string():
    assert held_back("hello <|im", ["<|im_end|>"]) == 4
    assert held_back("hello", ["<|im_end|>"]) == 0
    assert held_back("ab", ["b", "abc"]) == 2
    assert stop_position("one two three", ["three", "two"]) == 4
    assert stop_position("one", ["x"]) == -1


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0


def events(seq: Sequence, items: list[tuple]) -> Sequence:
    for item in items:
        seq.events.put(item)
    return seq


def run(items: list[tuple], stops: list[str]) -> tuple[list, Sequence]:
    seq = events(Sequence(prompt=[1], max_tokens=10, sampling=Sampling()), items)
    return list(text_events(seq, stops)), seq


def test_a_stop_string_split_over_tokens_ends_the_text_before_it_and_cancels_the_sequence():
    out, seq = run([("token", b"Hi", None), ("token", b" <|im", None), ("token", b"_end|>", None),
                    ("token", b"never", None)], ["<|im_end|>"])
    assert "".join(t for t, _, _ in out) == "Hi " and out[-1] == ("", [], "stop")
    assert seq.cancelled.is_set()  # the engine drops it at its next step


def test_multibyte_characters_split_over_tokens_come_out_whole():
    euro = "€".encode()
    out, _ = run([("token", euro[:1], None), ("token", euro[1:], None), ("end", "length")], [])
    assert "".join(t for t, _, _ in out) == "€" and out[-1][2] == "length"


def test_an_engine_error_is_raised_in_the_request():
    seq = events(Sequence(prompt=[1], max_tokens=1, sampling=Sampling()), [("error", RuntimeError("boom"))])
    try:
        list(text_events(seq, []))
    except RuntimeError as e:
        assert str(e) == "boom"
    else:
        raise AssertionError("the error was swallowed")


def test_logprobs_have_openais_shape():
    out = chat_logprobs([("a", b"a", -0.5, [("a", b"a", -0.5), ("b", b"b", -1.5)])])
    assert out == {"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [
        {"token": "a", "logprob": -0.5, "bytes": [97]}, {"token": "b", "logprob": -1.5, "bytes": [98]}]}]}


def test_engine_options_split_model_and_context_params():
    model, context = engine_options({"n_ctx": 512, "n_gpu_layers": 99, "use_mmap": False, "flash_attn": True,
                                     "type_k": 8, "n_batch": 256, "verbose": False})
    assert model == {"n_gpu_layers": 99, "use_mmap": False}
    assert context == {"type_k": 8, "flash_attn_type": 1}




def test_a_stream_read_in_an_event_loop_never_blocks_and_gets_legacy_logprobs():
    """With a waker (the stream is read in the server's event loop), text_events gives PENDING instead of waiting
    for the engine; the reader awaits the waker. The legacy completion logprobs count text offsets per token."""
    import asyncio

    from edgectl_agent.runtimes.llamacpp_batched import completion_logprobs
    from edgectl_agent.runtimes.llamacpp_engine import PENDING, EngineStream

    seq = Sequence(prompt=[1], max_tokens=10, sampling=Sampling())
    stream = EngineStream(seq, text_events(seq, []))
    loop = asyncio.new_event_loop()
    try:
        waker = stream.wake_on(loop)
        assert next(stream) is PENDING and not waker.ready.is_set()
        seq.events.put(("token", b"Hi", (-0.5, [(b"Hi", -0.5)])))
        assert next(stream)[0] == "Hi"
        assert next(stream) is PENDING
        seq.events.put(("end", "length"))
        assert next(stream) == ("", [], "length")
    finally:
        loop.close()
    stream.close()
    assert seq.cancelled.is_set()
    entries = [("Hi", b"Hi", -0.5, [("Hi", b"Hi", -0.5), ("Ho", b"Ho", -2.0)]), (" there", b" there", -1.0, [])]
    assert completion_logprobs(entries, 3) == {"tokens": ["Hi", " there"], "token_logprobs": [-0.5, -1.0],
                                               "top_logprobs": [{"Hi": -0.5, "Ho": -2.0}, {}],
                                               "text_offset": [3, 5]}

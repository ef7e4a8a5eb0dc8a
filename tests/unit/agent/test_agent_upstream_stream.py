"""A supervised server's stream (edgectl_agent.runtimes.supervised.UpstreamStream): read by a thread of its own,
taken without waiting once a waker is set (PENDING, then the waker's event), closed at the reader's next event.
The real counterpart: tests/integration/test_llama_server_engine.py and test_openai_features.py (llama-server)."""

from __future__ import annotations

import asyncio
import io
import queue
import threading

import pytest
from edgectl_agent.runtimes.llamacpp_engine import PENDING
from edgectl_agent.runtimes.supervised import UpstreamStream, reshaped, sse_events


class Feed:
    """Events handed to the reader thread one by one by the test; records that it was closed."""

    def __init__(self) -> None:
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = threading.Event()

    def __iter__(self):
        try:
            while True:
                item = self.items.get(timeout=10)
                if item is None:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            self.closed.set()


def test_without_a_waker_next_waits_for_each_event_and_the_end_leaves_once() -> None:
    feed, ended = Feed(), []
    for i in range(3):
        feed.items.put({"n": i})
    feed.items.put(None)
    stream = UpstreamStream(iter(feed), on_end=lambda: ended.append(1))
    assert [e["n"] for e in stream] == [0, 1, 2]
    stream._thread.join(5)
    assert ended == [1] and feed.closed.is_set()


def test_with_a_waker_next_gives_pending_and_the_reader_wakes_the_loop() -> None:
    async def read() -> list:
        feed, ended = Feed(), []
        stream = UpstreamStream(iter(feed), on_end=lambda: ended.append(1))
        waker = stream.wake_on(asyncio.get_running_loop())
        got = []
        waker.ready.clear()
        assert next(stream) is PENDING  # nothing there yet: no waiting in the event loop
        feed.items.put({"n": 1})
        await asyncio.wait_for(waker.ready.wait(), 5)  # set by the reader thread
        got.append(next(stream))
        feed.items.put({"n": 2})
        feed.items.put(None)
        while True:
            waker.ready.clear()
            item = next(stream, None)
            if item is None:
                break
            if item is PENDING:
                await asyncio.wait_for(waker.ready.wait(), 5)
                continue
            got.append(item)
        stream._thread.join(5)
        assert ended == [1]
        return got

    assert [e["n"] for e in asyncio.run(read())] == [1, 2]


def test_close_stops_the_reader_at_its_next_event_and_closes_upstream() -> None:
    feed, ended = Feed(), []
    stream = UpstreamStream(iter(feed), on_end=lambda: ended.append(1))
    feed.items.put({"n": 0})
    assert next(stream) == {"n": 0}
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    feed.items.put({"n": 1})  # the reader sees it, stops, and closes the upstream iterator
    stream._thread.join(5)
    assert feed.closed.is_set() and ended == [1]


def test_an_upstream_error_is_raised_to_the_consumer() -> None:
    feed = Feed()
    feed.items.put({"n": 0})
    feed.items.put(ConnectionError("server went away"))
    stream = UpstreamStream(iter(feed), on_end=lambda: None)
    assert next(stream) == {"n": 0}
    with pytest.raises(ConnectionError, match="server went away"):
        next(stream)


def test_reshaped_keeps_the_waker_and_passes_pending_on() -> None:
    feed = Feed()
    stream = UpstreamStream(iter(feed), on_end=lambda: None)

    def double(chunks):
        for c in chunks:
            yield PENDING if c is PENDING else {"n": c["n"] * 2}

    out = reshaped(stream, double)
    loop = asyncio.new_event_loop()
    try:
        assert out.wake_on(loop) is stream._waker
        assert next(out) is PENDING
        feed.items.put({"n": 4})
        feed.items.put(None)
        for _ in range(500):
            item = next(out)
            if item is not PENDING:
                break
            threading.Event().wait(0.01)
        assert item == {"n": 8}
        out.close()
    finally:
        loop.close()
    assert not hasattr(reshaped(iter([{"n": 1}]), double), "wake_on")  # a plain iterator stays plain


def test_sse_events_are_the_data_lines_up_to_done() -> None:
    body = b'data: {"a": 1}\n\ndata: {"a": 2}\r\n\r\n: comment\n\ndata: [DONE]\n\ndata: {"a": 3}\n\n'
    assert list(sse_events(io.BytesIO(body))) == [{"a": 1}, {"a": 2}]
    assert list(sse_events(io.BytesIO(b'data: {"a": 1}\n\n'))) == [{"a": 1}]  # a server that closes without [DONE]

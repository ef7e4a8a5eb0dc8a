"""Admission control: a bounded queue of generation requests per deployment.

A deployment's model runs ``slots`` requests at once (1 for the llama.cpp runtime today: one context, one request
at a time). Requests beyond those wait in arrival order (on the model's lock), at most ``parallel x
queue_per_slot`` of them (``AgentSettings.queue_per_slot``, default 8: a deployment with ``parallel: 4`` keeps 32
waiting); one more is refused at once with a 503 and ``Retry-After`` (``Overloaded``), never left to time out or
reset. A request is *waiting* from its arrival until the model starts on it (``Ticket.start``, called by the
runtime through ``REQUEST_STARTED`` or by ``edgectl_agent.inference`` when the first result arrives), then
*running* until ``Ticket.end``; the queue's counts and the times a ticket records feed the metrics
(``edgectl_agent.metrics``): queue wait, request duration, requests running and waiting.

Counts are read and changed from the event loop and from worker threads, under one lock per queue.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar

from edgectl_agent.errors import AgentError

# Set in the worker thread that runs a request's call: the runtime calls it once the model starts on the request
# (edgectl_agent.runtimes.base.SerializedModel when it holds the model's lock).
REQUEST_STARTED: ContextVar[Callable[[], None] | None] = ContextVar("edgectl_request_started", default=None)
# Set beside it: an event the runtime may check between tokens, set when the client went away (non-streaming).
REQUEST_CANCELLED: ContextVar[threading.Event | None] = ContextVar("edgectl_request_cancelled", default=None)

RETRY_AFTER_MAX_S = 60


class Overloaded(AgentError):
    """503: the deployment's queue is full. ``headers`` carries Retry-After (seconds)."""

    status = 503
    type = "overloaded_error"

    def __init__(self, message: str, *, retry_after_s: int, hint: str) -> None:
        super().__init__(message, hint=hint, code="queue_full")
        self.headers = {"Retry-After": str(retry_after_s)}


class ClientGone(AgentError):
    """The client disconnected; its generation was stopped (499, nginx's "client closed request": logged only)."""

    status = 499
    type = "client_closed_request"


class RequestQueue:
    """The requests of one deployment: how many run, how many wait, and the recent request duration (for
    Retry-After)."""

    def __init__(self, deployment: str) -> None:
        self.deployment = deployment
        self._lock = threading.Lock()
        self.admitted = 0  # admitted and not ended: running + waiting
        self.running = 0
        self.rejected = 0
        self._recent_duration_s = 1.0  # exponentially weighted mean of request durations

    @property
    def waiting(self) -> int:
        return self.admitted - self.running

    def admit(self, *, slots: int, queue_limit: int) -> "Ticket":
        """A ticket for one more request, or Overloaded when ``queue_limit`` requests already wait."""
        with self._lock:
            # Requests beyond the free slots wait; count this one among them when no slot is free.
            would_wait = max(self.admitted + 1 - slots, 0)
            if would_wait > queue_limit:
                self.rejected += 1
                retry = self._retry_after_s(slots)
                raise Overloaded(f"deployment '{self.deployment}' is at capacity: {self.running} request(s) "
                                 f"running and {self.waiting} waiting (its queue holds {queue_limit})",
                                 retry_after_s=retry,
                                 hint=f"retry after {retry} s (the Retry-After header); for more waiting room "
                                      "raise the agent's queue_per_slot or the deployment's parallel")
            self.admitted += 1
        return Ticket(self)

    def _retry_after_s(self, slots: int) -> int:
        # About when a slot frees up for a request that arrives now: the waiting requests ahead, at the recent
        # duration, over the slots; at least 1 s, at most a minute.
        ahead = self.waiting + 1
        return max(1, min(RETRY_AFTER_MAX_S, math.ceil(self._recent_duration_s * ahead / max(slots, 1))))

    def _started(self) -> None:
        with self._lock:
            self.running += 1

    def _ended(self, started: bool, duration_s: float) -> None:
        with self._lock:
            self.admitted -= 1
            if started:
                self.running -= 1
            self._recent_duration_s = 0.8 * self._recent_duration_s + 0.2 * duration_s


class Ticket:
    """One admitted request. ``start`` and ``end`` may be called more than once and from any thread; the first
    call counts. ``queue_wait_s`` and ``duration_s`` are set once started / ended."""

    def __init__(self, queue: RequestQueue) -> None:
        self.queue = queue
        self.arrived = time.perf_counter()
        self.cancelled = threading.Event()
        self.queue_wait_s: float | None = None
        self.duration_s: float | None = None
        self._lock = threading.Lock()
        self.on_start: Callable[[Ticket], None] = lambda ticket: None
        self.on_end: Callable[[Ticket], None] = lambda ticket: None

    def start(self) -> None:
        with self._lock:
            if self.queue_wait_s is not None or self.duration_s is not None:
                return
            self.queue_wait_s = time.perf_counter() - self.arrived
        self.queue._started()
        self.on_start(self)

    def end(self) -> None:
        with self._lock:
            if self.duration_s is not None:
                return
            self.duration_s = time.perf_counter() - self.arrived
            started = self.queue_wait_s is not None
        self.queue._ended(started, self.duration_s)
        self.on_end(self)

    def __del__(self) -> None:
        # A stream whose response never began (the client left before it) is ended when dropped.
        if self.duration_s is None:
            self.end()


class Admission:
    """The queues of every deployment on one agent. ``queue_per_slot``: waiting requests allowed per slot the
    deployment reserves (its ``parallel``)."""

    def __init__(self, queue_per_slot: int) -> None:
        self.queue_per_slot = queue_per_slot
        self.queues: dict[str, RequestQueue] = {}

    def queue(self, deployment: str) -> RequestQueue:
        queue = self.queues.get(deployment)
        if queue is None:
            queue = self.queues[deployment] = RequestQueue(deployment)
        return queue

    def admit(self, deployment: str, *, parallel: int, slots: int) -> Ticket:
        return self.queue(deployment).admit(slots=slots, queue_limit=parallel * self.queue_per_slot)

"""Case 1, crash consistency of activation. The agent SIGKILLs itself at every instrumented step of an upload and an
activation (edgectl_agent.faults: upload, verify, stage, load, smoke, switch, cleanup), then it is SIGKILLed from
outside at seeded random moments of a push and activation. After each crash it restarts on the same root and must
serve exactly the old or the new digest (at an instrumented step: exactly the one that step implies) and answer a
real request from it; staging holds at most the one interrupted upload, no temp file or half-laid-out folder is
left, and the store holds only artifacts a deployment refers to. Then the push and activation are retried, as
edgectl apply would, and converge. Real agent processes, real llama.cpp (tiny GGUFs) and OpenVINO (tiny IR trees).
"""

from __future__ import annotations

import random
import signal
import threading
import time

import pytest

from edgectl_agent.faults import CRASH_AT_ENV, CRASH_POINTS
from tests.faults.device import (Artifact, answering_digest, deployment, leftovers, push_and_activate, staged, stored,
                                 tiny_gguf, tiny_ir)
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

GGUF_POINTS = [p for p in CRASH_POINTS if not p.startswith("stage.")]  # a file artifact is never laid out
STAGE_POINTS = [p for p in CRASH_POINTS if p.startswith("stage.")]
# From this step on, state.json names the new artifact: it is the one serving after a restart.
NEW_FROM = CRASH_POINTS.index("switch.after_state")
RANDOM_KILLS, SEED = 10, 6


def arm(point: str, new: Artifact, previous: Artifact) -> str:
    """The hook's value that crashes at ``point`` while ``new`` replaces the active artifact, ``previous`` being
    the one kept before (garbage collection deletes it): ``point:digest``, so no other load or deletion crashes."""
    return f"{point}:{(previous if point == 'cleanup.after_delete' else new).digest}"


def crash_rounds(dev: "Device", points: list[str], news: list[Artifact]) -> None:
    """One crash round per point; each restart is armed for the next round (after a round converges, the artifact
    active before it is the previous one)."""
    for i, (point, new) in enumerate(zip(points, news)):
        following = arm(points[i + 1], news[i + 1], previous=dev.active) if i + 1 < len(points) else None
        dev.crash_round(point, new, following)


class Device:
    """One agent root served by one agent process after another, and what it must serve (active) and keep."""

    def __init__(self, start_agent, root) -> None:
        self.start_agent, self.root, self.port = start_agent, root, free_port()
        self.agent = None
        self.active: Artifact | None = None
        self.previous: Artifact | None = None
        self.outcomes: list[tuple[str, str]] = []

    def start(self, crash_at: str | None = None) -> None:
        self.agent = self.start_agent(self.root, self.port, env={CRASH_AT_ENV: crash_at} if crash_at else None)
        if self.active is not None:
            self.agent.wait_ready()

    def activate(self, art: Artifact, **kw) -> None:
        state = push_and_activate(self.agent, art, **kw)
        assert state.state == "serving" and state.active.digest == art.digest, state
        if self.active != art:
            self.previous, self.active = self.active, art

    def crash_round(self, point: str, new: Artifact, next_arm: str | None) -> None:
        """The agent (armed for ``point``) dies pushing/activating ``new``; restart (armed with ``next_arm`` for the
        next round), check, converge."""
        from edgectl.errors import TransportError

        old, kept = self.active, self.previous
        with pytest.raises(TransportError):  # the agent died under the request
            push_and_activate(self.agent, new, retries=0)
        assert self.agent.proc.wait(timeout=60) == -signal.SIGKILL
        assert f"crash point {point} reached" in self.agent.log.read_text()
        self.start(next_arm)
        self.check_and_converge(point, old, kept, new, expect=new if CRASH_POINTS.index(point) >= NEW_FROM else old)

    def kill_round(self, delay: float, new: Artifact) -> None:
        """SIGKILL from outside ``delay`` seconds into pushing/activating ``new``; restart, check, converge."""
        from edgectl.errors import EdgectlError

        old, kept = self.active, self.previous

        def push() -> None:
            try:
                push_and_activate(self.agent, new, retries=0)
            except EdgectlError:
                pass  # the agent died under the request

        worker = threading.Thread(target=push)
        worker.start()
        time.sleep(delay)
        self.agent.kill()
        worker.join(60)
        self.start()
        self.check_and_converge(f"{delay * 1000:.0f} ms", old, kept, new, expect=None)

    def check_and_converge(self, where: str, old: Artifact, kept: Artifact | None, new: Artifact,
                           expect: Artifact | None) -> None:
        dep = deployment(self.agent, new.desired.name)
        assert dep["state"] == "serving" and dep["active"]["digest"] in (old.digest, new.digest), (where, dep)
        serving = new if dep["active"]["digest"] == new.digest else old
        assert expect is None or serving == expect, (where, "serves", serving.digest, "expected", expect.digest)
        assert answering_digest(self.agent, new) == serving.digest, where
        # at most the one interrupted upload (one blob's partial and size files), nothing else left behind
        partials = {name.split(".")[0] for name in staged(self.root)}
        assert len(partials) <= 1 and partials <= new.hexes, (where, staged(self.root))
        assert leftovers(self.root) == [], (where, leftovers(self.root))
        assert stored(self.root) <= old.hexes | new.hexes | (kept.hexes if kept else set()), where
        if serving == new:  # state.json moved on: the artifact it dropped was collected, at the latest at start
            assert stored(self.root) == old.hexes | new.hexes, where
        self.outcomes.append((where, "new" if serving == new else "old"))

        self.activate(new)  # what edgectl apply does next: push (resumes), activate
        assert answering_digest(self.agent, new) == new.digest
        assert staged(self.root) == set() and leftovers(self.root) == []
        assert stored(self.root) == new.hexes | old.hexes, where  # active + previous, nothing more


def test_sigkill_at_every_step_and_at_random_moments_leaves_the_old_or_the_new_gguf_serving(tmp_path, start_agent):
    arts = [tiny_gguf(tmp_path / "ggufs", seed) for seed in range(2 + len(GGUF_POINTS) + 1 + RANDOM_KILLS)]
    first, second, arts = arts[0], arts[1], iter(arts[2:])
    news = [next(arts) for _ in GGUF_POINTS]
    dev = Device(start_agent, tmp_path / "root")
    dev.start(arm(GGUF_POINTS[0], news[0], previous=first))
    dev.activate(first)
    dev.activate(second)  # a previous artifact exists from here on: garbage collection has work to do
    crash_rounds(dev, GGUF_POINTS, news)

    began = time.perf_counter()
    dev.activate(next(arts))  # a whole push + activation, timed: the span the random kills fall into
    span = time.perf_counter() - began
    rng = random.Random(SEED)
    for _ in range(RANDOM_KILLS):
        dev.kill_round(rng.uniform(0, span), next(arts))
    print(f"\n{len(GGUF_POINTS)} crash points + {RANDOM_KILLS} random kills within {span * 1000:.0f} ms "
          f"(seed {SEED}); serving after restart: {dev.outcomes}")


def test_sigkill_while_a_directory_artifact_is_laid_out_leaves_the_old_one_serving(tmp_path, start_agent):
    arts = [tiny_ir(tmp_path, seed) for seed in range(1 + len(STAGE_POINTS))]
    dev = Device(start_agent, tmp_path / "root")
    dev.start(arm(STAGE_POINTS[0], arts[1], previous=arts[0]))
    dev.activate(arts[0])
    crash_rounds(dev, STAGE_POINTS, arts[1:])
    print(f"\nstage crash points: {dev.outcomes}")

"""Fixtures of the fault tests: real agent processes (tests/integration) and in-process agents (tests/unit/agent)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import start_agent  # noqa: F401  (a fixture: real agent processes)
from tests.unit.agent.conftest import AgentHarness


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator:
    """``make_agent(root=None, **settings)``: an in-process agent (create_app + TestClient), closed at teardown."""
    made: list[AgentHarness] = []

    def make(root: Path | None = None, **settings) -> AgentHarness:
        h = AgentHarness(root or tmp_path / "agent", **settings)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()

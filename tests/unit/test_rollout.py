"""Rollout waves and counts (the orchestration itself runs for real in tests/integration/test_rollout_local.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgectl.apply import waves
from edgectl.spec.deployment import Rollout, resolve_count

DEVICES = [f"d{i:02d}" for i in range(10)]


def test_all_at_once_is_one_wave() -> None:
    assert waves(Rollout(), DEVICES) == [DEVICES]
    assert waves(Rollout(), []) == []


def test_rolling_waves_of_a_share_or_a_count() -> None:
    assert [len(w) for w in waves(Rollout(strategy="rolling", wave_size="25%"), DEVICES)] == [2, 2, 2, 2, 2]
    assert [len(w) for w in waves(Rollout(strategy="rolling", wave_size=4), DEVICES)] == [4, 4, 2]
    assert [len(w) for w in waves(Rollout(strategy="rolling", wave_size="1%"), DEVICES)] == [1] * 10  # at least 1


def test_canary_goes_first_alone() -> None:
    w = waves(Rollout(strategy="canary", canary=2, wave_size="50%"), DEVICES)
    assert w[0] == ["d00", "d01"] and [len(x) for x in w[1:]] == [5, 3]  # shares are of all selected devices
    assert sum(w, []) == DEVICES


def test_counts() -> None:
    assert resolve_count("25%", 10) == 2 and resolve_count("100%", 3) == 3 and resolve_count(0, 5) == 0
    assert resolve_count("10%", 5) == 0 and resolve_count("10%", 5, at_least=1) == 1
    assert resolve_count(7, 5) == 7  # an absolute count is not capped: "7 may fail" of 5 means never halt


@pytest.mark.parametrize("bad", ["101%", "5 %", "-1", "x"])
def test_bad_shares_are_rejected(bad: str) -> None:
    with pytest.raises(ValidationError):
        Rollout(wave_size=bad)


def test_disk_shortfall_is_the_missing_bytes_plus_the_margin() -> None:
    from edgectl.apply import disk_shortfall

    assert disk_shortfall(1_000_000, 1_100_000) is None  # exactly size + 10%: fits
    assert disk_shortfall(1_000_000, 1_099_999) == 1_100_000
    assert disk_shortfall(0, 0) is None  # nothing left to push


def test_health_gate_judges_the_agents_timings() -> None:
    from edgectl.agent_client import SmokeResult
    from edgectl.apply import gate_problems
    from edgectl.spec.deployment import HealthGate

    fast = SmokeResult(ttft_s=0.004, tokens=9, decode_s=0.1)  # 4 ms to the first token, 80 tokens/s
    assert gate_problems(HealthGate(), fast) == []
    assert gate_problems(HealthGate(max_ttft_ms=5, min_tokens_per_s=80), fast) == []
    assert gate_problems(HealthGate(max_ttft_ms=0.001), fast) == ["time to first token 4.0 ms > max_ttft_ms 0.001"]
    assert gate_problems(HealthGate(min_tokens_per_s=100), fast) == ["decode 80.0 tokens/s < min_tokens_per_s 100"]
    one_token = SmokeResult(ttft_s=0.004, tokens=1, decode_s=0.0)  # no decode rate from a single token
    assert gate_problems(HealthGate(min_tokens_per_s=1), one_token) == ["decode 0.0 tokens/s < min_tokens_per_s 1"]
    old_agent = SmokeResult(ttft_s=None, tokens=None, decode_s=None)
    assert gate_problems(HealthGate(), old_agent) == []  # without limits, text is enough
    (why,) = gate_problems(HealthGate(max_ttft_ms=1000), old_agent)
    assert "reported no timings" in why


def test_health_gate_reads_the_answer() -> None:
    """expect_contains (case-insensitive) and expect_regex judge the smoke answer's text (the Ansible role's filter
    plugin uses the same rule: tests/unit/test_ansible_engine.py)."""
    from edgectl.agent_client import SmokeResult
    from edgectl.apply.rollout import gate_detail, gate_problems
    from edgectl.spec.deployment import HealthGate

    gate = HealthGate(prompt="What is the capital of France?", max_tokens=16, expect_contains="paris")
    good = SmokeResult(ttft_s=0.004, tokens=9, decode_s=0.1, text="The capital of France is Paris.")
    garbage = SmokeResult(ttft_s=0.004, tokens=9, decode_s=0.1, text="water oil water oil")
    assert gate_problems(gate, good) == []
    assert gate_detail(good, gate).endswith("answer contains 'paris'")
    (why,) = gate_problems(gate, garbage)
    assert why == "the answer to 'What is the capital of France?' does not contain 'paris': 'water oil water oil'"
    regex = HealthGate(expect_regex=r"^\s*\{.*\}\s*$")
    assert gate_problems(regex, SmokeResult(0.1, 3, 0.1, text=' {"a": 1} ')) == []
    assert "does not match expect_regex" in gate_problems(regex, garbage)[0]
    assert "does not contain" in gate_problems(gate, SmokeResult(0.1, 3, 0.1, text=None))[0]
    with pytest.raises(ValueError, match="not a regular expression"):
        HealthGate(expect_regex="(")
    with pytest.raises(ValueError, match="would evaluate them as a template"):
        HealthGate(prompt="Say {{ lookup('pipe', 'id') }}")

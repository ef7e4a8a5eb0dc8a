"""Catalog models ship a golden prompt (a question with a known answer); a Deployment's health gate asks it unless
the gate sets its own prompt or answer check. The real gate reading SmolLM2's answer: tests/integration/
test_gate_answer_local.py and test_apply_local.py::test_embedded_default_serves_smollm2."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgectl.load import load_paths
from edgectl.spec.deployment import HealthGate, gate_for
from edgectl.spec.model import GoldenPrompt
from tests.unit.builders.test_missing_offline_source import FLEET

CAPITAL = GoldenPrompt(prompt="What is the capital of France? Answer in one word.", expect_contains="Paris")


def test_every_catalog_chat_model_ships_a_golden_prompt() -> None:
    spec = load_paths([FLEET])
    chat = [m for m in spec.models.values() if m.spec.task == "chat"]
    assert chat and all(m.spec.goldens for m in chat), [m.name for m in chat]
    smollm2, *more = spec.models["smollm2-135m-instruct"].spec.goldens
    assert smollm2.expect_contains == "Paris" and "capital of France" in smollm2.prompt
    assert [g.expect_contains for g in more] == ["Berlin"]  # several where sensible: each checked with SmolLM2


def test_the_default_gate_asks_the_golden_prompt() -> None:
    spec = load_paths([FLEET])
    dep = spec.deployments["smollm2"]
    gate = gate_for(dep.spec.rollout.health_gate, spec.models[dep.spec.model].spec.goldens[0])
    assert gate.prompt == CAPITAL.prompt and gate.expect_contains == "Paris" and gate.max_tokens == 24


def test_a_gate_with_its_own_prompt_or_check_keeps_it() -> None:
    for own in ({"prompt": "Say hi."}, {"expect_regex": "^[A-Z]"}, {"expect_contains": "hi"}):
        gate = HealthGate(**own)
        assert gate_for(gate, CAPITAL) == gate, own
    limits = HealthGate(max_ttft_ms=500, max_tokens=4)  # limits only: the golden prompt is asked, with its room
    asked = gate_for(limits, CAPITAL)
    assert (asked.prompt, asked.expect_contains, asked.max_ttft_ms, asked.max_tokens) == \
        (CAPITAL.prompt, "Paris", 500, 24)
    assert gate_for(HealthGate(smoke=False), CAPITAL).expect_contains is None  # no smoke request: nothing asked
    assert gate_for(HealthGate(), None) == HealthGate()


def test_a_golden_prompt_must_check_something_and_be_safe_for_ansible() -> None:
    with pytest.raises(ValidationError, match="expect_contains or expect_regex"):
        GoldenPrompt(prompt="Hi")
    with pytest.raises(ValidationError, match="template"):
        GoldenPrompt(prompt="{{ x }}", expect_contains="a")
    with pytest.raises(ValidationError, match="not a regular expression"):
        GoldenPrompt(prompt="Hi", expect_regex="(")

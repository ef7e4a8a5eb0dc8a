"""Changing only a Model's golden prompts gates devices that already serve it again, for real: a local agent serves
SmolLM2-135M (its packaged Q4_1) after its gate asked the capital of France. The Model then gets a second prompt
(Paris as a JSON object): the artifact is the same, yet the plan says the health gate changed, apply activates it
again and the gate asks both prompts. A prompt SmolLM2 answers wrongly (three colours as a JSON array) fails the
device the same way: it is rolled back to what it served, and status keeps showing the gate as still to pass. A
repeated apply with unchanged prompts does nothing."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_apply_local import edgectl, free_port, home  # noqa: F401  (fixture)
from tests.integration.test_golden_prompts_local import CAPITAL, CITY, COLOURS
from tests.tinymodels import quality_gate_manifests

pytestmark = pytest.mark.integration

CHANGED = "health gate changed (golden prompts or rollout.health_gate): the gate runs again"


def test_changed_golden_prompts_gate_the_serving_device_again(tmp_path, home):  # noqa: F811
    port = free_port()
    mdir = quality_gate_manifests(tmp_path / "m", port=port, golden_prompts=[CAPITAL])
    r = edgectl("apply", str(mdir), env=home)
    assert "answer contains 'Paris'" in r.stdout and "more golden prompts" not in r.stdout, r.stdout
    assert "no changes" in edgectl("apply", str(mdir), env=home).stdout.lower()

    quality_gate_manifests(mdir, port=port, golden_prompts=[CAPITAL, CITY])  # the Model's prompts only
    plan = " ".join(edgectl("plan", str(mdir), env=home).stdout.split())
    assert CHANGED in plan, plan
    r = edgectl("apply", str(mdir), env=home)
    assert "answer contains 'Paris'; 1 more golden prompts answered right" in r.stdout, r.stdout
    assert "no changes" in edgectl("apply", str(mdir), env=home).stdout.lower()

    quality_gate_manifests(mdir, port=port, golden_prompts=[CAPITAL, CITY, COLOURS])
    r = edgectl("apply", str(mdir), env=home, check=False)
    out = " ".join((r.stdout + r.stderr).split())
    assert r.returncode == 1, out
    assert f"the answer to {COLOURS['prompt']!r} fails expect_json_schema:" in out, out
    # rolled back to what served before (the same artifact, the old gate): still serving, and the new gate is
    # still to be passed, so status shows it as drift and the next apply tries again
    (st,) = json.loads(edgectl("status", str(mdir), "--json", env=home, check=False).stdout)
    assert [d["state"] for d in st["deployments"]] == ["serving"], st
    assert [d["detail"] for d in st["drift"]] == ["reload: " + CHANGED], st

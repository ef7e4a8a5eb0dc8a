"""A pull device says which health gate it ran last (``gate_digest`` on edgectl_pull_gate_info, from
edgectl_agent.pull_report), edgectl reads it back (edgectl.pull.status) and `edgectl diff` compares it with the
plan's (edgectl.pull.diff): a gate-only change (a Model's golden prompts) is drift until the device reports the new
gate. Prometheus's answer is built here from the report's own text; the real counterpart (a real agent, registry,
Pushgateway and Prometheus) is tests/integration/test_pull_regate.py."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from edgectl_agent.api import ArtifactRef, DeploymentState
from edgectl_agent.pull_report import report_text
from edgectl_agent.pull_state import GateReport, PullStatus

from edgectl.load import load_paths
from edgectl.plan import plan, recipe_id
from edgectl.plan.settings import gate_steps
from edgectl.pull.diff import pull_rows
from edgectl.pull.status import device_report, device_status
from edgectl.spec import BuiltArtifact
from tests.unit.test_pull_facts_report import FLEET, _series

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
ART = "sha256:" + "a" * 64
OTHER_ART = "sha256:" + "b" * 64
OLD_GATE = "sha256:" + "0" * 64


@pytest.fixture
def setup(tmp_path):
    (tmp_path / "m.yaml").write_text(FLEET)
    spec = load_paths([tmp_path / "m.yaml"])
    p = plan(spec, {"shop-1": None}, {"shop-1": None}, {}, devices=["shop-1"])
    [dep] = p.devices[0].deployments
    recipe = dep.chosen.recipe
    built = {recipe_id(recipe): BuiltArtifact(
        digest=ART, model=recipe.model, format=recipe.format, quant=recipe.quant, size_bytes=1,
        source_digest="sha256:" + "0" * 64, tool_version="t", cache_key="k")}
    return spec, p.devices[0], built


def report(spec, dp, *, gate: GateReport | None, serving: str = ART):
    """shop-1's status as edgectl reads it back from a report whose last gate is ``gate``."""
    recipe = dp.deployments[0].chosen.recipe
    status = PullStatus(device="shop-1", outcome="applied", version=3, applied_version=3, poll_interval_s=30,
                        gates={"chat": gate} if gate else {})
    served = [DeploymentState(name="chat", state="serving", since=NOW, active=ArtifactRef(
        digest=serving, format=recipe.format, quant=recipe.quant, size_bytes=1, model=recipe.model))]
    text = report_text(status, served, now=NOW.timestamp())
    series = _series(text, "shop-1")
    return device_status(spec, spec.devices["shop-1"], series, now=NOW), series, text


def test_the_plan_names_the_gate_and_the_report_names_the_gate_it_ran(setup):
    spec, dp, _ = setup
    wanted = dp.deployments[0].gate_digest
    assert wanted is not None and wanted.startswith("sha256:") and len(wanted) == 71
    st, series, text = report(spec, dp, gate=GateReport(digest=ART, version=3, answer="Paris", gate_digest=wanted))
    assert f'gate_digest="{wanted}"' in text
    assert st.gates == {"chat": {"gate_digest": wanted, "error": None}}
    assert device_report(series).gates["chat"].gate_digest == wanted


def test_diff_is_in_sync_only_once_the_device_ran_the_planned_gate(setup):
    spec, dp, built = setup
    wanted = dp.deployments[0].gate_digest
    st, _, _ = report(spec, dp, gate=GateReport(digest=ART, version=3, answer="Paris", gate_digest=wanted))
    [row] = pull_rows(dp, st, built)
    assert row["status"] == "in sync" and row["steps"] == [] and gate_steps(dp, st) == []

    st, _, _ = report(spec, dp, gate=GateReport(digest=ART, version=2, answer="Paris", gate_digest=OLD_GATE))
    [row] = pull_rows(dp, st, built)
    assert row["status"] == (f"drift: health gate changed (gated with {OLD_GATE[7:19]}, wants {wanted[7:19]}; "
                             "published states apply at its next poll, then it gates again)"), row
    assert row["steps"] == ["publish"]
    assert gate_steps(dp, st) == [{"action": "publish", "deployment": "chat",  # what `edgectl status` shows
                                   "detail": row["status"].removeprefix("drift: ")}]


def test_a_failed_gate_is_drift_and_an_artifact_change_is_named_first(setup):
    spec, dp, built = setup
    wanted = dp.deployments[0].gate_digest
    st, _, _ = report(spec, dp, gate=GateReport(digest=ART, version=3, gate_digest=wanted,
                                                error="the smoke request produced no text"))
    [row] = pull_rows(dp, st, built)
    assert row["status"] == (f"drift: health gate {wanted[7:19]} failed on the device: the smoke request "
                             "produced no text"), row
    st, _, _ = report(spec, dp, serving=OTHER_ART,
                      gate=GateReport(digest=OTHER_ART, version=2, answer="Paris", gate_digest=OLD_GATE))
    [row] = pull_rows(dp, st, built)
    assert row["status"].startswith(f"drift: serves {dp.deployments[0].chosen.recipe.format}"), row


def test_an_agent_that_names_no_gate_is_not_compared(setup):
    """Agents from before gate_digest was reported (and states without one) leave the label out."""
    spec, dp, built = setup
    st, series, text = report(spec, dp, gate=GateReport(digest=ART, version=3, answer="Paris"))
    assert "gate_digest=" not in text
    assert st.gates == {"chat": {"gate_digest": None, "error": None}}
    assert device_report(series).gates["chat"].gate_digest is None
    [row] = pull_rows(dp, st, built)
    assert row["status"] == "in sync"
    st, _, _ = report(spec, dp, gate=None)
    assert st.gates == {} and pull_rows(dp, st, built)[0]["status"] == "in sync"

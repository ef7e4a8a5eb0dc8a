"""Pull rollouts' rules without a registry: the agent's backoff, the report wire format read back by edgectl, the
judgement of a wave's reports with the push gate rule, and the rollout's halting over fake reports (a fake clock
for the wait). tests/integration/test_pull_rollout.py runs them for real (registry, agents, Prometheus)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.pull import MAX_BACKOFF_S, backoff_s
from edgectl_agent.pull_report import report_text
from edgectl_agent.pull_state import GateReport, PublishedState, PullStatus
from prometheus_client.parser import text_string_to_metric_families

from edgectl.apply.report import DeviceResult, Events
from edgectl.errors import PlanError
from edgectl.pull.rollout import PullRollout, PullTarget, judge
from edgectl.pull.status import DeviceReport, GateSeen, device_report
from edgectl.agent_client import SmokeResult
from edgectl.spec.deployment import HealthGate, Rollout
from edgectl.spec.fleet import PullRegistry

PULL = PullRegistry(registry="127.0.0.1:5000", repository="shops/models", plain_http=True, poll_interval_s=5,
                    prometheus="http://127.0.0.1:9090", pushgateway="http://127.0.0.1:9091")


def test_backoff_doubles_per_failure_and_is_capped():
    assert [backoff_s(n, 5) for n in (1, 2, 3)] == [10, 20, 40]
    assert backoff_s(30, 300) == MAX_BACKOFF_S


def series_of(text: str, push_time: float) -> list[dict]:
    """The report as Prometheus's query API returns it after scraping the Pushgateway."""
    out = [{"metric": {"__name__": "push_time_seconds", "device": "shop-1"}, "value": [0, str(push_time)]}]
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append({"metric": {"__name__": s.name, "device": "shop-1", **s.labels}, "value": [0, str(s.value)]})
    return out


def test_the_agents_report_reads_back_as_the_gate_result_edgectl_judges():
    status = PullStatus(device="shop-1", outcome="applied", version=3, applied_version=3,
                        gates={"chat": GateReport(digest="sha256:" + "ab" * 32, version=3, ttft_s=0.05, tokens=8,
                                                  decode_s=0.1, answer='Hello "there"')})
    r = device_report(series_of(report_text(status, []), 1000.0))
    assert (r.version, r.applied_version, r.outcome, r.seen) == (3, 3, "applied", 1000.0)
    g = r.gates["chat"]
    assert (g.digest, g.version, g.error) == ("sha256:" + "ab" * 32, 3, None)
    assert g.result == SmokeResult(ttft_s=0.05, tokens=8, decode_s=0.1, text='Hello "there"')
    failed = PullStatus(device="shop-1", outcome="failed", version=4, applied_version=3, error="no space")
    r = device_report(series_of(report_text(failed, []), 1001.0))
    assert (r.version, r.outcome, r.error) == (4, "failed", "no space")


def report(applied: int, version: int | None = None, *, answer="Hello", error=None, outcome="applied",
           gate_version=None, digest="sha256:" + "ab" * 32) -> DeviceReport:
    gate = GateSeen(digest=digest, version=gate_version or applied,
                    result=SmokeResult(ttft_s=0.01, tokens=4, decode_s=0.1, text=answer), error=error)
    return DeviceReport(seen=0, version=version or applied, applied_version=applied, outcome=outcome, error=None,
                        gates={"chat": gate})


def test_judge_uses_the_push_gate_rule_on_what_the_device_reported():
    digest, gate = "sha256:" + "ab" * 32, HealthGate(expect_contains="hello")
    assert judge(report(2), "chat", 2, digest, gate)[0] is True
    ok, why = judge(report(2, answer="Bonjour"), "chat", 2, digest, gate)
    assert not ok and "does not contain 'hello'" in why
    assert judge(report(1), "chat", 2, digest, gate) is None  # not applied yet
    assert judge(report(2, gate_version=1), "chat", 2, digest, gate) is None  # gate not reported yet
    assert not judge(report(2, digest="sha256:" + "cd" * 32), "chat", 2, digest, gate)[0]
    assert "not applied" in judge(report(1, 2, outcome="failed"), "chat", 2, digest, gate)[1]
    assert judge(report(2, error="HTTP 500"), "chat", 2, digest, gate)[1].endswith("HTTP 500")


def deployment(quant: str) -> DesiredDeployment:
    return DesiredDeployment(name="chat", artifact=ArtifactRef(digest="sha256:" + ("ab" if quant == "Q8_0" else
                                                                                      "cd") * 32,
                                                               format="gguf", quant=quant, size_bytes=1,
                                                               model="tiny-llama"))


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def rollout_over(devices: list[str], rollout: Rollout, reports) -> tuple[PullRollout, list, dict]:
    spec = SimpleNamespace(deployments={"chat": SimpleNamespace(spec=SimpleNamespace(rollout=rollout))})
    targets = {d: PullTarget(d, PULL, published={"chat": deployment("Q8_0")}, desired={"chat": deployment("Q4_0")})
               for d in devices}
    published, versions = [], {d: 1 for d in devices}
    last = {d: [deployment("Q8_0")] for d in devices}

    def publish(device, deployments, gates):  # as edgectl.pull.publish.publish_state: None when unchanged
        if deployments == last[device]:
            return None
        last[device] = deployments
        versions[device] += 1
        published.append((device, deployments[0].artifact.quant, versions[device]))
        now = datetime.now(timezone.utc)
        return PublishedState(device=device, version=versions[device], issued_at=now,
                              expires_at=now + timedelta(hours=1), poll_interval_s=5, deployments=deployments)
    clock = FakeClock()
    results = {d: DeviceResult(d) for d in devices}
    r = PullRollout(spec, targets, publish, results, Events(), None, read=lambda url: reports(versions),
                    clock=clock, sleep=clock.sleep)
    return r, published, results


def test_a_canary_without_reports_times_out_halts_and_is_rolled_back():
    r, published, results = rollout_over(["a", "b", "c"], Rollout(strategy="canary", wave_size=1), lambda v: {})
    halted = r.run()
    assert len(halted) == 1 and "1 of 1 devices failed in wave 1 (canary)" in halted[0]
    assert "not started: b, c" in halted[0]
    assert published == [("a", "Q4_0", 2), ("a", "Q8_0", 3)]  # b and c never got a new state
    assert "no report of state version 2 applied within 315 s" in results["a"].error


def test_waves_follow_each_other_once_every_device_reported_its_gate():
    def reports(versions):
        return {d: report(v, digest="sha256:" + "cd" * 32) for d, v in versions.items()}
    r, published, results = rollout_over(["a", "b", "c"], Rollout(strategy="rolling", wave_size=2), reports)
    assert r.run() == []
    assert [(d, q) for d, q, _ in published] == [("a", "Q4_0"), ("b", "Q4_0"), ("c", "Q4_0")]
    assert all("health gate passed" in " ".join(res.actions) for res in results.values())


def test_several_waves_need_the_devices_reports():
    blind = PullRegistry(registry="127.0.0.1:5000", repository="shops/models", plain_http=True)
    r, published, _ = rollout_over(["a", "b"], Rollout(strategy="canary"), lambda v: {})
    for t in r.targets.values():
        t.pull = blind
    with pytest.raises(PlanError, match="cannot read the reports of a, b: nothing was published"):
        r.run()
    assert published == []


def test_status_names_a_device_clock_that_is_off():
    from edgectl.pull.status import device_status

    status = PullStatus(device="shop-1", outcome="stale", error="expired", clock_skew_s=172800.0)
    series = series_of(report_text(status, [], now=1000.0), 1000.0)
    device = SimpleNamespace(name="shop-1")
    st = device_status(SimpleNamespace(deployments={}), device, series, now=datetime.fromtimestamp(1010, timezone.utc))
    assert "expired state" in st.error and "its clock is +172800 s off the registry's" in st.error

"""Pull agents report on change plus a heartbeat, and a site device reads its state at the origin with the mirror as
fallback: the decisions, with a recording push and fake readers (the real counterparts: test_pull_status.py with a
real agent, Pushgateway and Prometheus; test_pull_mirror_warm.py with a real origin and Distribution mirror)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from edgectl_agent import pull as pull_module
from edgectl_agent import pull_report
from edgectl_agent.oci import RegistryError
from edgectl_agent.pull import HEARTBEAT_POLLS, ORIGIN_RETRY_POLLS, Puller
from edgectl_agent.pull_report import report_changed, report_text
from edgectl_agent.pull_state import PullConfig, PullStatus

from edgectl.load import load_paths
from edgectl.signing import Signer, generate_key
from tests.unit.test_pull import FLEET


def test_what_counts_as_a_change_leaves_out_the_timestamp_facts_and_small_clock_drift():
    status = PullStatus(device="d1", outcome="unchanged", version=3, applied_version=3, poll_interval_s=10,
                        clock_skew_s=0.4)
    first = report_changed(report_text(status, [], now=1.0, heartbeat_s=60), None, skew_s=0.4, skew_warn_s=60)
    assert first
    later = status.model_copy(update={"clock_skew_s": 1.6})
    assert report_changed(report_text(later, [], now=99.0, heartbeat_s=60), first, skew_s=1.6, skew_warn_s=60) == ""
    assert report_changed(report_text(status.model_copy(update={"applied_version": 4}), [], now=2.0, heartbeat_s=60),
                          first, skew_s=0.4, skew_warn_s=60)
    assert report_changed(report_text(status.model_copy(update={"outcome": "registry_unreachable"}), [], now=2.0,
                                      heartbeat_s=60), first, skew_s=0.4, skew_warn_s=60)
    off = status.model_copy(update={"clock_skew_s": 7200.0})  # past the warning: a change
    assert report_changed(report_text(off, [], now=2.0, heartbeat_s=60), first, skew_s=7200.0, skew_warn_s=60)
    assert "edgectl_pull_heartbeat_seconds 60" in report_text(status, [], heartbeat_s=60)


def puller(tmp_path, **config) -> Puller:
    generate_key(tmp_path / "fleet.key")
    pem = Signer.load(tmp_path / "fleet.key").public_pem.decode()
    agent = SimpleNamespace(settings=SimpleNamespace(root=tmp_path), store=None, uploads_in_progress=set(),
                            recovery=None, deployments=SimpleNamespace(snapshot=lambda: [], verifier=None))
    return Puller(agent, PullConfig(device="d1", registry="mirror:5000", repository="shops/models",
                                    verify_key_pem=pem, report_url="http://gateway:9091", **config))


def test_the_agent_pushes_on_change_and_at_each_heartbeat(tmp_path, monkeypatch):
    pushed: list[str] = []
    monkeypatch.setattr(pull_report, "push_report", lambda url, device, text: pushed.append(text) or True)
    clock = [1000.0]
    monkeypatch.setattr(pull_module.time, "monotonic", lambda: clock[0])
    p = puller(tmp_path)
    p.status = PullStatus(device="d1", outcome="unchanged", version=1, applied_version=1, poll_interval_s=10)
    heartbeat = p.heartbeat_s()
    assert heartbeat == HEARTBEAT_POLLS * 10

    def poll(seconds: float = 10, **changes) -> int:
        clock[0] += seconds
        p.status = p.status.model_copy(update=changes)
        before = len(pushed)
        asyncio.run(p.report())
        return len(pushed) - before

    assert poll() == 1  # the first report
    assert [poll() for _ in range(3)] == [0, 0, 0]  # nothing changed
    assert poll(applied_version=2, version=2) == 1  # a change: at once
    sent = [poll() for _ in range(HEARTBEAT_POLLS)]
    assert sum(sent) == 1 and sent.index(1) < HEARTBEAT_POLLS  # an unchanged device still reports each heartbeat
    assert f"edgectl_pull_heartbeat_seconds {heartbeat:.0f}" in pushed[-1]

    monkeypatch.setattr(pull_report, "push_report", lambda url, device, text: pushed.append(text) and False)
    assert poll(outcome="registry_unreachable") == 1
    assert poll() == 1  # that push failed: tried again at the next poll


class FakeReader:
    def __init__(self, answer: str | Exception) -> None:
        self.answer, self.asked = answer, 0

    def tag_digest(self, tag: str) -> str:
        self.asked += 1
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def test_a_site_device_asks_the_origin_for_its_state_and_the_mirror_while_the_origin_is_down(tmp_path):
    p = puller(tmp_path, origin="origin:5000", origin_scheme="http")
    assert p.origin_reader is not None and p.origin_reader.base == "http://origin:5000/v2/shops/models"
    p.reader, p.origin_reader = FakeReader("sha256:mirror"), FakeReader("sha256:origin")
    assert p._tag_digest("state-d1") == ("sha256:origin", p.origin_reader) and p.reader.asked == 0

    p.origin_reader.answer = RegistryError("HEAD ...: cannot reach the registry (refused)")
    assert p._tag_digest("state-d1") == ("sha256:mirror", p.reader)
    for _ in range(ORIGIN_RETRY_POLLS):  # the origin is left alone for a while
        assert p._tag_digest("state-d1")[1] is p.reader
    assert p.origin_reader.asked == 2
    p.origin_reader.answer = "sha256:origin"
    assert p._tag_digest("state-d1") == ("sha256:origin", p.origin_reader)  # then tried again

    p.origin_reader.answer = RegistryError("HEAD ...: HTTP 404 Not Found", status=404)  # an answer, not an outage
    with pytest.raises(RegistryError):
        p._tag_digest("state-d1")
    p.origin_reader.answer = RegistryError("HEAD ...: HTTP 503", status=503)
    assert p._tag_digest("state-d1")[1] is p.reader


def test_stale_waits_for_the_heartbeat_of_an_agent_that_reports_on_change(tmp_path):
    from edgectl.pull.status import device_status

    generate_key(tmp_path / "fleet.key")
    (tmp_path / "fleet.yaml").write_text(FLEET.format(extra=""))
    spec = load_paths([tmp_path])
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)

    def series(age_s: float) -> list[dict]:
        base = {"job": "edgectl_pull", "device": "shop-1"}
        return [{"metric": {**base, "__name__": "push_time_seconds"}, "value": [0, str(now.timestamp() - age_s)]},
                {"metric": {**base, "__name__": "edgectl_pull_poll_interval_seconds"}, "value": [0, "60"]},
                {"metric": {**base, "__name__": "edgectl_pull_heartbeat_seconds"}, "value": [0, "360"]},
                {"metric": {**base, "__name__": "edgectl_pull_outcome", "outcome": "unchanged"}, "value": [0, "1"]}]

    quiet = device_status(spec, spec.devices["shop-1"], series(300), now=now)  # silent, within its heartbeat
    assert quiet.reachable and quiet.error is None
    overdue = device_status(spec, spec.devices["shop-1"], series(360 + 91), now=now)  # heartbeat + 1.5 polls
    assert not overdue.reachable
    assert overdue.error == "stale: last seen 451 s ago, it polls every 60 s and reports at least every 360 s"

"""`edgectl status` figures from an agent's /metrics: tokens/s, p50/p95, error rate, RAM, disk; windows."""

from __future__ import annotations

import math

import pytest

from edgectl.observe import quantile, samples_of, summarize
from edgectl_agent.api import ArtifactRef
from edgectl_agent.metrics import AgentMetrics


def test_quantile_matches_prometheus_interpolation():
    buckets = {0.1: 0.0, 0.5: 50.0, 1.0: 100.0, math.inf: 100.0}
    assert quantile(0.5, buckets) == pytest.approx(0.5)
    assert quantile(0.25, buckets) == pytest.approx(0.3)
    assert quantile(0.95, buckets) == pytest.approx(0.95)
    assert quantile(0.5, {1.0: 0.0, math.inf: 0.0}) is None
    assert quantile(0.99, {1.0: 1.0, math.inf: 10.0}) == 1.0  # in +Inf: the highest finite bound


def traffic(m: AgentMetrics, ok: int, failed: int, seconds: float) -> None:
    for _ in range(ok):
        m.requests.labels(endpoint="/v1/chat/completions", status="200").inc()
        m.latency.labels(endpoint="/v1/chat/completions").observe(seconds)
    for _ in range(failed):
        m.requests.labels(endpoint="/v1/chat/completions", status="404").inc()
        m.latency.labels(endpoint="/v1/chat/completions").observe(0.001)
    m.requests.labels(endpoint="/healthz", status="200").inc()  # not serving traffic: not counted


def test_summary_lifetime_and_window(tmp_path):
    m = AgentMetrics(store_root=tmp_path)
    m.set_active("chat", ArtifactRef(digest="sha256:" + "0" * 64, format="gguf", quant="Q4_0", size_bytes=1,
                                     model="m"))
    traffic(m, ok=9, failed=1, seconds=0.2)
    m.note_generation("chat", 40, 2.0, decode_tokens=40)
    first = samples_of(m.exposition().decode())
    s = summarize(first)
    assert s.tokens_per_s == {"chat": pytest.approx(20.0)}
    assert s.requests == 10 and s.error_rate == pytest.approx(0.1)
    assert 0.1 <= s.p50_s <= 0.25 and 0.1 <= s.p95_s <= 0.25
    assert s.rss_bytes > 0 and s.disk_free_bytes > 0

    # A window: only what happened since the first sample (slower requests, faster decoding).
    traffic(m, ok=4, failed=0, seconds=3.0)
    m.note_generation("chat", 60, 1.0, decode_tokens=60)
    window = summarize(samples_of(m.exposition().decode()), first)
    assert window.requests == 4 and window.error_rate == 0
    assert window.tokens_per_s == {"chat": pytest.approx(60.0)}
    assert 2.5 <= window.p50_s <= 5.0

    # An idle window shows lifetime figures instead of blanks.
    now = samples_of(m.exposition().decode())
    idle = summarize(now, now)
    assert idle.requests == 14 and idle.tokens_per_s == {"chat": pytest.approx(100 / 3.0)}


def test_a_restarted_agent_counts_from_zero():
    before = AgentMetrics()
    traffic(before, ok=50, failed=0, seconds=0.1)
    after = AgentMetrics()  # counters reset by a restart
    traffic(after, ok=2, failed=2, seconds=0.1)
    s = summarize(samples_of(after.exposition().decode()), samples_of(before.exposition().decode()))
    assert s.requests == 4 and s.error_rate == pytest.approx(0.5)


def test_collect_status_closes_every_connection_it_opened(monkeypatch, tmp_path):
    """`status --watch` calls collect_status every few seconds: SSH connections, docker clients and HTTP pools
    opened by each round are closed by it, reachable or not."""
    from edgectl import observe as observe_mod
    from edgectl.apply import DeviceContext
    from edgectl.load import load_paths

    (tmp_path / "fleet.yaml").write_text("""\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {name: f}
spec:
  devices:
    - {name: a, profile: raspberry-pi-5, transport: {type: local}}
    - {name: b, profile: raspberry-pi-5, transport: {type: local}}
""")
    spec = load_paths([tmp_path / "fleet.yaml"])
    closed: list[str] = []

    class Closable:
        endpoint = "http://127.0.0.1:1/v1"

        def __init__(self, name: str) -> None:
            self.name = name

        def close(self) -> None:
            closed.append(self.name)

        def metrics(self, timeout: float) -> str:
            return "# no samples\n"

    def fake_observe(devices, *, start_agents, parallel):
        assert not start_agents  # status never starts an agent
        a, b = devices
        return {"a": DeviceContext(a, transport=Closable("a-transport"), client=Closable("a-client")),
                "b": DeviceContext(b, transport=Closable("b-transport"), error="unreachable")}

    monkeypatch.setattr(observe_mod, "observe", fake_observe)
    statuses = observe_mod.collect_status(spec, spec.devices.values())
    assert [s.reachable for s in statuses] == [True, False]
    assert sorted(closed) == ["a-client", "a-transport", "b-transport"]

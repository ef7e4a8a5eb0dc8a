"""A pull device's facts travel in its status report (edgectl_agent.pull_report) and come back to the planner
(edgectl.pull.status.reported_facts, edgectl.apply.planning.make_plan). Prometheus's answer is built here from the
report's own text; the real counterpart (a real agent, Pushgateway and Prometheus) is
tests/integration/test_pull_facts.py."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from edgectl_agent.api import ArtifactSpeed, DeviceBenchmark, Facts
from edgectl_agent.pull_report import report_text
from edgectl_agent.pull_state import PullStatus
from prometheus_client.parser import text_string_to_metric_families

from edgectl.load import load_paths
from edgectl.plan import recipe_id
from edgectl.signing import generate_key
from edgectl.spec import BuiltArtifact

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {name: shops}
spec:
  signing: {key_file: fleet.key}
  pull: {registry: "127.0.0.1:5000", repository: shops/models, plain_http: true,
         pushgateway: "http://127.0.0.1:9091", prometheus: "http://127.0.0.1:9090"}
  devices:
    - {name: shop-1, profile: x86-cpu-server, transport: {type: pull}}
    - {name: shop-2, profile: x86-cpu-server, transport: {type: pull}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {name: chat}
spec: {model: smollm2-135m-instruct, selector: {devices: [shop-1, shop-2]}, context_length: 1024, threads: 1}
"""


def _facts(benchmark: DeviceBenchmark | None = None) -> Facts:
    return Facts(agent_version="0.1.0", hostname="shop", arch="x86_64", os="Linux 6.1", cpu_model='Some "CPU"',
                 cpu_count=2, cpu_flags=["avx2"], ram_total_bytes=8 * 2**30, ram_available_bytes=6 * 2**30,
                 disk_free_bytes=50 * 2**30, runtimes={"llamacpp": "0.3.2"}, benchmark=benchmark)


def _series(text: str, device: str) -> list[dict]:
    """What Prometheus's query API answers for the report ``text`` (after scraping it from the Pushgateway)."""
    return [{"metric": {**s.labels, "__name__": s.name, "job": "edgectl_pull", "device": device},
             "value": [0, repr(s.value)]}
            for family in text_string_to_metric_families(text) for s in family.samples]


def test_the_report_carries_the_facts_and_they_read_back_whole() -> None:
    from edgectl.pull.status import facts_of

    bench = DeviceBenchmark(memory_bandwidth_bytes_per_s=20e9, compute_flops_per_s=150e9,
                            thread_compute_flops_per_s=80e9, threads=2, seconds=0.8, measured_at=NOW)
    facts = _facts(bench)
    text = report_text(PullStatus(device="shop-1", outcome="applied", version=1, applied_version=1), [], now=1.0,
                       facts=facts)
    assert facts_of(_series(text, "shop-1")) == facts
    without = report_text(PullStatus(device="shop-1", outcome="applied"), [], now=1.0)
    assert "edgectl_pull_facts_info" not in without and facts_of(_series(without, "shop-1")) is None
    damaged = [{"metric": {"__name__": "edgectl_pull_facts_info", "facts": '{"cpu_count": "many"}'},
                "value": [0, "1"]}]
    assert facts_of(damaged) is None  # planned from the profile, as before the device reported


def test_the_plan_uses_a_pull_devices_reported_measurement_unless_offline(tmp_path: Path, monkeypatch) -> None:
    from edgectl.apply import DeviceContext, make_plan
    from edgectl.builders import ArtifactStore
    from edgectl.pull import status

    generate_key(tmp_path / "fleet.key")
    (tmp_path / "fleet.yaml").write_text(FLEET)
    spec = load_paths([tmp_path])
    store = ArtifactStore(tmp_path / "store")
    contexts = {d: DeviceContext(spec.devices[d]) for d in ("shop-1", "shop-2")}
    offline = make_plan(spec, contexts, store, reported=False)
    digest = "sha256:" + "1" * 64
    measured = ArtifactSpeed(digest=digest, runtime="llamacpp", threads=1, prompt_tokens=100,
                             prefill_tokens_per_s=123.0, decode_tokens=32, decode_tokens_per_s=45.6, seconds=3.0,
                             measured_at=NOW)
    bench = DeviceBenchmark(memory_bandwidth_bytes_per_s=11e9, compute_flops_per_s=150e9,
                            thread_compute_flops_per_s=80e9, threads=2, seconds=0.8, measured_at=NOW,
                            artifacts=[measured])
    text = report_text(PullStatus(device="shop-1", outcome="applied"), [], now=1.0, facts=_facts(bench))
    asked = []
    monkeypatch.setattr(status, "query_reports",
                        lambda prometheus, timeout=10.0: asked.append(prometheus) or {"shop-1": _series(text, "shop-1")})
    chosen = {dp.device: dp.deployments[0].chosen for dp in offline.devices}
    recipe = chosen["shop-1"].recipe
    built = {recipe_id(recipe): BuiltArtifact(digest=digest, model=recipe.model, format=recipe.format,
                                              quant=recipe.quant, size_bytes=98_362_432,
                                              source_digest="sha256:" + "0" * 64, tool_version="t", cache_key="k")}
    p = make_plan(spec, contexts, store, dict(built))
    assert asked == ["http://127.0.0.1:9090"]  # one query per Prometheus, not per device
    by_device = {dp.device: dp.deployments[0].chosen for dp in p.devices}
    assert by_device["shop-1"].speed.source == "measured"
    assert by_device["shop-1"].speed.decode_tokens_per_s == pytest.approx(45.6)
    assert "measured at enrolment 11.0 GB/s, 80 GFLOPS per thread x 2" in by_device["shop-1"].speed.estimate.basis
    # the device's 2 CPUs, not the profile's 32 (x86-cpu-server)
    from edgectl.plan.speed import hardware

    hw = hardware(spec.profiles["x86-cpu-server"].spec, "x", bench)
    assert spec.profiles["x86-cpu-server"].spec.cpu.cores == 32 and hw.cores == 2 and hw.compute == 160e9
    assert by_device["shop-2"].speed.source == "estimated"  # it never reported: its profile's figures
    assert "measured" not in by_device["shop-2"].speed.basis
    assert all(c.speed.source == "estimated" for c in chosen.values())  # offline: nothing read

"""The fleet collector: relabeling and merging real agent expositions, bounded rounds, failure reasons, targets."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from edgectl.agent_client import AgentClient
from edgectl.collector import FleetCollector, failure_reason, file_sd_targets, fleet_families, relabel
from edgectl.collector import parse_exposition
from edgectl.errors import TransportError
from edgectl.spec import Device
from edgectl_agent.api import ArtifactRef
from edgectl_agent.metrics import AgentMetrics

DIGEST = "sha256:" + "ab" * 32


def device(name: str, *, profile: str = "raspberry-pi-5", port: int = 8088, transport: dict | None = None) -> Device:
    return Device.model_validate({"name": name, "profile": profile, "agent": {"port": port},
                                  "transport": transport or {"type": "local"}})


def agent_text(quant: str = "Q4_K_M", tokens: int = 7) -> str:
    """A real agent exposition (prometheus-client, the agent's own metric definitions)."""
    m = AgentMetrics()
    m.set_active("chat", ArtifactRef(digest=DIGEST, format="gguf", quant=quant, size_bytes=1, model="smollm2"))
    m.set_phase("chat", "serving")
    m.note_generation("chat", tokens, 0.5, decode_tokens=tokens)
    m.requests.labels(endpoint="/v1/chat/completions", status="200").inc()
    m.latency.labels(endpoint="/v1/chat/completions").observe(0.3)
    return m.exposition().decode()


def samples(text: str) -> list:
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


class ScriptedScraper:
    """A MetricsScraper whose answer per device is scripted: text, an exception, or a wait on an event."""

    def __init__(self, answers: dict) -> None:
        self.answers = answers

    def scrape(self, device: Device, timeout: float) -> str:
        answer = self.answers[device.name]
        if isinstance(answer, threading.Event):
            answer.wait(30)
            return agent_text()
        if isinstance(answer, BaseException):
            raise answer
        return answer


def test_relabel_adds_fleet_and_artifact_labels():
    families = relabel(parse_exposition(agent_text()), {"device": "pi-1", "profile": "raspberry-pi-5"})
    by_name = {s.name: s for f in families for s in f.samples}
    tokens = by_name["edgectl_agent_completion_tokens_total"]
    assert tokens.value == 7
    assert tokens.labels == {"deployment": "chat", "device": "pi-1", "profile": "raspberry-pi-5",
                             "model": "smollm2", "format": "gguf", "quant": "Q4_K_M"}
    info = by_name["edgectl_agent_active_artifact_info"]
    assert info.labels["digest"] == DIGEST and info.labels["device"] == "pi-1"
    rss = by_name["process_resident_memory_bytes"]
    assert rss.labels == {"device": "pi-1", "profile": "raspberry-pi-5"}  # no deployment: no artifact labels
    # An agent label that collides with a fleet label is kept under exported_<name>.
    collide = relabel(parse_exposition('# TYPE x gauge\nx{device="other"} 1\n'), {"device": "pi-1"})
    assert collide[0].samples[0].labels == {"device": "pi-1", "exported_device": "other"}


def test_fleet_exposition_merges_devices_and_reports_reachability():
    collector = FleetCollector([device("pi-1"), device("pi-2", profile="auto"), device("gone")],
                               ScriptedScraper({"pi-1": agent_text("Q4_K_M", 3), "pi-2": agent_text("Q8_0", 5),
                                                "gone": TransportError("device 'gone': no agent answers")}))
    try:
        text = collector.exposition().decode()
    finally:
        collector.close()
    # The text format: one TYPE line per family, parseable as a whole.
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    got = samples(text)
    tokens = {s.labels["device"]: (s.value, s.labels["quant"]) for s in got
              if s.name == "edgectl_agent_completion_tokens_total"}
    assert tokens == {"pi-1": (3, "Q4_K_M"), "pi-2": (5, "Q8_0")}
    up = {s.labels["device"]: s.value for s in got if s.name == "edgectl_device_up"}
    assert up == {"pi-1": 1, "pi-2": 1, "gone": 0}
    errors = [s.labels for s in got if s.name == "edgectl_device_scrape_error_info"]
    assert errors == [{"device": "gone", "profile": "raspberry-pi-5", "reason": "not_running",
                       "error": "device 'gone': no agent answers"}]
    assert {s.labels["device"] for s in got if s.name == "edgectl_device_last_success_timestamp_seconds"} == \
        {"pi-1", "pi-2"}


def test_a_hung_device_costs_the_timeout_never_a_stalled_round():
    hang = threading.Event()
    collector = FleetCollector([device("ok"), device("hung")], ScriptedScraper({"ok": agent_text(), "hung": hang}),
                               timeout=0.3)
    try:
        first = {s.device: s for s in collector.scrape_all()}  # returns although "hung" never answers
        assert first["ok"].up and not first["hung"].up and first["hung"].reason == "timeout"
        second = {s.device: s for s in collector.scrape_all()}  # no second thread piled onto the stuck one
        assert second["ok"].up and second["hung"].reason == "still_running"
        hang.set()
        collector._inflight["hung"][0].result(timeout=30)
        third = {s.device: s for s in collector.scrape_all()}
        assert third["hung"].up and third["hung"].last_success is not None
    finally:
        hang.set()
        collector.close()


def test_overlapping_rounds_share_the_scrapes_in_flight():
    calls: list[str] = []

    class SlowScraper:
        def scrape(self, device, timeout):
            calls.append(device.name)
            time.sleep(0.3)
            return agent_text()

    collector = FleetCollector([device("a"), device("b")], SlowScraper(), timeout=5)
    try:
        with ThreadPoolExecutor(2) as pool:  # e.g. two Prometheus servers scraping at the same moment
            rounds = list(pool.map(lambda _: collector.scrape_all(), range(2)))
    finally:
        collector.close()
    assert all(s.up for r in rounds for s in r), rounds
    assert sorted(calls) == ["a", "b"]  # one scrape per device, shared by both rounds


def test_garbage_is_not_up():
    collector = FleetCollector([device("odd")], ScriptedScraper({"odd": "<html>not metrics{{</html>\n"}))
    try:
        (s,) = collector.scrape_all()
    finally:
        collector.close()
    assert not s.up and s.reason == "bad_exposition"
    assert s.last_success is None
    (up,) = [f for f in fleet_families([s]) if f.name == "edgectl_device_up"]
    assert [x.value for x in up.samples] == [0]


def test_failure_reasons_from_the_real_client():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    def slow(request):
        raise httpx.ReadTimeout("timed out", request=request)

    def deny(request):
        return httpx.Response(401, json={"error": {"message": "wrong bearer token", "hint": "send it"}})

    for handler, reason in ((refuse, "unreachable"), (slow, "timeout"), (deny, "unauthorized")):
        client = AgentClient("http://127.0.0.1:1", "t", device="d", transport=httpx.MockTransport(handler))
        with pytest.raises(Exception) as e:
            client.metrics(timeout=1)
        assert failure_reason(e.value) == reason


def test_file_sd_targets():
    targets = file_sd_targets([device("here", port=9000),
                               device("pi", transport={"type": "ssh", "host": "10.0.0.7"}),
                               device("v6", profile="auto", transport={"type": "ssh", "host": "fd00::7"})])
    assert targets == [
        {"targets": ["127.0.0.1:9000"], "labels": {"device": "here", "profile": "raspberry-pi-5",
                                                   "transport": "local"}},
        {"targets": ["10.0.0.7:8088"], "labels": {"device": "pi", "profile": "raspberry-pi-5", "transport": "ssh"}},
        {"targets": ["[fd00::7]:8088"], "labels": {"device": "v6", "profile": "auto", "transport": "ssh"}},
    ]


def test_cli_prometheus_targets_writes_file_sd(tmp_path):
    from edgectl.cli import app

    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(
        "apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\nmetadata: {name: lab}\nspec:\n  devices:\n"
        "    - {name: a, profile: raspberry-pi-5, transport: {type: local}, agent: {port: 18001}}\n"
        "    - {name: b, profile: auto, transport: {type: ssh, host: pi.lan}}\n")
    out = tmp_path / "targets.json"
    r = CliRunner().invoke(app, ["prometheus", "targets", str(manifest), "--write", str(out)])
    assert r.exit_code == 0, r.output
    assert [t["targets"] for t in json.loads(out.read_text())] == [["127.0.0.1:18001"], ["pi.lan:8088"]]


def test_endpoint_on_loopback_refuses_a_foreign_host_header():
    from edgectl.collector import make_server

    collector = FleetCollector([device("a")], ScriptedScraper({"a": agent_text()}))
    server = make_server(collector, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert httpx.get(f"{url}/metrics").status_code == 200
        assert httpx.get(f"{url}/healthz", headers={"Host": f"localhost:{server.server_port}"}).status_code == 200
        for foreign in ("rebind.example", "rebind.example:9464", "10.0.0.1", "127.0.0.1.nip.io"):
            r = httpx.get(f"{url}/metrics", headers={"Host": foreign})
            assert r.status_code == 421 and "loopback" in r.text and "edgectl_" not in r.text, foreign
    finally:
        server.shutdown()
        server.server_close()
        collector.close()

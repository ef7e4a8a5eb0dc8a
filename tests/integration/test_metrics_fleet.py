"""The whole metrics path for real: 3 real agents serving tiny GGUF models with llama.cpp, `edgectl metrics serve`
reading them through their local transport (plus one device with no agent), and a real Prometheus server
scraping the collector with the shipped alert rules. Queries go to Prometheus's HTTP API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgectl.agent_client import AgentClient
from edgectl_agent.api import ArtifactRef, DesiredDeployment
from tests.integration.conftest import free_port
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
openai = pytest.importorskip("openai")
pytest.importorskip("llama_cpp")

REPO = Path(__file__).resolve().parents[2]
DEVICES = ("edge-0", "edge-1", "edge-2")
WAIT_S = 60.0


def prometheus_argv(config: Path, data: Path, port: int) -> list[str]:
    return ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
            f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h", "--log.level=warn"]


def pushgateway_argv(port: int, *extra: str) -> list[str]:
    """A Pushgateway that keeps its metrics in memory only: Debian's build defaults to persisting them in
    /var/lib/prometheus/pushgateway.data, so a later test would read an earlier test's reports."""
    return ["prometheus-pushgateway", f"--web.listen-address=127.0.0.1:{port}", "--persistence.file=",
            "--log.level=warn", *extra]


def collector_argv(manifest: Path, port: int) -> list[str]:
    return [sys.executable, "-m", "edgectl.cli", "metrics", "serve", str(manifest), "--port", str(port),
            "--timeout", "3"]


class Background:
    """A real server process with its log; stopped at teardown."""

    def __init__(self, argv: list[str], log: Path, env: dict | None = None) -> None:
        self.log = log
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env,
                                         start_new_session=True)

    def wait_http(self, url: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} did not answer:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)


class PromAPI:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]["result"]

    def until(self, expr: str, check, what: str) -> list[dict]:
        """Poll ``expr`` until ``check(result)`` holds (bounded; not a timing assertion)."""
        deadline = time.monotonic() + WAIT_S
        result: list[dict] = []
        while time.monotonic() < deadline:
            result = self.query(expr)
            if check(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{what}: {expr} -> {json.dumps(result)[:2000]}")


def by_device(result: list[dict]) -> dict[str, float]:
    return {r["metric"]["device"]: float(r["value"][1]) for r in result}


def fleet_manifest(path: Path, ports: dict[str, int]) -> Path:
    devices = "".join(f"    - {{name: {name}, profile: {'auto' if name == 'edge-2' else 'raspberry-pi-5'}, "
                      f"transport: {{type: local}}, agent: {{port: {port}}}}}\n" for name, port in ports.items())
    path.write_text("apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\nmetadata: {name: lab}\nspec:\n  devices:\n"
                    + devices)
    return path


def deploy_tiny(agent, model_path: Path, model: str) -> str:
    """Push a tiny GGUF with edgectl's client and activate it as deployment 'chat' (real llama.cpp)."""
    import hashlib

    digest = "sha256:" + hashlib.sha256(model_path.read_bytes()).hexdigest()
    desired = DesiredDeployment(name="chat", runtime="llamacpp", context_length=256, threads=1,
                                artifact=ArtifactRef(digest=digest, format="gguf", quant="F32",
                                                     size_bytes=model_path.stat().st_size, model=model))
    with AgentClient(agent.url, agent.token, device="test", timeout=120.0) as client:
        client.upload(digest, model_path)
        assert client.put_deployment(desired).state == "serving", agent.log.read_text()[-3000:]
    return digest


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="the Prometheus server is absent: apt-get install -y prometheus (Debian)")
def test_prometheus_scrapes_the_fleet_through_the_collector(tmp_path, start_agent, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("EDGECTL_HOME", str(home))
    ports = {name: free_port() for name in (*DEVICES, "ghost")}  # ghost: a device whose agent never runs
    agents, digests = {}, {}
    for i, name in enumerate(DEVICES):
        root = home / "agents" / name  # where the local transport finds the agent's token
        root.parent.mkdir(parents=True, exist_ok=True)
        agents[name] = agent = start_agent(root=root, port=ports[name])
        (root / "agent.pid").write_text(f"{agent.proc.pid}\n")  # as if edgectl had started it
        gguf = write_tiny_llama_gguf(tmp_path / f"tiny-{i}.gguf", seed=i + 1)
        digests[name] = deploy_tiny(agent, gguf, f"tiny-{i}")

    manifest = fleet_manifest(tmp_path / "fleet.yaml", ports)
    collector_port, prom_port = free_port(), free_port()
    env = {**os.environ, "EDGECTL_HOME": str(home), "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(REPO / "agent"), os.environ.get("PYTHONPATH", "")])}
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{REPO / 'deploy' / 'prometheus' / 'alerts.yml'}']\n"
        "scrape_configs:\n"
        "  - job_name: edgectl-fleet\n    scrape_timeout: 1s\n    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{collector_port}']}}]\n")
    servers = []
    try:
        servers.append(collector := Background(collector_argv(manifest, collector_port), tmp_path / "collector.log",
                                               env))
        collector.wait_http(f"http://127.0.0.1:{collector_port}/healthz")
        servers.append(prom := Background(prometheus_argv(config, tmp_path / "prom-data", prom_port),
                                          tmp_path / "prometheus.log"))
        prom.wait_http(f"http://127.0.0.1:{prom_port}/-/ready")
        api = PromAPI(f"http://127.0.0.1:{prom_port}")

        # Reachability per device, with the last error of the one without an agent.
        # (Polled until it holds: on a loaded machine an early scrape may still time out and read 0.)
        want_up = {"edge-0": 1, "edge-1": 1, "edge-2": 1, "ghost": 0}
        api.until("edgectl_device_up", lambda r: by_device(r) == want_up,
              "every device has a reachability series: 1 for the three agents, 0 for the ghost")
        (err,) = api.query("edgectl_device_scrape_error_info")
        assert err["metric"]["device"] == "ghost" and err["metric"]["reason"] == "not_running"

        # Per-device series with the fleet labels; the artifact each device serves.
        info = api.until("edgectl_agent_active_artifact_info", lambda r: len(r) == 3, "artifact info per device")
        assert {r["metric"]["device"]: r["metric"]["digest"] for r in info} == digests
        state = api.query('edgectl_agent_deployment_state{state="serving"}')
        labels = {r["metric"]["device"]: r["metric"] for r in state}
        assert labels["edge-1"]["profile"] == "raspberry-pi-5" and labels["edge-2"]["profile"] == "auto"
        assert {k: labels["edge-1"][k] for k in ("deployment", "model", "format", "quant")} == \
            {"deployment": "chat", "model": "tiny-1", "format": "gguf", "quant": "F32"}
        assert api.query("edgectl_agent_completion_tokens_total") == []  # nothing generated yet

        # Real requests with the real openai client: two on edge-0, one on edge-1, none on edge-2.
        for name, calls in (("edge-0", 2), ("edge-1", 1)):
            oai = openai.OpenAI(base_url=f"{agents[name].url}/v1", api_key=agents[name].token, max_retries=0,
                                timeout=60)
            for _ in range(calls):
                chunks = list(oai.chat.completions.create(model="chat", max_tokens=6, temperature=0, stream=True,
                                                          messages=[{"role": "user", "content": "hello"}]))
                assert chunks[-1].choices[0].finish_reason in ("length", "stop")
            oai.completions.create(model="chat", prompt="the sky is", max_tokens=4, temperature=0)

        requests = api.until('edgectl_agent_requests_total{endpoint="/v1/chat/completions",status="200"}',
                             lambda r: by_device(r) == {"edge-0": 2, "edge-1": 1}, "chat requests counted")
        assert requests[0]["metric"]["profile"] == "raspberry-pi-5"
        tokens = api.until("edgectl_agent_completion_tokens_total",
                           lambda r: set(by_device(r)) == {"edge-0", "edge-1"}, "tokens per device")
        assert all(v > 0 for v in by_device(tokens).values())
        assert {r["metric"]["model"] for r in tokens} == {"tiny-0", "tiny-1"}
        ttft = api.query("edgectl_agent_time_to_first_token_seconds_count")
        assert by_device(ttft) == {"edge-0": 2, "edge-1": 1}
        speed = api.query("sum by (device) (edgectl_agent_completion_tokens_total)"
                          " / sum by (device) (edgectl_agent_decode_seconds_total)")
        assert set(by_device(speed)) == {"edge-0", "edge-1"} and all(v > 0 for v in by_device(speed).values())

        # /metrics answers while a stream holds the model's lock (the agent never waits for the model).
        oai = openai.OpenAI(base_url=f"{agents['edge-2'].url}/v1", api_key=agents["edge-2"].token, max_retries=0,
                            timeout=60)
        stream = oai.chat.completions.create(model="chat", max_tokens=64, temperature=0, stream=True,
                                             messages=[{"role": "user", "content": "tell me more"}])
        next(iter(stream))
        took = []
        with httpx.Client(timeout=10) as http:  # keep-alive, as Prometheus scrapes
            for _ in range(20):
                began = time.perf_counter()
                r = http.get(f"{agents['edge-2'].url}/metrics")
                took.append(time.perf_counter() - began)
                assert r.status_code == 200
        assert 'edgectl_agent_backend_up{deployment="chat",runtime="llamacpp"} 1.0' in r.text
        took.sort()
        print(f"/metrics while a stream holds the model: p50 {took[10] * 1000:.1f} ms, max {took[-1] * 1000:.1f} ms")
        stream.close()

        # Every shipped query evaluates in a real Prometheus: the dashboard's and the alert rules'.
        dash = json.loads((REPO / "deploy" / "grafana" / "edgectl-fleet.json").read_text())
        for panel in dash["panels"]:
            for target in panel["targets"]:
                expr = (target["expr"].replace("$device", ".*").replace("$__rate_interval", "1m")
                        .replace("$__range", "5m"))
                api.query(expr)
        rules = api.until("ALERTS", lambda r: any(a["metric"]["alertname"] == "EdgectlDeviceUnreachable"
                                                  for a in r), "the unreachable alert is pending for ghost")
        assert {a["metric"]["device"] for a in rules if a["metric"]["alertname"] == "EdgectlDeviceUnreachable"} == \
            {"ghost"}
        groups = httpx.get(f"{api.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        health = {rule["name"]: (rule["health"], rule.get("lastError")) for g in groups for rule in g["rules"]}
        in_file = (REPO / "deploy/prometheus/alerts.yml").read_text().count("- alert:")
        assert len(health) == in_file == 11 and all(h == "ok" for h, _ in health.values()), health
    finally:
        for server in reversed(servers):
            server.stop()

"""deploy/prometheus and deploy/grafana: valid for promtool, and every query names metrics that really exist."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from edgectl.collector import fleet_families
from edgectl.collector import DeviceScrape
from edgectl_agent.metrics import AgentMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",),
            "gauge": ("",), "unknown": ("",)}


def promtool_argv(*args: str) -> list[str]:
    return ["promtool", *args]


def exposed_metric_names() -> set[str]:
    """Sample names the collector can expose: every agent family (from the agent's own definitions, whether a
    child exists yet or not) and the collector's own families."""
    names: set[str] = set()
    agent = AgentMetrics(store_root=DEPLOY)
    families = list(agent.registry.collect())
    families += fleet_families([DeviceScrape("d", "p", up=False, error="x", reason="timeout", last_success=1.0)])
    for f in families:
        names.update(f.name + suffix for suffix in SUFFIXES[f.type])
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label names in
    matchers or grouping clauses, strings, durations or Grafana variables."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        if m.group(2) or m.group(1).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(1))
    return names


def dashboard_exprs() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "edgectl-fleet.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def alert_rules() -> list[dict]:
    doc = YAML(typ="safe").load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_metric_name_extraction():
    assert metric_names('histogram_quantile(0.95, sum by (device, le) (rate(a_bucket{device=~"$device"}'
                        '[$__rate_interval]))) > 10') == {"a_bucket"}
    assert metric_names("(x == 0) * on (device) group_left (reason) y_info") == {"x", "y_info"}


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_query_names_metrics_that_exist(source):
    known = exposed_metric_names()
    exprs = dashboard_exprs() if source == "dashboard" else [r["expr"] for r in alert_rules()]
    assert exprs
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert names <= known, f"{sorted(names - known)} in {expr!r} are not exposed"


def test_dashboard_structure():
    dash = json.loads((DEPLOY / "grafana" / "edgectl-fleet.json").read_text())
    assert dash["uid"] == "edgectl-fleet" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for wanted in ("devices up", "tokens/s", "latency", "artifact versions", "rollbacks", "failed"):
        assert wanted in titles
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}" and p["targets"], p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
    (var,) = dash["templating"]["list"]
    assert metric_names(var["definition"].removeprefix("label_values(").split(",")[0]) <= exposed_metric_names()
    assert {i["name"] for i in dash["__inputs"]} == {"DS_PROMETHEUS"}


def test_alerts_cover_the_issue():
    names = {r["alert"] for r in alert_rules()}
    assert {"EdgectlDeviceUnreachable", "EdgectlDeploymentFailed", "EdgectlRollback", "EdgectlAgentRestartLoop",
            "EdgectlLowDisk", "EdgectlLatencyAboveSLO", "EdgectlTokensPerSecondBelowSLO"} <= names
    for r in alert_rules():
        assert r["annotations"]["summary"] and r["labels"]["severity"] in ("warning", "critical")


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool absent: apt-get install -y prometheus (Debian) to check the shipped config")
def test_promtool_accepts_config_and_rules():
    for args in (("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")),
                 ("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))):
        r = subprocess.run(promtool_argv(*args), capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "SUCCESS" in r.stdout


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool absent: apt-get install -y prometheus (Debian) to unit-test the alert rules")
def test_alerts_fire_on_the_series_they_watch():
    """promtool's rule unit tests: each alert fires on a series shaped like the collector's, and stays quiet
    on a healthy one."""
    r = subprocess.run(promtool_argv("test", "rules", str(Path(__file__).parent / "alerts_test.yml")),
                       capture_output=True, text=True, timeout=60, check=False, cwd=DEPLOY / "prometheus")
    assert r.returncode == 0, r.stdout + r.stderr

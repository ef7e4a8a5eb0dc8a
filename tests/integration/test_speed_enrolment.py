"""Measured at enrolment, for real: a real `edgectl apply` starts a real local agent that serves the tiny GGUF on
real llama.cpp; the agent measures its memory bandwidth at its first facts report and the artifact's prefill/decode
rates at its first activation; `edgectl plan` and `edgectl status` then show the measured figures (beside the
estimate), a speed requirement is judged on them, and the agent exports them on /metrics. Measured once: applying
again does not measure again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import free_port
from tests.tinymodels import speed_manifest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def edgectl(*args: str, env: dict) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                       timeout=600, cwd=REPO)
    assert r.returncode == 0, f"edgectl {' '.join(args)} exited {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


@pytest.fixture
def home(tmp_path):
    env = dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), COLUMNS="220", NO_COLOR="1",
               EDGECTL_AGENT_BENCHMARK="true")  # tests/conftest.py turns it off for the other tests
    yield env
    for pid in (tmp_path / "home").glob("agents/*/agent.pid"):
        try:
            os.kill(int(pid.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def test_agent_measures_itself_once_and_plan_and_status_use_it(tmp_path, home):
    port = free_port()
    manifests = speed_manifest(tmp_path / "m", port=port, threads=1, min_tokens_per_s=1)
    edgectl("apply", str(manifests), env=home)

    (record_file,) = (tmp_path / "home").glob("**/benchmark.json")
    record = json.loads(record_file.read_text())
    assert record["memory_bandwidth_bytes_per_s"] > 1e8 and record["threads"] >= 1
    (measured,) = record["artifacts"]
    assert measured["runtime"] == "llamacpp" and measured["threads"] == 1
    # A prompt sized to the device: ~95 tokens here, shorter when a loaded machine makes the probe slow.
    assert measured["prompt_tokens"] >= 8 and measured["prefill_tokens_per_s"] > 0
    assert measured["decode_tokens"] >= 2 and measured["decode_tokens_per_s"] > 0
    assert record["seconds"] + measured["seconds"] <= 10, record  # the micro-benchmark's bound

    status = json.loads(edgectl("status", str(manifests), "--json", env=home).stdout)[0]
    (dep,) = status["deployments"]
    assert dep["active"]["digest"] == measured["digest"]
    speed = status["speed"]["tiny"]
    assert speed["source"] == "measured" and speed["decode_tokens_per_s"] == pytest.approx(
        measured["decode_tokens_per_s"], rel=0.01)
    assert speed["estimate"]["source"] == "estimated" and speed["estimate"]["decode_tokens_per_s"] > 0
    text = edgectl("status", str(manifests), env=home).stdout
    assert "expected tok/s" in text and "measured " in text and "(est. " in text, text

    plan = json.loads(edgectl("plan", str(manifests), "--json", env=home).stdout)
    (chosen,) = [d["chosen"] for dev in plan["devices"] for d in dev["deployments"]]
    assert chosen["speed"]["source"] == "measured"
    assert "meets the deployment's speed (measured" in chosen["reason"], chosen["reason"]
    # Every other candidate is estimated from the measured bandwidth: its basis says so.
    assert "measured at enrolment" in chosen["speed"]["estimate"]["basis"]

    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert "edgectl_agent_memory_bandwidth_bytes_per_second " in metrics
    assert 'edgectl_agent_measured_decode_tokens_per_second{deployment="tiny"}' in metrics
    assert 'edgectl_agent_measured_prefill_tokens_per_second{deployment="tiny"}' in metrics

    # A requirement the measured rate misses: rejected by speed, and the plan says the figure is measured.
    speed_manifest(tmp_path / "m", port=port, threads=1, min_tokens_per_s=1e6)
    plan = json.loads(edgectl("plan", str(manifests), "--json", env=home).stdout)
    (dp,) = [d for dev in plan["devices"] for d in dev["deployments"]]
    assert dp["chosen"] is None and "measured" in dp["unfit"] and "< min_tokens_per_s 1e+06" in dp["unfit"], dp

    # Measured once: a second apply (nothing to do) and the facts it reads leave the record as it was.
    speed_manifest(tmp_path / "m", port=port, threads=1, min_tokens_per_s=1)
    edgectl("apply", str(manifests), env=home)
    assert json.loads(record_file.read_text()) == record

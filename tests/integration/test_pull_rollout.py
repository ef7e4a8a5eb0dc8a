"""Rollouts for pull devices, for real: a real Distribution registry, two real agents in pull mode (llama.cpp on a
tiny GGUF) reporting to a real Pushgateway scraped by a real Prometheus, and the real `edgectl` CLI.

A canary rollout publishes wave 1 (the canary), waits for its report (state applied, health-gate smoke request),
judges it with the push gate rule, then publishes wave 2. A change whose canary fails its gate halts the rollout:
the canary is rolled back (its previous deployments published again) and the second device never gets a new state.
`edgectl diff` and `edgectl runs` show the pull devices from their reports and the run record.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.test_pull_registry import REPO, PullWorld, edgectl, pull_status, serving_digest, wait_for
from tests.registry import StatusPath
from tests.tinymodels import pull_fleet_manifest

pytestmark = pytest.mark.integration
# Names no other test uses: Pushgateway groups are keyed by device name (see test_pull_status.py).
DEVICES = ["canary-shop-1", "canary-shop-2"]
CANARY = "{strategy: canary, canary: 1, wave_size: 1, max_failure: 0}"


def run_edgectl(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=REPO)


def test_canary_rollout_goes_wave_by_wave_and_a_failed_gate_halts_it(tmp_path, start_agent):
    world = PullWorld(tmp_path)
    status = StatusPath(tmp_path / "status")
    try:
        reports = f', pushgateway: "{status.pushgateway}", prometheus: "{status.prometheus}"'

        def write(quant: str, gate: str = "{}") -> None:
            (world.dir / "all.yaml").write_text(pull_fleet_manifest(world.registry.address, DEVICES, quant=quant,
                                                                    pull_extra=reports, rollout=CANARY, gate=gate))
        write("Q8_0")
        agents = {}
        for d in DEVICES:  # enrolled and running before anything is published: they poll at the normal interval
            edgectl("enroll", d, "-f", str(world.dir), "--out", str(tmp_path / f"{d}.json"), env=world.env)
            agents[d] = start_agent(root=tmp_path / d, env={"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / f"{d}.json")})

        good = edgectl("apply", str(world.dir), env=world.env)
        assert good.stdout.count("health gate passed") == 2, good.stdout
        first = {d: serving_digest(agents[d]) for d in DEVICES}
        assert first["canary-shop-1"] and first["canary-shop-1"] == first["canary-shop-2"]
        record = json.loads(edgectl("runs", "last", "--json", env=world.env).stdout)
        assert [(w["index"], w["devices"], w["canary"], w["outcome"]) for w in record["waves"]] == \
            [(0, ["canary-shop-1"], True, "ok"), (1, ["canary-shop-2"], False, "ok")]
        assert record["outcome"] == "ok"
        events = [e["message"] for e in record["events"]]
        wave2 = next(i for i, m in enumerate(events) if "wave 2/2" in m)
        assert any("health gate passed" in m for m in events[:wave2])  # wave 2 waited for the canary's report
        in_sync = json.loads(edgectl("diff", str(world.dir), "--json", env=world.env).stdout)
        assert [r["status"] for r in in_sync] == ["in sync", "in sync"], in_sync
        assert all("last seen" in r["observed"] for r in in_sync), in_sync

        # A new quant whose answer cannot pass the gate: the canary applies it, fails the gate, is rolled back.
        write("Q4_0", gate="{expect_contains: zzz-never-said}")
        bad = run_edgectl("apply", str(world.dir), env=world.env)
        assert bad.returncode == 1, bad.stdout + bad.stderr
        said = " ".join((bad.stdout + bad.stderr).split())
        assert "rollout halted" in said and "1 of 1 devices failed in wave 1 (canary)" in said, said
        assert "does not contain 'zzz-never-said'" in said and "not started: canary-shop-2" in said, said
        assert "rolled back chat" in said, said
        wait_for("the canary to serve its previous artifact again",
                 lambda: pull_status(tmp_path / "canary-shop-1").get("applied_version") == 3
                 and serving_digest(agents["canary-shop-1"]) == first["canary-shop-1"])
        assert pull_status(tmp_path / "canary-shop-2")["version"] == 1  # never published a new state
        assert serving_digest(agents["canary-shop-2"]) == first["canary-shop-2"]
        halted = json.loads(edgectl("runs", "last", "--json", env=world.env).stdout)
        assert halted["outcome"] == "halted"
        assert [(w["index"], w["outcome"]) for w in halted["waves"]] == [(0, "halted")]
        listing = edgectl("runs", env=world.env).stdout
        assert halted["id"] in listing and "halted" in listing

        drift = run_edgectl("diff", str(world.dir), "--json", env=world.env)
        assert drift.returncode == 1
        rows = {r["device"]: r for r in json.loads(drift.stdout)}
        second = rows["canary-shop-2"]
        assert second["desired"] == "gguf Q4_0" and "gguf Q8_0" in second["observed"], rows
        assert second["status"].startswith("drift") and second["steps"] == ["publish"], rows
    finally:
        status.stop()
        world.registry.stop()

"""Facts from pull devices, for real: a real agent in pull mode measures itself (the enrolment benchmark) and sends
its facts with every status report to a real Pushgateway; a real Prometheus scrapes it; `edgectl plan` and
`edgectl status` then plan the pull device from those facts the way they plan a push device from GET /control/facts:
the artifact it serves shows "measured", the other candidates are estimated from its measured hardware. Never
connecting to the device; `plan --offline` contacts nothing and stays estimated."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_pull_registry import PullWorld, edgectl, serving_digest, wait_for
from tests.registry import StatusPath
from tests.tinymodels import pull_fleet_manifest

pytestmark = pytest.mark.integration
DEVICE = "facts-shop"  # a name no other pull test uses: a stray report of theirs cannot match


def chosen_speed(world: PullWorld, *extra: str) -> dict | None:
    plan = json.loads(edgectl("plan", str(world.dir), "--json", *extra, env=world.env).stdout)
    (dep,) = [d for dev in plan["devices"] for d in dev["deployments"]]
    return dep["chosen"]["speed"] if dep["chosen"] else None


def test_a_pull_device_is_planned_from_the_facts_it_reports(tmp_path, start_agent):
    world = PullWorld(tmp_path, device=DEVICE)
    status_path = None
    try:
        status_path = StatusPath(tmp_path / "status")
        (world.dir / "all.yaml").write_text(pull_fleet_manifest(
            world.registry.address, [DEVICE], quant="Q8_0", threads=1,
            pull_extra=f', pushgateway: "{status_path.pushgateway}", prometheus: "{status_path.prometheus}"'))

        before = chosen_speed(world)  # never reported: planned from its profile's figures
        assert before["source"] == "estimated" and "measured" not in before["basis"], before

        edgectl("apply", str(world.dir), env=world.env)
        edgectl("enroll", DEVICE, "-f", str(world.dir), "--out", str(tmp_path / "pull.json"), env=world.env)
        agent = start_agent(root=tmp_path / "device", env={"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / "pull.json"),
                                                           "EDGECTL_AGENT_BENCHMARK": "true"})
        digest = wait_for("the agent to serve", lambda: serving_digest(agent))

        # the report after the activation carries the artifact's measurement; Prometheus scrapes it within seconds
        measured = wait_for("the plan to use the pull device's measurement",
                            lambda: (s := chosen_speed(world)) and s["source"] == "measured" and s)
        record = json.loads((tmp_path / "device" / "benchmark.json").read_text())
        (mine,) = record["artifacts"]
        assert mine["digest"] == digest and mine["threads"] == 1
        assert measured["decode_tokens_per_s"] == pytest.approx(mine["decode_tokens_per_s"], rel=0.01)
        assert "measured on the device at its first activation" in measured["basis"]
        # its estimate beside it comes from the bandwidth the device measured, not from the profile
        bandwidth = record["memory_bandwidth_bytes_per_s"] / 1e9
        assert f"measured at enrolment {bandwidth:.1f} GB/s" in measured["estimate"]["basis"], measured

        status = json.loads(edgectl("status", str(world.dir), "--json", env=world.env).stdout)[0]
        assert status["reachable"] and status["endpoint"].startswith("pull")
        assert status["speed"]["chat"]["source"] == "measured" and not status["drift"], status
        table = edgectl("status", str(world.dir), env=world.env).stdout
        assert "measured " in table and "(est. " in table, table

        offline = chosen_speed(world, "--offline")  # contacts nothing: no report is read
        assert offline["source"] == "estimated" and "measured" not in offline["basis"], offline
    finally:
        if status_path is not None:
            status_path.stop()
        world.registry.stop()

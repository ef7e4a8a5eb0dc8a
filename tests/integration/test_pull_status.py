"""Status back from pull devices, for real: a real agent in pull mode reports to a real Prometheus Pushgateway after
every poll, a real Prometheus scrapes it, and `edgectl status` reads the device's last report from Prometheus's HTTP
API (never connecting to the device): serving what, last seen when, and "stale" once it stops reporting."""

from __future__ import annotations

import json
import re

import pytest

from tests.integration.test_pull_registry import PullWorld, edgectl, serving_digest, wait_for
from tests.registry import StatusPath

pytestmark = pytest.mark.integration
# A name no other test uses: Pushgateway groups are keyed by device name, so a report from another test's agent
# (a reused port) can never be read as this device's.
DEVICE = "status-shop"


def status_of(world: PullWorld) -> dict:
    return json.loads(edgectl("status", str(world.dir), "--json", env=world.env).stdout)[0]


def test_status_shows_last_seen_and_stale_from_prometheus(tmp_path, start_agent):
    world = PullWorld(tmp_path, device=DEVICE)
    status_path = None
    try:
        status_path = StatusPath(tmp_path / "status")
        world.write("Q8_0", extra=f', pushgateway: "{status_path.pushgateway}", prometheus: "{status_path.prometheus}"')
        before = status_of(world)
        assert not before["reachable"] and "never seen" in before["error"]

        edgectl("apply", str(world.dir), env=world.env)
        config_json = world.enroll(tmp_path / "pull.json")
        assert config_json["report_url"] == status_path.pushgateway
        agent = start_agent(root=tmp_path / "device", env={"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / "pull.json")})
        digest = wait_for("the agent to serve", lambda: serving_digest(agent))

        seen = wait_for("edgectl status to show the device serving", lambda: (s := status_of(world))["reachable"]
                        and s["deployments"] and s)
        assert seen["deployments"][0]["active"]["digest"] == digest and seen["deployments"][0]["state"] == "serving"
        # the state version the device reports applying: v1, its only state (a full CI run once showed v3 when this
        # test's device was named 'shop-1' like another test's: Debian's Pushgateway kept earlier runs' reports on disk)
        assert "last seen" in seen["endpoint"] and re.search(r"state v1\b", seen["endpoint"]), seen["endpoint"]
        table = edgectl("status", str(world.dir), env=world.env).stdout
        assert DEVICE in table and "serving" in table and "unreachable" not in table

        agent.stop()  # it stops reporting: after 2.5 poll intervals edgectl calls it stale
        stale = wait_for("edgectl status to call it stale", lambda: "stale" in ((s := status_of(world))["error"]
                                                                                or "") and s, timeout=90)
        assert not stale["reachable"] and "last seen" in stale["error"]
    finally:
        if status_path is not None:
            status_path.stop()
        world.registry.stop()

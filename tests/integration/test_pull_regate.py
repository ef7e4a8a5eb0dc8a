"""A gate-only change re-gates a pull device, visibly, for real: a real registry, a real agent in pull mode
(llama.cpp on the tiny GGUF) reporting to a real Pushgateway scraped by a real Prometheus, the real `edgectl` CLI.

The device serves and has passed its gate (one golden prompt): `edgectl diff` says "in sync". The Model then gets a
second golden prompt and nothing else changes: apply publishes a state whose only change is the gate; while the
device has not applied it (its agent is stopped here, so the order is certain), diff names the gate it ran and the
gate the plan wants, and `edgectl status` shows it as drift. Once the agent runs again it applies that state, gates itself with both prompts and reports
the new gate: diff is in sync again, with the same artifact still serving."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.test_pull_registry import REPO, PullWorld, edgectl, pull_status, serving_digest, wait_for
from tests.registry import StatusPath
from tests.tinymodels import regate_pull_manifest

pytestmark = pytest.mark.integration
DEVICE = "regate-shop"  # a name no other test uses: Pushgateway groups are keyed by device name


def diff_row(world: PullWorld) -> dict:
    r = subprocess.run([sys.executable, "-m", "edgectl.cli", "diff", str(world.dir), "--json"], capture_output=True,
                       text=True, env=world.env, timeout=600, cwd=REPO)  # exit 1 while anything differs
    (row,) = json.loads(r.stdout)
    assert (r.returncode == 0) == (row["status"] == "in sync"), (r.returncode, row)
    return row


def gate_digest(world: PullWorld) -> str:
    plan = json.loads(edgectl("plan", str(world.dir), "--json", "--offline", env=world.env).stdout)
    (dep,) = [d for dev in plan["devices"] for d in dev["deployments"]]
    return dep["gate_digest"]


def test_a_golden_prompt_change_is_drift_until_the_pull_device_gates_again(tmp_path, start_agent):
    world = PullWorld(tmp_path, device=DEVICE)
    status_path = None
    try:
        status_path = StatusPath(tmp_path / "status")
        extra = f', pushgateway: "{status_path.pushgateway}", prometheus: "{status_path.prometheus}"'
        manifest = world.dir / "all.yaml"
        manifest.write_text(regate_pull_manifest(world.registry.address, DEVICE, ["Say A."], pull_extra=extra))
        old_gate = gate_digest(world)
        edgectl("apply", str(world.dir), env=world.env)
        world.enroll(tmp_path / "pull.json")
        agent_env = {"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / "pull.json")}
        agent = start_agent(root=tmp_path / "device", env=agent_env)
        digest = wait_for("the agent to serve", lambda: serving_digest(agent))
        row = wait_for("diff to see the device in sync", lambda: (r := diff_row(world))["status"] == "in sync" and r)
        assert row["observed_digest"] == digest
        assert pull_status(tmp_path / "device")["gates"]["chat"]["gate_digest"] == old_gate

        agent.stop()  # its last report stays in the Pushgateway: the gate it ran is the old one
        manifest.write_text(regate_pull_manifest(world.registry.address, DEVICE, ["Say A.", "Say B."],
                                                 pull_extra=extra))
        new_gate = gate_digest(world)
        assert new_gate != old_gate
        edgectl("apply", str(world.dir), env=world.env)
        row = diff_row(world)
        assert row["status"] == (f"drift: health gate changed (gated with {old_gate[7:19]}, wants {new_gate[7:19]}; "
                                 "published states apply at its next poll, then it gates again)"), row
        assert row["steps"] == ["publish"] and row["observed_digest"] == digest
        status = json.loads(edgectl("status", str(world.dir), "--json", env=world.env).stdout)[0]
        assert status["drift"] == [{"action": "publish", "deployment": "chat",
                                    "detail": row["status"].removeprefix("drift: ")}], status

        agent = start_agent(root=tmp_path / "device", env=agent_env)
        gated = wait_for("the agent to gate itself with the new prompts",
                         lambda: (g := pull_status(tmp_path / "device").get("gates", {}).get("chat", {}))
                         .get("gate_digest") == new_gate and g, timeout=120)
        assert gated["error"] is None and len(gated["answers"]) == 1, gated  # "Say B." asked after "Say A."
        row = wait_for("diff to see the new gate reported", lambda: (r := diff_row(world))["status"] == "in sync"
                       and r, timeout=120)
        assert row["observed_digest"] == digest == serving_digest(agent)  # the same artifact throughout
        assert json.loads(edgectl("status", str(world.dir), "--json", env=world.env).stdout)[0]["drift"] == []
    finally:
        if status_path is not None:
            status_path.stop()
        world.registry.stop()

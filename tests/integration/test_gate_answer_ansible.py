"""The Ansible engine's health gate reads the answer with edgectl's rule: the role sends the gate's prompt, hands
the answer's text to its filter plugin, and a random-weight model (it answers garbage) fails
expect_contains: Paris on a real SSH device; nothing served before, so the deployment is removed again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet import SshFleet
from tests.integration.test_ssh_fleet import edgectl, env, manifests, transport, wheelhouse  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration


def test_ansible_gate_fails_a_garbage_answer(tmp_path, env):  # noqa: F811 (fixture)
    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        with open(mdir / "model.yaml", "a") as f:
            f.write('  rollout: {health_gate: {prompt: "What is the capital of France? Answer in one word.", '
                    'max_tokens: 12, expect_contains: Paris}}\n')
        r = edgectl("apply", str(mdir), "--engine", "ansible", env=env, check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "health gate failed" in r.stderr, out
        text = " ".join(out.split())
        assert "the answer to 'What is the capital of France? Answer in one word.' does not contain 'Paris'" in text, \
            out
        assert "tiny: removed again" in r.stdout, out

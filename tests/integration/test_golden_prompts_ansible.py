"""The Ansible engine asks every golden prompt: the role sends the gate's first prompt as the smoke request, then the
Model's other golden prompts (the gate's ``more``), and judges each answer with edgectl's rule through its filter
plugin. On a real SSH device, the random-weight tiny model's first answer passes a loose regex, its second misses
expect_json_schema (it answers garbage, not JSON): the device fails naming that prompt and check, and the
deployment is removed again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fleet import SshFleet
from tests.integration.test_ssh_fleet import edgectl, env, manifests, transport, wheelhouse  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

SOURCE = "    - {type: gguf, path: tiny.gguf, precision: F32}\n"
GOLDEN = """\
  golden_prompts:
    - {prompt: "Say something.", max_tokens: 8, expect_regex: "(?s)."}
    - {prompt: "Reply with a JSON array of three colors.", max_tokens: 8, expect_json_schema: {type: array}}
"""


def test_ansible_gate_asks_every_golden_prompt(tmp_path, env):  # noqa: F811 (fixture)
    with SshFleet(tmp_path / "fleet", 1) as fleet:
        fleet.write_known_hosts(Path(env["EDGECTL_HOME"]) / "known_hosts")
        mdir = manifests(tmp_path, fleet)
        model = (mdir / "model.yaml").read_text()
        assert SOURCE in model
        (mdir / "model.yaml").write_text(model.replace(SOURCE, SOURCE + GOLDEN, 1))
        r = edgectl("apply", str(mdir), "--engine", "ansible", env=env, check=False)
        out = r.stdout + r.stderr
        assert r.returncode != 0 and "health gate failed" in r.stderr, out
        text = " ".join(out.split())
        assert "the answer to 'Reply with a JSON array of three colors.' fails expect_json_schema:" in text, \
            out
        assert "the answer to 'Say something.'" not in text, out
        assert "tiny: removed again" in r.stdout, out

"""`edgectl plan --offline` on the example fleet: no device is contacted (the example hosts are placeholders), and
every chosen artifact carries its expected tokens/s, marked estimated, in the output and in --json."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from edgectl.cli import app

EXAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "examples"


def test_offline_plan_contacts_no_device_and_shows_estimated_speed(monkeypatch) -> None:
    import importlib

    observe = importlib.import_module("edgectl.apply.observe")

    def no_contact(*a, **k):
        raise AssertionError("plan --offline contacted a device")

    monkeypatch.setattr(observe, "connect", no_contact)
    monkeypatch.setenv("COLUMNS", "250")
    r = CliRunner().invoke(app, ["plan", str(EXAMPLES), "--offline"])
    assert r.exit_code == 0, r.output
    assert "unreachable" not in r.output
    assert "tokens/s decode" in r.output and "(estimated)" in r.output and "raspberry-pi-5: 17.1 GB/s" in r.output
    r = CliRunner().invoke(app, ["plan", str(EXAMPLES), "--offline", "--json"])
    data = json.loads(r.output)
    chosen = [d["chosen"] for dev in data["devices"] for d in dev["deployments"] if d["chosen"]]
    assert chosen and all(c["speed"]["source"] == "estimated" and c["speed"]["decode_tokens_per_s"] > 0
                          for c in chosen)

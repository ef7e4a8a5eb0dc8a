"""`edgectl` reads a fleet's devices from inventory files: a real CLI process plans devices listed in a CSV file and
an Ansible INI inventory (offline, and observing this machine for the inventory's local host), and a bad row stops
it with the row's file:line and a fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

MANIFESTS = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {name: shops}
spec:
  inventory:
    - csv: inventory/devices.csv
      labels: {fleet: shops}
    - ansible: inventory/hosts.ini
      profile: raspberry-pi-5
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {name: chat}
spec: {model: smollm2-135m-instruct, selector: {labels: {fleet: shops}}, context_length: 2048}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {name: helper}
spec: {model: smollm2-135m-instruct, selector: {labels: {shop: "true"}}, context_length: 1024}
"""

CSV = "name,profile,host,user,label.site\n" + "".join(
    f"pi-{i:02d},{'raspberry-pi-5' if i % 2 else 'raspberry-pi-4'},10.0.0.{i},pi,s{i % 3}\n" for i in range(1, 9))

INI = """\
[shop]
shop-[01:02] ansible_user=pi
[controller]
here ansible_connection=local edgectl_profile=x86-cpu-server
"""


def edgectl(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=REPO)


@pytest.fixture
def manifests(tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "m"
    (folder / "inventory").mkdir(parents=True)
    (folder / "fleet.yaml").write_text(MANIFESTS)
    (folder / "inventory" / "devices.csv").write_text(CSV)
    (folder / "inventory" / "hosts.ini").write_text(INI)
    return folder, dict(os.environ, EDGECTL_HOME=str(tmp_path / "home"), COLUMNS="200", NO_COLOR="1")


def test_plan_reads_the_fleet_from_a_csv_file_and_an_ansible_inventory(manifests: tuple[Path, dict]) -> None:
    folder, env = manifests
    r = edgectl("validate", str(folder), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = edgectl("plan", "--offline", "--json", str(folder), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    plans = {d["device"]: d for d in json.loads(r.stdout)["devices"]}
    assert sorted(plans) == sorted([f"pi-{i:02d}" for i in range(1, 9)] + ["shop-01", "shop-02", "here"])
    assert plans["pi-02"]["profile"] == "raspberry-pi-4" and plans["shop-01"]["profile"] == "raspberry-pi-5"
    assert [d["deployment"] for d in plans["pi-01"]["deployments"]] == ["chat"]
    assert [d["deployment"] for d in plans["shop-02"]["deployments"]] == ["helper"]
    assert all(d["chosen"] is not None for p in plans.values() for d in p["deployments"])
    assert plans["here"]["deployments"] == []

    # The inventory's local host is this machine: plan it for real (observed, not offline).
    r = edgectl("plan", "--json", "-d", "here", str(folder), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    [here] = json.loads(r.stdout)["devices"]
    assert (here["device"], here["profile"]) == ("here", "x86-cpu-server")


def test_a_bad_inventory_row_stops_the_cli_with_its_file_and_line(manifests: tuple[Path, dict]) -> None:
    folder, env = manifests
    (folder / "inventory" / "devices.csv").write_text(CSV.replace("10.0.0.3,", "10.0.0.3;reboot,"))
    r = edgectl("plan", "--offline", str(folder), env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{folder}/inventory/devices.csv:4:1: host: invalid host '10.0.0.3;reboot'" in r.stderr
    assert "hint: use a host name or IP address" in r.stderr

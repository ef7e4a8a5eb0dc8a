"""The registry as an inventory source, for real: pull devices enrolled in a real Distribution registry (htpasswd
auth) as records under tags 'device-<name>' (edgectl.inventory.registry.enrol), listed through the tags/list API
when the manifest is loaded (Distribution 2.8 answers in one page; following the Link header of a paging registry is
tested in tests/unit/test_pull_mirrors.py), with the same checks and errors as CSV and Ansible sources."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

from edgectl.errors import SpecErrors
from edgectl.inventory import registry as registry_inventory
from edgectl.load import load_paths
from edgectl.spec.fleet import PullRegistry
from tests.registry import Registry

pytestmark = pytest.mark.integration

FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: shops}}
spec:
  signing: {{key_file: fleet.key}}
  pull: {{registry: "{registry}", repository: shops/models, plain_http: true}}
  devices:
    - {{name: written-1, profile: raspberry-pi-5, transport: {{type: pull}}}}
  inventory:
    - {{registry: {{}}, profile: raspberry-pi-5, labels: {{fleet: shops}}}}
"""


@pytest.fixture
def origin(tmp_path, monkeypatch):
    reg = Registry(tmp_path / "registry", {"publisher": "push-secret"}).start()
    monkeypatch.setenv("EDGECTL_REGISTRY_USERNAME", "publisher")
    monkeypatch.setenv("EDGECTL_REGISTRY_PASSWORD", "push-secret")
    yield reg
    reg.stop()


def manifest(tmp_path: Path, registry: str) -> Path:
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / "fleet.yaml").write_text(FLEET.format(registry=registry))
    return folder


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecErrors) as e:
        load_paths([path])
    return [str(err).replace(str(path) + "/", "") for err in e.value.errors]


def test_enrolled_devices_are_listed_and_checked_like_written_ones(tmp_path, origin):
    pull = PullRegistry(registry=origin.address, repository="shops/models", plain_http=True)
    registry_inventory.enrol(pull, "shop-a-1", profile="raspberry-pi-4", labels={"site": "a"})
    registry_inventory.enrol(pull, "shop-a-2", labels={"site": "a", "fleet": "own"})
    registry_inventory.enrol(pull, "shop-b-1")
    folder = manifest(tmp_path, origin.address)
    spec = load_paths([folder])
    devices = {d.name: d for d in spec.fleets["shops"].spec.devices}
    assert list(devices) == ["written-1", "shop-a-1", "shop-a-2", "shop-b-1"]
    assert devices["shop-a-1"].profile == "raspberry-pi-4" and devices["shop-a-2"].profile == "raspberry-pi-5"
    assert dict(devices["shop-a-1"].labels) == {"fleet": "shops", "site": "a"}
    assert dict(devices["shop-a-2"].labels) == {"fleet": "own", "site": "a"}  # the record's own label wins
    assert all(d.transport.type == "pull" for d in devices.values())
    listed = [line for line in origin.log.read_text().splitlines() if '"GET /v2/shops/models/tags/list?n=' in line
              and '" 200 ' in line]
    assert len(listed) == 1, listed  # Distribution 2.8 sends the whole list at once (paging: a unit test)

    # the same checks as the other sources, the record named in the error
    registry_inventory.enrol(pull, "written-1")
    registry_inventory.enrol(pull, "Bad_Name")
    errs = errors_of(folder)
    where = f"registry {origin.address}/shops/models, tag device-"
    assert any(e.startswith(f"{where}Bad_Name: ") and "name" in e for e in errs), errs
    assert any(e.startswith(f"{where}written-1: name: duplicate device name 'written-1'") and "fleet.yaml:" in e
               for e in errs), errs


def test_a_registry_source_that_cannot_be_read_says_where_and_how_to_fix(tmp_path, origin, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    [err] = errors_of(manifest(tmp_path, closed))
    assert err.startswith(f"fleet.yaml:10:7: cannot list the devices enrolled in {closed}/shops/models"), err
    assert "hint: check spec.pull.registry" in err
    monkeypatch.setenv("EDGECTL_REGISTRY_PASSWORD", "wrong")
    [err] = errors_of(manifest(tmp_path, origin.address))
    assert "HTTP 401" in err and "credentials" in err, err
    os.environ.pop("EDGECTL_REGISTRY_PASSWORD", None)


def test_enroll_record_enrols_a_device_no_manifest_names(tmp_path, origin):
    """`edgectl enroll DEVICE --record`: the record goes to the real registry, the device is then listed by the
    inventory, and its pull config comes out; re-enrolling replaces the record; a bad enrolment is refused before
    anything is written (one bad record would stop every later load)."""
    import json
    import subprocess
    import sys

    from edgectl.signing import generate_key
    from tests.integration.test_pull_registry import REPO, edgectl

    folder = manifest(tmp_path, origin.address)
    generate_key(folder / "fleet.key")
    env = dict(os.environ)
    r = edgectl("enroll", "shop-c-1", "-f", str(folder), "--record", "--profile", "raspberry-pi-4",
                "--label", "site=c", env=env)
    config = json.loads(r.stdout)
    assert (config["device"], config["registry"], config["repository"]) == ("shop-c-1", origin.address, "shops/models")
    assert f"recorded shop-c-1 in {origin.address}/shops/models:device-shop-c-1" in " ".join(r.stderr.split())
    devices = {d.name: d for d in load_paths([folder]).fleets["shops"].spec.devices}
    assert devices["shop-c-1"].profile == "raspberry-pi-4"
    assert dict(devices["shop-c-1"].labels) == {"fleet": "shops", "site": "c"}

    edgectl("enroll", "shop-c-1", "-f", str(folder), "--record", "--label", "site=d", env=env)  # replaces it
    devices = {d.name: d for d in load_paths([folder]).fleets["shops"].spec.devices}
    assert devices["shop-c-1"].profile == "raspberry-pi-5" and devices["shop-c-1"].labels["site"] == "d"

    for args, said in ((["written-1"], "already written in the manifests"),
                       (["Bad_Name"], "'Bad_Name' is not a valid device name"),
                       (["shop-x", "--profile", "no-such"], "no profile named 'no-such'"),
                       (["shop-x", "--label", "site"], "--label 'site' is not KEY=VALUE"),
                       (["shop-x", "--fleet", "other"], "no Fleet named 'other'")):
        bad = subprocess.run([sys.executable, "-m", "edgectl.cli", "enroll", *args, "-f", str(folder), "--record"],
                             capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
        text = " ".join((bad.stdout + bad.stderr).split())
        assert bad.returncode != 0 and said in text and "hint" in text.lower(), (args, text)
    tags = httpx.get(f"http://{origin.address}/v2/shops/models/tags/list", auth=("publisher", "push-secret")).json()
    assert sorted(t for t in tags["tags"] if t.startswith("device-")) == ["device-shop-c-1"]

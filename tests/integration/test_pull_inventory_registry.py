"""The registry as an inventory source, for real: pull devices enrolled in a real Distribution registry (htpasswd
auth) as records under tags 'device-<name>' (edgectl.inventory.registry.enrol), listed through the tags/list API
when the manifest is loaded (Distribution 2.8 answers in one page; following the Link header of a paging registry is
tested in tests/unit/test_pull_mirrors.py), with the same checks and errors as CSV and Ansible sources."""

from __future__ import annotations

import os
import socket
from pathlib import Path

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

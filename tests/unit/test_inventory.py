"""Fleet inventories (spec.inventory): CSV and Ansible INI/YAML files become devices, with file:line errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgectl.errors import SpecErrors
from edgectl.inventory.ansible import expand_hosts
from edgectl.load import load_paths

FLEET = """\
apiVersion: edgectl.dev/v1alpha1
kind: Fleet
metadata: {{name: shops}}
spec:
  devices:
    - {{name: lab, profile: x86-cpu-server, transport: {{type: local}}}}
  inventory:
{sources}
"""


def fleet(tmp_path: Path, sources: str, **files: str) -> Path:
    (tmp_path / "fleet.yaml").write_text(FLEET.format(sources=sources))
    for name, text in files.items():
        stem, suffix = name.replace("__", "/").rsplit("_", 1)  # inv__devices_csv -> inv/devices.csv
        path = tmp_path / f"{stem}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecErrors) as e:
        load_paths([path])
    return [str(err).replace(str(path) + "/", "") for err in e.value.errors]


# -- CSV ---------------------------------------------------------------------------------------------------------


def test_csv_devices(tmp_path: Path) -> None:
    spec = load_paths([fleet(tmp_path, "    - {csv: inv/devices.csv, profile: raspberry-pi-5, labels: {fleet: shops}}",
                             inv__devices_csv="name,profile,transport,host,user,port,label.site\n"
                                              "pi-01,,,10.0.0.1,pi,,north\n\n"
                                              "pi-02,raspberry-pi-4,ssh,10.0.0.2,pi,2222,south\n")])
    assert [d.name for d in spec.fleets["shops"].spec.devices] == ["lab", "pi-01", "pi-02"]
    one, two = spec.devices["pi-01"], spec.devices["pi-02"]
    assert (one.profile, one.transport.host, one.transport.user, one.transport.port) == (
        "raspberry-pi-5", "10.0.0.1", "pi", 22)
    assert (two.profile, two.transport.port, two.labels) == ("raspberry-pi-4", 2222, {"fleet": "shops", "site": "south"})


def test_csv_errors_name_the_file_line_and_column(tmp_path: Path) -> None:
    errs = errors_of(fleet(tmp_path, "    - {csv: devices.csv}",
                           devices_csv="name,profile,host,label.site\n"
                                       "pi-01,raspberry-pi-5,pi;reboot,north\n"
                                       "Pi-02,raspberry-pi-5,10.0.0.2,north\n"
                                       "pi-03,,10.0.0.3,north\n"
                                       "pi-04,raspberry-pi-5,10.0.0.4\n"
                                       "pi-05,raspberry-pi-5,10.0.0.5,a b\n"))
    assert errs == [
        "devices.csv:2:1: host: invalid host 'pi;reboot'\n  hint: use a host name or IP address: letters, digits, '.', "
        "':', '-'",
        "devices.csv:3:1: name: invalid name 'Pi-02'\n  hint: use lowercase letters, digits, '.', '_' and '-'; "
        "starting and ending with a letter or digit; at most 63 characters (no spaces, '/', shell characters or a "
        "leading '-')",
        "devices.csv:4:1: profile: missing required field\n  hint: fill the 'profile' column of this row, or set "
        "'profile:' on this inventory source in the manifest",
        "devices.csv:5:1: this row has 3 cells, the header 4\n  hint: give every row one cell per header column (empty "
        "cells are allowed: a,,b); quote cells that contain a comma",
        "devices.csv:6:1: label.site: invalid label 'a b'\n  hint: use letters, digits, '.', '_', '/' and '-'; starting "
        "and ending with a letter or digit; at most 63 characters",
    ]


def test_csv_header_errors(tmp_path: Path) -> None:
    errs = errors_of(fleet(tmp_path, "    - {csv: devices.csv}", devices_csv="nme,profil,host\nx,y,z\n"))
    assert errs == [
        "devices.csv:1:1: unknown column 'nme'\n  hint: did you mean 'name'? columns: name, profile, transport, host, "
        "user, port, key_file, and label.<key> for each label",
        "devices.csv:1:1: unknown column 'profil'\n  hint: did you mean 'profile'? columns: name, profile, transport, "
        "host, user, port, key_file, and label.<key> for each label",
        "devices.csv:1:1: no 'name' column\n  hint: add a 'name' column: every device needs a unique name",
    ]


def test_a_pull_device_from_csv_needs_the_fleets_registry(tmp_path: Path) -> None:
    errs = errors_of(fleet(tmp_path, "    - {csv: devices.csv}",
                           devices_csv="name,profile,transport\nphone-1,android-phone,pull\n"))
    assert len(errs) == 1 and errs[0].startswith("fleet.yaml:8:5: spec.inventory: device 'phone-1' pulls")
    assert "add spec.pull" in errs[0]


# -- Ansible -----------------------------------------------------------------------------------------------------


INI = """\
# shop routers
[north]
shop-[01:03] ansible_user=pi
[south]
shop-10 ansible_host=10.1.0.10 ansible_port=2200 edgectl_profile=raspberry-pi-4 ; a comment
[shops:children]
north
south
[shops:vars]
ansible_user=admin
edgectl_profile=raspberry-pi-5
[local]
here ansible_connection=local edgectl_profile=x86-cpu-server
"""


def test_ansible_ini_hosts_groups_ranges_and_variables(tmp_path: Path) -> None:
    spec = load_paths([fleet(tmp_path, "    - {ansible: hosts.ini}", hosts_ini=INI.replace(" ; a comment", ""))])
    devices = spec.fleets["shops"].spec.devices
    assert [d.name for d in devices] == ["lab", "shop-01", "shop-02", "shop-03", "shop-10", "here"]
    s1, s10, here = spec.devices["shop-01"], spec.devices["shop-10"], spec.devices["here"]
    assert (s1.transport.host, s1.transport.user, s1.profile, s1.labels) == (
        "shop-01", "pi", "raspberry-pi-5", {"north": "true", "shops": "true"})  # host variable beats the group's
    assert (s10.transport.host, s10.transport.port, s10.transport.user, s10.profile) == (
        "10.1.0.10", 2200, "admin", "raspberry-pi-4")
    assert (here.transport.type, here.labels) == ("local", {"local": "true"})


def test_ansible_yaml_inventory_and_a_yaml_inventory_in_the_manifest_folder_is_not_a_manifest(tmp_path: Path) -> None:
    spec = load_paths([fleet(tmp_path, "    - {ansible: hosts.yml, profile: raspberry-pi-5}",
                             hosts_yml="all:\n  vars: {ansible_user: pi}\n  children:\n    labs:\n      hosts:\n"
                                       "        lab-a: {ansible_host: 10.2.0.1, ansible_port: 2222}\n"
                                       "        lab-[b:c]:\n      children:\n        inner:\n          hosts:\n"
                                       "            lab-z: {ansible_user: root}\n")])
    a, z = spec.devices["lab-a"], spec.devices["lab-z"]
    assert (a.transport.host, a.transport.port, a.transport.user, a.labels) == ("10.2.0.1", 2222, "pi", {"labs": "true"})
    assert (z.transport.user, z.labels) == ("root", {"inner": "true", "labs": "true"})
    assert "lab-b" in spec.devices and "lab-c" in spec.devices


def test_ansible_errors_name_the_line(tmp_path: Path) -> None:
    errs = errors_of(fleet(tmp_path, "    - {ansible: hosts.ini}",
                           hosts_ini="[pis\nx\n[north]\nPI-1 edgectl_profile=raspberry-pi-5\nok-1 novalue\n"
                                     "ok-2 ansible_port=99999 edgectl_profile=raspberry-pi-5\nok-3\n"))
    assert errs == [
        "hosts.ini:1:1: invalid section header '[pis'\n  hint: write [group], [group:vars] or [group:children]",
        "hosts.ini:4:1: host name: invalid name 'PI-1'\n  hint: use lowercase letters, digits, '.', '_' and '-'; "
        "starting and ending with a letter or digit; at most 63 characters (no spaces, '/', shell characters or a "
        "leading '-')",
        "hosts.ini:5:1: expected key=value, got 'novalue'\n  hint: write host variables as key=value after the host "
        "name",
        "hosts.ini:5:1: profile: missing required field\n  hint: set it on this host (e.g. edgectl_profile=<profile>), "
        "on a group (:vars), or 'profile:' on this inventory source in the manifest",
        "hosts.ini:6:1: ansible_port: must be <= 65535, got 99999\n  hint: use a value <= 65535 - SSH port",
        "hosts.ini:7:1: profile: missing required field\n  hint: set it on this host (e.g. edgectl_profile=<profile>), "
        "on a group (:vars), or 'profile:' on this inventory source in the manifest",
    ]


def test_ansible_yaml_errors(tmp_path: Path) -> None:
    errs = errors_of(fleet(tmp_path, "    - {ansible: hosts.yaml}", hosts_yaml="all:\n  hostz:\n    a:\n"))
    assert errs == ["hosts.yaml:2:3: unknown key 'hostz' in group 'all'\n  hint: a group holds hosts:, vars: and "
                    "children:"]


def test_host_ranges() -> None:
    assert expand_hosts("pi-[08:10].shop") == ["pi-08.shop", "pi-09.shop", "pi-10.shop"]
    assert expand_hosts("r[a:c]-[1:2]") == ["ra-1", "ra-2", "rb-1", "rb-2", "rc-1", "rc-2"]
    assert expand_hosts("x[0:10:5]") == ["x0", "x5", "x10"]
    with pytest.raises(ValueError, match="neither numbers nor single letters"):
        expand_hosts("x[a:10]")


# -- Across sources, paths ---------------------------------------------------------------------------------------


def test_a_duplicate_device_name_names_both_places(tmp_path: Path) -> None:
    errs = errors_of(fleet(tmp_path, "    - {csv: a.csv, profile: raspberry-pi-5}\n    - {ansible: b.ini, profile: "
                                     "raspberry-pi-5}", a_csv="name,host\nlab,10.0.0.1\npi-1,10.0.0.2\n",
                           b_ini="[x]\npi-1\n"))
    assert errs == [
        "a.csv:2:1: name: duplicate device name 'lab'\n  hint: 'lab' is already a device at fleet.yaml:6:"
        "14; device names must be unique in a fleet: rename or remove one",
        "b.ini:2:1: name: duplicate device name 'pi-1'\n  hint: 'pi-1' is already a device at "
        "a.csv:3:1; device names must be unique in a fleet: rename or remove one",
    ]


def test_a_name_used_by_another_fleet_and_an_unknown_profile_point_at_the_row(tmp_path: Path) -> None:
    path = fleet(tmp_path, "    - {csv: a.csv}", a_csv="name,profile,host\npi-1,raspberry-pi-5,h\npi-2,rpi9,h\n")
    (path / "other.yaml").write_text("apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\nmetadata: {name: other}\nspec:\n"
                                     "  devices:\n    - {name: pi-1, profile: raspberry-pi-5, transport: {type: local}}\n")
    errs = errors_of(path)
    assert errs[0] == ("a.csv:3:1: spec.devices[2].profile: unknown device profile 'rpi9'\n  hint: use 'auto' or a "
                       "DeviceProfile name; " + errs[0].split("DeviceProfile name; ")[1])
    assert errs[1].startswith("other.yaml:6:14: spec.devices[0].name: duplicate device name 'pi-1'\n  hint: 'pi-1' is "
                              "already a device at ") and errs[1].endswith("a.csv:2:1; device names must be unique "
                                                                           "across fleets")


def test_a_deployment_selects_inventory_devices(tmp_path: Path) -> None:
    path = fleet(tmp_path, "    - {csv: a.csv, profile: raspberry-pi-5}", a_csv="name,host,label.tier\npi-1,h,small\n")
    (path / "dep.yaml").write_text("apiVersion: edgectl.dev/v1alpha1\nkind: Deployment\nmetadata: {name: chat}\n"
                                   "spec: {model: smollm2-135m-instruct, selector: {devices: [pi-1, pi-9]}}\n")
    errs = errors_of(path)
    assert len(errs) == 1 and errs[0].startswith("dep.yaml:4:65: spec.selector.devices[1]: unknown device 'pi-9'")


@pytest.mark.parametrize("bad", ["../devices.csv", "/etc/passwd", "a/../../x.csv", ".hidden.csv", "-x.csv", "a b.csv"])
def test_inventory_paths_stay_in_the_manifests_folder(tmp_path: Path, bad: str) -> None:
    errs = errors_of(fleet(tmp_path, f"    - {{csv: '{bad}'}}"))
    assert len(errs) == 1 and errs[0].startswith("fleet.yaml:8:13: spec.inventory[0].csv: invalid inventory path")
    assert "no '..', no absolute path" in errs[0]


def test_a_symlink_out_of_the_folder_and_a_missing_file_are_errors_at_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "outside.csv").write_text("name,profile,host\nx,raspberry-pi-5,h\n")
    (tmp_path / "m").mkdir()
    path = fleet(tmp_path / "m", "    - {csv: link.csv}\n    - {csv: missing.csv}")
    os.symlink(tmp_path / "outside.csv", path / "link.csv")
    errs = errors_of(path)
    assert errs == [
        "fleet.yaml:8:7: inventory file 'link.csv' leads outside the manifest's folder (a symlink)\n  hint: keep the "
        "inventory file itself in the manifest's folder or below",
        "fleet.yaml:9:7: cannot read inventory file 'missing.csv': No such file or directory\n  hint: check the path: "
        "it is relative to this manifest's folder",
    ]


def test_a_source_names_one_file_and_a_fleet_needs_devices(tmp_path: Path) -> None:
    errs = errors_of(fleet(tmp_path, "    - {csv: a.csv, ansible: b.ini}\n    - {profile: raspberry-pi-5}"))
    assert [e.split("\n")[0] for e in errs] == [
        "fleet.yaml:8:7: spec.inventory[0]: an inventory source names exactly one file: 'csv: devices.csv' or "
        "'ansible: hosts.ini'",
        "fleet.yaml:9:7: spec.inventory[1]: an inventory source names exactly one file: 'csv: devices.csv' or "
        "'ansible: hosts.ini'"]
    (tmp_path / "fleet.yaml").write_text("apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\nmetadata: {name: e}\nspec: {}\n")
    assert [e.split("\n")[0] for e in errors_of(tmp_path)] == [
        "fleet.yaml:4:7: spec: a fleet needs devices: list them under spec.devices, or name files that list them "
        "under spec.inventory"]

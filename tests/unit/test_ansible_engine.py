"""The Ansible engine's pure parts: inventory and connection variables from the Fleet, serial batches and the
failures each wave allows, runner events parsed into per-device results, engine selection per fleet."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from edgectl.errors import TransportError
from edgectl.spec import Device
from edgectl.spec.deployment import resolve_count
from edgectl.apply import ansible as engine


def ssh_device(**transport) -> Device:
    return Device(name="pi-1", profile="raspberry-pi-5", agent={"port": 9001},
                  transport={"type": "ssh", "host": "10.0.0.7", **transport})


def test_host_connection_carries_the_fleet_values_and_strict_host_keys():
    d = ssh_device(port=2222, user="pi", key_file="/keys/id", python="/usr/bin/python3.11",
                   proxy_jump="ops@bastion:22", agent_dir="/opt/edgectl")
    v = engine.host_connection(d, [Path("/h/.edgectl/known_hosts"), Path("/h/.ssh/known_hosts")])
    assert v["ansible_host"] == "10.0.0.7" and v["ansible_port"] == 2222 and v["ansible_user"] == "pi"
    assert v["ansible_ssh_private_key_file"] == "/keys/id"
    assert v["ansible_python_interpreter"] == "/usr/bin/python3.11"
    assert v["edgectl_agent_dir"] == "/opt/edgectl" and v["edgectl_agent_port"] == 9001
    assert v["edgectl_token_file"] == "/opt/edgectl/root/token"
    assert shlex.split(v["ansible_ssh_common_args"]) == [
        "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=/h/.edgectl/known_hosts /h/.ssh/known_hosts",
        "-o", "ProxyJump=ops@bastion:22"]


def test_defaults_leave_user_and_key_to_openssh():
    v = engine.host_connection(ssh_device(), [Path("/k")])
    assert "ansible_user" not in v and "ansible_ssh_private_key_file" not in v
    assert v["ansible_port"] == 22 and v["edgectl_token_file"] == "~/.local/share/edgectl-agent/root/token"


def test_known_hosts_path_with_a_space_is_refused():
    with pytest.raises(TransportError) as e:
        engine.ssh_common_args([Path("/my home/known_hosts")])
    assert "EDGECTL_HOME" in e.value.hint


def test_local_device_is_not_for_ansible():
    d = Device(name="here", profile="x86-cpu-server", transport={"type": "local"})
    with pytest.raises(TransportError) as e:
        engine.host_connection(d, [])
    assert "--engine ssh" in e.value.hint


def test_inventory_keeps_wave_order():
    inv = engine.inventory({"b": {"ansible_host": "2"}, "a": {"ansible_host": "1"}})
    assert list(inv["all"]["hosts"]) == ["b", "a"]


@pytest.mark.parametrize("max_failure,expected", [(0, [0, 0, 0]), (1, [1, 1, 1]), ("50%", [0, 1, 2])])
def test_serial_sizes_and_allowed_failures_follow_the_waves(max_failure, expected):
    waves = [["c1"], ["d1", "d2"], ["d3", "d4"]]
    sizes, allowed = engine.serial_and_allowed(waves, max_failure, resolve_count)
    assert sizes == [1, 2, 2]
    assert [allowed["c1"], allowed["d2"], allowed["d4"]] == expected
    assert allowed["d1"] == allowed["d2"] and allowed["d3"] == allowed["d4"]


def test_a_shared_venv_is_installed_by_its_first_device_only():
    venvs = {"c1": "/srv/venv", "d1": None, "d2": "/srv/venv", "d3": "~/other", "d4": "~/other"}
    assert engine.venv_installers(["c1", "d1", "d2", "d3", "d4"], venvs) == {"c1", "d1", "d3"}
    assert engine.venv_installers(["d2", "c1"], venvs) == {"d2"}  # rollout order decides
    assert engine.venv_installers([], venvs) == set()


def ev(kind: str, host: str, msg: str = "", task: str = "t", **data) -> dict:
    return {"event": kind, "event_data": {"host": host, "task": task, "res": {"msg": msg}, **data}}


def test_events_become_actions_errors_and_halts():
    events = [
        {"event": "playbook_on_start", "event_data": {}},
        ev("runner_on_ok", "a", "edgectl-action: pushed   sha256:abc"),
        ev("runner_on_ok", "a", "edgectl-action: activated tiny"),
        ev("runner_on_ok", "a", "not a report"),
        ev("runner_on_failed", "b", "Status code was 409", task="edgectl: push blob"),
        ev("runner_on_ok", "b", "edgectl-action: tiny: removed again (it failed)"),
        ev("runner_on_failed", "b", "edgectl-failed: edgectl: push blob: Status code was 409\n offset"),
        ev("runner_on_unreachable", "c", "Failed to connect: Host key verification failed."),
        ev("runner_on_failed", "a", "ignored", ignore_errors=True),
        ev("runner_on_ok", "a", "edgectl-halted: 2"),
        ev("runner_on_ok", "stranger", "edgectl-action: x"),
    ]
    out = engine.parse_events(events, ["a", "b", "c", "d"])
    assert out.hosts["a"].actions == ["pushed sha256:abc", "activated tiny"] and out.hosts["a"].error is None
    assert out.hosts["b"].error == "device 'b': edgectl: push blob: Status code was 409 offset"
    assert out.hosts["b"].actions == ["tiny: removed again (it failed)"]
    assert "unreachable" in out.hosts["c"].error and "Host key verification failed" in out.hosts["c"].error
    assert not out.hosts["d"].started and out.hosts["a"].started and out.halted
    assert "stranger" not in out.hosts


def test_playbook_ships_with_the_role_and_takes_serial_from_edgectl():
    folder = engine.playbook_dir()
    (play,) = yaml.safe_load((folder / engine.PLAYBOOK).read_text())
    assert play["serial"] == "{{ edgectl_serial | default(['100%']) }}" and play["order"] == "inventory"
    tasks = folder / "roles" / "edgectl_agent" / "tasks"
    assert {p.name for p in tasks.glob("*.yml")} == {"main.yml", "bootstrap.yml", "deliver.yml", "rollback.yml"}
    for p in tasks.glob("*.yml"):  # commands only as argv lists, never shell strings
        text = p.read_text()
        assert "ansible.builtin.shell" not in text and "cmd:" not in text, p


def test_engine_is_chosen_per_fleet_and_overridden_by_the_flag():
    from edgectl.apply import engine_of
    from edgectl.spec import Spec
    from edgectl.spec.fleet import Fleet

    fleet = Fleet.model_validate({"apiVersion": "edgectl.dev/v1alpha1", "kind": "Fleet", "metadata": {"name": "f"},
                                  "spec": {"engine": "ansible", "devices": [ssh_device().model_dump(),
                                           {"name": "here", "profile": "x86-cpu-server",
                                            "transport": {"type": "local"}}]}})
    spec = Spec(fleets={"f": fleet})
    assert engine_of(spec, spec.devices["pi-1"]) == "ansible"
    assert engine_of(spec, spec.devices["pi-1"], "ssh") == "ssh"
    assert engine_of(spec, spec.devices["here"]) == "ssh"  # local devices never go through ansible


def test_bootstrap_pins_the_fleets_verify_key_as_the_ssh_bootstrap_does(tmp_path, monkeypatch):
    """The playbook's bootstrap gets the fleet's public key, where to pin it (the agent's root, as edgectl's SSH
    bootstrap), the signing extra, and a start argv that verifies with it; an unsigned fleet pins nothing."""
    from edgectl.apply.observe import DeviceContext
    from edgectl.signing import Signer, generate_key
    from edgectl.agents import install_venv as bootstrap

    monkeypatch.setattr(bootstrap, "build_wheelhouse", lambda extras: tmp_path)  # no pip wheel in a unit test
    generate_key(tmp_path / "fleet")
    signer = Signer.load(tmp_path / "fleet")
    device = ssh_device(agent_dir="/opt/edgectl")
    layout = bootstrap.RemoteLayout("/opt/edgectl", None)

    v = engine.bootstrap_vars(DeviceContext(device, signer=signer), {"llamacpp"}, {})
    assert v["edgectl_verify_key"] == signer.public_pem.decode()
    assert v["edgectl_verify_key_file"] == layout.verify_key == "/opt/edgectl/root/" + bootstrap.VERIFY_KEY_FILE
    assert v["edgectl_start_pinned_argv"] == bootstrap.start_argv(layout, 9001, verify_key_file=layout.verify_key)
    assert v["edgectl_start_pinned_argv"][-2:] == ["--verify-key-file", layout.verify_key]
    assert "--verify-key-file" not in v["edgectl_start_argv"]
    assert bootstrap.SIGN_EXTRA in v["edgectl_install_argv"][-1]
    assert bootstrap.SIGN_PACKAGE in v["edgectl_installed_argv"]

    unsigned = engine.bootstrap_vars(DeviceContext(device), {"llamacpp"}, {})
    assert unsigned["edgectl_verify_key"] is None and bootstrap.SIGN_PACKAGE not in unsigned["edgectl_installed_argv"]

    tasks = yaml.safe_load((engine.playbook_dir() / "roles/edgectl_agent/tasks/bootstrap.yml").read_text())
    (start,) = [t for t in tasks if t["name"] == "edgectl: start agent"]
    pin, stat, run = start["block"][:3]
    assert pin["ansible.builtin.copy"]["force"] is False  # trust on first use: a pinned key is never replaced
    assert pin["when"] == "edgectl_verify_key is string"
    assert "edgectl_verify_key_file" in stat["ansible.builtin.stat"]["path"]
    assert "edgectl_start_pinned_argv if edgectl_pinned.stat.exists else edgectl_start_argv" in \
        run["ansible.builtin.command"]["argv"]


def test_the_roles_gate_is_edgectls_gate_rule():
    """The role's filter plugin judges the smoke timings with edgectl.apply.rollout.gate_problems itself."""
    import importlib.util

    from edgectl.apply.rollout import gate_as_data, gate_problems, smoke_from_timings
    from edgectl.spec.deployment import HealthGate

    path = engine.playbook_dir() / "filter_plugins" / "edgectl_gate.py"
    spec = importlib.util.spec_from_file_location("edgectl_gate", path)
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    filters = plugin.FilterModule().filters()
    timings = {"ttft_s": 0.004, "tokens": 9, "decode_s": 0.1}
    for gate in (HealthGate(), HealthGate(max_ttft_ms=0.001), HealthGate(min_tokens_per_s=100),
                 HealthGate(max_ttft_ms=1000, min_tokens_per_s=1)):
        smoke = gate_as_data(gate, "llm")
        assert filters["edgectl_gate_problems"](timings, smoke) == gate_problems(gate, smoke_from_timings(timings))
        assert "reported no timings" in " ".join(filters["edgectl_gate_problems"]({}, smoke)) or \
            gate.max_ttft_ms is None and gate.min_tokens_per_s is None
    assert filters["edgectl_gate_detail"](timings) == "ttft 4 ms, 80.0 tok/s as timed by the agent"
    assert filters["edgectl_gate_detail"]({}) == "ready"
    deliver = (engine.playbook_dir() / "roles/edgectl_agent/tasks/deliver.yml").read_text()
    assert "edgectl_gate_problems(edgectl_smoke)" in deliver and "min_tokens_per_s | float" not in deliver


def test_the_roles_gate_reads_the_answer_with_edgectls_rule():
    """The role sends the gate's prompt and hands the answer's text to the filter plugin under 'text'."""
    import importlib.util

    from edgectl.agent_client import SmokeResult
    from edgectl.apply.rollout import gate_as_data, gate_problems
    from edgectl.spec.deployment import HealthGate

    spec = importlib.util.spec_from_file_location("edgectl_gate", engine.playbook_dir() / "filter_plugins" /
                                                  "edgectl_gate.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    filters = plugin.FilterModule().filters()
    gate = HealthGate(prompt="What is the capital of France?", max_tokens=16, expect_contains="Paris")
    timings = {"ttft_s": 0.004, "tokens": 9, "decode_s": 0.1}
    data = gate_as_data(gate, "llm")
    assert filters["edgectl_gate_problems"](timings | {"text": "It is Paris."}, data) == []
    assert filters["edgectl_gate_problems"](timings | {"text": "Berlin"}, data) == gate_problems(
        gate, SmokeResult(0.004, 9, 0.1, text="Berlin"))
    assert filters["edgectl_gate_detail"](timings, data).endswith("answer contains 'Paris'")
    deliver = (engine.playbook_dir() / "roles/edgectl_agent/tasks/deliver.yml").read_text()
    assert "combine({'text': edgectl_text}) | edgectl_gate_problems(edgectl_smoke)" in deliver
    assert "edgectl_smoke.prompt" in deliver and "edgectl_gate_detail(edgectl_smoke)" in deliver

"""SSH transport and its venv installer, pure parts: argv quoting (checked by a real /bin/sh), host key names, layout,
installer argv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgectl.errors import TransportError
from edgectl.spec import Device
from edgectl.agents import connect
from edgectl.agents import install_venv as bootstrap
from edgectl.transport import transport_for
from edgectl.transport.ssh import SshTransport, known_hosts_name, parse_jump, quote_arg, quote_argv, remote_path

HOSTILE = ["plain", "", " ", "a b", "it's", "'", "''", '"', "$(id)", "`id`", "${HOME}", "$HOME", "a;rm -rf /",
           "x && y", "a|b", "a>b", "<in", "*", "?", "[a]", "~", "~root", "-n", "--", "-rf", "\\", "\\'", "a\nb",
           "\t", "!", "#comment", "%", "é ü 中", "a\\\nb", "=x", "{a,b}", "&", "(", ")"]


def run_like_sshd(command: str) -> list[str]:
    """What a POSIX login shell makes of the command string (sshd runs ``$SHELL -c <command>``)."""
    out = subprocess.run(["sh", "-c", "printf '%s\\0' " + command], capture_output=True, check=True).stdout
    return out.decode().split("\0")[:-1]


@pytest.mark.parametrize("arg", HOSTILE)
def test_quote_arg_roundtrips_through_a_real_shell(arg: str) -> None:
    assert run_like_sshd(quote_arg(arg)) == [arg]


def test_quote_argv_keeps_every_argument_apart() -> None:
    assert run_like_sshd(quote_argv(HOSTILE)) == HOSTILE


def test_quote_argv_leaves_safe_words_readable() -> None:
    assert quote_argv(["ls", "-la", "/var/lib/edgectl-agent", "a b", "it's"]) == \
        "ls -la /var/lib/edgectl-agent 'a b' 'it'\"'\"'s'"


@pytest.mark.parametrize("bad, error", [("echo hi; rm -rf /", TypeError), ([], ValueError), (["a\0b"], ValueError),
                                        (["ls", 3], TypeError)])
def test_quote_argv_refuses_what_it_cannot_carry(bad, error) -> None:
    with pytest.raises(error):
        quote_argv(bad)


def test_known_hosts_names_follow_openssh() -> None:
    assert known_hosts_name("pi.local", 22) == "pi.local"
    assert known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"


def test_parse_jump() -> None:
    assert parse_jump("ops@bastion:2200", "pi") == ("ops", "bastion", 2200)
    assert parse_jump("bastion", "pi") == ("pi", "bastion", 22)


def test_remote_paths_expand_home_only_at_the_start() -> None:
    assert remote_path("~/.local/share/edgectl-agent", "/home/pi") == "/home/pi/.local/share/edgectl-agent"
    assert remote_path("/opt/a~/b", "/home/pi") == "/opt/a~/b"


def test_ssh_devices_get_the_ssh_transport() -> None:
    d = Device(name="pi", profile="raspberry-pi-5", transport={"type": "ssh", "host": "198.18.0.2"})
    t = transport_for(d)
    assert isinstance(t, SshTransport)
    assert t.endpoint == "http://127.0.0.1:8088/v1"


def test_bootstrap_argv_installs_offline_from_pushed_wheels() -> None:
    layout = bootstrap.RemoteLayout("/home/pi/.local/share/edgectl-agent")
    assert bootstrap.extras_for(["llamacpp", "fake", "onnxruntime", "llamacpp"]) == ["llama", "onnx"]
    argv = bootstrap.install_argv(layout, ["llama"])
    assert argv[:3] == ["/home/pi/.local/share/edgectl-agent/venv/bin/python", "-m", "pip"]
    assert "--no-index" in argv and argv[argv.index("--find-links") + 1] == layout.wheels
    assert argv[-1].startswith("edgectl-agent[llama]==")
    assert bootstrap.venv_argv("python3", layout) == ["python3", "-m", "venv", layout.venv]
    wheel = bootstrap.wheel_argv(Path("/w"), "/src/agent", ["llama", "onnx"])
    assert wheel[:4] == [sys.executable, "-m", "pip", "wheel"] and wheel[-1] == "/src/agent[llama,onnx]"


def test_a_shared_venv_moves_only_the_venv() -> None:
    """transport.venv: several devices (or a device image) use one venv; store, token, log stay per device."""
    d = Device(name="pi", profile="raspberry-pi-5", transport={"type": "ssh", "host": "198.18.0.2",
                                                               "venv": "~/shared/venv"})
    link = connect(d)
    link.transport.remember_home("/home/pi")
    layout = link.installer.layout
    assert layout.python == "/home/pi/shared/venv/bin/python" and layout.venv == "/home/pi/shared/venv"
    assert layout.root == "/home/pi/.local/share/edgectl-agent/root"
    assert bootstrap.install_argv(layout, [])[0] == "/home/pi/shared/venv/bin/python"
    with pytest.raises(ValueError):
        Device(name="pi", profile="raspberry-pi-5", transport={"type": "ssh", "host": "h", "venv": "rel;rm"})


def test_unknown_runtime_extra_says_how_to_fix() -> None:
    from edgectl.errors import TransportError

    with pytest.raises(TransportError) as e:
        bootstrap.extras_for(["tensorrt"])
    assert "RUNTIME_EXTRAS" in e.value.hint


def test_start_script_takes_values_as_parameters_not_text(tmp_path) -> None:
    """Hostile paths reach the started program as single arguments (run with a stand-in 'python')."""
    fake_python = tmp_path / "py"
    fake_python.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\n")
    fake_python.chmod(0o755)
    layout = bootstrap.RemoteLayout(str(tmp_path / "a b;$(touch pwned)"))
    argv = bootstrap.start_argv(layout, 8088)
    argv[4] = str(fake_python)  # the venv python
    (tmp_path / "a b;$(touch pwned)").mkdir()
    subprocess.run(["sh", "-c", quote_argv(argv)], check=True, cwd=tmp_path)
    for _ in range(100):
        if (tmp_path / "args").exists() and (tmp_path / "args").read_text():
            break
        time.sleep(0.02)
    assert (tmp_path / "args").read_text().splitlines() == [
        "-m", "edgectl_agent", "serve", "--root", layout.root, "--host", "127.0.0.1", "--port", "8088"]
    assert not (tmp_path / "pwned").exists()


def test_unit_text_binds_loopback() -> None:
    text = bootstrap.unit_text(bootstrap.RemoteLayout("/opt/edgectl-agent"), 9000)
    assert "ExecStart=/opt/edgectl-agent/venv/bin/python -m edgectl_agent serve --root /opt/edgectl-agent/root " \
           "--host 127.0.0.1 --port 9000" in text
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text  # a user unit
    system = bootstrap.unit_text(bootstrap.RemoteLayout("/opt/edgectl-agent"), 9000, system=True)
    assert "WantedBy=multi-user.target" in system and "NoNewPrivileges=yes" in system


def test_start_script_passes_a_hostile_verify_key_path_as_one_argument(tmp_path) -> None:
    """A signing fleet's agent starts with --verify-key-file; the path (under agent_dir) stays one argument."""
    fake_python = tmp_path / "py"
    fake_python.write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args\"\n")
    fake_python.chmod(0o755)
    layout = bootstrap.RemoteLayout(str(tmp_path / "a b;$(touch pwned)"))
    assert layout.verify_key == layout.root + "/verify-key.pub"
    argv = bootstrap.start_argv(layout, 8088, verify_key_file=layout.verify_key)
    argv[4] = str(fake_python)
    (tmp_path / "a b;$(touch pwned)").mkdir()
    subprocess.run(["sh", "-c", quote_argv(argv)], check=True, cwd=tmp_path)
    for _ in range(100):
        if (tmp_path / "args").exists() and (tmp_path / "args").read_text():
            break
        time.sleep(0.02)
    assert (tmp_path / "args").read_text().splitlines() == [
        "-m", "edgectl_agent", "serve", "--root", layout.root, "--host", "127.0.0.1", "--port", "8088",
        "--verify-key-file", layout.verify_key]
    assert not (tmp_path / "pwned").exists()


def test_unit_text_names_the_verify_key_file_only_when_pinned() -> None:
    layout = bootstrap.RemoteLayout("/opt/edgectl agent")
    text = bootstrap.unit_text(layout, 9000, system=True, verify_key_file=layout.verify_key)
    assert ('ExecStart="/opt/edgectl agent/venv/bin/python" -m edgectl_agent serve --root "/opt/edgectl agent/root" '
            '--host 127.0.0.1 --port 9000 --verify-key-file "/opt/edgectl agent/root/verify-key.pub"\n') in text
    assert "--verify-key-file" not in bootstrap.unit_text(layout, 9000)


def test_a_signing_fleet_installs_the_sign_extra_and_checks_for_cryptography() -> None:
    layout = bootstrap.RemoteLayout("/home/pi/.local/share/edgectl-agent")
    assert bootstrap.installed_argv(layout, ["llamacpp"], sign=True)[3:] == ["cryptography", "llama-cpp-python"]
    assert "cryptography" not in bootstrap.installed_argv(layout, ["llamacpp"])
    assert bootstrap.pinned_argv(layout)[-1] == layout.verify_key


def test_ssh_transport_gets_the_fleet_verify_key() -> None:
    d = Device(name="pi", profile="raspberry-pi-5", transport={"type": "ssh", "host": "198.18.0.2"})
    assert connect(d, verify_key=b"PEM").installer.verify_key == b"PEM"
    assert connect(d).installer.verify_key is None


def test_unit_args_are_quoted_and_escaped_for_systemd() -> None:
    assert bootstrap.unit_arg("/home/pi/.local/x") == "/home/pi/.local/x"
    assert bootstrap.unit_arg('/a b/"q"/50%/$HOME') == '"/a b/\\"q\\"/50%%/$$HOME"'


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze (apt: systemd) is missing")
@pytest.mark.parametrize("system", [True, False])
def test_generated_units_pass_systemd_analyze_verify(tmp_path, system: bool) -> None:
    """systemd's own parser accepts both units, and finds ExecStart's program at a path with a space and a '%'."""
    base = tmp_path / "agent 100%"
    (base / "venv" / "bin").mkdir(parents=True)
    (base / "venv" / "bin" / "python").symlink_to(sys.executable)
    layout = bootstrap.RemoteLayout(str(base))
    unit = tmp_path / bootstrap.UNIT_NAME
    unit.write_text(bootstrap.unit_text(layout, 8088, system=system))
    argv = ["systemd-analyze", "verify", *([] if system else ["--user"]), str(unit)]
    (tmp_path / "run").mkdir(mode=0o700)  # a user manager needs a runtime folder
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "warning", "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    problems = [ln for ln in r.stderr.splitlines() if bootstrap.UNIT_NAME in ln or str(unit) in ln]
    assert r.returncode == 0 and not problems, r.stderr
    # verify resolves ExecStart's program: a path cut at its space or a '%' read as a specifier would not exist
    broken = unit.read_text().replace(bootstrap.unit_arg(layout.python), layout.python)
    unit.write_text(broken)
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert r.returncode != 0 and "is not executable" in r.stderr, r.stderr


PROBE = "uid={uid}\nuser={user}\nsystem={system}\nsession={session}\n"


@pytest.mark.parametrize("uid, system, session, requested, mode", [
    (0, "running", "", "auto", "system"),
    (0, "degraded", "running", "auto", "system"),
    (1000, "running", "running", "auto", "user"),
    (1000, "running", "", "auto", "none"),  # no user systemd (no lingering session): detached
    (0, "offline", "", "auto", "none"),  # a container or the test harness: no systemd as PID 1
    (1000, "running", "running", "none", "none"),
    (0, "running", "running", "user", "user"),
])
def test_service_mode_from_the_probe(uid, system, session, requested, mode) -> None:
    probe = bootstrap.parse_service_probe(PROBE.format(uid=uid, user="pi", system=system, session=session))
    assert bootstrap.service_mode(requested, probe, device="d") == mode


@pytest.mark.parametrize("uid, system, session, requested, why", [
    (1000, "running", "running", "system", "is not root"),
    (0, "", "", "system", "systemd does not run there (systemctl is-system-running: 'no systemctl')"),
    (1000, "running", "", "user", "the SSH user's systemd does not run there"),
])
def test_service_mode_refuses_what_the_device_cannot_do(uid, system, session, requested, why) -> None:
    probe = bootstrap.parse_service_probe(PROBE.format(uid=uid, user="pi", system=system, session=session))
    with pytest.raises(TransportError) as e:
        bootstrap.service_mode(requested, probe, device="d")
    assert why in e.value.message and "service:" in e.value.hint


def test_systemctl_linger_and_unit_paths() -> None:
    assert bootstrap.systemctl_argv("user", "enable", "--now", bootstrap.UNIT_NAME) == [
        "systemctl", "--user", "enable", "--now", "edgectl-agent.service"]
    assert bootstrap.systemctl_argv("system", "daemon-reload") == ["systemctl", "daemon-reload"]
    assert bootstrap.linger_argv("pi") == ["loginctl", "enable-linger", "pi"]
    assert bootstrap.linger_query_argv("pi") == ["loginctl", "show-user", "pi", "--property=Linger", "--value"]
    assert bootstrap.unit_path("system", "/root") == "/etc/systemd/system/edgectl-agent.service"
    assert bootstrap.unit_path("user", "/home/pi") == "/home/pi/.config/systemd/user/edgectl-agent.service"
    assert bootstrap.parse_service_probe("uid=\nuser=\nsystem=\nsession=\n").uid is None


def test_service_probe_script_runs_here() -> None:
    """The probe's own sh script, on this machine (whatever systemd state it has, the four fields come back)."""
    out = subprocess.run(["sh", "-c", bootstrap.SERVICE_PROBE_SCRIPT], capture_output=True, text=True).stdout
    probe = bootstrap.parse_service_probe(out)
    assert probe.uid == os.getuid() and probe.user


def test_backoff_doubles_and_is_bounded() -> None:
    from edgectl.transport.ssh import backoff_delays

    assert backoff_delays(4, 0.5, 4.0) == [0.5, 1.0, 2.0]
    assert backoff_delays(7, 0.5, 4.0) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_delays(1) == [] and backoff_delays(0) == []

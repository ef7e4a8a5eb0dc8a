"""Phones and Macs, on-device installs (issue 08 parts 5 and 6): platform parsing of real probe outputs of Termux,
CPython for Android and macOS, the launchd plist and termux-services scripts, and the on-device install's pure
parts. The real counterparts: tests/integration/test_ondevice_install.py (a real sshd device builds and serves, a
real failed build) and the plan-time refusal golden case tests/unit/plan/cases/phone-and-mac-install-path.yaml."""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest

from edgectl.agents import ondevice, service_units
from edgectl.agents.install_venv import parse_service_probe, service_mode
from edgectl.agents.platform import (
    PLATFORM_SCRIPT,
    TargetPlatform,
    parse_platform,
    parse_uname,
)
from edgectl.errors import TransportError

# What PLATFORM_SCRIPT prints on each system (sys.platform, platform.machine(), libc_ver(), mac_ver()):
TERMUX = "os=linux\nmachine=aarch64\nlibc=bionic\nlibc_version=24\npython=3.12\nimplementation=cpython\nos_version=\n"
CPYTHON_ANDROID = "os=android\nmachine=aarch64\nlibc=\nlibc_version=\npython=3.13\nimplementation=cpython\nos_version=\n"
MACOS = "os=darwin\nmachine=arm64\nlibc=\nlibc_version=\npython=3.12\nimplementation=cpython\nos_version=14.5\n"
MAC = TargetPlatform(os="darwin", arch="aarch64", libc="", libc_version="", python="3.12", os_version="14.5")
PHONE = parse_platform(TERMUX)


def test_termux_and_android_probe_outputs_parse_to_android():
    for text, python in ((TERMUX, "3.12"), (CPYTHON_ANDROID, "3.13")):
        p = parse_platform(text)
        assert (p.os, p.arch, p.libc, p.python) == ("android", "aarch64", "bionic", python)
        assert p.pip_platforms() == [] and ondevice.binary_platforms(p) == []


def test_macos_probe_output_parses_to_darwin_arm64():
    p = parse_platform(MACOS)
    assert (p.os, p.arch, p.libc, p.os_version) == ("darwin", "aarch64", "", "14.5")
    tags = ondevice.binary_platforms(p)
    assert tags[:2] == ["macosx_14_0_arm64", "macosx_14_0_universal2"] and tags[-2] == "macosx_11_0_arm64"


def test_the_probe_run_by_a_real_python_in_termux_s_environment_says_bionic():
    # Termux sets ANDROID_ROOT; the probe (run here by a real interpreter) reads it like on a phone
    out = subprocess.run([sys.executable, "-c", PLATFORM_SCRIPT], capture_output=True, text=True, check=True,
                         env=dict(os.environ, ANDROID_ROOT="/system")).stdout
    assert parse_platform(out).os == "android" and parse_platform(out).libc == "bionic"


@pytest.mark.parametrize("text,expected", [
    ("Linux\naarch64\nAndroid\n", ("android", "aarch64")),  # Termux: GNU coreutils' uname -o
    ("Darwin\narm64\n", ("darwin", "aarch64")),  # macOS: BSD uname has no -o (the script ignores its failure)
    ("Linux\naarch64\nGNU/Linux\n", ("linux", "aarch64")),  # Debian on a Pi
    ("", ("", "")),
])
def test_uname_outputs(text, expected):
    assert parse_uname(text) == expected


def test_the_uname_script_runs_here():
    out = subprocess.run(["sh", "-c", "uname -s; uname -m; uname -o 2>/dev/null || true"], capture_output=True,
                         text=True, check=True).stdout
    assert parse_uname(out) == ("linux", TargetPlatform("linux", os.uname().machine, "", "", "").arch)


def test_launchd_plist_round_trips_with_the_keys_launchd_needs():
    argv = service_units.agent_argv("/Users/edge/.local/share/edgectl-agent/venv/bin/python",
                                    "/Users/edge/.local/share/edgectl-agent/root", 8088,
                                    ["--verify-key-file", "/Users/edge/x/verify-key.pub"])
    data = service_units.launchd_plist(argv, workdir="/Users/edge/.local/share/edgectl-agent",
                                       log="/Users/edge/.local/share/edgectl-agent/agent.log")
    parsed = service_units.check_launchd_plist(data)
    assert parsed["Label"] == "dev.edgectl.agent" and parsed["RunAtLoad"] is True and parsed["KeepAlive"] is True
    assert parsed["ProgramArguments"] == argv and "--host" in argv and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert data.startswith(b"<?xml") and b"<!DOCTYPE plist" in data
    assert service_units.launchd_plist_path("/Users/edge") == \
        "/Users/edge/Library/LaunchAgents/dev.edgectl.agent.plist"
    broken = plistlib.dumps({"Label": "x", "ProgramArguments": []})
    with pytest.raises(ValueError, match="RunAtLoad|ProgramArguments"):
        service_units.check_launchd_plist(broken)


def test_termux_run_script_execs_the_agent_with_termux_s_shell(tmp_path):
    prefix = "/data/data/com.termux/files/usr"
    argv = service_units.agent_argv(f"{prefix}/../home/.local/share/edgectl-agent/venv/bin/python",
                                    "/data/data/com.termux/files/home/a b/root", 8088, [])
    run = service_units.termux_run_script(prefix, argv)
    assert run.splitlines()[0] == "#!/data/data/com.termux/files/usr/bin/sh"
    assert "exec 2>&1" in run and run.rstrip().splitlines()[-1].startswith("exec ")
    assert "'/data/data/com.termux/files/home/a b/root'" in run  # quoted: a space stays one argument
    assert service_units.termux_service_dir(prefix) == f"{prefix}/var/service/edgectl-agent"
    script = tmp_path / "run"
    script.write_text(run)
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0  # valid sh
    assert "termux-services/svlogger" in service_units.termux_log_run_script(prefix)


def test_service_probe_picks_launchd_on_macos_and_termux_services_on_android():
    mac = parse_service_probe("uid=501\nuser=edge\nsystem=\nsession=\nkernel=Darwin\nos=\nprefix=\n")
    phone = parse_service_probe("uid=10231\nuser=u0_a231\nsystem=\nsession=\nkernel=Linux\nos=Android\n"
                                "prefix=/data/data/com.termux/files/usr\n")
    pi = parse_service_probe("uid=1000\nuser=pi\nsystem=running\nsession=running\nkernel=Linux\nos=GNU/Linux\n"
                             "prefix=\n")
    assert service_mode("auto", mac, device="m") == "launchd"
    assert service_mode("auto", phone, device="p") == "termux"
    assert service_mode("none", phone, device="p") == "none"
    assert service_mode("auto", pi, device="pi") == "user"
    with pytest.raises(TransportError, match="no systemd"):
        service_mode("system", mac, device="m")


def test_build_requirements_are_read_from_the_sdist_s_pyproject():
    assert ondevice.build_requires('[build-system]\nrequires = ["setuptools>=43"]\n') == ["setuptools>=43"]
    assert ondevice.build_requires(None) == ["setuptools>=40.8.0", "wheel"]
    assert ondevice.build_requires("[tool.x]\na = 1\n") == ["setuptools>=40.8.0", "wheel"]


def test_a_failed_build_names_what_the_device_lacks():
    cases = {
        "error: command 'gcc' failed: No such file or directory": "a C/C++ compiler",
        "psutil/_psutil_common.c:9:10: fatal error: Python.h: No such file or directory": "Python's headers",
        "ERROR: No matching distribution found for cmake>=3.21": "CMake",
        "ERROR: No matching distribution found for maturin<2,>=1.9.4": "Rust (cargo)",
    }
    for output, lacking in cases.items():
        assert any(m.startswith(lacking) for m in ondevice.missing_build_tools(output)), output
    e = ondevice.build_failure("phone", PHONE, "line\n" * 50 + "ERROR: No matching distribution found for cmake",
                               "~/.local/share/edgectl-agent/wheels")
    assert "device 'phone'" in str(e) and str(e).count("line") == ondevice.BUILD_TAIL_LINES - 1
    assert "CMake" in e.hint and "pkg install python clang cmake ninja" in e.hint
    mac_error = ondevice.build_failure("mac", MAC, "error: command 'clang' failed", "w")
    assert "a C/C++ compiler" in mac_error.hint and "xcode-select --install" in mac_error.hint


def test_on_device_argv_and_cache_key():
    argv = ondevice.device_install_argv("/a/venv/bin/python", "/a/wheels", ["llama"])
    assert argv[:4] == ["/a/venv/bin/python", "-m", "pip", "install"] and "--no-index" in argv
    assert argv[argv.index("--find-links") + 1] == "/a/wheels" and argv[-1].startswith("edgectl-agent[llama]==")
    key = ondevice.house_key(["a==1", "b==2"], PHONE, [])
    assert key == ondevice.house_key(["b==2", "a==1"], PHONE, [])
    assert key != ondevice.house_key(["a==1", "b==2"], MAC, []) != ondevice.house_key(["a==1", "b==2"], PHONE,
                                                                                       ["numpy"])
    wheel = ondevice.target_wheel_argv(Path("/h"), "numpy==2.4.6", MAC)
    assert "--no-deps" in wheel and "macosx_14_0_arm64" in wheel and wheel[-1] == "numpy==2.4.6"


def test_from_source_needs_install_on_device(tmp_path):
    from edgectl.errors import SpecErrors
    from edgectl.load import load_paths

    f = tmp_path / "fleet.yaml"
    f.write_text("apiVersion: edgectl.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\nspec:\n  devices:\n"
                 "    - name: pi\n      profile: raspberry-pi-5\n"
                 "      transport: {type: ssh, host: pi.local, from_source: [numpy]}\n")
    with pytest.raises(SpecErrors) as e:
        load_paths([f])
    assert "fleet.yaml:8" in str(e.value) and "install: on-device" in str(e.value)
    assert "Model: spec.sources" not in str(e.value)


def test_the_ansible_engine_gets_the_device_platform_s_wheelhouse_and_refuses_on_device(monkeypatch, tmp_path):
    from edgectl.agents import install_venv
    from edgectl.apply import ansible
    from edgectl.apply.observe import DeviceContext
    from edgectl.spec import Device

    built = []
    monkeypatch.setattr(install_venv, "build_wheelhouse",
                        lambda extras, target=None, progress=None: built.append((extras, target)) or tmp_path)
    pi = TargetPlatform(os="linux", arch="aarch64", libc="glibc", libc_version="2.36", python="3.11")
    device = Device(name="pi", profile="raspberry-pi-5", transport={"type": "ssh", "host": "10.0.0.7"})
    houses: dict = {}
    v = ansible.bootstrap_vars(DeviceContext(device), {"llamacpp"}, houses, None, (pi, "os=linux\nmachine=aarch64"))
    assert built == [(["fast-http", "llama"], pi)] and v["edgectl_platform"] == "os=linux\nmachine=aarch64"
    assert v["edgectl_platform_script"] == PLATFORM_SCRIPT
    ansible.bootstrap_vars(DeviceContext(device), {"llamacpp"}, houses, None, (pi, "same"))
    assert len(built) == 1  # one wheelhouse per (extras, platform)
    phone = Device(name="phone", profile="android-phone",
                   transport={"type": "ssh", "host": "10.0.0.8", "install": "on-device"})
    with pytest.raises(TransportError, match="engine: ssh"):
        ansible.bootstrap_vars(DeviceContext(phone), {"llamacpp"}, houses, None, (PHONE, ""))

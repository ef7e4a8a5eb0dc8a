"""Device installs get the agent's extra fast-http (httptools + uvloop) where the index has wheels for the device's
platform (edgectl.agents.wheelhouse.base_extras), and a wheelhouse's completeness marker is keyed on what its extras
require, so a wheelhouse filled before a requirement changed is filled up, not trusted.

The real counterparts: tests/integration/test_ssh_fleet.py (the installed device venv imports httptools and uvloop),
test_arm64_device.py (an aarch64 wheelhouse with them), test_docker_fleet.py / test_docker_arm64.py (images)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from edgectl_agent import __version__ as AGENT_VERSION

from edgectl.agents import install_venv, wheelhouse
from edgectl.agents.install_docker import DockerInstaller, base_platform, default_image
from edgectl.agents.platform import TargetPlatform
from edgectl.spec import Device
from edgectl.transport.docker import DockerTransport

X86 = TargetPlatform("linux", "x86_64", "glibc", "2.36", "3.11")
PI = TargetPlatform("linux", "aarch64", "glibc", "2.36", "3.13")


@pytest.mark.parametrize("target", [X86, PI, TargetPlatform("linux", "x86_64", "glibc", "2.17", "3.15")])
def test_glibc_linux_on_x86_64_and_arm64_gets_fast_http(target) -> None:
    assert wheelhouse.base_extras(target) == ["fast-http"]


@pytest.mark.parametrize("target", [
    TargetPlatform("android", "aarch64", "bionic", "24", "3.12"),  # Termux: no wheels for bionic
    TargetPlatform("darwin", "aarch64", "", "", "3.12", os_version="14.5"),
    TargetPlatform("linux", "aarch64", "musl", "1.2", "3.12"),
    TargetPlatform("linux", "armv7l", "glibc", "2.36", "3.11"),  # 32-bit ARM: no wheels
    TargetPlatform("linux", "x86_64", "glibc", "2.12", "3.11"),  # older than manylinux2014
    TargetPlatform("linux", "x86_64", "glibc", "", "3.11"),  # glibc version unknown
    TargetPlatform("linux", "x86_64", "glibc", "2.36", "3.16"),  # a Python newer than the wheels
    TargetPlatform("linux", "x86_64", "glibc", "2.36", "3.11", implementation="pypy"),
])
def test_platforms_without_wheels_go_without_fast_http(target) -> None:
    assert wheelhouse.base_extras(target) == []


def test_device_extras_are_the_runtimes_the_platforms_and_signing() -> None:
    android = TargetPlatform("android", "aarch64", "bionic", "24", "3.12")
    assert install_venv.device_extras(["llamacpp", "fake"], X86) == ["fast-http", "llama"]
    assert install_venv.device_extras(["llamacpp"], X86, sign=True) == ["fast-http", "llama", "sign"]
    assert install_venv.device_extras(["llamacpp"], android) == ["llama"]
    assert install_venv.device_extras([], android) == []


def test_the_installed_check_asks_for_httptools_and_uvloop_with_fast_http() -> None:
    layout = install_venv.RemoteLayout("/home/pi/.local/share/edgectl-agent")
    assert install_venv.installed_argv(layout, ["llamacpp"], fast_http=True)[3:] == [
        "httptools", "llama-cpp-python", "uvloop"]
    assert install_venv.installed_argv(layout, ["llamacpp"])[3:] == ["llama-cpp-python"]


PYPROJECT = """\
[project]
name = "edgectl-agent"
dependencies = ["fastapi>=0.110", "uvicorn>=0.29"]
[project.optional-dependencies]
llama = ["llama-cpp-python>=0.3.2"]
onnx = ["onnxruntime>=1.17"]
fast-http = [{fast_http}]
"""


def agent_checkout(tmp_path: Path, fast_http: str, monkeypatch) -> Path:
    folder = tmp_path / "agent"
    folder.mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(fast_http=fast_http))
    monkeypatch.setattr(wheelhouse, "agent_source", lambda: str(folder))
    return folder


def test_the_marker_is_keyed_on_the_extras_requirements(tmp_path, monkeypatch) -> None:
    agent_checkout(tmp_path, '"httptools>=0.6"', monkeypatch)
    assert wheelhouse.agent_requirements(["fast-http", "llama"]) == [
        "fastapi>=0.110", "httptools>=0.6", "llama-cpp-python>=0.3.2", "uvicorn>=0.29"]
    before = wheelhouse.completeness_marker(tmp_path, ["fast-http", "llama"])
    llama_only = wheelhouse.completeness_marker(tmp_path, ["llama"])
    assert before.name.startswith(".complete-fast-http-llama-") and before.parent == tmp_path
    assert before == wheelhouse.completeness_marker(tmp_path, ["fast-http", "llama"])  # stable

    agent_checkout(tmp_path, '"httptools>=0.6", "uvloop>=0.19"', monkeypatch)  # the extra requires one more
    assert wheelhouse.completeness_marker(tmp_path, ["fast-http", "llama"]) != before
    assert wheelhouse.completeness_marker(tmp_path, ["llama"]) == llama_only  # an extra not asked for: same


def test_a_released_agent_s_requirements_come_from_its_metadata(monkeypatch) -> None:
    from importlib import metadata

    monkeypatch.setattr(wheelhouse, "agent_source", lambda: f"edgectl-agent=={AGENT_VERSION}")
    requires = ["fastapi>=0.110", 'httptools>=0.6; extra == "fast-http"', "onnxruntime>=1.17; extra == 'onnx'"]
    monkeypatch.setattr(metadata, "requires", lambda name: requires if name == "edgectl-agent" else None)
    assert wheelhouse.agent_requirements(["fast-http"]) == ["fastapi>=0.110", 'httptools>=0.6; extra == "fast-http"']
    assert wheelhouse.agent_requirements([]) == ["fastapi>=0.110"]


def test_an_older_cached_wheelhouse_is_filled_up_not_taken_as_complete(tmp_path, monkeypatch) -> None:
    """A wheelhouse marked complete by an earlier edgectl (marker without the requirements' hash), or before the
    extra's requirements changed, gets pip wheel run again; a complete one runs nothing."""
    monkeypatch.setenv("EDGECTL_WHEELHOUSE", str(tmp_path / "wheels"))
    agent_checkout(tmp_path, '"httptools>=0.6"', monkeypatch)
    house = wheelhouse.wheelhouse_dir()
    house.mkdir(parents=True)
    (house / ".complete-fast-http-llama").touch()  # the old marker, keyed by extras only
    monkeypatch.setattr(wheelhouse, "_AGENT_WHEEL_BUILT", {str(house)})  # the agent's own wheel is fresh
    monkeypatch.setattr(wheelhouse, "installed_constraints", lambda: "")
    ran: list[list[str]] = []
    monkeypatch.setattr(wheelhouse, "_run_pip", lambda argv, house, what: ran.append(argv))

    assert wheelhouse.build_wheelhouse(["fast-http", "llama"]) == house
    assert len(ran) == 1 and ran[0][3] == "wheel" and ran[0][-1].endswith("[fast-http,llama]")
    assert wheelhouse.completeness_marker(house, ["fast-http", "llama"]).exists()

    wheelhouse.build_wheelhouse(["fast-http", "llama"])
    assert len(ran) == 1  # complete: nothing to do

    agent_checkout(tmp_path, '"httptools>=0.6", "uvloop>=0.19"', monkeypatch)
    wheelhouse.build_wheelhouse(["fast-http", "llama"])
    assert len(ran) == 2  # a requirement changed: filled up again


class _Device:
    """What _ensure_installed uses of an SshTransport, answering the installed check and the platform probe."""

    def __init__(self, probe: str, installed: set[str]) -> None:
        self.name, self.spec = "dev", SimpleNamespace(python="/usr/bin/python3", venv=None, install="wheelhouse")
        self.probe, self.installed, self.argvs = probe, installed, []

    def run(self, argv: list[str], **_):
        self.argvs.append(argv)
        if argv[1] == "-c" and argv[2] == install_venv.INSTALLED_SCRIPT:
            ok = set(argv[3:]) <= self.installed
            return SimpleNamespace(returncode=0 if ok else 1, stdout=AGENT_VERSION + "\n", stderr="")
        return SimpleNamespace(returncode=0, stdout=self.probe, stderr="")


PROBE = "os=linux\nmachine={machine}\nlibc={libc}\nlibc_version=2.36\npython=3.11\nimplementation=cpython\n"


def test_a_device_with_everything_costs_one_command_and_one_without_fast_http_wheels_is_not_reinstalled() -> None:
    layout = install_venv.RemoteLayout("/a")
    ready = _Device(PROBE.format(machine="x86_64", libc="glibc"), {"llama-cpp-python", "httptools", "uvloop"})
    install_venv._ensure_installed(ready, layout, ["llamacpp"], False, None)
    assert len(ready.argvs) == 1  # no platform probe either

    # a device whose platform has no fast-http wheels (here: musl), installed without them: found ready
    musl = _Device(PROBE.format(machine="x86_64", libc="musl"), {"llama-cpp-python"})
    install_venv._ensure_installed(musl, layout, ["llamacpp"], False, None)
    assert len(musl.argvs) == 3 and "httptools" not in musl.argvs[-1]


def test_a_glibc_device_installed_before_fast_http_is_installed_again(monkeypatch) -> None:
    """Its platform has the wheels: the missing httptools/uvloop make it install (the wheelhouse build is where a
    unit test stops)."""
    old = _Device(PROBE.format(machine="aarch64", libc="glibc"), {"llama-cpp-python"})
    built: list[tuple[list[str], TargetPlatform]] = []

    def stop(extras, target, progress):
        built.append((extras, target))
        raise RuntimeError("stop")

    monkeypatch.setattr(install_venv, "build_wheelhouse", stop)
    with pytest.raises(RuntimeError, match="stop"):
        install_venv._ensure_installed(old, install_venv.RemoteLayout("/a"), ["llamacpp"], False, None)
    assert built == [(["fast-http", "llama"], TargetPlatform("linux", "aarch64", "glibc", "2.36", "3.11"))]


def test_docker_images_of_both_platforms_carry_fast_http_and_an_older_container_does_not_fit() -> None:
    from edgectl.agents.install_docker import (LABEL_CONTROL, LABEL_DEVICE, LABEL_EXTRAS, LABEL_PLATFORM,
                                               LABEL_SOURCE, LABEL_VERSION, agent_source_digest)

    for platform in ("linux/amd64", "linux/arm64"):
        assert wheelhouse.base_extras(base_platform(platform)) == ["fast-http"]
    device = Device(name="box", profile="raspberry-pi-5", agent={"port": 9100},
                    transport={"type": "docker", "platform": "linux/arm64"})
    installer = DockerInstaller(DockerTransport(device))
    extras = installer.extras(["llamacpp"], sign=False)
    assert extras == ["fast-http", "llama"]
    assert default_image(extras, "linux/arm64") == f"edgectl-agent:{AGENT_VERSION}-fast-http-llama-arm64"
    labels = {LABEL_DEVICE: "box", LABEL_CONTROL: "port:9100", LABEL_VERSION: AGENT_VERSION,
              LABEL_SOURCE: agent_source_digest(), LABEL_PLATFORM: "linux/arm64"}
    before = SimpleNamespace(labels={**labels, LABEL_EXTRAS: "llama"}, attrs={"Config": {"Image": "x"}})
    now = SimpleNamespace(labels={**labels, LABEL_EXTRAS: "fast-http,llama"}, attrs={"Config": {"Image": "x"}})
    assert not installer.fits(before, extras, runtimes=["llamacpp"])
    assert installer.fits(now, extras, runtimes=["llamacpp"])

"""Target platforms (edgectl.agents.platform) and the per-platform wheelhouse's pure parts (edgectl.agents.wheelhouse).

The real counterpart: tests/integration/test_arm64_device.py bootstraps an emulated aarch64 device with them.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from types import SimpleNamespace
from pathlib import Path

import pytest

from edgectl.agents import wheelhouse
from edgectl.agents.platform import (PLATFORM_SCRIPT, PlatformProbeError, TargetPlatform, local_platform,
                                     normalise_arch, parse_platform)

PI = TargetPlatform(os="linux", arch="aarch64", libc="glibc", libc_version="2.36", python="3.11")


def test_arch_names_are_normalised():
    assert normalise_arch("arm64") == normalise_arch("aarch64") == "aarch64"
    assert normalise_arch("AMD64") == normalise_arch("x86_64") == "x86_64"
    assert normalise_arch("riscv64") == "riscv64"


def test_probe_output_parses_to_a_platform():
    text = "os=linux\nmachine=arm64\nlibc=glibc\nlibc_version=2.36\npython=3.11\nimplementation=cpython\n"
    assert parse_platform(text) == PI
    assert PI.tag == "linux-aarch64-glibc2.36-cp311"
    assert str(PI) == "linux/aarch64 glibc 2.36, Python 3.11"
    termux = parse_platform("os=linux\nmachine=aarch64\nlibc=bionic\nlibc_version=24\npython=3.12\n")
    assert termux.os == "android" and termux.pip_platforms() == []


def test_a_truncated_probe_is_an_error():
    with pytest.raises(PlatformProbeError, match="python"):
        parse_platform("os=linux\nmachine=aarch64\n")


def test_the_probe_run_by_a_real_python_matches_this_machine():
    out = subprocess.run([sys.executable, "-c", PLATFORM_SCRIPT], capture_output=True, text=True, check=True).stdout
    assert parse_platform(out) == local_platform()


def test_pip_platforms_follow_the_libc():
    tags = PI.pip_platforms()
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert tags[-2:] == ["manylinux2014_aarch64", "linux_aarch64"]
    musl = TargetPlatform("linux", "x86_64", "musl", "", "3.12")
    assert musl.pip_platforms()[0] == "musllinux_1_2_x86_64"
    assert TargetPlatform("darwin", "aarch64", "", "", "3.11").pip_platforms() == []


def test_same_binaries_ignores_the_glibc_minor_only():
    assert PI.same_binaries(TargetPlatform("linux", "aarch64", "glibc", "2.39", "3.11"))
    assert not PI.same_binaries(TargetPlatform("linux", "aarch64", "glibc", "2.36", "3.13"))
    assert not PI.same_binaries(TargetPlatform("linux", "x86_64", "glibc", "2.36", "3.11"))


def test_download_argv_asks_for_the_targets_binary_wheels(tmp_path):
    argv = wheelhouse.download_argv(tmp_path, "/w/edgectl_agent-1-py3-none-any.whl[llama]", PI, tmp_path / "c.txt")
    assert argv[1:4] == ["-m", "pip", "download"]
    assert "--only-binary=:all:" in argv
    assert argv[argv.index("--python-version") + 1] == "311"
    assert argv[argv.index("--implementation") + 1] == "cp"
    assert argv[argv.index("--abi") + 1] == "cp311"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"] == PI.pip_platforms()
    assert argv[-3:] == ["--constraint", str(tmp_path / "c.txt"), "/w/edgectl_agent-1-py3-none-any.whl[llama]"]


def test_cross_build_flags_and_key():
    args = wheelhouse.cross_cmake_args(PI)
    assert "-DCMAKE_SYSTEM_PROCESSOR=aarch64" in args and "-DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc" in args
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_CPU_ARM_ARCH=armv8-a" in args
    assert "-DCMAKE_INSTALL_RPATH=$ORIGIN" in args
    key = wheelhouse.cross_build_key("llama-cpp-python", "0.3.36", PI)
    assert key.startswith("llama-cpp-python-0.3.36-linux-aarch64-glibc-")
    # the Python minor does not change a ctypes library's build: one build serves every Python of that platform
    assert key == wheelhouse.cross_build_key("llama-cpp-python", "0.3.36",
                                             TargetPlatform("linux", "aarch64", "glibc", "2.36", "3.13"))


def test_wheelhouse_is_keyed_by_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECTL_WHEELHOUSE", str(tmp_path))
    assert wheelhouse.wheelhouse_dir(PI).name.endswith("-linux-aarch64-glibc2.36-cp311")
    assert wheelhouse.wheelhouse_dir(PI) != wheelhouse.wheelhouse_dir()


def test_retag_wheel_rewrites_name_tags_and_record(tmp_path):
    src = tmp_path / "demo-1.0-py3-none-linux_x86_64.whl"
    with zipfile.ZipFile(src, "w") as z:
        z.writestr("demo/__init__.py", "")
        z.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n"
                                               "Tag: py3-none-linux_x86_64\n")
        z.writestr("demo-1.0.dist-info/RECORD", "demo/__init__.py,,0\ndemo-1.0.dist-info/WHEEL,sha256=x,1\n"
                                                "demo-1.0.dist-info/RECORD,,\n")
    out = tmp_path / "out"
    out.mkdir()
    new = wheelhouse.retag_wheel(src, "linux_aarch64", out)
    assert new.name == "demo-1.0-py3-none-linux_aarch64.whl"
    with zipfile.ZipFile(new) as z:
        meta = z.read("demo-1.0.dist-info/WHEEL").decode()
        record = z.read("demo-1.0.dist-info/RECORD").decode()
    assert "Tag: py3-none-linux_aarch64" in meta and "x86_64" not in meta
    import base64
    import hashlib

    digest = base64.urlsafe_b64encode(hashlib.sha256(meta.encode()).digest()).rstrip(b"=").decode()
    assert f"demo-1.0.dist-info/WHEEL,sha256={digest},{len(meta)}" in record


def test_source_only_dependencies_are_read_from_the_agent_wheel(tmp_path):
    whl = tmp_path / "edgectl_agent-1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("edgectl_agent-1.dist-info/METADATA",
                   "Metadata-Version: 2.1\nName: edgectl-agent\nVersion: 1\nRequires-Dist: fastapi\n"
                   "Requires-Dist: llama-cpp-python>=0.3; extra == \"llama\"\n"
                   "Requires-Dist: onnxruntime; extra == \"onnx\"\n")
    assert wheelhouse._source_only_needed(f"{whl}[llama,onnx]") == ["llama-cpp-python"]
    assert wheelhouse._source_only_needed(f"{whl}[onnx]") == []


def test_a_platform_without_index_wheels_is_refused_before_any_build(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECTL_WHEELHOUSE", str(tmp_path))
    termux = TargetPlatform("android", "aarch64", "bionic", "24", "3.12")
    from edgectl.errors import TransportError

    with pytest.raises(TransportError, match="no wheels for android/aarch64 bionic"):
        wheelhouse.build_wheelhouse(["llama"], termux)
    assert not any(Path(tmp_path).iterdir())


class _ProbedTransport:
    """Just what probe_platform uses of an SshTransport: the device's answer to the probe."""

    def __init__(self, rc: int, out: str, err: str = "") -> None:
        self.name, self.spec, self.argv = "pi", SimpleNamespace(python="/usr/bin/python3"), None
        self._answer = subprocess.CompletedProcess([], rc, out, err)

    def run(self, argv, timeout=60.0):
        self.argv = argv
        return self._answer


def test_the_installer_probes_the_device_platform_and_explains_failures():
    from edgectl.agents.install_venv import probe_platform
    from edgectl.errors import TransportError

    t = _ProbedTransport(0, "os=linux\nmachine=aarch64\nlibc=glibc\nlibc_version=2.36\npython=3.11\n")
    assert probe_platform(t) == PI and t.argv == ["/usr/bin/python3", "-c", PLATFORM_SCRIPT]
    with pytest.raises(TransportError, match="cannot run /usr/bin/python3 there: not found") as e:
        probe_platform(_ProbedTransport(127, "", "not found"))
    assert "transport.python" in e.value.hint
    with pytest.raises(TransportError, match="did not say which platform"):
        probe_platform(_ProbedTransport(0, "Python 2.7\n"))

"""The planner's platform check (edgectl.plan.platforms): the device's platform from facts or profile, and which
runtimes have a build there (the catalog's ``platforms``). Golden: cases/platform-without-runtime-build.yaml."""

from __future__ import annotations

from types import SimpleNamespace

from edgectl.plan.platforms import DevicePlatform, device_platform, has_build, runtimes_with_builds


def facts(os="Linux 6.1", arch="aarch64", libc="glibc", libc_version="2.36", python="3.11", runtimes=None):
    return SimpleNamespace(os=os, arch=arch, libc=libc, libc_version=libc_version, python=python,
                           runtimes=runtimes or {})


def test_platform_from_facts_and_from_profile():
    profile = SimpleNamespace(arch="aarch64")
    assert device_platform(profile, None) == DevicePlatform(arch="aarch64")
    assert device_platform(profile, facts()) == DevicePlatform("aarch64", "linux", "2.36", "3.11")
    assert str(device_platform(profile, facts())) == "linux/aarch64, libc 2.36, Python 3.11"
    assert device_platform(profile, facts(arch="arm64", os="Darwin 23.1", libc="")).os == "darwin"
    assert device_platform(profile, facts(libc="musl")).os == "linux-musl"
    assert device_platform(profile, facts(libc="bionic")).os == "android"


def test_builds_by_platform():
    assert has_build("llamacpp", DevicePlatform("aarch64", "linux"))
    assert not has_build("mlx", DevicePlatform("aarch64", "linux"))
    assert has_build("mlx", DevicePlatform("aarch64"))  # OS unknown: the architecture alone decides
    assert not has_build("onnxruntime", DevicePlatform("aarch64", "android"))
    assert has_build("fake", DevicePlatform("riscv64", "linux"))  # pure Python


def test_an_installed_runtime_stays_whatever_the_table_says():
    notes: list[str] = []
    kept = runtimes_with_builds(["onnxruntime", "llamacpp"], DevicePlatform("aarch64", "android"),
                                facts(libc="bionic", runtimes={"llamacpp": "0.3.36"}), notes)
    assert kept == ["llamacpp"]
    assert notes and "onnxruntime has no build for android/aarch64" in notes[0]

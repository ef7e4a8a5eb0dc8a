"""Which of a device's runtimes have a build for its platform, found by ``plan`` before anything is pushed.

The device's platform comes from its agent's facts (OS, architecture, libc, Python) or, for a device not observed
yet (the one edgectl is about to bootstrap), from its profile's architecture (the OS is then unknown, so only the
architecture is checked). The table of what exists where is data: each runtime catalog entry's ``platforms``. A
runtime the agent reports installed runs there, whatever the table says. A runtime with no build is dropped with a
note naming the runtime, the platform and what is missing; the planner then falls to the next one in the profile's
order. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgectl_agent.api import Facts
from edgectl_agent.runtimes import catalog

from edgectl.spec import Device, ProfileSpec

_OS_NAMES = {"linux": "linux", "darwin": "darwin", "windows": "win32", "android": "android"}
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x64": "x86_64"}


@dataclass(frozen=True)
class DevicePlatform:
    """A device's platform as the planner knows it: ``os`` None when only its profile is known."""

    arch: str
    os: str | None = None  # linux, linux-musl, android, darwin, win32 (the catalog's spelling)
    libc_version: str = ""
    python: str = ""

    def __str__(self) -> str:
        where = f"{self.os}/{self.arch}" if self.os else f"{self.arch} (OS not observed yet)"
        extra = ", ".join(x for x in (f"libc {self.libc_version}" if self.libc_version else "",
                                      f"Python {self.python}" if self.python else "") if x)
        return f"{where}, {extra}" if extra else where


# OSes whose devices get the agent only by building it there (transport.install: on-device): the package index has
# no wheels for Android's bionic libc, and edgectl cross-builds for Linux only. os -> (what it is, what to install
# on the device and how). edgectl.agents.ondevice names the same tools when a build on the device fails.
ON_DEVICE_ONLY = {
    "android": ("Android (Termux, bionic libc)",
                "in Termux on the phone: `pkg install python clang cmake ninja rust termux-services` "
                "(rust builds pydantic-core; restart Termux once after installing termux-services)"),
    "darwin": ("macOS",
               "on the Mac: `xcode-select --install` (Apple's compiler and Python headers) and "
               "`brew install cmake ninja`"),
}
# Runtime libraries whose source distribution a device builds offline with a C/C++ compiler and CMake: with
# transport.install: on-device they run on any platform (llama.cpp builds with Metal on macOS, NEON on phones).
SOURCE_BUILDABLE = ("llama-cpp-python",)
# What a Linux device needs to build on itself (transport.install: on-device).
LINUX_BUILD_TOOLS = ("on the device: `apt-get install build-essential cmake ninja-build python3-dev python3-venv` "
                     "(Debian/Ubuntu)")


def device_platform(profile: ProfileSpec, facts: Facts | None) -> DevicePlatform:
    """From the agent's facts where observed, else from the profile's OS (android, darwin) and architecture."""
    if facts is None:
        return DevicePlatform(arch=profile.arch, os=getattr(profile, "os", None) if getattr(profile, "os", None) in ON_DEVICE_ONLY else None)
    arch = _ARCH_ALIASES.get(facts.arch.lower(), facts.arch.lower())
    os_name = _OS_NAMES.get(facts.os.split()[0].lower() if facts.os else "", None)
    if facts.libc == "bionic":
        os_name = "android"
    elif facts.libc == "musl" and os_name == "linux":
        os_name = "linux-musl"
    return DevicePlatform(arch=arch, os=os_name, libc_version=facts.libc_version, python=facts.python)


def installs_on_device(device: Device) -> bool:
    return device.transport.type == "ssh" and device.transport.install == "on-device"


def install_refusal(device: Device, platform: DevicePlatform) -> tuple[str, str] | None:
    """(why, the fix) when edgectl cannot install an agent on ``device`` the way its Fleet entry says: an Android or
    macOS device reached over SSH without transport.install: on-device. None: it can (or edgectl does not install
    there: its agent is found running, or it pulls)."""
    if platform.os not in ON_DEVICE_ONLY or device.transport.type != "ssh" or installs_on_device(device):
        return None
    what, tools = ON_DEVICE_ONLY[platform.os]
    return (f"the device runs {what}: the package index has no wheels edgectl could push there for "
            "the agent and its runtimes, and edgectl cross-builds only for Linux, so nothing is installed",
            f"build it on the device: install {tools}; then set `install: on-device` in the device's transport "
            "(Fleet) and apply again")


def has_build(runtime: str, platform: DevicePlatform, *, on_device: bool = False) -> bool:
    """Whether the catalog lists a build of ``runtime`` for ``platform`` (on its architecture alone when the OS is
    not known yet). ``on_device``: the device builds what ships only as source (llama-cpp-python) itself."""
    wanted = catalog.entry(runtime).platforms
    if wanted is None:
        return True
    if on_device and catalog.entry(runtime).package in SOURCE_BUILDABLE:
        return True
    if platform.os is None:
        return any(p.split("/", 1)[1] == platform.arch for p in wanted)
    return f"{platform.os}/{platform.arch}" in wanted


def missing_build(runtime: str, platform: DevicePlatform) -> str:
    wanted = catalog.entry(runtime).platforms or ()
    return (f"{runtime} has no build for {platform}: neither the package index nor edgectl's cross-builds have its "
            f"library ({catalog.entry(runtime).package}) there (it has builds for {', '.join(wanted)})")


def runtimes_with_builds(runtimes: list[str], platform: DevicePlatform, facts: Facts | None,
                         notes: list[str], *, on_device: bool = False) -> list[str]:
    """``runtimes`` (the profile's order) less those with no build for ``platform``; each dropped one adds a note.
    Runtimes the agent reports installed stay: they run there. ``on_device``: the device builds source-only
    runtimes itself (transport.install: on-device)."""
    installed = facts.runtimes if facts is not None else {}
    kept = []
    for runtime in runtimes:
        if runtime in installed or has_build(runtime, platform, on_device=on_device):
            kept.append(runtime)
        else:
            notes.append(missing_build(runtime, platform))
    return kept

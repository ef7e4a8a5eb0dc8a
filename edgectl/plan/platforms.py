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

from edgectl.spec import ProfileSpec

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


def device_platform(profile: ProfileSpec, facts: Facts | None) -> DevicePlatform:
    """From the agent's facts where observed, else from the profile's architecture."""
    if facts is None:
        return DevicePlatform(arch=profile.arch)
    arch = _ARCH_ALIASES.get(facts.arch.lower(), facts.arch.lower())
    os_name = _OS_NAMES.get(facts.os.split()[0].lower() if facts.os else "", None)
    if facts.libc == "bionic":
        os_name = "android"
    elif facts.libc == "musl" and os_name == "linux":
        os_name = "linux-musl"
    return DevicePlatform(arch=arch, os=os_name, libc_version=facts.libc_version, python=facts.python)


def has_build(runtime: str, platform: DevicePlatform) -> bool:
    """Whether the catalog lists a build of ``runtime`` for ``platform`` (on its architecture alone when the OS is
    not known yet)."""
    wanted = catalog.entry(runtime).platforms
    if wanted is None:
        return True
    if platform.os is None:
        return any(p.split("/", 1)[1] == platform.arch for p in wanted)
    return f"{platform.os}/{platform.arch}" in wanted


def missing_build(runtime: str, platform: DevicePlatform) -> str:
    wanted = catalog.entry(runtime).platforms or ()
    return (f"{runtime} has no build for {platform}: neither the package index nor edgectl's cross-builds have its "
            f"library ({catalog.entry(runtime).package}) there (it has builds for {', '.join(wanted)})")


def runtimes_with_builds(runtimes: list[str], platform: DevicePlatform, facts: Facts | None,
                         notes: list[str]) -> list[str]:
    """``runtimes`` (the profile's order) less those with no build for ``platform``; each dropped one adds a note.
    Runtimes the agent reports installed stay: they run there."""
    installed = facts.runtimes if facts is not None else {}
    kept = []
    for runtime in runtimes:
        if runtime in installed or has_build(runtime, platform):
            kept.append(runtime)
        else:
            notes.append(missing_build(runtime, platform))
    return kept

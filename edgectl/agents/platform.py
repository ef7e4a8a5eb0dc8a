"""The platform of a target: OS, CPU architecture, libc and Python, read over the transport before anything is built.

One small probe (:data:`PLATFORM_SCRIPT`, run by the target's Python) prints ``key=value`` lines that
:func:`parse_platform` reads without running anything; :func:`local_platform` is the same facts of this machine.
The platform decides which wheels a device can install (:meth:`TargetPlatform.pip_platforms`), keys every
wheelhouse cache (:attr:`TargetPlatform.tag`) and is shown by ``plan``.
"""

from __future__ import annotations

import os
import platform as _platform
import sys
from dataclasses import dataclass

# Run by the device's Python (``python -c``): no imports beyond the standard library, works from Python 3.8 on.
PLATFORM_SCRIPT = (
    "import os, sys, platform\n"
    "libc, ver = platform.libc_ver()\n"
    "if hasattr(sys, 'getandroidapilevel') or os.environ.get('ANDROID_ROOT'):\n"
    "    libc, ver = 'bionic', str(getattr(sys, 'getandroidapilevel', lambda: '')())\n"
    "elif not libc and sys.platform.startswith('linux'):\n"
    "    import glob\n"
    "    if glob.glob('/lib/ld-musl-*'): libc = 'musl'\n"
    "print('os=' + sys.platform)\n"
    "print('machine=' + platform.machine())\n"
    "print('libc=' + libc)\n"
    "print('libc_version=' + ver)\n"
    "print('python=%d.%d' % sys.version_info[:2])\n"
    "print('implementation=' + sys.implementation.name)\n"
    "print('os_version=' + (platform.mac_ver()[0] if sys.platform == 'darwin' else ''))\n")
# Where the device has no Python yet (a fresh Termux or Mac): the kernel's name, the machine and (GNU uname) the OS,
# enough to say what to install there. BSD uname (macOS) has no -o.
UNAME_SCRIPT = "uname -s; uname -m; uname -o 2>/dev/null || true"

# Architecture names as each OS spells them -> one name (the one wheel tags use on Linux).
ARCH_ALIASES = {"arm64": "aarch64", "aarch64": "aarch64", "amd64": "x86_64", "x86_64": "x86_64",
                "x64": "x86_64", "armv7l": "armv7l", "armv8l": "armv7l", "i686": "i686", "i386": "i686"}
OLDEST_MANYLINUX_MINOR = 17  # manylinux2014 = manylinux_2_17: the oldest wheels the index still has for aarch64


def normalise_arch(machine: str) -> str:
    """``arm64`` and ``aarch64`` are the same architecture (so are ``amd64`` and ``x86_64``)."""
    m = machine.strip().lower()
    return ARCH_ALIASES.get(m, m)


@dataclass(frozen=True)
class TargetPlatform:
    """What decides which binaries run on a target."""

    os: str  # sys.platform: linux, darwin, android, win32
    arch: str  # normalised: aarch64, x86_64, ...
    libc: str  # glibc, musl, bionic, or "" (macOS, unknown)
    libc_version: str  # "2.36" for glibc; "" when unknown
    python: str  # "3.11"
    implementation: str = "cpython"
    os_version: str = ""  # macOS: "14.5" (which macosx wheel tags fit); "" elsewhere

    @property
    def python_nodot(self) -> str:
        return self.python.replace(".", "")

    @property
    def tag(self) -> str:
        """The cache key part: e.g. ``linux-aarch64-glibc2.36-cp311``."""
        libc = f"-{self.libc}{self.libc_version}" if self.libc else ""
        return f"{self.os}-{self.arch}{libc}-cp{self.python_nodot}"

    def __str__(self) -> str:
        libc = f" {self.libc} {self.libc_version}".rstrip() if self.libc else ""
        return f"{self.os}/{self.arch}{libc}, Python {self.python}"

    def same_binaries(self, other: "TargetPlatform") -> bool:
        """Wheels built for ``other`` install here unchanged (same OS, architecture, libc family and Python)."""
        return (self.os, self.arch, self.libc, self.python, self.implementation) == \
            (other.os, other.arch, other.libc, other.python, other.implementation)

    def pip_platforms(self) -> list[str]:
        """pip's ``--platform`` values for wheels that install here, newest first: manylinux up to the device's
        glibc (musllinux for musl), then the plain ``linux_<arch>`` tag of wheels edgectl builds itself.
        Empty where the index has no wheels that fit (Android's bionic, unknown libc)."""
        if self.os != "linux":
            return []
        if self.libc == "glibc":
            minor = _minor(self.libc_version)
            if minor is None or minor < OLDEST_MANYLINUX_MINOR:
                return [f"linux_{self.arch}"]
            tags = [f"manylinux_2_{m}_{self.arch}" for m in range(minor, OLDEST_MANYLINUX_MINOR - 1, -1)]
            return tags + [f"manylinux2014_{self.arch}", f"linux_{self.arch}"]
        if self.libc == "musl":
            return [f"musllinux_1_{m}_{self.arch}" for m in (2, 1)] + [f"linux_{self.arch}"]
        return []


def _minor(version: str) -> int | None:
    parts = version.split(".")
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


class PlatformProbeError(ValueError):
    """The probe's output lacks a field (not a Python edgectl can read, or the probe was cut off)."""


def parse_platform(text: str) -> TargetPlatform:
    """:data:`PLATFORM_SCRIPT`'s output -> the target's platform (pure)."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    missing = [k for k in ("os", "machine", "python") if not fields.get(k, "").strip()]
    if missing:
        raise PlatformProbeError(f"the platform probe printed no {', '.join(missing)}: {text.strip()[:200]!r}")
    os_name = fields["os"].strip()
    libc = fields.get("libc", "").strip()
    if os_name == "android":  # CPython 3.13+ built for Android says so itself; Termux's says linux (libc: bionic)
        libc = "bionic"
    return TargetPlatform(os="android" if libc == "bionic" else os_name, arch=normalise_arch(fields["machine"]),
                          libc=libc, libc_version=fields.get("libc_version", "").strip(),
                          python=fields["python"].strip(),
                          implementation=fields.get("implementation", "cpython").strip() or "cpython",
                          os_version=fields.get("os_version", "").strip())


def parse_uname(text: str) -> tuple[str, str]:
    """:data:`UNAME_SCRIPT`'s output -> (os, arch) in the probe's spelling: ``android`` (GNU uname -o says
    Android), ``darwin``, ``linux``; the architecture normalised. Pure."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    kernel = lines[0].lower() if lines else ""
    arch = normalise_arch(lines[1]) if len(lines) > 1 else ""
    system = lines[2].lower() if len(lines) > 2 else ""
    if system == "android":
        return "android", arch
    return ("darwin" if kernel == "darwin" else kernel), arch


def local_platform() -> TargetPlatform:
    """This machine's platform (the controller's), by the same rules as the probe."""
    libc, version = _platform.libc_ver()
    if not libc and sys.platform.startswith("linux"):
        import glob

        libc = "musl" if glob.glob("/lib/ld-musl-*") else ""
    if hasattr(sys, "getandroidapilevel") or os.environ.get("ANDROID_ROOT"):
        libc, version = "bionic", str(getattr(sys, "getandroidapilevel", lambda: "")())
    return TargetPlatform(os="android" if libc == "bionic" else sys.platform, arch=normalise_arch(_platform.machine()),
                          libc=libc, libc_version=version, python=f"{sys.version_info[0]}.{sys.version_info[1]}",
                          implementation=sys.implementation.name)



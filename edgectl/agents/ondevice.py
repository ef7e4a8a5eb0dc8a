"""On-device installs (Fleet ``transport.install: on-device``): the device compiles what has no binary for it.

For devices edgectl cannot build wheels for (Android's bionic libc, macOS) or whose owner wants native builds
(``transport.from_source``), this machine collects a *source house* for the device's platform and pushes it; the
device's own pip builds and installs from it offline (``pip install --no-index --find-links``) with its compiler.

What the source house holds, per distribution the agent and its runtime extras need (resolved here, at the versions
this machine pins, with ``pip install --dry-run --report`` over this machine's wheelhouse):

- pure-Python wheels (``py3-none-any``) as they are: they install on any platform, and building them from their
  sdists on the device would produce the same files;
- a platform wheel where one fits the device and the package is not in ``from_source``: this machine's own wheel
  when the device has the same platform, else the package index's wheel for the device (macOS wheels, manylinux);
- otherwise the package's **source distribution**, plus pure-Python wheels of the build backends its
  ``pyproject.toml`` declares (setuptools, scikit-build-core, meson-python, ...), so that pip's isolated build
  needs no index. Build tools that are programs (the compiler, CMake, ninja, Rust) must be on the device: a failed
  build shows the tail of the device's output and names what to install (:func:`build_failure`).

The house is cached by (the resolved versions, the device's platform, from_source), like the wheelhouse.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

from edgectl_agent import __version__ as AGENT_VERSION

from edgectl.agents.platform import TargetPlatform, local_platform
from edgectl.agents.wheelhouse import (
    SOURCE_ONLY,
    build_wheelhouse,
    requirement,
    wheels_base,
)
from edgectl.errors import TransportError
from edgectl.plan.platforms import LINUX_BUILD_TOOLS, ON_DEVICE_ONLY
from edgectl.progress import StageProgress

DEVICE_BUILD_TIMEOUT_S = 3600.0  # llama.cpp on a phone or a Pi takes minutes to tens of minutes
BUILD_TAIL_LINES = 30
# a PEP 517 build without [build-system] (setup.py only): pip's default backend
DEFAULT_BUILD_REQUIRES = ["setuptools>=40.8.0", "wheel"]
MACOS_OLDEST_MAJOR = 11  # the oldest macosx_<major>_0 tag tried for an Apple Silicon Mac (macOS 11 = Big Sur)


# Fetches the source distribution of name==version from pip's configured index into a folder, without building it:
# `pip download --no-binary` would prepare its metadata first, which for a Rust package (pydantic-core) means
# building maturin with cargo and crates.io here. Uses pip's own finder and session (its index, proxy, certs).
SDIST_FETCH_SCRIPT = """\
import os, sys
from pip._internal.commands.download import DownloadCommand
name, version, dest = sys.argv[1:4]
cmd = DownloadCommand("download", "")
options, _ = cmd.parse_args(["--no-binary", ":all:", "--dest", dest])
session = cmd._build_session(options)
finder = cmd._build_package_finder(options=options, session=session)
for c in finder.find_all_candidates(name):
    if str(c.version) == version and not c.link.is_wheel:
        r = session.get(c.link.url_without_fragment)
        r.raise_for_status()
        with open(os.path.join(dest, c.link.filename), "wb") as f:
            f.write(r.content)
        break
else:
    sys.exit("the package index has no source distribution of %s==%s" % (name, version))
"""


def normalise_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- pure parts (unit-tested) -------------------------------------------------------------------------------------
def binary_platforms(target: TargetPlatform) -> list[str]:
    """pip ``--platform`` values of the index's binary wheels that install on ``target``: manylinux/musllinux on
    Linux, ``macosx_<N>_0_<arch>`` (and universal2) up to the Mac's macOS version; none on Android (the index's
    wheels are for glibc, musl, macOS and Windows)."""
    if target.os == "darwin":
        arch = "arm64" if target.arch == "aarch64" else target.arch
        major = int(target.os_version.split(".")[0]) if target.os_version.split(".")[0].isdigit() else 14
        tags = []
        for m in range(major, MACOS_OLDEST_MAJOR - 1, -1):
            tags += [f"macosx_{m}_0_{arch}", f"macosx_{m}_0_universal2"]
        if arch == "x86_64":
            tags += [f"macosx_10_{minor}_x86_64" for minor in range(15, 8, -1)]
        return tags
    return target.pip_platforms()


def resolve_argv(house: Path, extras: list[str], report: Path) -> list[str]:
    """What the agent with ``extras`` installs, resolved here from this machine's wheelhouse (no index)."""
    return [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
            "--ignore-installed", "--no-index", "--find-links", str(house), "--report", str(report),
            requirement("edgectl-agent", extras) + f"=={AGENT_VERSION}"]


def sdist_fetch_argv(name: str, version: str, dest: Path) -> list[str]:
    return [sys.executable, "-c", SDIST_FETCH_SCRIPT, name, version, str(dest)]


def target_wheel_argv(dest: Path, pin: str, target: TargetPlatform) -> list[str]:
    """pip download of the index's binary wheel of ``pin`` (name==version) for ``target``, without dependencies."""
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
            "--only-binary=:all:", "--dest", str(dest), "--python-version", target.python_nodot,
            "--implementation", "cp", "--abi", f"cp{target.python_nodot}", "--abi", "abi3", "--abi", "none"]
    for tag in binary_platforms(target):
        argv += ["--platform", tag]
    return argv + [pin]


def backend_argv(dest: Path, requirements: list[str], target: TargetPlatform) -> list[str]:
    """pip download of pure-Python wheels (``any`` platform) of build backends, with their dependencies, for the
    device's Python."""
    return [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
            "--only-binary=:all:", "--dest", str(dest), "--platform", "any", "--python-version",
            target.python_nodot, "--implementation", "py", "--abi", "none", *requirements]


def build_requires(pyproject_text: str | None) -> list[str]:
    """The build requirements a source tree's ``pyproject.toml`` declares (pip's default without one)."""
    if not pyproject_text:
        return list(DEFAULT_BUILD_REQUIRES)
    system = tomllib.loads(pyproject_text).get("build-system")
    if not system or "requires" not in system:
        return list(DEFAULT_BUILD_REQUIRES)
    return [str(r) for r in system["requires"]]


def sdist_pyproject(sdist: Path) -> str | None:
    """The top-level ``pyproject.toml`` of a source distribution (.tar.gz or .zip), or None."""
    if sdist.name.endswith(".zip"):
        with zipfile.ZipFile(sdist) as z:
            names = [n for n in z.namelist() if n.count("/") == 1 and n.endswith("/pyproject.toml")]
            return z.read(names[0]).decode() if names else None
    with tarfile.open(sdist) as t:
        for member in t.getmembers():
            if member.name.count("/") == 1 and member.name.endswith("/pyproject.toml"):
                f = t.extractfile(member)
                return f.read().decode() if f else None
    return None


def house_key(pins: Iterable[str], target: TargetPlatform, from_source: Iterable[str]) -> str:
    text = "\n".join(sorted(pins)) + "\n" + target.tag + "\n" + ",".join(sorted(normalise_name(n)
                                                                                 for n in from_source))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def device_install_argv(python: str, wheels: str, extras: list[str]) -> list[str]:
    """pip on the device, offline: builds the pushed sdists with the device's compiler, installs the agent."""
    return [python, "-m", "pip", "install", "--disable-pip-version-check", "--progress-bar", "off", "--no-index",
            "--find-links", wheels, requirement("edgectl-agent", extras) + f"=={AGENT_VERSION}"]


# What a failed build's output says is missing -> what to install (in words; the OS's command follows).
_MISSING_TOOLS = (
    (re.compile(r"command '[^']*(gcc|cc|clang)' failed|No such file or directory: '[^']*(gcc|cc|clang)'|"
                r"error: command '[^']*(gcc|cc|clang\+*|g\+\+)'|C compiler|CMAKE_C_COMPILER|"
                r"unable to execute '[^']*(gcc|cc|clang)'", re.IGNORECASE), "a C/C++ compiler"),
    (re.compile(r"Python\.h: No such file|fatal error: Python\.h|Python3_INCLUDE_DIR|Development\.Module", re.IGNORECASE),
     "Python's headers"),
    (re.compile(r"No matching distribution found for cmake|cmake: not found|CMake (is )?not found|"
                r"Could not find cmake", re.IGNORECASE), "CMake"),
    (re.compile(r"No matching distribution found for ninja|ninja: not found|Could not find ninja", re.IGNORECASE),
     "ninja"),
    (re.compile(r"cargo|rustc|No matching distribution found for maturin|puccinialin", re.IGNORECASE),
     "Rust (cargo) for packages written in Rust (pydantic-core)"),
)


def missing_build_tools(output: str) -> list[str]:
    """What a failed build on the device lacked, read from its output (pure; may be empty)."""
    return [what for pattern, what in _MISSING_TOOLS if pattern.search(output)]


def install_instructions(target: TargetPlatform) -> str:
    return ON_DEVICE_ONLY[target.os][1] if target.os in ON_DEVICE_ONLY else LINUX_BUILD_TOOLS


def build_failure(device: str, target: TargetPlatform, output: str, where: str) -> TransportError:
    """The error for a failed build on the device: the tail of its output, what it lacked, how to install it."""
    tail = "\n".join(output.strip().splitlines()[-BUILD_TAIL_LINES:])
    missing = missing_build_tools(output)
    lacks = f"it lacks {', '.join(missing)}; " if missing else ""
    return TransportError(f"device '{device}': building the agent's packages on the device ({target}) failed. "
                          f"The device's build output ends with:\n{tail}",
                          hint=f"{lacks}install the build tools {install_instructions(target)}, then apply again "
                               f"(the sources stay pushed in {where})")


# -- the source house on this machine -----------------------------------------------------------------------------
def _pip(argv: list[str], what: str) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise TransportError(f"{what} on this machine failed:\n{r.stderr.strip()[-2000:]}",
                             hint="pip needs PyPI (or a configured index) once to collect the device's sources; "
                                  "later bootstraps of that platform reuse them offline")
    return r


def resolved(extras: list[str]) -> list[tuple[str, str, Path]]:
    """(name, version, wheel here) of everything the agent with ``extras`` installs, resolved on this machine."""
    house = build_wheelhouse(extras)
    with tempfile.TemporaryDirectory(prefix="edgectl-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        _pip(resolve_argv(house, extras, report), "resolving the agent's packages")
        items = json.loads(report.read_text())["install"]
    out = []
    for item in items:
        meta, url = item["metadata"], item["download_info"]["url"]
        out.append((meta["name"], meta["version"], Path(url.removeprefix("file://"))))
    return out


def build_source_house(extras: list[str], target: TargetPlatform, from_source: Iterable[str] = (),
                       progress: StageProgress | None = None) -> Path:
    """The files a device of ``target`` installs the agent with ``extras`` from, compiling what has no binary for it
    (see the module docstring); cached per (versions, target, from_source). The agent's own wheel is refreshed on
    every call (a source checkout changes it without a new version)."""
    wanted_from_source = {normalise_name(n) for n in from_source}
    dists = resolved(extras)
    pins = [f"{name}=={version}" for name, version, _ in dists if normalise_name(name) != "edgectl-agent"]
    house = wheels_base() / f"on-device-{AGENT_VERSION}-{target.tag}-{house_key(pins, target, from_source)}"
    house.mkdir(parents=True, exist_ok=True)
    for name, _, wheel in dists:  # the agent's wheel, fresh from this machine's wheelhouse
        if normalise_name(name) == "edgectl-agent":
            for old in house.glob("edgectl_agent-*"):
                old.unlink()
            shutil.copy2(wheel, house / wheel.name)
    marker = house / ".complete"
    if marker.exists():
        return house
    same = target.same_binaries(local_platform())
    backends: set[str] = set()
    stage = f"collecting the sources for {target}"
    for done, (name, version, wheel) in enumerate(dists):
        if progress:
            progress(stage, done, len(dists))
        key = normalise_name(name)
        if key == "edgectl-agent":
            continue
        if wheel.name.endswith("-none-any.whl") and key not in wanted_from_source:
            shutil.copy2(wheel, house / wheel.name)
            continue
        if key not in wanted_from_source:
            if same:
                shutil.copy2(wheel, house / wheel.name)
                continue
            if key not in SOURCE_ONLY and binary_platforms(target):
                r = subprocess.run(target_wheel_argv(house, f"{name}=={version}", target), capture_output=True,
                                   text=True, check=False)
                if r.returncode == 0:
                    continue
        with tempfile.TemporaryDirectory(prefix="edgectl-sdist-") as tmp:
            _pip(sdist_fetch_argv(name, version, Path(tmp)), f"downloading the source of {name}=={version}")
            (sdist,) = [p for p in Path(tmp).iterdir() if p.name.endswith((".tar.gz", ".zip"))]
            backends.update(build_requires(sdist_pyproject(sdist)))
            shutil.copy2(sdist, house / sdist.name)
    for backend in sorted(backends | {"wheel"} if backends else set()):
        # a backend that is a program (cmake, ninja, maturin) has no pure wheel: the device must have it, and a
        # build that misses it says so (build_failure names it)
        subprocess.run(backend_argv(house, [backend], target), capture_output=True, text=True, check=False)
    if progress:
        progress(stage, len(dists), len(dists))
    marker.touch()
    return house


def sources_of(house: Path) -> list[str]:
    """The source distributions in a house (what the device compiles)."""
    return sorted(p.name for p in house.iterdir() if p.name.endswith((".tar.gz", ".zip")))


def remote_file(folder: str, path: Path) -> str:
    return posixpath.join(folder, path.name)


# -- the device ---------------------------------------------------------------------------------------------------
def install_on_device(t, target: TargetPlatform, *, python: str, venv_python: str, venv_argv: list[str],
                      wheels: str, extras: list[str], progress: StageProgress | None = None) -> None:
    """Push the source house for ``target`` to ``wheels`` on the device behind transport ``t`` (what it has already,
    by name and size, is not pushed again), create the venv (``venv_argv``) and build + install there with the
    device's pip. A failed build raises :func:`build_failure` with the device's output."""
    spec = t.spec
    house = build_source_house(extras, target, spec.from_source, progress)
    files = sorted(p for p in house.iterdir() if p.is_file() and not p.name.startswith("."))
    t.check(["mkdir", "-p", wheels], what="creating the agent's folders")
    listing = t.check([python, "-c", LIST_SCRIPT, wheels])
    present = dict(line.rsplit(" ", 1) for line in listing.splitlines() if " " in line)
    stage = f"pushing the sources to {t.name}"
    for done, path in enumerate(files):
        if progress:
            progress(stage, done, len(files))
        if present.get(path.name) != str(path.stat().st_size) or path.name.startswith("edgectl_agent-"):
            t.put_file(path, remote_file(wheels, path))
    if progress:
        progress(stage, len(files), len(files))
    if t.run([venv_python, "-c", "pass"]).returncode != 0:
        t.check(venv_argv, what="creating the agent's venv", timeout=300)
    building = f"building {len(sources_of(house))} source packages on {t.name}"
    if progress:
        progress(building, 0, 1)
    r = t.run(device_install_argv(venv_python, wheels, extras), timeout=DEVICE_BUILD_TIMEOUT_S)
    if r.returncode != 0:
        raise build_failure(t.name, target, (r.stdout or "") + (r.stderr or ""), wheels)
    if progress:
        progress(building, 1, 1)


LIST_SCRIPT = ("import os, sys\n"
               "for e in os.scandir(sys.argv[1]):\n"
               "    print(e.name, e.stat().st_size)\n")

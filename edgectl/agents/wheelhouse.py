"""The wheelhouse: every wheel a device needs to install the agent offline, built on this machine per target platform.

For a target like this machine (same OS, architecture, libc family and Python) ``pip wheel`` builds/collects them
here. For another platform (an aarch64 Pi from an x86-64 controller, another Python minor):

- the edgectl-agent wheel itself is pure Python, built here;
- every binary dependency is downloaded for the target with pip's ``--platform/--python-version/--implementation
  cp/--abi/--only-binary=:all:``, at the versions installed here (:func:`installed_constraints`);
- llama-cpp-python ships only as source. It is ctypes-based (pure Python + shared libraries), so its vendored
  llama.cpp is cross-compiled with Debian's ``gcc-aarch64-linux-gnu`` (baseline armv8-a, no host-CPU tuning,
  ``$ORIGIN`` rpath, no OpenMP runtime to ship) and the wheel retagged ``py3-none-linux_<arch>``: about 4 minutes
  on 2 cores, where building inside qemu emulation takes ~10x that. It is cached by (version, target, build flags)
  in edgectl's cache (``EDGECTL_CROSS_CACHE`` overrides) so that every later wheelhouse of that target copies it.

Every wheelhouse is keyed by the agent version and :attr:`TargetPlatform.tag`; a second device of the same
platform pushes from it with no download and no build. It is complete for a set of extras when its marker
(:func:`completeness_marker`) is there: the marker's name carries the extras and a hash of what the agent requires
for them, so a changed requirement list (a new dependency, a new extra's packages) fills the cached wheelhouse up.

Every device gets, beyond its runtimes' extras, the :func:`base_extras` of its platform: ``fast-http`` (httptools
and uvloop, which uvicorn then uses) where the package index has binary wheels of both for it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Iterable

from edgectl_agent import __version__ as AGENT_VERSION
from edgectl_agent.runtimes.catalog import RUNTIME_EXTRAS

from edgectl.agents.platform import TargetPlatform, local_platform
from edgectl.errors import TransportError
from edgectl.paths import edgectl_home, store_dir
from edgectl.progress import StageProgress

# apply bootstraps devices in parallel: one wheelhouse build at a time here
_WHEELHOUSE_LOCK = threading.Lock()
_AGENT_WHEEL_BUILT: set[str] = set()  # wheelhouses whose edgectl-agent wheel this process built from the checkout
CROSS_BUILD_TIMEOUT_S = 3600.0
# Distributions the index has only as source, built here for the target: name -> how (see cross_build_env).
SOURCE_ONLY = ("llama-cpp-python",)
# The cross toolchains (Debian packages) per target architecture: compiler prefix and the -march baseline.
CROSS_TOOLCHAINS = {"aarch64": ("aarch64-linux-gnu", "armv8-a"), "x86_64": ("x86_64-linux-gnu", "x86-64")}
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")
SIGN_EXTRA = "sign"  # the edgectl-agent extra that verifies signatures (cryptography)
# The agent's faster HTTP server (httptools + uvloop): binary wheels on PyPI for glibc Linux (manylinux2014 and
# newer) on these architectures and these CPython minors (httptools 0.9 and uvloop 0.23 ship cp38-cp315). Elsewhere
# (Android's bionic, musl, macOS, 32-bit ARM, a newer Python) devices go without: uvicorn falls back to h11/asyncio.
FAST_HTTP_EXTRA = "fast-http"
FAST_HTTP_PACKAGES = ("httptools", "uvloop")
FAST_HTTP_ARCHES = ("x86_64", "aarch64")
FAST_HTTP_PYTHONS = ((3, 8), (3, 15))  # oldest, newest minor with wheels of both


def extras_for(runtimes: Iterable[str]) -> list[str]:
    """The edgectl-agent extras that install the libraries of agent ``runtimes``."""
    out: set[str] = set()
    for r in runtimes:
        if r not in RUNTIME_EXTRAS:
            raise TransportError(f"no edgectl-agent extra is known for runtime '{r}', so it cannot be installed on "
                                 "a device", hint="add its entry (with its extra) to the agent's runtime catalog, "
                                 "edgectl_agent.runtimes.catalog, which RUNTIME_EXTRAS derives from, and the "
                                 "agent's pyproject extras, or install the agent on the device by hand")
        if RUNTIME_EXTRAS[r]:
            out.add(RUNTIME_EXTRAS[r])
    return sorted(out)


def device_extras(runtimes: Iterable[str], target: TargetPlatform, *, sign: bool = False) -> list[str]:
    """Every edgectl-agent extra a device of ``target`` gets: its runtimes', its platform's base extras (fast-http
    where wheels exist) and, for a pinned agent, the one that verifies signatures."""
    return sorted(set(extras_for(runtimes)) | set(base_extras(target)) | ({SIGN_EXTRA} if sign else set()))


def base_extras(target: TargetPlatform) -> list[str]:
    """The edgectl-agent extras every install on ``target`` gets beyond its runtimes': ``fast-http`` where the
    index has binary wheels of httptools and uvloop for it (CPython on glibc Linux >= 2.17, x86-64 or arm64)."""
    minor = tuple(int(p) for p in target.python.split(".")[:2] if p.isdigit())
    wheels = (target.os == "linux" and target.libc == "glibc" and target.arch in FAST_HTTP_ARCHES
              and target.implementation == "cpython" and FAST_HTTP_PYTHONS[0] <= minor <= FAST_HTTP_PYTHONS[1]
              and any(tag.startswith("manylinux") for tag in target.pip_platforms()))
    return [FAST_HTTP_EXTRA] if wheels else []


def requirement(source: str, extras: list[str]) -> str:
    return f"{source}[{','.join(extras)}]" if extras else source


def wheel_argv(wheelhouse: Path, source: str, extras: list[str], *, no_deps: bool = False,
               constraints: Path | None = None) -> list[str]:
    """pip wheel on this machine: the agent and (unless no_deps) everything it and its extras need, at the versions
    installed here when ``constraints`` lists them (so a locally built llama-cpp-python wheel is reused)."""
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--wheel-dir",
            str(wheelhouse), "--find-links", str(wheelhouse)]
    argv += ["--constraint", str(constraints)] if constraints else []
    return argv + (["--no-deps"] if no_deps else []) + [requirement(source, extras)]


def download_argv(wheelhouse: Path, requirement_text: str, target: TargetPlatform, constraints: Path) -> list[str]:
    """pip download of binary wheels for ``target`` (never this machine's): every platform tag the target accepts,
    its Python and ABI, the versions pinned here; ``--find-links`` the wheelhouse, where the cross-built and the
    agent's own wheels already are."""
    return binary_download_argv(wheelhouse, target) + ["--constraint", str(constraints), requirement_text]


def binary_download_argv(wheelhouse: Path, target: TargetPlatform) -> list[str]:
    """pip download into ``wheelhouse`` of binary wheels only, for ``target``'s platform tags, Python and ABI; the
    requirements follow."""
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest",
            str(wheelhouse), "--find-links", str(wheelhouse), "--only-binary=:all:",
            "--python-version", target.python_nodot, "--implementation", "cp",
            "--abi", f"cp{target.python_nodot}", "--abi", "abi3", "--abi", "none"]
    for tag in target.pip_platforms():
        argv += ["--platform", tag]
    return argv


def installed_constraints(exclude: tuple[str, ...] = ()) -> str:
    """``name==version`` for every distribution in this environment except edgectl's own (and ``exclude``): the
    device gets the versions edgectl was tested with here."""
    from importlib import metadata

    skip = {"edgectl", "edgectl-agent", *(e.lower() for e in exclude)}
    pins: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower() not in skip:
            pins.setdefault(name.lower(), f"{name}=={dist.version}")
    return "".join(line + "\n" for line in sorted(pins.values()))


def installed_version(distribution: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def agent_source() -> str:
    """The agent project folder when edgectl runs from a source checkout, else the released distribution."""
    import edgectl_agent

    folder = Path(edgectl_agent.__file__).resolve().parents[1]
    return str(folder) if (folder / "pyproject.toml").is_file() else f"edgectl-agent=={AGENT_VERSION}"


def agent_requirements(extras: list[str]) -> list[str]:
    """What the agent with ``extras`` requires, as written where edgectl takes the agent from: a source checkout's
    agent/pyproject.toml, else the installed edgectl-agent distribution's metadata (Requires-Dist)."""
    source = Path(agent_source())
    if source.is_dir():
        import tomllib

        project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
        optional = project.get("optional-dependencies", {})
        return sorted([*project.get("dependencies", []), *(r for e in extras for r in optional.get(e, []))])
    from importlib import metadata

    wanted = []
    for req in metadata.requires("edgectl-agent") or []:
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if extra is None or extra.group(1) in extras:
            wanted.append(req)
    return sorted(wanted)


def completeness_marker(house: Path, extras: list[str]) -> Path:
    """The file that says ``house`` holds every wheel of the agent with ``extras``: keyed by the extras and a hash
    of their requirements, so a wheelhouse filled before a requirement changed is filled up again, not trusted."""
    digest = hashlib.sha256("\n".join(agent_requirements(extras)).encode()).hexdigest()[:12]
    return house / f".complete-{'-'.join(extras) or 'base'}-{digest}"


def wheels_base() -> Path:
    env = os.environ.get("EDGECTL_WHEELHOUSE")
    return Path(env).expanduser() if env else edgectl_home() / "wheels"


def wheelhouse_dir(target: TargetPlatform | None = None) -> Path:
    """The wheelhouse of ``target`` (default: this machine): keyed by agent version and target platform."""
    return wheels_base() / f"agent-{AGENT_VERSION}-{(target or local_platform()).tag}"


# -- cross-building a source-only runtime -------------------------------------------------------------------------
def cross_cmake_args(target: TargetPlatform) -> list[str]:
    """CMAKE_ARGS that build llama.cpp's shared libraries for ``target`` with Debian's cross toolchain: a baseline
    CPU (no host tuning), libraries that find each other through ``$ORIGIN``, no OpenMP (libgomp is not on a
    minimal device), no llava/mtmd library (edgectl serves text models)."""
    prefix, march = CROSS_TOOLCHAINS[target.arch]
    return ["-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={target.arch}",
            f"-DCMAKE_C_COMPILER={prefix}-gcc", f"-DCMAKE_CXX_COMPILER={prefix}-g++",
            "-DCMAKE_FIND_ROOT_PATH_MODE_PROGRAM=NEVER", "-DGGML_NATIVE=OFF", "-DGGML_OPENMP=OFF",
            f"-DGGML_CPU_ARM_ARCH={march}" if target.arch == "aarch64" else "-DGGML_AVX=OFF",
            "-DCMAKE_INSTALL_RPATH=$ORIGIN", "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON", "-DLLAVA_BUILD=OFF",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=OFF",
            "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF"]


def cross_build_key(distribution: str, version: str, target: TargetPlatform) -> str:
    """(package version, target platform, build flags): a different toolchain flag is a different build."""
    flags = hashlib.sha256(" ".join(cross_cmake_args(target)).encode()).hexdigest()[:12]
    return f"{distribution}-{version}-{target.os}-{target.arch}-{target.libc}-{flags}"


def cross_cache_dir() -> Path:
    """Cross-built wheels: ``EDGECTL_CROSS_CACHE``, else under edgectl's home/cache (like the artifact store)."""
    env = os.environ.get("EDGECTL_CROSS_CACHE")
    if env:
        return Path(env).expanduser()
    return store_dir().parent / "cross"


def sdist_argv(distribution: str, version: str, dest: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-binary",
            ":all:", "--no-deps", "--dest", str(dest), f"{distribution}=={version}"]


def cross_wheel_argv(sdist: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "--verbose",
            "--wheel-dir", str(out), str(sdist)]


def retag_wheel(wheel: Path, platform_tag: str, dest: Path) -> Path:
    """Copy ``wheel`` into ``dest`` retagged for ``platform_tag`` (its WHEEL file's Tag lines, its name and its
    RECORD hash): what ``wheel tags --platform-tag`` does, without needing that package."""
    name, version, python_tag, abi_tag, _ = wheel.name[:-len(".whl")].split("-")
    new = dest / f"{name}-{version}-{python_tag}-{abi_tag}-{platform_tag}.whl"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(new, "w", zipfile.ZIP_DEFLATED) as out:
        wheel_meta = next(n for n in src.namelist() if n.endswith(".dist-info/WHEEL"))
        record = wheel_meta.rsplit("/", 1)[0] + "/RECORD"
        lines = [ln for ln in src.read(wheel_meta).decode().splitlines() if not ln.startswith("Tag:")]
        lines += [f"Tag: {py}-{abi_tag}-{platform_tag}" for py in python_tag.split(".")]
        meta = ("\n".join(lines) + "\n").encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(meta).digest()).rstrip(b"=").decode()
        for info in src.infolist():
            data = src.read(info)
            if info.filename == wheel_meta:
                data = meta
            elif info.filename == record:
                data = "".join(f"{wheel_meta},sha256={digest},{len(meta)}\n" if row.startswith(wheel_meta + ",")
                               else row + "\n" for row in data.decode().splitlines()).encode()
            out.writestr(info, data)
    return new


def cross_build(distribution: str, version: str, target: TargetPlatform,
                progress: StageProgress | None = None) -> Path:
    """The wheel of source-only ``distribution`` for ``target``, cross-compiled here once and cached."""
    cache = cross_cache_dir() / cross_build_key(distribution, version, target)
    found = sorted(cache.glob("*.whl"))
    if found:
        return found[0]
    if target.arch not in CROSS_TOOLCHAINS or target.os != "linux" or target.libc != "glibc":
        raise TransportError(f"no cross toolchain here builds {distribution} for {target}",
                             hint=f"edgectl cross-builds for linux glibc on {', '.join(CROSS_TOOLCHAINS)}; install "
                                  f"{distribution} on the device yourself, or choose another runtime")
    prefix, _ = CROSS_TOOLCHAINS[target.arch]
    if not shutil.which(f"{prefix}-g++"):
        raise TransportError(f"building {distribution} for {target} needs the cross compiler {prefix}-g++, which "
                             "is not on this machine",
                             hint=f"apt-get install gcc-{prefix} g++-{prefix} (Debian/Ubuntu), then apply again")
    with tempfile.TemporaryDirectory(prefix="edgectl-cross-") as tmp:
        work = Path(tmp)
        r = subprocess.run(sdist_argv(distribution, version, work), capture_output=True, text=True, check=False)
        sdists = sorted(work.glob("*.tar.gz"))
        if r.returncode != 0 or not sdists:
            raise TransportError(f"downloading the source of {distribution}=={version} failed:\n"
                                 f"{r.stderr.strip()[-2000:]}",
                                 hint="this machine needs the package index once to build it; later bootstraps "
                                      "reuse the cached build")
        env = dict(os.environ, CMAKE_ARGS=" ".join(cross_cmake_args(target)), FORCE_CMAKE="1",
                   CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1)))
        out = work / "out"
        stage = f"cross-compiling {distribution} {version} for {target.arch}"
        with subprocess.Popen(["nice", "-n", "10", *cross_wheel_argv(sdists[0], out)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) as proc:
            tail: list[str] = []
            for line in proc.stdout:  # ninja's "[n/m]" lines are the build's progress
                tail = (tail + [line])[-40:]
                m = _NINJA_STEP.match(line.strip())
                if m and progress:
                    progress(stage, int(m.group(1)), int(m.group(2)))
            proc.wait(timeout=CROSS_BUILD_TIMEOUT_S)
        built = sorted(out.glob("*.whl"))
        if proc.returncode != 0 or not built:
            raise TransportError(f"cross-compiling {distribution}=={version} for {target} failed:\n{''.join(tail)}",
                                 hint=f"check the cross toolchain ({prefix}-gcc) and CMake; or install "
                                      f"{distribution} on the device yourself")
        cache.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=cache))
        wheel = retag_wheel(built[0], f"linux_{target.arch}", partial)
        final = cache / wheel.name
        wheel.rename(final)
        shutil.rmtree(partial, ignore_errors=True)
        return final


# -- the wheelhouse -----------------------------------------------------------------------------------------------
def build_wheelhouse(extras: list[str], target: TargetPlatform | None = None,
                     progress: StageProgress | None = None) -> Path:
    """Wheels for the agent and its extras, for ``target`` (default: this machine's Python and platform);
    dependencies are cached, the agent's own wheel is rebuilt from a source checkout once per process (it is
    small and may have changed)."""
    with _WHEELHOUSE_LOCK:
        if target is None or target.same_binaries(local_platform()):
            return _build_local(extras)
        return _build_for(extras, target, progress)


def _fresh_agent_wheel(house: Path, source: str) -> list[list[str]]:
    if Path(source).is_dir() and str(house) not in _AGENT_WHEEL_BUILT:
        # once per process: devices bootstrapped in parallel push from this folder while others ask for it
        for old in house.glob("edgectl_agent-*.whl"):
            old.unlink()
        return [wheel_argv(house, source, [], no_deps=True)]
    return []


def _run_pip(argv: list[str], house: Path, what: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise TransportError(f"{what} on this machine failed:\n{r.stderr.strip()[-2000:]}",
                             hint="pip needs PyPI (or a configured index) once to fill the wheelhouse "
                                  f"{house}; later bootstraps reuse it offline")


def _build_local(extras: list[str]) -> Path:
    house = wheelhouse_dir()
    house.mkdir(parents=True, exist_ok=True)
    source = agent_source()
    marker = completeness_marker(house, extras)
    steps = _fresh_agent_wheel(house, source)
    if not marker.exists():
        constraints = house / "constraints.txt"
        constraints.write_text(installed_constraints())
        steps.append(wheel_argv(house, source, extras, constraints=constraints))
    for argv in steps:
        _run_pip(argv, house, "building the agent's wheels")
    marker.touch()
    _AGENT_WHEEL_BUILT.add(str(house))
    return house


def _build_for(extras: list[str], target: TargetPlatform, progress: StageProgress | None) -> Path:
    if not target.pip_platforms():
        raise TransportError(f"the package index has no wheels for {target}, so edgectl cannot build the agent's "
                             "wheelhouse for it here",
                             hint="install edgectl-agent on the device from source (pip install edgectl-agent[...]) "
                                  "into transport.venv, or use a glibc or musl Linux device")
    house = wheelhouse_dir(target)
    house.mkdir(parents=True, exist_ok=True)
    source = agent_source()
    for argv in _fresh_agent_wheel(house, source):
        _run_pip(argv, house, "building the edgectl-agent wheel")
    _AGENT_WHEEL_BUILT.add(str(house))
    marker = completeness_marker(house, extras)
    if marker.exists():
        return house
    agent_wheel = sorted(house.glob(f"edgectl_agent-{AGENT_VERSION}-*.whl"))
    if not agent_wheel:  # a released edgectl: the agent's wheel from the index (it is pure Python)
        _run_pip(download_argv(house, source, target, Path(os.devnull)), house, "downloading edgectl-agent")
        agent_wheel = sorted(house.glob(f"edgectl_agent-{AGENT_VERSION}-*.whl"))
    requirement_text = requirement(str(agent_wheel[0]), extras)
    needed = _source_only_needed(requirement_text)
    local = local_platform()
    for dist in needed:
        version = installed_version(dist)
        if version is None:
            raise TransportError(f"{dist} is not installed on this machine, so edgectl does not know which version "
                                 f"to build for {target}",
                                 hint=f"pip install 'edgectl-agent[{','.join(extras)}]' here first (setup.sh does)")
        if (target.os, target.arch, target.libc) == (local.os, local.arch, local.libc):
            # only the Python differs: this machine's wheel of a ctypes library (py3-none) fits (pip's cache has it)
            _run_pip(wheel_argv(house, f"{dist}=={version}", [], no_deps=True), house, f"building {dist}")
            continue
        wheel = cross_build(dist, version, target, progress)
        shutil.copy2(wheel, house / wheel.name)
    constraints = house / "constraints.txt"
    constraints.write_text(installed_constraints())
    _run_pip(download_argv(house, requirement_text, target, constraints), house,
             f"downloading the agent's wheels for {target}")
    marker.touch()
    return house


def _source_only_needed(requirement_text: str) -> list[str]:
    """The source-only distributions among what the agent wheel's extras require (read from its metadata)."""
    import email

    wheel_path, _, extras_text = requirement_text.partition("[")
    extras = set(extras_text.rstrip("]").split(",")) - {""}
    with zipfile.ZipFile(wheel_path) as z:
        meta = email.message_from_bytes(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))))
    needed = set()
    for req in meta.get_all("Requires-Dist") or []:
        name = re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0].lower().replace("_", "-")
        marker_extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if name in SOURCE_ONLY and (marker_extra is None or marker_extra.group(1) in extras):
            needed.add(name)
    return sorted(needed)

"""Venv installer: install and start the agent on an SSH device that lacks it, offline on the device's side.

edgectl reads the device's platform first (edgectl.agents.platform: OS, architecture, libc, Python), builds the
edgectl-agent wheel plus the wheels of the runtime extras the plan needs (and ``fast-http`` where the platform has
its wheels: wheelhouse.base_extras) for that platform on this machine (cached
in a wheelhouse per platform: edgectl.agents.wheelhouse, cross-compiling what ships only as source), pushes them,
creates a venv on the device and installs with ``pip --no-index``; then starts the agent as transport.service says:
a systemd system unit (SSH user root), a systemd user unit with linger enabled (so
it starts at boot, not at the user's first login), or a detached process (nohup); 'auto' picks the first the device
supports.
When the fleet signs deployments, the agent is installed with the ``sign`` extra and pinned to the fleet's public key
like a local one: ``verify-key.pub`` in its root, written at the first bootstrap only (trust on first use, never
overwritten), and every start there passes ``--verify-key-file``.
Every remote command is an argv built by a pure function here (the Ansible engine reuses them); the transport
quotes it.
"""

from __future__ import annotations

import posixpath
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from edgectl_agent import __version__ as AGENT_VERSION
from edgectl_agent.runtimes.catalog import RUNTIME_EXTRAS, RUNTIME_PACKAGES  # noqa: F401 (re-exported)

from edgectl.agents import ondevice, service_units
from edgectl.agents.installer import VERIFY_KEY_FILE, Installer, pin_verify_key, pinned_path_argv
from edgectl.agents.platform import (PLATFORM_SCRIPT, UNAME_SCRIPT, PlatformProbeError, TargetPlatform, parse_platform,
                                     parse_uname)
from edgectl.agents.wheelhouse import (  # noqa: F401 (re-exported: the Ansible engine and tests use them from here)
    FAST_HTTP_EXTRA, FAST_HTTP_PACKAGES, SIGN_EXTRA, agent_source, base_extras, build_wheelhouse, device_extras,
    extras_for, installed_constraints, requirement, wheel_argv, wheelhouse_dir)
from edgectl.errors import EdgectlError, TransportError
from edgectl.progress import StageProgress
from edgectl.transport.ssh import SshTransport, remote_path

# Agent runtime -> the edgectl-agent extra that installs its library (None: nothing beyond the agent itself).
UNIT_NAME = "edgectl-agent.service"
SYSTEM_UNIT_DIR = "/etc/systemd/system"
USER_UNIT_DIR = ".config/systemd/user"  # under the SSH user's home
# One command tells what the device offers: the SSH user's uid and name, and the state of systemd for the system
# and for that user ("running"/"degraded" = usable; empty when systemctl is missing).
SERVICE_PROBE_SCRIPT = ('echo "uid=$(id -u)"; echo "user=$(id -un)"; '
                        'echo "system=$(systemctl is-system-running 2>/dev/null)"; '
                        'echo "session=$(systemctl --user is-system-running 2>/dev/null)"; '
                        'echo "kernel=$(uname -s)"; echo "os=$(uname -o 2>/dev/null)"; echo "prefix=$PREFIX"')
USABLE_SYSTEMD = ("running", "degraded")
INSTALL_TIMEOUT_S = 900.0
# apply bootstraps devices in parallel: one install at a time into a venv that several devices share (transport.venv)
_VENV_LOCKS: dict[str, threading.Lock] = {}
_VENV_LOCKS_LOCK = threading.Lock()

SIGN_PACKAGE = "cryptography"
# sh scripts take their values as positional parameters ("$1"...), never spliced into the script text; START_SCRIPT
# passes what follows the first five ("$@" after shift: e.g. --verify-key-file PATH) to the agent as they are.
START_SCRIPT = ('py=$1 root=$2 port=$3 log=$4 pid=$5; shift 5; '
                'nohup setsid "$py" -m edgectl_agent serve --root "$root" --host 127.0.0.1 --port "$port" "$@" '
                '>>"$log" 2>&1 </dev/null & echo $! >"$pid"')
# The user's $HOME, then the agent token (one line) at "$1", relative to $HOME unless absolute; values only as
# parameters, read with the shell's own `read` (no process per device for it).
TOKEN_SCRIPT = ('printf "%s\\n" "$HOME"; case "$1" in /*) f=$1 ;; *) f=$HOME/$1 ;; esac; '
                'IFS= read -r t <"$f"; [ -n "$t" ] && printf "%s\\n" "$t"')
ALIVE_SCRIPT = 'kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null'
STOP_SCRIPT = ('pid=$(cat "$1" 2>/dev/null) || exit 0; kill "$pid" 2>/dev/null || exit 0; i=0; '
               'while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; '
               'kill -9 "$pid" 2>/dev/null; rm -f "$1"')
INSTALLED_SCRIPT = ("import sys, importlib.metadata as m\n"
                    "print(m.version('edgectl-agent'))\n"
                    "for d in sys.argv[1:]: m.version(d)\n")
LIST_SCRIPT = ("import os, sys\n"
               "for e in os.scandir(sys.argv[1]):\n"
               "    print(e.name, e.stat().st_size)\n")


@dataclass(frozen=True)
class RemoteLayout:
    """Where the agent lives on the device (absolute paths under transport.agent_dir)."""

    base: str
    venv_dir: str | None = None  # transport.venv: a venv elsewhere (shared, or baked into the image)

    def _p(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    @property
    def venv(self) -> str:
        return self.venv_dir or self._p("venv")

    @property
    def python(self) -> str:
        return posixpath.join(self.venv, "bin", "python")

    @property
    def wheels(self) -> str:
        return self._p("wheels")

    @property
    def root(self) -> str:
        return self._p("root")

    @property
    def verify_key(self) -> str:
        """The pinned public key of the fleet's signing key (written once, at the first bootstrap)."""
        return self._p("root", VERIFY_KEY_FILE)

    @property
    def token(self) -> str:
        return self._p("root", "token")

    @property
    def log(self) -> str:
        return self._p("agent.log")

    @property
    def pid(self) -> str:
        return self._p("agent.pid")


# -- pure argv builders (unit-tested) -----------------------------------------------------------------------------
def venv_argv(python: str, layout: RemoteLayout) -> list[str]:
    return [python, "-m", "venv", layout.venv]


def install_argv(layout: RemoteLayout, extras: list[str]) -> list[str]:
    """pip on the device, offline: only the pushed wheels."""
    return [layout.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
            "--find-links", layout.wheels, requirement("edgectl-agent", extras) + f"=={AGENT_VERSION}"]


def reinstall_argv(layout: RemoteLayout) -> list[str]:
    """The agent's own wheel keeps its version while its code changes in a checkout: reinstall it, not its deps."""
    return [layout.python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-index",
            "--no-deps", "--force-reinstall", "--find-links", layout.wheels, f"edgectl-agent=={AGENT_VERSION}"]


def installed_argv(layout: RemoteLayout, runtimes: Iterable[str], *, sign: bool = False,
                   fast_http: bool = False) -> list[str]:
    """Prints the agent's version and fails unless every package the runtimes (and signing, and fast-http) need is
    there."""
    packages = {RUNTIME_PACKAGES[r] for r in runtimes if r in RUNTIME_PACKAGES} | ({SIGN_PACKAGE} if sign else set())
    packages |= set(FAST_HTTP_PACKAGES) if fast_http else set()
    return [layout.python, "-c", INSTALLED_SCRIPT, *sorted(packages)]


def serve_options(verify_key_file: str | None) -> list[str]:
    """Agent options beyond root, host and port, shared by the detached start and the systemd unit."""
    return ["--verify-key-file", verify_key_file] if verify_key_file else []


def start_argv(layout: RemoteLayout, port: int, *, verify_key_file: str | None = None) -> list[str]:
    return ["sh", "-c", START_SCRIPT, "edgectl-agent-start", layout.python, layout.root, str(port), layout.log,
            layout.pid, *serve_options(verify_key_file)]


def pinned_argv(layout: RemoteLayout) -> list[str]:
    return pinned_path_argv(layout.verify_key)


_UNIT_SAFE_ARG = re.compile(r"^[A-Za-z0-9_@+=:,./-]+$")


def unit_arg(arg: str) -> str:
    """One ExecStart argument as systemd reads it back: quoted where needed, with '%' (specifiers) and '$'
    (variables) escaped."""
    if _UNIT_SAFE_ARG.match(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$") + '"'


def unit_text(layout: RemoteLayout, port: int, *, system: bool = False, verify_key_file: str | None = None) -> str:
    """The systemd unit that keeps the agent running (restarted on failure, started at boot): a system unit (in
    /etc/systemd/system, wanted by multi-user.target) or a user unit (wanted by default.target; boot needs linger).
    ``verify_key_file``: the agent verifies deployments with that public key."""
    argv = [layout.python, "-m", "edgectl_agent", "serve", "--root", layout.root, "--host", "127.0.0.1",
            "--port", str(port), *serve_options(verify_key_file)]
    return (
        "[Unit]\n"
        "Description=edgectl agent (serves quantized models on 127.0.0.1)\n"
        "After=network.target\n\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={' '.join(unit_arg(a) for a in argv)}\n"
        "Restart=on-failure\n"
        "RestartSec=2\n"
        # exit code 2 = bad invocation (port in use): restarting will not fix it
        "RestartPreventExitStatus=2\n"
        "TimeoutStopSec=30\n"
        "UMask=0077\n"
        + ("NoNewPrivileges=yes\nPrivateTmp=yes\n" if system else "")
        + "\n[Install]\n"
        f"WantedBy={'multi-user.target' if system else 'default.target'}\n")


@dataclass(frozen=True)
class ServiceProbe:
    """What SERVICE_PROBE_SCRIPT found on the device."""

    uid: int | None
    user: str
    system: str  # `systemctl is-system-running` ("" without systemctl)
    session: str  # the same for the SSH user's own systemd
    kernel: str = ""  # uname -s: Linux, Darwin
    os: str = ""  # GNU uname -o: GNU/Linux, Android (Termux); "" on macOS
    prefix: str = ""  # $PREFIX: Termux's /data/data/com.termux/files/usr

    @property
    def manager(self) -> str | None:
        """The service manager of an OS without systemd that edgectl supports: launchd (macOS), termux-services."""
        if self.kernel == "Darwin":
            return "launchd"
        if self.os == "Android" and self.prefix:
            return "termux"
        return None


def parse_service_probe(text: str) -> ServiceProbe:
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    uid = fields.get("uid", "").strip()
    return ServiceProbe(uid=int(uid) if uid.isdigit() else None, user=fields.get("user", "").strip(),
                        system=fields.get("system", "").strip(), session=fields.get("session", "").strip(),
                        kernel=fields.get("kernel", "").strip(), os=fields.get("os", "").strip(),
                        prefix=fields.get("prefix", "").strip())


def service_mode(requested: str, probe: ServiceProbe, *, device: str) -> str:
    """'system', 'user' or 'none' (a detached process) for transport.service ``requested`` on this device.
    'auto': a system unit when the SSH user is root and the device runs systemd, else a user unit when the user's
    systemd runs, else detached. An explicit choice the device cannot honour is an error, never a silent fallback."""
    if probe.manager is not None and requested != "none":  # macOS, Termux: no systemd, their own manager
        if requested != "auto":
            raise TransportError(f"device '{device}': transport.service is '{requested}', but the device runs "
                                 f"{'macOS' if probe.manager == 'launchd' else 'Android (Termux)'}, which has no "
                                 "systemd", hint=f"use service: auto (a {probe.manager} service) or service: none")
        return probe.manager
    root = probe.uid == 0
    system_ok = probe.system in USABLE_SYSTEMD
    user_ok = probe.session in USABLE_SYSTEMD
    if requested == "auto":
        return "system" if root and system_ok else "user" if user_ok else "none"
    if requested == "system":
        if not root:
            raise TransportError(f"device '{device}': transport.service is 'system', but the SSH user "
                                 f"'{probe.user or '?'}' is not root, so it cannot install a system unit",
                                 hint="connect as root (transport.user: root), or use service: user (a user unit "
                                      "with linger) or service: none")
        if not system_ok:
            raise TransportError(f"device '{device}': transport.service is 'system', but systemd does not run "
                                 f"there (systemctl is-system-running: '{probe.system or 'no systemctl'}')",
                                 hint="use service: none (a detached agent process) on devices without systemd")
    if requested == "user" and not user_ok:
        raise TransportError(f"device '{device}': transport.service is 'user', but the SSH user's systemd does not "
                             f"run there (systemctl --user is-system-running: '{probe.session or 'no systemctl'}')",
                             hint="use service: system (SSH user root) or service: none (a detached process)")
    return requested


def systemctl_argv(mode: str, *args: str) -> list[str]:
    return ["systemctl", *(["--user"] if mode == "user" else []), *args]


def unit_path(mode: str, home: str) -> str:
    return posixpath.join(SYSTEM_UNIT_DIR if mode == "system" else posixpath.join(home, USER_UNIT_DIR), UNIT_NAME)


def linger_argv(user: str) -> list[str]:
    """Let the user's systemd (and so the agent's user unit) start at boot and survive the SSH session."""
    return ["loginctl", "enable-linger", user]


def linger_query_argv(user: str) -> list[str]:
    return ["loginctl", "show-user", user, "--property=Linger", "--value"]


# -- the device ---------------------------------------------------------------------------------------------------
class VenvInstaller(Installer):
    """The agent in a venv on an SSH device (transport.agent_dir, or a shared transport.venv), run as
    transport.service says."""

    transport: SshTransport

    def __init__(self, transport: SshTransport, *, verify_key: bytes | None = None) -> None:
        super().__init__(transport, verify_key=verify_key)
        self.service_mode: str | None = None  # transport.service as resolved on the device
        self.service_user = ""
        self.service_prefix = ""  # Termux's $PREFIX
        self._pinned: str | None = None
        self._token_error = ""

    @property
    def spec(self):
        return self.transport.spec

    @property
    def layout(self) -> RemoteLayout:
        t = self.transport
        venv = remote_path(self.spec.venv, t.home) if self.spec.venv else None
        return RemoteLayout(remote_path(self.spec.agent_dir, t.home), venv)

    def token(self) -> str | None:
        """The agent's token, or None where there is none (yet). One session reads it and $HOME: each command is
        a round trip and a process on the device, and a fleet-wide no-op apply runs this once per device. Host key
        and authentication problems surface here, before anything else runs."""
        token = posixpath.join(self.spec.agent_dir, "root", "token")
        r = self.transport.run(["sh", "-c", TOKEN_SCRIPT, "edgectl-token",
                                token[2:] if token.startswith("~/") else token])
        home, _, token_text = r.stdout.partition("\n")
        self.transport.remember_home(home.strip())
        self._token_error = r.stderr.strip()
        return token_text.strip() if r.returncode == 0 and token_text.strip() else None

    def not_ours(self, health: dict) -> EdgectlError:
        return TransportError(f"device '{self.name}': cannot read the agent token {self.layout.token}: "
                              f"{self._token_error}",
                              hint="an agent answers on the device's port but not from transport.agent_dir; "
                                   "stop it or point agent_dir at its root's parent")

    def install(self, runtimes: list[str]) -> None:
        layout = self.layout
        self.transport.check(["mkdir", "-p", layout.root], what="creating the agent's folders")
        self._pinned = pin_verify_key(self.transport, layout.verify_key, self.verify_key)
        ensure_installed(self.transport, layout, runtimes, sign=self._pinned is not None, progress=self.progress)

    def start(self) -> None:
        """Start the agent as transport.service says: a systemd unit (enabled, so it starts at boot; linger for a
        user unit) or a detached process; pinned: it verifies deployments with the pinned public key."""
        t, layout = self.transport, self.layout
        # its folder may not exist yet when the venv was found ready elsewhere (transport.venv)
        t.check(["mkdir", "-p", layout.root], what="creating the agent's folders")
        mode = self.resolve_service()
        if mode == "none":
            t.check(start_argv(layout, t.port, verify_key_file=self._pinned), what="starting the agent")
            return
        if mode in ("launchd", "termux"):
            return self._start_service(mode)
        if mode == "user" and t.run(linger_query_argv(self.service_user)).stdout.strip() != "yes":
            t.check(linger_argv(self.service_user), what=f"enabling linger for '{self.service_user}' (so the agent's "
                    "user unit starts at boot; an admin can run `loginctl enable-linger USER`, or use "
                    "transport.service: system)")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            unit = Path(tmp) / UNIT_NAME
            unit.write_text(unit_text(layout, t.port, system=mode == "system", verify_key_file=self._pinned))
            t.put_file(unit, unit_path(mode, t.home))
        t.check(systemctl_argv(mode, "daemon-reload"), what="reloading systemd")
        t.check(systemctl_argv(mode, "enable", "--now", UNIT_NAME), what="starting the agent unit")

    def _start_service(self, mode: str) -> None:
        """macOS: a launchd agent of the SSH user; Termux: a termux-services (runit) service."""
        import tempfile

        t, layout = self.transport, self.layout
        argv = service_units.agent_argv(layout.python, layout.root, t.port, serve_options(self._pinned))
        with tempfile.TemporaryDirectory() as tmp:
            if mode == "launchd":
                plist = service_units.launchd_plist(argv, workdir=layout.base, log=layout.log)
                service_units.check_launchd_plist(plist)
                path = service_units.launchd_plist_path(t.home)
                (Path(tmp) / "agent.plist").write_bytes(plist)
                t.check(["mkdir", "-p", posixpath.dirname(path)], what="creating ~/Library/LaunchAgents")
                t.put_file(Path(tmp) / "agent.plist", path)
                t.check(service_units.launchd_start_argv(path), what="loading the agent's launchd plist")
                return
            folder = service_units.termux_service_dir(self.service_prefix)
            (Path(tmp) / "run").write_text(service_units.termux_run_script(self.service_prefix, argv))
            (Path(tmp) / "log-run").write_text(service_units.termux_log_run_script(self.service_prefix))
            t.check(["mkdir", "-p", posixpath.join(folder, "log")], what="creating the termux-services folder")
            t.put_file(Path(tmp) / "run", posixpath.join(folder, "run"))
            t.put_file(Path(tmp) / "log-run", posixpath.join(folder, "log", "run"))
            t.check(["chmod", "755", posixpath.join(folder, "run"), posixpath.join(folder, "log", "run")],
                    what="making the service's run scripts executable")
        t.check(service_units.termux_enable_argv(), what="enabling the agent's termux-services service (needs "
                "`pkg install termux-services` and one restart of Termux)")

    def running(self) -> bool:
        mode = self.resolve_service()
        if mode == "launchd":
            return self.transport.run(service_units.launchd_running_argv()).returncode == 0
        if mode == "termux":
            return self.transport.run(service_units.termux_running_argv()).returncode == 0
        if mode != "none":
            return self.transport.run(systemctl_argv(mode, "is-active", "--quiet", UNIT_NAME)).returncode == 0
        return self.transport.run(["sh", "-c", ALIVE_SCRIPT, "edgectl-agent-alive", self.layout.pid]).returncode == 0

    def stop(self) -> bool:
        mode = self.resolve_service()
        if mode in ("launchd", "termux"):
            was = self.running()
            self.transport.run(service_units.launchd_stop_argv() if mode == "launchd"
                               else service_units.termux_stop_argv(), timeout=30)
            return was
        if mode != "none":
            return self.transport.run(systemctl_argv(mode, "stop", UNIT_NAME)).returncode == 0
        was = self.running()
        self.transport.run(["sh", "-c", STOP_SCRIPT, "edgectl-agent-stop", self.layout.pid], timeout=30)
        return was

    def start_failed(self) -> EdgectlError:
        r = self.transport.run(["tail", "-n", "20", self.layout.log])
        return TransportError(f"device '{self.name}': the agent did not start:\n{r.stdout.strip() or '(no log)'}",
                              hint=f"see its log on the device: {self.layout.log}")

    def resolve_service(self) -> str:
        """transport.service resolved on this device (probed once per installer)."""
        if self.service_mode is None:
            probe = parse_service_probe(self.transport.check(["sh", "-c", SERVICE_PROBE_SCRIPT],
                                                             what="probing for systemd"))
            self.service_mode = service_mode(self.spec.service, probe, device=self.name)
            self.service_user, self.service_prefix = probe.user, probe.prefix
        return self.service_mode


def ensure_installed(t: SshTransport, layout: RemoteLayout, runtimes: Iterable[str], *, sign: bool = False,
                     progress: StageProgress | None = None) -> None:
    """Install edgectl-agent (this version) with the extras for ``runtimes`` (and ``sign``: the one that verifies
    signatures) into the device's venv, unless the venv already has them."""
    if not t.spec.venv:
        return _ensure_installed(t, layout, runtimes, sign, progress)
    with _VENV_LOCKS_LOCK:
        lock = _VENV_LOCKS.setdefault(layout.venv, threading.Lock())
    with lock:  # the first device installs, the others find it done
        return _ensure_installed(t, layout, runtimes, sign, progress)


def probe_platform(t: SshTransport) -> TargetPlatform:
    """The device's platform (OS, architecture, libc, Python), read with its transport.python before anything is
    built for it."""
    return read_platform(t)[0]


def read_platform(t: SshTransport) -> tuple[TargetPlatform, str]:
    """The device's platform and the probe's output it was read from (the Ansible engine's playbook checks the
    device still prints that before it installs)."""
    python = t.spec.python
    found = t.run([python, "-c", PLATFORM_SCRIPT])
    if found.returncode != 0:
        os_name, arch = parse_uname(t.run(["sh", "-c", UNAME_SCRIPT]).stdout)
        how = {"android": "in Termux: `pkg install python` (and, to build the agent there, `pkg install clang "
                          "cmake ninja rust termux-services`)",
               "darwin": "on the Mac: `xcode-select --install` (it brings python3) or Python from python.org"
               }.get(os_name, "with the device's package manager (Debian: apt-get install python3 python3-venv)")
        raise TransportError(f"device '{t.name}' ({os_name or '?'}/{arch or '?'}): cannot run {python} there: "
                             f"{(found.stderr or found.stdout).strip()}",
                             hint=f"install Python 3.11+ with venv {how}, or set transport.python to it")
    try:
        return parse_platform(found.stdout), found.stdout.strip()
    except PlatformProbeError as e:
        raise TransportError(f"device '{t.name}': {python} did not say which platform it runs on: {e}",
                             hint="set transport.python to a CPython 3 interpreter on the device") from e


def _ensure_installed(t: SshTransport, layout: RemoteLayout, runtimes: Iterable[str], sign: bool,
                      progress: StageProgress | None) -> None:
    runtimes = sorted(set(runtimes))

    def installed(fast_http: bool) -> bool:
        have = t.run(installed_argv(layout, runtimes, sign=sign, fast_http=fast_http))
        return have.returncode == 0 and have.stdout.strip().splitlines()[:1] == [AGENT_VERSION]

    # Most devices get fast-http (glibc Linux): asked first, a device that has everything costs one command and
    # its platform is read only when something is missing (or it is one without fast-http's wheels).
    if installed(fast_http=True):
        return
    python = t.spec.python
    target = probe_platform(t)
    extras = device_extras(runtimes, target, sign=sign)
    if FAST_HTTP_EXTRA not in extras and installed(fast_http=False):
        return
    if t.spec.install == "on-device":  # the device compiles what has no binary for it (edgectl.agents.ondevice)
        ondevice.install_on_device(t, target, python=python, venv_python=layout.python,
                                   venv_argv=venv_argv(python, layout), wheels=layout.wheels, extras=extras,
                                   progress=progress)
        t.check(reinstall_argv(layout), what="installing the edgectl-agent wheel", timeout=INSTALL_TIMEOUT_S)
        return
    house = build_wheelhouse(extras, target, progress)
    t.check(["mkdir", "-p", layout.wheels, layout.root], what="creating the agent's folders")
    present = dict(line.rsplit(" ", 1) for line in t.check([python, "-c", LIST_SCRIPT, layout.wheels]).splitlines()
                   if " " in line)
    for wheel in sorted(house.glob("*.whl")):
        if present.get(wheel.name) != str(wheel.stat().st_size) or wheel.name.startswith("edgectl_agent-"):
            t.put_file(wheel, posixpath.join(layout.wheels, wheel.name))
    if t.run([layout.python, "-c", "pass"]).returncode != 0:
        t.check(venv_argv(python, layout), what="creating the agent's venv", timeout=300)
    t.check(install_argv(layout, extras), what="installing edgectl-agent from the pushed wheels",
            timeout=INSTALL_TIMEOUT_S)
    t.check(reinstall_argv(layout), what="installing the edgectl-agent wheel", timeout=INSTALL_TIMEOUT_S)

"""Service definitions that keep the agent running where there is no systemd: macOS (launchd) and Termux on Android
(termux-services, i.e. runit). Pure: each function returns the file's content or an argv; the venv installer
(edgectl.agents.install_venv) writes and starts them.

- macOS: a launchd *agent* of the SSH user, ``~/Library/LaunchAgents/dev.edgectl.agent.plist`` (plistlib),
  bootstrapped into the user's GUI domain when one is logged in, else into its per-user domain; ``RunAtLoad`` and
  ``KeepAlive`` restart it when it exits.
- Termux: a runit service folder ``$PREFIX/var/service/edgectl-agent`` with an executable ``run`` script (and a
  ``log/run`` using termux-services' logger), enabled with ``sv-enable`` so runsvdir starts it with Termux.
"""

from __future__ import annotations

import plistlib
import posixpath
import shlex

LAUNCHD_LABEL = "dev.edgectl.agent"
LAUNCH_AGENTS_DIR = "Library/LaunchAgents"  # under the SSH user's home
TERMUX_SERVICE = "edgectl-agent"
# the keys launchd needs to run the agent and keep it running, with the type each must have
LAUNCHD_REQUIRED = {"Label": str, "ProgramArguments": list, "RunAtLoad": bool, "KeepAlive": bool,
                    "StandardOutPath": str, "StandardErrorPath": str, "WorkingDirectory": str}
# launchctl: load the plist into the GUI domain of the user (a logged-in Mac), else its per-user domain (headless)
LAUNCHD_START_SCRIPT = ('uid=$(id -u); launchctl bootout "gui/$uid/$2" 2>/dev/null; '
                        'launchctl bootout "user/$uid/$2" 2>/dev/null; '
                        'launchctl bootstrap "gui/$uid" "$1" 2>/dev/null || launchctl bootstrap "user/$uid" "$1"')
LAUNCHD_RUNNING_SCRIPT = ('uid=$(id -u); launchctl print "gui/$uid/$1" 2>/dev/null | grep -q "state = running" || '
                          'launchctl print "user/$uid/$1" 2>/dev/null | grep -q "state = running"')
LAUNCHD_STOP_SCRIPT = ('uid=$(id -u); launchctl bootout "gui/$uid/$1" 2>/dev/null || '
                       'launchctl bootout "user/$uid/$1" 2>/dev/null')


def agent_argv(python: str, root: str, port: int, options: list[str]) -> list[str]:
    return [python, "-m", "edgectl_agent", "serve", "--root", root, "--host", "127.0.0.1", "--port", str(port),
            *options]


# -- macOS: launchd -----------------------------------------------------------------------------------------------
def launchd_plist_path(home: str) -> str:
    return posixpath.join(home, LAUNCH_AGENTS_DIR, f"{LAUNCHD_LABEL}.plist")


def launchd_plist(argv: list[str], *, workdir: str, log: str) -> bytes:
    """The launchd agent's property list (XML): runs ``argv`` at load, restarts it whenever it exits."""
    return plistlib.dumps({"Label": LAUNCHD_LABEL, "ProgramArguments": list(argv), "RunAtLoad": True,
                           "KeepAlive": True, "WorkingDirectory": workdir, "StandardOutPath": log,
                           "StandardErrorPath": log, "ProcessType": "Background"}, fmt=plistlib.FMT_XML)


def check_launchd_plist(data: bytes) -> dict:
    """Parse ``data`` back and check the keys launchd needs (with their types); the parsed dict, or ValueError."""
    parsed = plistlib.loads(data)
    for key, kind in LAUNCHD_REQUIRED.items():
        if not isinstance(parsed.get(key), kind):
            raise ValueError(f"launchd plist: {key} must be a {kind.__name__}, got {parsed.get(key)!r}")
    if not parsed["ProgramArguments"] or not all(isinstance(a, str) for a in parsed["ProgramArguments"]):
        raise ValueError("launchd plist: ProgramArguments must be a non-empty list of strings")
    return parsed


def launchd_start_argv(plist: str) -> list[str]:
    return ["sh", "-c", LAUNCHD_START_SCRIPT, "edgectl-launchd", plist, LAUNCHD_LABEL]


def launchd_running_argv() -> list[str]:
    return ["sh", "-c", LAUNCHD_RUNNING_SCRIPT, "edgectl-launchd", LAUNCHD_LABEL]


def launchd_stop_argv() -> list[str]:
    return ["sh", "-c", LAUNCHD_STOP_SCRIPT, "edgectl-launchd", LAUNCHD_LABEL]


# -- Termux: termux-services (runit) ------------------------------------------------------------------------------
def termux_service_dir(prefix: str) -> str:
    return posixpath.join(prefix, "var", "service", TERMUX_SERVICE)


def termux_run_script(prefix: str, argv: list[str]) -> str:
    """runit's ``run`` for the agent: Termux's own sh, stderr into the log, the agent in the foreground (exec)."""
    return (f"#!{posixpath.join(prefix, 'bin', 'sh')}\n"
            "# edgectl agent, kept running by termux-services (runit); written by edgectl\n"
            "exec 2>&1\n"
            f"exec {shlex.join(argv)}\n")


def termux_log_run_script(prefix: str) -> str:
    """``log/run``: termux-services' logger (svlogd into $PREFIX/var/log/sv/edgectl-agent)."""
    return (f"#!{posixpath.join(prefix, 'bin', 'sh')}\n"
            f"exec {shlex.quote(posixpath.join(prefix, 'share', 'termux-services', 'svlogger'))}\n")


def termux_enable_argv() -> list[str]:
    """Enable (start now and with Termux) the service; restart it so a new run script takes effect."""
    return ["sh", "-c", 'sv-enable "$1" && sv restart "$1"', "edgectl-sv", TERMUX_SERVICE]


def termux_running_argv() -> list[str]:
    return ["sh", "-c", 'sv status "$1" | grep -q "^run:"', "edgectl-sv", TERMUX_SERVICE]


def termux_stop_argv() -> list[str]:
    return ["sv", "down", TERMUX_SERVICE]

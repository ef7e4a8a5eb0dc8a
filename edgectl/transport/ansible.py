"""The Ansible engine: one deployment's rollout over SSH devices as a playbook run through ansible-runner.

edgectl still observes and plans (read-only, through its SSH transport) and builds; this engine then hands the work
on the devices to Ansible: an inventory generated from the Fleet (connection and per-host agent variables), the
playbook in ``deploy/ansible`` (bootstrap from edgectl's wheelhouse, push through the agent's upload API, activate,
health gate, rollback), ``forks`` for parallelism and ``serial`` for the rollout's waves. Runner events are parsed
back into per-device actions and errors, the same results the SSH engine reports.

Host keys stay verified: OpenSSH runs with StrictHostKeyChecking=yes against edgectl's known_hosts and the user's.
Everything is pure here but :func:`run_playbook`, which is the one place that starts Ansible.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgectl.errors import TransportError, require_module
from edgectl.spec import Device

PLAYBOOK = "edgectl-apply.yml"
ACTION_PREFIX = "edgectl-action: "
FAILED_PREFIX = "edgectl-failed: "
HALTED_PREFIX = "edgectl-halted: "
# No compression (artifacts are already dense); short-lived connection sharing within one run.
SSH_ARGS = "-o ControlMaster=auto -o ControlPersist=30s"


def playbook_dir() -> Path:
    """deploy/ansible in a source checkout, else the copy installed with the package."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here.parent / "deploy" / "ansible", here / "builtin_ansible"):
        if (candidate / PLAYBOOK).is_file():
            return candidate
    raise TransportError("the Ansible playbook of edgectl is missing from this installation",
                         hint="reinstall edgectl, or run it from a source checkout (deploy/ansible)")


def ssh_common_args(known_hosts: Iterable[Path], proxy_jump: str | None = None) -> str:
    """OpenSSH options for every host: host keys checked strictly against these known_hosts files only."""
    files = [str(p) for p in known_hosts]
    for f in files:
        if any(c.isspace() for c in f) or '"' in f:
            raise TransportError(f"known_hosts path '{f}' contains a space or quote, which OpenSSH's "
                                 "UserKnownHostsFile cannot take", hint="set EDGECTL_HOME to a path without spaces")
    args = ["-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile=" + " ".join(files)]
    if proxy_jump:
        args += ["-o", f"ProxyJump={proxy_jump}"]
    return " ".join(shlex.quote(a) for a in args)


def venv_installers(order: list[str], venvs: dict[str, str | None]) -> set[str]:
    """The devices that install the agent's venv when it lacks it: each device with its own venv, and of the
    devices sharing one (transport.venv), the first in rollout ``order`` (concurrent pips in one venv would race)."""
    first: dict[str, str] = {}
    for d in order:
        if venvs.get(d):
            first.setdefault(venvs[d], d)
    return {d for d in order if not venvs.get(d) or first[venvs[d]] == d}


def host_connection(device: Device, known_hosts: Iterable[Path]) -> dict[str, Any]:
    """Connection variables of one SSH device (validated values only: the spec's patterns forbid metacharacters)."""
    t = device.transport
    if t.type != "ssh":
        raise TransportError(f"device '{device.name}': the ansible engine works on SSH devices, this one uses "
                             f"transport '{t.type}'", hint="use --engine ssh for it, or exclude it with --device")
    out: dict[str, Any] = {
        "ansible_connection": "ssh",
        "ansible_host": t.host,
        "ansible_port": t.port,
        "ansible_python_interpreter": t.python,
        "ansible_ssh_common_args": ssh_common_args(known_hosts, t.proxy_jump),
        "edgectl_agent_dir": t.agent_dir,
        "edgectl_agent_port": device.agent.port,
        "edgectl_token_file": t.agent_dir.rstrip("/") + "/root/token",
    }
    if t.user:
        out["ansible_user"] = t.user
    if t.key_file:
        out["ansible_ssh_private_key_file"] = str(Path(t.key_file).expanduser())
    return out


def inventory(hosts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A YAML/JSON inventory: every host in ``all``, in the given order (the play runs them in inventory order,
    so ``serial`` batches are exactly edgectl's waves)."""
    return {"all": {"hosts": dict(hosts)}}


def serial_and_allowed(waves: list[list[str]], max_failure: int | str,
                       resolve: Callable[[int | str, int], int]) -> tuple[list[int], dict[str, int]]:
    """``serial`` batch sizes and, per host, the failures the rollout allows once its wave is done (counted over
    all devices tried so far, as the SSH engine counts)."""
    sizes, allowed, tried = [], {}, 0
    for wave in waves:
        sizes.append(len(wave))
        tried += len(wave)
        for host in wave:
            allowed[host] = resolve(max_failure, tried)
    return sizes, allowed


@dataclass
class HostOutcome:
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    started: bool = False


@dataclass
class RunOutcome:
    hosts: dict[str, HostOutcome]
    halted: bool = False
    rc: int = 0
    stdout_tail: str = ""


def parse_events(events: Iterable[dict[str, Any]], hosts: Iterable[str]) -> RunOutcome:
    """Runner events -> per host: the actions reported by the playbook, the error that failed it, whether it was
    reached at all; and whether the rollout halted."""
    out = RunOutcome({h: HostOutcome() for h in hosts})
    for ev in events:
        data = ev.get("event_data") or {}
        host = data.get("host")
        kind = ev.get("event", "")
        res = data.get("res") or {}
        if host not in out.hosts or not kind.startswith("runner_on_"):
            continue
        ho = out.hosts[host]
        ho.started = True
        msg = res.get("msg") if isinstance(res.get("msg"), str) else ""
        if kind == "runner_on_ok" and msg.startswith(ACTION_PREFIX):
            ho.actions.append(" ".join(msg[len(ACTION_PREFIX):].split()))
        elif kind == "runner_on_ok" and msg.startswith(HALTED_PREFIX):
            out.halted = True
        elif kind == "runner_on_unreachable":
            ho.error = f"device '{host}': unreachable through Ansible: {' '.join(msg.split())}"
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            if msg.startswith(FAILED_PREFIX):  # the rescue's summary: the task that failed and why
                ho.error = f"device '{host}': {' '.join(msg[len(FAILED_PREFIX):].split())}"
            elif ho.error is None or not ho.error.startswith(f"device '{host}': "):
                ho.error = f"device '{host}': {data.get('task', 'a task')}: {' '.join(msg.split())}"
    return out


def run_playbook(hosts: dict[str, dict[str, Any]], extravars: dict[str, Any], *, forks: int,
                 on_event: Callable[[dict[str, Any]], None] | None = None, timeout_s: int = 3600) -> RunOutcome:
    """Run the playbook over ``hosts`` (inventory order = wave order) with ansible-runner; parse its events."""
    runner = require_module("ansible_runner", "ansible")
    project = playbook_dir()
    collected: list[dict[str, Any]] = []

    def handler(ev: dict[str, Any]) -> bool:
        collected.append(ev)
        if on_event is not None:
            on_event(ev)
        return True

    with tempfile.TemporaryDirectory(prefix="edgectl-ansible-") as tmp:  # 0700: events hold the token headers
        inv = Path(tmp) / "inventory.json"
        inv.write_text(json.dumps(inventory(hosts)))
        env = {"ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_SSH_ARGS": SSH_ARGS,
               "ANSIBLE_SSH_CONTROL_PATH_DIR": str(Path(tmp) / "cp"), "ANSIBLE_RETRY_FILES_ENABLED": "False",
               "ANSIBLE_NOCOLOR": "True", "ANSIBLE_LOCAL_TEMP": str(Path(tmp) / "tmp"),
               "ANSIBLE_PYTHON_INTERPRETER": "auto_silent"}
        # ansible-playbook must come from the environment that runs edgectl (a venv need not be on PATH)
        bindir = str(Path(sys.executable).parent)
        env["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
        r = runner.run(private_data_dir=tmp, project_dir=str(project), playbook=PLAYBOOK, inventory=str(inv),
                       extravars=extravars, forks=max(1, forks), envvars=env, quiet=True, event_handler=handler,
                       timeout=timeout_s, cmdline="--timeout 30")
        tail = ""
        try:
            tail = r.stdout.read()[-3000:]
        except (OSError, ValueError, AttributeError):
            pass
        outcome = parse_events(collected, hosts)
        outcome.rc, outcome.stdout_tail = r.rc, tail
    if r.status not in ("successful", "failed"):
        raise TransportError(f"ansible-playbook did not complete ({r.status}, exit {r.rc}):\n{tail.strip()}",
                             hint="see the output above; `ansible-playbook --version` must work in edgectl's "
                                  "environment (pip install 'edgectl[ansible]')")
    return outcome

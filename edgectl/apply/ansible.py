"""The Ansible engine: one deployment's rollout over SSH devices as a playbook run through ansible-runner.

edgectl still observes and plans (read-only, through its SSH transport) and builds; this engine then hands the work
on the devices to Ansible: an inventory generated from the Fleet (connection and per-host agent variables), the
playbook in ``deploy/ansible`` (bootstrap from edgectl's wheelhouse with the fleet's verify key pinned, push through
the agent's upload API, activate, health gate, rollback), ``forks`` for parallelism and ``serial`` for the rollout's
waves. Runner events are parsed back into per-device actions and errors, the same results edgectl's own engine
reports. The rules are edgectl's (:mod:`edgectl.apply.rollout`), handed to the playbook as data: the failures each
wave allows per host, and the health gate, which the role judges with :func:`edgectl.apply.rollout.gate_problems`
through its filter plugin (deploy/ansible/filter_plugins/edgectl_gate.py).

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

from edgectl_agent import __version__ as AGENT_VERSION

from edgectl.builders import ArtifactStore
from edgectl.agents.platform import PLATFORM_SCRIPT, TargetPlatform, parse_platform
from edgectl.errors import EdgectlError, TransportError, require_module
from edgectl.progress import StageProgress
from edgectl.plan import DevicePlan
from edgectl.runs import RunRecord
from edgectl.signing import signed
from edgectl.spec import Device, Spec
from edgectl.spec.deployment import gates_for, resolve_count

from edgectl.apply.observe import DeviceContext
from edgectl.apply.report import DeviceResult, Events
from edgectl.apply.rollout import (Halting, allowed_failures, gate_as_data, is_canary, unavailable_halt, wave_label,
                                   waves)
from edgectl.apply.steps import Artifacts, artifact_for, dep_plan, desired_deployment, rollback_request

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
                       resolve: Callable[[int | str, int], int] = resolve_count) -> tuple[list[int], dict[str, int]]:
    """``serial`` batch sizes and, per host, the failures the rollout allows once its wave is done
    (:func:`edgectl.apply.rollout.allowed_failures`, the number edgectl's own engine halts past)."""
    allowed = allowed_failures(waves, max_failure, resolve)
    return [len(w) for w in waves], {host: n for wave, n in zip(waves, allowed) for host in wave}


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
        # the role's filter plugin judges the health gate with edgectl's own code: this edgectl, first on the path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")) if p)
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


# -- the engine: a rollout (or a bootstrap) as one playbook run -----------------------------------------------------
def rollout(spec: Spec, name: str, targets: list[DevicePlan], contexts: dict[str, DeviceContext],
            store: ArtifactStore, artifacts: Artifacts, results: dict[str, DeviceResult], events: Events,
            forks: int, record: RunRecord | None) -> str | None:
    """Deploy ``name`` to ``targets`` with the Ansible engine: one playbook run, the rollout's waves as ``serial``
    batches, forks for the devices of a wave; the same rules and results as :func:`edgectl.apply.engine.rollout`."""
    rules = spec.deployments[name].spec.rollout
    unreachable = [dp.device for dp in targets if contexts[dp.device].error]
    why = unavailable_halt(name, rules, [dp.device for dp in targets], unreachable)
    if why:
        events.info(None, "halted " + why)
        return why
    reachable = [dp for dp in targets if dp.device not in unreachable]
    hosts: dict[str, dict] = {}
    houses: dict[tuple[str, ...], Path] = {}  # one wheelhouse build per set of extras, not per device
    for dp in reachable:
        try:
            hosts[dp.device] = host_vars(spec, dp, name, contexts[dp.device], store, artifacts, results[dp.device],
                                         houses, stage_progress(events, dp.device))
        except EdgectlError as e:
            results[dp.device].error = str(e)
    order = waves(rules, [d for d in (dp.device for dp in reachable) if d in hosts])
    if not order:
        return None
    sizes, allowed = serial_and_allowed(order, rules.max_failure)
    # of the devices that bootstrap here, those that install their venv (one per shared transport.venv)
    installers = venv_installers([d for wave in order for d in wave if hosts[d]["edgectl_bootstrap"]],
                                 {d: contexts[d].device.transport.venv for d in hosts})
    hosts = {d: {**hosts[d], "edgectl_allowed_failures": allowed[d], "edgectl_installs": d in installers}
             for wave in order for d in wave}
    for index, wave in enumerate(order):
        events.info(None, f"{name}: {wave_label(rules, index, len(order))} via ansible: " + ", ".join(wave))

    outcome = run_playbook(hosts, {"edgectl_serial": sizes}, forks=forks, on_event=progress_reporter(events))
    halting = Halting(name, rules, order)
    why = None
    for index, wave in enumerate(order):
        w = record.wave(name, index, wave, canary=is_canary(rules, index)) if record else {}
        for d in wave:
            ho = outcome.hosts[d]
            results[d].actions += ho.actions
            if ho.error:
                results[d].error = ho.error
            elif not ho.started and why is not None:
                results[d].actions.append(f"{name}: not started (rollout halted)")
            elif not ho.started:
                results[d].error = never_reached(d, outcome)
        if why is not None:
            w["outcome"] = "not started"
            continue
        why = halting.after_wave(index, sum(1 for d in wave if results[d].error))
        if why:
            w["outcome"] = "failed"
            events.info(None, "halted " + why)
        else:
            w["outcome"] = halting.outcome()
    return why


def never_reached(device: str, outcome: RunOutcome) -> str:
    return (f"device '{device}': the playbook never reached it (ansible-playbook exit {outcome.rc})\n"
            f"{outcome.stdout_tail.strip()[-1500:]}")


def host_vars(spec: Spec, dp: DevicePlan, name: str, ctx: DeviceContext, store: ArtifactStore,
              artifacts: Artifacts, res: DeviceResult, houses: dict[tuple[str, ...], Path],
              progress: StageProgress | None = None) -> dict:
    """The host variables the playbook needs for ``name`` on this device: connection, artifact blobs, the desired
    deployment, the health gate, what to roll back to, and (when no agent answered) the bootstrap variables."""
    from edgectl.transport.ssh_trust import known_hosts_files

    dep = dep_plan(dp, name)
    rules = spec.deployments[name].spec.rollout
    art = artifact_for(spec, dp, dep, ctx, store, artifacts, res)
    out = host_connection(ctx.device, known_hosts_files())
    kind = dep.chosen.recipe.kind
    back = rollback_request(name, ctx, store) if rules.rollback else None
    out.update({
        "edgectl_deployment": name,
        "edgectl_blobs": [{"digest": d, "path": str(p), "size": p.stat().st_size} for d, p in store.blobs_of(art)],
        "edgectl_desired": json.loads(signed(ctx.signer, desired_deployment(spec, dp, dep, art, kind=kind))
                                      .model_dump_json()),
        "edgectl_smoke": gate_as_data(gates_for(rules.health_gate, spec.models[dep.model].spec.goldens), kind),
        "edgectl_rollback": {k: v for k, v in back.items() if k != "desired"} if back else None,
        "edgectl_bootstrap": ctx.client is None,
    })
    if ctx.client is None:
        out.update(bootstrap_vars(ctx, {d.chosen.runtime for d in dp.deployments if d.chosen is not None}, houses,
                                  progress, read_device_platform(ctx)))
    return out


def read_device_platform(ctx: DeviceContext) -> tuple[TargetPlatform, str]:
    """The device's platform and the probe output it was read from, over SSH as the SSH engine reads it (before its
    wheelhouse is built)."""
    from edgectl.agents.install_venv import read_platform
    from edgectl.transport.ssh import SshTransport

    ssh = SshTransport(ctx.device)
    try:
        return read_platform(ssh)
    finally:
        ssh.close()


def local_platform_text() -> str:
    """What the platform probe prints for this machine's Python (a device like this one takes its wheelhouse)."""
    import subprocess

    return subprocess.run([sys.executable, "-c", PLATFORM_SCRIPT], capture_output=True, text=True,
                          check=True).stdout.strip()


def bootstrap_vars(ctx: DeviceContext, runtimes: Iterable[str], houses: dict[tuple[str, ...], Path],
                   progress: StageProgress | None = None,
                   platform: tuple[TargetPlatform, str] | None = None) -> dict:
    """The host variables that install (from edgectl's wheelhouse for the device's ``platform``, as
    :func:`read_device_platform` returns it; None: this machine's) and start an agent able to run ``runtimes``,
    pinned to the fleet's verify key when it signs (written only where the device has none yet, as edgectl's SSH
    bootstrap does: trust on first use, a pinned key is never replaced), and pinned still where it has one."""
    from edgectl.agents import install_venv as bootstrap

    t = ctx.device.transport
    if t.install == "on-device":
        raise TransportError(f"device '{ctx.device.name}': transport.install is 'on-device', which the Ansible "
                             "engine does not do (its playbook installs from a wheelhouse built here)",
                             hint="use engine: ssh for this device (`edgectl apply --engine ssh`), or install: "
                                  "wheelhouse where edgectl can build wheels for its platform")
    layout = bootstrap.RemoteLayout(t.agent_dir, t.venv)
    runtimes = sorted(set(runtimes))
    sign = ctx.signer is not None
    target, probe_text = platform if platform is not None else (None, local_platform_text())
    extras = bootstrap.device_extras(runtimes, target or parse_platform(probe_text), sign=sign)
    key = (*extras, target.tag if target else "local")
    if key not in houses:
        houses[key] = (bootstrap.build_wheelhouse(extras, target, progress) if target is not None
                       else bootstrap.build_wheelhouse(extras))
    house = houses[key]
    return {
        "edgectl_agent_version": AGENT_VERSION,
        "edgectl_venv": layout.venv,
        "edgectl_platform": probe_text,
        "edgectl_platform_script": PLATFORM_SCRIPT,
        "edgectl_wheels": [str(w) for w in sorted(house.glob("*.whl"))],
        "edgectl_installed_argv": bootstrap.installed_argv(layout, runtimes, sign=sign,
                                                         fast_http=bootstrap.FAST_HTTP_EXTRA in extras),
        "edgectl_venv_argv": bootstrap.venv_argv(t.python, layout),
        "edgectl_install_argv": bootstrap.install_argv(layout, extras),
        "edgectl_reinstall_argv": bootstrap.reinstall_argv(layout),
        "edgectl_verify_key": ctx.signer.public_pem.decode() if sign else None,
        "edgectl_verify_key_file": layout.verify_key,
        "edgectl_start_argv": bootstrap.start_argv(layout, ctx.device.agent.port),
        "edgectl_start_pinned_argv": bootstrap.start_argv(layout, ctx.device.agent.port,
                                                          verify_key_file=layout.verify_key),
    }


def bootstrap(names: list[str], runtimes: dict[str, set[str]], contexts: dict[str, DeviceContext],
              events: Events, forks: int) -> dict[str, list[str]]:
    """Install and start the agents of ``names`` with the playbook (bootstrap only, one batch), so that they report
    their hardware before the plan that deploys to them is made. A device that fails keeps the playbook's reason
    as its error. Returns what was done per device."""
    from edgectl.transport.ssh_trust import known_hosts_files

    hosts: dict[str, dict] = {}
    houses: dict[tuple[str, ...], Path] = {}
    for n in names:
        ctx = contexts[n]
        try:
            hosts[n] = {**host_connection(ctx.device, known_hosts_files()),
                        **bootstrap_vars(ctx, runtimes.get(n, set()), houses, stage_progress(events, n),
                                         read_device_platform(ctx)),
                        "edgectl_bootstrap": True, "edgectl_bootstrap_only": True, "edgectl_rollback": None,
                        "edgectl_allowed_failures": len(names)}
        except EdgectlError as e:
            ctx.error = str(e)
    if not hosts:
        return {}
    installers = venv_installers(list(hosts), {d: contexts[d].device.transport.venv for d in hosts})
    hosts = {d: {**v, "edgectl_installs": d in installers} for d, v in hosts.items()}
    events.info(None, "bootstrap via ansible: " + ", ".join(hosts))
    outcome = run_playbook(hosts, {"edgectl_serial": [len(hosts)]}, forks=forks, on_event=progress_reporter(events))
    for d, ho in outcome.hosts.items():
        if ho.error or not ho.started:
            contexts[d].error = ho.error or never_reached(d, outcome)
    return {d: ho.actions for d, ho in outcome.hosts.items()}


def stage_progress(events: Events, device: str) -> StageProgress:
    """A long step of ``device``'s bootstrap (a cross-build of its wheelhouse) as apply's progress."""
    return lambda stage, done, total: events.progress(f"{device}:{stage}", f"{device}: {stage}", done, total)


def progress_reporter(events: Events) -> Callable[[dict[str, Any]], None]:
    """A runner event handler that reports the playbook's 'edgectl-action:' messages as they happen."""

    def on_event(ev: dict) -> None:
        data = ev.get("event_data") or {}
        msg = (data.get("res") or {}).get("msg")
        if ev.get("event") == "runner_on_ok" and isinstance(msg, str) and msg.startswith(ACTION_PREFIX):
            events.info(data.get("host"), " ".join(msg[len(ACTION_PREFIX):].split()))

    return on_event

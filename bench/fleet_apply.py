"""Fleet apply to N simulated devices (default 50), cold and no-op, against an Ansible copy + restart playbook.

    PYTHONPATH=.:agent python bench/fleet_apply.py [--devices 50] [--rounds 1] [--forks 5,50] [--cache DIR]

The devices are real OpenSSH servers on loopback (tests/fleet.py), sharing one agent venv (transport.venv) as the
integration tests do. Before anything is timed, one `edgectl apply` bootstraps every device (the agent installed
into the shared venv once and started on each device) and builds the artifact (a tiny llama GGUF from
tests/tinymodels.py, quantized to Q8_0), and a second apply with the deployment selecting no device removes it again
(the agents delete its artifact). So both sides start from running agents and no model on the devices, and the
comparison is deploy work, not installs. Timed, each a fresh process with fresh SSH connections:

- edgectl cold: `edgectl apply` (default --parallel 8): observe every device over SSH, plan, push the artifact to
  each agent through a direct-tcpip channel (sha256-verified), activate it (the agent loads the model) and pass the
  health gate (a real streamed chat completion) on every device;
- edgectl no-op: the same `edgectl apply` again: nothing differs, nothing is pushed or restarted;
- Ansible cold (bench/ansible/copy_restart.yml, `ansible-playbook -f FORKS`, pipelining on, no fact gathering):
  copy the same artifact file (the bytes edgectl pushed) to each device, and, because it changed, restart the agent
  and wait until it answers /healthz; it loads no model and sends no inference (less work than edgectl's cold run);
- Ansible no-op: the same playbook again: the copy finds the file unchanged, no restart.

Targets: edgectl cold <= 0.5x the playbook's wall time (at each forks), edgectl no-op <= 2 s. Between timed runs
the devices are reset untimed (edgectl: the deployment selecting nothing; Ansible: the copied file deleted).
One more no-op runs under cProfile; its phases go into the report (``--profile`` also prints the top functions).
Prints the table, replaces its section of docs/benchmarks.md and ends with one summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "agent")]

from bench._report import table, write_section  # noqa: E402
from tests.fleet import SshFleet  # noqa: E402
from tests.tinymodels import write_tiny_llama_gguf  # noqa: E402

BASE_PYTHON = str(Path(sys._base_executable).resolve())  # the devices' python3: same version as this one
PLAYBOOK = REPO / "bench" / "ansible" / "copy_restart.yml"
AGENT_DIR = ".local/share/edgectl-agent"  # transport.agent_dir's default, under each device's HOME
COLD_RATIO, NOOP_S = 0.5, 2.0
NOOP_REPEAT = 3  # no-ops are short: each round runs three

MODEL = """\
apiVersion: edgectl.dev/v1alpha1
kind: Model
metadata: {{name: tiny-llama}}
spec:
  architecture: {{family: llama, parameters: {params}, layers: 2, hidden_size: 256, attention_heads: 4, kv_heads: 2,
                 head_dim: 64, vocab_size: 537, max_context: 512}}
  sources:
    - {{type: gguf, path: tiny.gguf, precision: F32}}
---
apiVersion: edgectl.dev/v1alpha1
kind: Deployment
metadata: {{name: tiny}}
spec:
  model: tiny-llama
  selector: {{labels: {{site: {site}}}}}
  context_length: 256
  threads: 1
  quantization: {{allow: [Q8_0]}}
"""


def children_cpu() -> float:
    """User + system CPU seconds of the waited-for child processes so far (the controller side of a run)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def last_run_phases(home: Path) -> tuple[float, float]:
    """From the newest run record: seconds from the start to the first device event (observe, plan, build
    lookups) and from there to the end (push, activate, health gate)."""
    from datetime import datetime

    record = json.loads(max((home / "runs").glob("*.json")).read_text())
    start, end = (datetime.fromisoformat(record[k]) for k in ("started_at", "finished_at"))
    first = min(datetime.fromisoformat(e["t"]) for e in record["events"] if e["device"])
    return (first - start).total_seconds(), (end - first).total_seconds()


class Edgectl:
    def __init__(self, mdir: Path, env: dict, params: int) -> None:
        self.mdir, self.env, self.params = mdir, env, params

    def select(self, site: str) -> None:
        (self.mdir / "model.yaml").write_text(MODEL.format(params=self.params, site=site))

    def run(self, *args: str, timeout: float = 1800) -> tuple[float, subprocess.CompletedProcess]:
        t0, c0 = time.perf_counter(), children_cpu()
        r = subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True,
                           env=self.env, timeout=timeout, cwd=REPO)
        self.cpu = children_cpu() - c0
        return time.perf_counter() - t0, r

    def apply(self, site: str = "sim", *, expect: str | None = None) -> float:
        self.select(site)
        secs, r = self.run("apply", str(self.mdir))
        self.last = r
        if r.returncode != 0 or (expect and expect not in r.stdout):
            raise RuntimeError(f"edgectl apply (site {site}) exited {r.returncode}:\n{r.stdout[-4000:]}\n"
                               f"{r.stderr[-4000:]}")
        return secs


def served(fleet: SshFleet) -> list[tuple[str, str]]:
    """(state, active digest) of deployment 'tiny' per device, from the agents' state files."""
    out = []
    for d in fleet.devices:
        state = d.home / AGENT_DIR / "root/state.json"
        deps = json.loads(state.read_text())["deployments"] if state.exists() else []
        out += [(dep["state"], (dep.get("active") or {}).get("digest", "")) for dep in deps if dep["name"] == "tiny"]
    return out


def check_served(fleet: SshFleet, ed: Edgectl) -> str:
    """The one digest every device serves; otherwise an error with what the last apply printed."""
    state = served(fleet)
    digests = {dg for _, dg in state}
    if len(state) != len(fleet.devices) or len(digests) != 1 or any(s != "serving" for s, _ in state):
        raise RuntimeError(f"not every device serves one artifact: {state}\n{ed.last.stdout[-6000:]}\n"
                           f"{ed.last.stderr[-3000:]}")
    return digests.pop()


def agent_pids(fleet: SshFleet) -> list[str]:
    return [(d.home / AGENT_DIR / "agent.pid").read_text().strip() for d in fleet.devices]


def devices_cpu(fleet: SshFleet) -> dict[int, float]:
    """CPU seconds so far of each simulated device's processes: its sshd (with the per-connection processes it has
    reaped) and its agent. They share this machine's CPUs with the controller, unlike a real fleet's."""
    import psutil

    out = {}
    pids = [d.proc.pid for d in fleet.devices if d.proc is not None] + [int(p) for p in agent_pids(fleet)]
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system + t.children_user + t.children_system
    return out


def cpu_since(before: dict[int, float], after: dict[int, float]) -> float:
    """Device CPU between two snapshots (an agent restarted in between counts from its start; what the replaced
    one used after ``before`` is not seen)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


class Ansible:
    def __init__(self, fleet: SshFleet, tmp: Path, known_hosts: Path, artifact: Path, venv: str) -> None:
        from edgectl.apply.ansible import ssh_common_args

        self.fleet, self.tmp = fleet, tmp
        self.inventory = tmp / "inventory.json"
        hosts = {}
        for d in fleet.devices:
            base = d.home / AGENT_DIR
            hosts[d.name] = {
                "ansible_host": "127.0.0.1", "ansible_port": d.port, "ansible_python_interpreter": BASE_PYTHON,
                "ansible_ssh_private_key_file": str(fleet.client_key),
                "ansible_ssh_common_args": ssh_common_args([known_hosts]),
                "model_src": str(artifact), "model_dest": str(base / "model.gguf"),
                "agent_pid_file": str(base / "agent.pid"), "agent_python": f"{venv}/bin/python",
                "agent_root": str(base / "root"), "agent_port": d.agent_port, "agent_log": str(base / "agent.log")}
        self.inventory.write_text(json.dumps({"all": {"hosts": hosts}}))

    def forget(self) -> None:
        for d in self.fleet.devices:
            (d.home / AGENT_DIR / "model.gguf").unlink(missing_ok=True)

    def run(self, forks: int) -> tuple[float, str]:
        """One ansible-playbook run (fresh SSH connections: its own ControlPath folder); wall time and recap."""
        cp = Path(tempfile.mkdtemp(prefix="cp-", dir=self.tmp))
        env = dict(os.environ, ANSIBLE_HOST_KEY_CHECKING="True", ANSIBLE_PIPELINING="True",
                   ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp), ANSIBLE_RETRY_FILES_ENABLED="False", ANSIBLE_NOCOLOR="1",
                   ANSIBLE_LOCAL_TEMP=str(self.tmp / "ansible-tmp"), ANSIBLE_STDOUT_CALLBACK="default")
        argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(self.inventory), "-f", str(forks),
                str(PLAYBOOK)]
        t0, c0 = time.perf_counter(), children_cpu()
        r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1800)
        secs = time.perf_counter() - t0
        self.cpu = children_cpu() - c0  # ansible-playbook, its forks and their ssh clients
        for master in cp.iterdir():  # the persistent connections it left (ControlPersist), closed untimed
            subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={master}", "x"], capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"ansible-playbook -f {forks} exited {r.returncode}:\n{r.stdout[-4000:]}")
        recap = r.stdout[r.stdout.rfind("PLAY RECAP"):]
        return secs, recap


def profile_noop(ed: Edgectl, top: int = 25) -> tuple[dict[str, float], str]:
    """One more no-op apply under cProfile (a subprocess, like the timed runs): seconds in its main phases, and the
    top functions by cumulative time."""
    import io
    import pstats

    prof = ed.mdir.parent / "noop.prof"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "edgectl.cli", "apply",
                        str(ed.mdir)], capture_output=True, text=True, env=ed.env, cwd=REPO, timeout=600)
    wall = time.perf_counter() - t0
    if r.returncode != 0 or "no changes" not in r.stdout:
        raise RuntimeError(r.stdout + r.stderr)
    st = pstats.Stats(str(prof))

    def cumulative(path_end: str, func: str) -> float:
        return sum(v[3] for (path, _, name), v in st.stats.items() if path.endswith(path_end) and name == func)

    phases = {"in all (under cProfile)": wall, "imports": cumulative("_bootstrap>", "_find_and_load"),
              "load + validate manifests": cumulative("edgectl/cli.py", "_load"),
              "observe (SSH + agent, all devices)": cumulative("edgectl/apply/observe.py", "observe"),
              "plan": cumulative("edgectl/apply/planning.py", "make_plan")}
    out = io.StringIO()
    pstats.Stats(str(prof), stream=out).sort_stats("cumulative").print_stats(top)
    return phases, out.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=1, help="timed rounds (each: every peer cold, then no-op)")
    ap.add_argument("--forks", default="5,50", help="Ansible forks to compare with, comma-separated")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgectl-bench-cache",
                    help="kept between runs: the agent wheelhouse and the shared agent venv")
    ap.add_argument("--profile", action="store_true", help="also print the profiled no-op's top functions")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md as it is")
    args = ap.parse_args()
    forks = [int(f) for f in args.forks.split(",")]
    args.cache.mkdir(parents=True, exist_ok=True)
    venv = str(args.cache / "agent-venv")
    started = time.perf_counter()
    load_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="edgectl-bench-fleet-") as tmp_s:
        tmp = Path(tmp_s)
        env = dict(os.environ, EDGECTL_HOME=str(tmp / "home"), EDGECTL_WHEELHOUSE=str(args.cache / "wheelhouse"),
                   COLUMNS="250", NO_COLOR="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "agent")]))
        from gguf import GGUFReader

        t0 = time.perf_counter()
        with SshFleet(tmp / "fleet", args.devices) as fleet:
            fleet_start = time.perf_counter() - t0
            known = fleet.write_known_hosts(tmp / "home" / "known_hosts")
            mdir = tmp / "manifests"
            mdir.mkdir()
            params = sum(int(t.n_elements) for t in GGUFReader(write_tiny_llama_gguf(mdir / "tiny.gguf")).tensors)
            (mdir / "fleet.yaml").write_text(fleet.fleet_yaml(profile="x86-cpu-server", python=BASE_PYTHON,
                                                              venv=venv))
            ed = Edgectl(mdir, env, params)

            # untimed: bootstrap every device and build the artifact, then remove the deployment again
            boot_s = ed.apply("sim")
            digest = check_served(fleet, ed)
            artifact = tmp / "artifact.gguf"  # the bytes edgectl pushed, for the playbook to copy
            shutil.copyfile(fleet.devices[0].home / AGENT_DIR / "root/artifacts" / digest[7:], artifact)
            artifact_bytes = artifact.stat().st_size
            ed.apply("nowhere")
            print(f"{args.devices} sshd started in {fleet_start:.1f} s; bootstrap apply {boot_s:.1f} s; "
                  f"artifact {artifact_bytes / 1e6:.2f} MB", flush=True)

            ansible = Ansible(fleet, tmp, known, artifact, venv)
            times: dict[str, list[float]] = {}
            cpu: dict[str, list[float]] = {}
            recaps: dict[str, str] = {}
            phases: list[tuple[float, float]] = []
            profile: dict[str, float] | None = None
            loads: dict[str, list[float]] = {}  # 1-minute load average after each timed run, by side
            dev_cpu: dict[str, list[float]] = {}
            profile_text = ""

            snapshot = {"cpu": devices_cpu(fleet)}

            def note(name: str, secs: float, cpu_s: float) -> None:
                """Record one timed run; the devices' CPU is what they used since the previous note (or the
                untimed step right before this run, which note_start resets)."""
                time.sleep(1.0)  # untimed: sshd reaps the connections that just closed (their CPU counts then)
                dev_s = cpu_since(snapshot["cpu"], devices_cpu(fleet))
                times.setdefault(name, []).append(secs)
                cpu.setdefault(name, []).append(cpu_s)
                dev_cpu.setdefault(name, []).append(dev_s)
                load = os.getloadavg()[0]
                loads.setdefault(name.split()[0], []).append(load)
                print(f"{name:28s} {secs:7.2f} s  controller CPU {cpu_s:6.2f} s  devices CPU {dev_s:6.2f} s  "
                      f"(load {load:.1f})", flush=True)
                snapshot["cpu"] = devices_cpu(fleet)

            def note_start() -> None:
                snapshot["cpu"] = devices_cpu(fleet)

            for _ in range(args.rounds):
                note_start()
                note("edgectl cold", ed.apply("sim"), ed.cpu)
                phases.append(last_run_phases(tmp / "home"))
                if check_served(fleet, ed) != digest:
                    raise RuntimeError("the cold apply deployed another artifact than the bootstrap did")
                pids = agent_pids(fleet)
                for _ in range(NOOP_REPEAT):
                    note("edgectl no-op", ed.apply("sim", expect="no changes"), ed.cpu)
                if agent_pids(fleet) != pids:
                    raise RuntimeError("the no-op apply restarted agents")
                if profile is None:  # profiled here, under the same conditions as the timed no-ops
                    profile, profile_text = profile_noop(ed)
                    note_start()
                ed.apply("nowhere")
                for f in forks:
                    ansible.forget()
                    pids = agent_pids(fleet)
                    note_start()
                    secs, recaps[f"cold {f}"] = ansible.run(f)
                    note(f"ansible cold (forks {f})", secs, ansible.cpu)
                    restarted = [a != b for a, b in zip(pids, agent_pids(fleet))]
                    if not all(restarted) or recaps[f"cold {f}"].count("changed=2") != args.devices:
                        raise RuntimeError(f"the playbook did not copy + restart everywhere:\n{recaps[f'cold {f}']}")
                    pids = agent_pids(fleet)
                    secs, recaps[f"no-op {f}"] = ansible.run(f)
                    note(f"ansible no-op (forks {f})", secs, ansible.cpu)
                    if agent_pids(fleet) != pids or recaps[f"no-op {f}"].count("changed=0") != args.devices:
                        raise RuntimeError(f"the playbook no-op changed something:\n{recaps[f'no-op {f}']}")
        total_s = time.perf_counter() - started

    med = {name: statistics.median(ts) for name, ts in times.items()}
    med_cpu = {name: statistics.median(cs) for name, cs in cpu.items()}
    med_dev = {name: statistics.median(cs) for name, cs in dev_cpu.items()}

    def cpus(name: str) -> list[str]:
        return [f"{med_cpu[name]:.1f} s", f"{med_dev[name]:.1f} s"]

    def secs(name: str) -> str:
        return f"{med[name]:.1f} s" + (f" ({' / '.join(f'{t:.1f}' for t in times[name])})" if len(times[name]) > 1
                                       else "")

    noop_ok = med["edgectl no-op"] <= NOOP_S
    rows = [["edgectl apply, cold", secs("edgectl cold"), *cpus("edgectl cold"), "-", "", ""],
            ["edgectl apply, no-op", secs("edgectl no-op"), *cpus("edgectl no-op"), "-", f"<= {NOOP_S:g} s",
             "met" if noop_ok else "MISSED"]]
    verdicts = []
    for f in forks:
        cold, noop = f"ansible cold (forks {f})", f"ansible no-op (forks {f})"
        ratio = med["edgectl cold"] / med[cold]
        verdicts.append(ratio <= COLD_RATIO)
        rows.append([f"Ansible playbook, cold, forks {f}", secs(cold), *cpus(cold),
                     f"edgectl cold = {ratio:.2f}x", f"<= {COLD_RATIO}x", "met" if ratio <= COLD_RATIO else "MISSED"])
        rows.append([f"Ansible playbook, no-op, forks {f}", secs(noop), *cpus(noop),
                     f"edgectl no-op = {med['edgectl no-op'] / med[noop]:.2f}x", "", ""])
    before, after = (statistics.median(x) for x in zip(*phases))
    body = (f"{args.devices} simulated devices (a real sshd each, on loopback; one shared agent venv); artifact: a "
            f"tiny llama GGUF, Q8_0, {artifact_bytes / 1e6:.1f} MB; {args.rounds} round(s), each no-op run "
            f"{NOOP_REPEAT} times a round; every run a fresh process with fresh SSH connections. Load average after "
            f"the edgectl runs {min(loads['edgectl']):.1f}-{max(loads['edgectl']):.1f}, after the Ansible runs "
            f"{min(loads['ansible']):.1f}-{max(loads['ansible']):.1f} (other jobs share the 2 CPUs; the simulated "
            f"devices' sshd and agents run on them too); whole benchmark {total_s / 60:.1f} min (fleet start "
            f"{fleet_start:.0f} s, untimed bootstrap apply {boot_s:.0f} s).\n\n"
            "Both sides start from agents installed and running and no model on the devices (an untimed edgectl "
            "bootstrap, then a removal). **edgectl cold**: `edgectl apply` (--parallel 8): observe every device over "
            "SSH, plan, push the artifact to each agent through a direct-tcpip channel (sha256-verified there), "
            "activate it (the agent loads the model) and pass the health gate (a streamed chat completion) on each. "
            "**Ansible cold**: `ansible-playbook -f FORKS bench/ansible/copy_restart.yml` (pipelining on, no fact "
            "gathering): copy the same file to each device; a handler then restarts the agent and waits for its "
            "/healthz; it loads no model and sends no inference, so it does less than edgectl. **No-op**: the same "
            "command again, nothing changed (edgectl: observe + plan, nothing pushed or restarted; Ansible: the copy "
            "finds the file unchanged, no restart). Controller CPU: user + system seconds of the command and its "
            "children (ansible's forks and ssh clients). Devices' CPU: what the simulated devices' sshd (with its "
            "per-connection processes) and agents used meanwhile; on this machine they share the 2 CPUs with the "
            "controller, on a real fleet each device has its own.\n\n"
            + table(["run", "wall time", "controller CPU", "devices' CPU", "ratio", "target", ""], rows)
            + f"\n\nedgectl cold, from its run record: {before:.1f} s observing and planning, then {after:.1f} s "
            f"pushing, activating and gating (8 devices at a time). The no-op, profiled (cProfile, so slower): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in profile.items())
            + "; observing is the SSH handshake, one exec (token and $HOME), /healthz, facts and state per device, "
            "32 devices at a time.")
    print(body)
    if args.profile:
        print(profile_text)
    if not args.no_write:
        write_section("fleet_apply", f"Fleet apply, {args.devices} devices, vs an Ansible copy + restart playbook",
                      body, dists=("paramiko", "ansible-core"))
    print(f"fleet_apply: {args.devices} devices: edgectl cold {med['edgectl cold']:.1f} s = "
          + ", ".join(f"{med['edgectl cold'] / med[f'ansible cold (forks {f})']:.2f}x the playbook at forks {f}"
                      for f in forks)
          + f" (target <= {COLD_RATIO}x: {'met' if all(verdicts) else 'MISSED'}); no-op {med['edgectl no-op']:.2f} s "
          f"(target <= {NOOP_S:g} s: {'met' if noop_ok else 'MISSED'}); load {load_start:.1f} at start")


if __name__ == "__main__":
    main()

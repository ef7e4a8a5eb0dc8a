"""The `edgectl` command. Thin: parse, call, render with Rich. Errors print message + hint, no traceback
(set EDGECTL_DEBUG=1 for one)."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgectl import __version__
from edgectl.errors import EdgectlError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Declarative edge deployment of quantized AI models.")
out = Console()
err = Console(stderr=True)

PathsArg = typer.Argument(..., help="Manifest files or directories (multi-document YAML).")
DeviceOpt = typer.Option(None, "--device", "-d", help="Only these devices (repeatable).")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _load(paths: List[Path]):
    from edgectl.load import load_paths

    return load_paths(paths)


def _store():
    from edgectl.builders import ArtifactStore
    from edgectl.paths import store_dir

    return ArtifactStore(store_dir())


def _gib(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@app.command()
def validate(paths: List[Path] = PathsArg) -> None:
    """Check manifests: schema, references, duplicates. Exit code 2 with file:line:column on errors."""
    spec = _load(paths)
    out.print(f"[green]valid[/green]: {len(spec.fleets)} fleet(s), {len(spec.devices)} device(s), "
              f"{len(spec.deployments)} deployment(s), {len(spec.models)} model(s), {len(spec.profiles)} profile(s)")


@app.command()
def schema(write: Optional[Path] = typer.Option(None, "--write", help="Write to this file instead of stdout.")) -> None:
    """Print the JSON Schema of edgectl manifests (for yaml-language-server completion)."""
    from edgectl.schema import json_schema

    text = json.dumps(json_schema(), indent=2) + "\n"
    if write:
        write.write_text(text)
        err.print(f"wrote {write}")
    else:
        sys.stdout.write(text)


@app.command("plan")
def plan_cmd(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt, as_json: bool = JsonOpt) -> None:
    """Show, per device, the artifact edgectl would choose, why, and the steps apply would take."""
    from edgectl.apply import make_plan, observe, select_devices

    spec = _load(paths)
    contexts = observe(select_devices(spec, device), start_agents=False)
    p = make_plan(spec, contexts, _store())
    if as_json:
        sys.stdout.write(json.dumps(p.to_dict(), indent=2) + "\n")
        return
    render_plan(p, contexts)


def render_plan(p, contexts) -> None:
    for dp in p.devices:
        ctx = contexts.get(dp.device)
        color = {"ok": "green", "unfit": "red"}.get(dp.status, "yellow")
        budget = f"  RAM budget {_gib(dp.budget_bytes)}" if dp.budget_bytes else ""
        where = f"  platform {escape(dp.platform)}" if dp.platform else ""
        out.print(f"[bold]{dp.device}[/bold]  profile {dp.profile}  [{color}]{dp.status}[/]{budget}{where}")
        if ctx is not None and ctx.error:
            out.print(f"  [yellow]unreachable:[/yellow] {escape(ctx.error)}")
        for w in dp.warnings:
            out.print(f"  [yellow]warning:[/yellow] {escape(w)}")
        if dp.hint:
            out.print(f"  hint: {escape(dp.hint)}")
        for dep in dp.deployments:
            if dep.chosen is None:
                out.print(f"  {dep.deployment} ({dep.model}): [red]does not fit[/red]: {escape(dep.unfit or '')}")
                if dep.hint:
                    out.print(f"    hint: {escape(dep.hint)}")
                continue
            c = dep.chosen
            e = c.estimate
            gpu = e.total_bytes - c.ram_need if c.gpu_layers else 0
            out.print(f"  {dep.deployment}: [cyan]{c.recipe.model}[/cyan] → [bold]{c.recipe.format} {c.recipe.quant}"
                      f"[/bold] on {c.runtime}  RAM {_gib(c.ram_need)} of {_gib(dep.budget_bytes)} left for it"
                      f" (spare {_gib(dep.budget_bytes - c.ram_need)})" + (f", GPU {_gib(gpu)}" if gpu else "")
                      + (f"  measured: {c.quality.summary()}" if c.quality is not None else ""))
            out.print(f"    [dim]= weights {_gib(e.weights_bytes)}{'' if e.weights_exact else ' (est.)'}"
                      f" + KV cache {_gib(e.kv_bytes)} + compute {_gib(e.compute_bytes)}"
                      f" + agent {_gib(e.runtime_bytes)}[/dim]")
            out.print(f"    why: {escape(c.reason)}")
            for rc in dep.rejected[:8]:
                out.print(f"    [dim]not {rc.label}: {escape(rc.reason)}[/dim]")
            if len(dep.rejected) > 8:
                out.print(f"    [dim]... {len(dep.rejected) - 8} more (--json shows all)[/dim]")
            if dep.steps:
                out.print("    steps: " + ", ".join(s.action + (f" ({escape(s.detail)})" if s.detail else "")
                                                     for s in dep.steps))
            else:
                out.print("    steps: [green]none (up to date)[/green]")
        for s in dp.removals:
            out.print(f"  {s.deployment}: [yellow]remove[/yellow] ({s.detail})")
    if p.is_empty:
        out.print("[green]no changes[/green]")


@app.command("build")
def build_cmd(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt) -> None:
    """Build the planned artifacts into the local content-addressed store, without deploying."""
    from edgectl.apply import build_planned, make_plan, observe, select_devices

    spec = _load(paths)
    contexts = observe(select_devices(spec, device), start_agents=False)
    store = _store()
    p = make_plan(spec, contexts, store)
    with RichEvents() as events:
        built = build_planned(spec, p, store, events)
    for art, fresh in built.values():
        out.print(f"{'built' if fresh else 'cached'}  {art.model} {art.format} {art.quant}  {_gib(art.size_bytes)}"
                  f"  {art.digest}")
    if not built:
        out.print("nothing to build")


@app.command("apply")
def apply_cmd(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt,
              skip_unfit: bool = typer.Option(False, "--skip-unfit",
                                              help="Deploy to the devices that fit; leave unfit ones untouched."),
              parallel: int = typer.Option(8, "--parallel", min=1, max=256,
                                           help="Devices of a wave worked on at once (Ansible: forks); "
                                                "reading the devices' state overlaps at least 32."),
              engine: Optional[str] = typer.Option(None, "--engine",
                                                   help="ssh | ansible: how SSH devices are worked on; overrides "
                                                        "each Fleet's spec.engine.")) -> None:
    """Make the devices match the manifests: plan, build, then each deployment's rollout (waves, health gate,
    rollback), remove. Idempotent. Writes a run record (`edgectl runs`)."""
    from edgectl.apply import apply
    from edgectl.runs import RunRecord

    spec = _load(paths)
    record = RunRecord("apply", [str(p) for p in paths])
    try:
        with RichEvents() as events:
            result = apply(spec, store=_store(), device_names=device, skip_unfit=skip_unfit, events=events,
                           parallel=parallel, record=record, engine=engine)
    except EdgectlError as e:
        record.data["error"] = str(e)
        record.finish("error")
        raise
    record.finish("ok" if result.ok else "halted" if result.halted else "failed", plan=result.plan.to_dict(),
                  devices=[vars(r) for r in result.devices])
    if not result.changed and result.ok:
        out.print("[green]no changes[/green]: every device already serves what the manifests ask for")
    for r in result.devices:
        if r.error:
            err.print(f"[red]{r.device}: failed[/red]\n{escape(r.error)}")
        if r.actions:
            out.print(f"[{'yellow' if r.error else 'green'}]{r.device}[/]: " + ", ".join(r.actions))
    for why in result.halted:
        err.print(f"[red]rollout halted[/red]: {escape(why)}")
    for r in result.devices:
        if r.serving and r.endpoint and not r.error:
            for name in r.serving:
                out.print(f"\n[bold]{name}[/bold] is serving on [bold]{r.device}[/bold] at [cyan]{r.endpoint}[/cyan]")
                out.print("Try it:\n"
                          f"  curl -s {r.endpoint}/chat/completions -H 'Content-Type: application/json' \\\n"
                          f"    -d '{{\"model\": \"{name}\", \"temperature\": 0, \"messages\": ["
                          f"{{\"role\": \"system\", \"content\": \"You are a helpful AI assistant.\"}}, "
                          f"{{\"role\": \"user\", \"content\": \"What is the capital of France?\"}}]}}'",
                          soft_wrap=True)
    if result.changed or not result.ok:
        err.print(f"[dim]run record: {record.id} (edgectl runs {record.id})[/dim]")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def runs(run_id: Optional[str] = typer.Argument(None, help="Show this run (an id, a unique prefix, or 'last')."),
         as_json: bool = JsonOpt) -> None:
    """List past apply/rollback runs, newest first, or show one: plan, waves, per-device results and events."""
    from edgectl.runs import list_runs, load_run

    if run_id is None:
        records = list_runs()
        if as_json:
            sys.stdout.write(json.dumps(records, indent=2) + "\n")
            return
        table = Table("run", "command", "started", "outcome", "changed", "failed")
        for r in records:
            devs = r.get("devices") or []
            color = {"ok": "green", "halted": "red", "failed": "red"}.get(r.get("outcome"), "yellow")
            table.add_row(r["id"], r.get("command", "?"), r.get("started_at", "?")[:19],
                          f"[{color}]{r.get('outcome')}[/]", str(sum(1 for d in devs if d.get("actions"))),
                          str(sum(1 for d in devs if d.get("error"))))
        out.print(table if records else "no runs recorded yet (edgectl apply writes one)")
        return
    r = load_run(run_id)
    if as_json:
        sys.stdout.write(json.dumps(r, indent=2) + "\n")
        return
    out.print(f"[bold]{r['id']}[/bold]  {r.get('command')}  {' '.join(r.get('manifests') or [])}  "
              f"outcome [bold]{r.get('outcome')}[/bold]  {r.get('started_at', '')[:19]} → "
              f"{(r.get('finished_at') or '')[:19]}")
    for w in r.get("waves", []):
        out.print(f"  {w['deployment']} wave {w['index'] + 1}{' (canary)' if w.get('canary') else ''}: "
                  f"{', '.join(w['devices'])} → {w.get('outcome')}")
    for d in r.get("devices") or []:
        out.print(f"  {d['device']}: " + (", ".join(d.get("actions") or []) or "no changes")
                  + (f"  [red]error:[/red] {d['error']}" if d.get("error") else ""))
    for e in r.get("events", []):
        out.print(f"  [dim]{e['t'][11:19]} {e['device'] + ': ' if e.get('device') else ''}{e['message']}[/dim]")


@app.command()
def diff(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt, as_json: bool = JsonOpt) -> None:
    """Desired vs observed per device and deployment: in sync, not deployed, drift (another artifact served,
    failed, settings changed out of band), not desired. Exit code 1 when anything differs."""
    from edgectl.apply import diff as diff_rows, make_plan, observe, select_devices

    spec = _load(paths)
    contexts = observe(select_devices(spec, device), start_agents=False)
    rows = diff_rows(spec, contexts, make_plan(spec, contexts, _store()))
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
    else:
        table = Table("device", "deployment", "desired", "observed", "status")
        for r in rows:
            color = "green" if r["status"] == "in sync" else "red" if r["status"].startswith(("drift", "unfit")) \
                else "yellow"
            table.add_row(r["device"], r["deployment"], r["desired"], r["observed"], f"[{color}]{r['status']}[/]")
        out.print(table)
    if any(r["status"] != "in sync" for r in rows):
        raise typer.Exit(1)


@app.command()
def rollback(deployment: str = typer.Argument(..., help="The Deployment to roll back."),
             paths: List[Path] = PathsArg,
             device: Optional[List[str]] = DeviceOpt) -> None:
    """Return DEPLOYMENT to the artifact each device served before (the agent keeps it on disk). The next apply
    re-deploys what the manifests ask for: change them first to stay on the old artifact."""
    from edgectl.apply import rollback as do_rollback
    from edgectl.runs import RunRecord

    spec = _load(paths)
    record = RunRecord("rollback", [str(p) for p in paths])
    with RichEvents() as events:
        results = do_rollback(spec, deployment, device_names=device, events=events, record=record, store=_store())
    failed = [r for r in results if r.error]
    record.finish("ok" if not failed else "failed", devices=[vars(r) for r in results])
    for r in results:
        if r.error:
            err.print(f"[red]{r.device}[/red]: {escape(r.error)}")
        else:
            out.print(f"[green]{r.device}[/green]: " + ", ".join(r.actions))
    if failed or not results:
        raise typer.Exit(1)


@app.command()
def status(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt, as_json: bool = JsonOpt,
           watch: Optional[float] = typer.Option(None, "--watch", "-w", min=0.5, metavar="SECONDS",
                                                 help="Refresh every SECONDS; figures then cover each interval.")
           ) -> None:
    """Per device: reachable, deployment, artifact, state, tokens/s, p50/p95 latency, error rate, RAM used vs
    budget, disk free, drift (what `edgectl apply` would change)."""
    from edgectl.apply import select_devices
    from edgectl.observe import collect_status

    spec = _load(paths)
    devices = select_devices(spec, device)
    store = _store()
    if watch is None:
        statuses = collect_status(spec, devices, store=store)
        if as_json:
            sys.stdout.write(json.dumps([s.to_dict() for s in statuses], indent=2) + "\n")
        else:
            out.print(status_table(statuses))
        return
    import time

    from rich.live import Live

    previous = None
    with Live(console=out, auto_refresh=False) as live:
        try:
            while True:
                statuses = collect_status(spec, devices, store=store, previous=previous)
                previous = {s.device: s for s in statuses}
                live.update(status_table(statuses, window=watch), refresh=True)
                time.sleep(watch)
        except KeyboardInterrupt:
            pass


def status_table(statuses, *, window: float | None = None) -> Table:
    title = f"figures over the last {window:g} s (lifetime when idle)" if window else "figures since agent start"
    table = Table("device", "deployment", "artifact", "state", "tok/s", "p50 / p95", "errors", "RAM used / budget",
                  "disk free", "drift", title=title, title_justify="left")
    now = datetime.now(timezone.utc)
    for s in statuses:
        m = s.metrics
        ram = f"{_gib(m.rss_bytes if m else None)} / {_gib(s.budget_bytes)}"
        lat = f"{_secs(m.p50_s)} / {_secs(m.p95_s)}" if m and m.p50_s is not None else "-"
        errors = f"{m.error_rate:.1%} of {m.requests:.0f}" if m and m.error_rate is not None else "-"
        disk = _gib(m.disk_free_bytes) if m else "-"
        drift = "[green]none[/green]" if s.plan_status == "ok" and not s.drift else \
            f"[yellow]{_drift(s.drift)}[/yellow]" if s.drift else (s.plan_status or "-")
        device = s.device if s.reachable else f"{s.device}\n[red]unreachable[/red]"
        if not s.deployments:
            why = (s.error or "-").splitlines()[0]
            table.add_row(device, ", ".join(s.desired) or "-", "-", "-" if s.reachable else why, "-",
                          lat, errors, ram, disk, drift)
        for i, d in enumerate(s.deployments):
            a = d.active
            art = f"{a.format} {a.quant} {a.digest[7:19]}" if a else "-"
            color = {"serving": "green", "failed": "red"}.get(d.state, "yellow")
            state = f"[{color}]{d.state}[/] {_ago(now, d.since)}" + (f"\n{d.last_error}" if d.last_error else "")
            tps = m.tokens_per_s.get(d.name) if m else None
            first = i == 0  # device-wide figures once per device
            table.add_row(device if first else "", d.name, art, state, "-" if tps is None else f"{tps:.1f}",
                          lat if first else "", errors if first else "", ram if first else "",
                          disk if first else "", drift if first else "")
    return table


def _drift(steps: list[dict]) -> str:
    """apply's steps, one line per deployment: 'chat: build, push, activate' (--json has the details)."""
    by_dep: dict[str, list[str]] = {}
    for step in steps:
        by_dep.setdefault(step["deployment"], []).append(step["action"])
    return "\n".join(f"{dep}: {', '.join(actions)}" if dep else ", ".join(actions) for dep, actions in by_dep.items())


def _secs(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


metrics_app = typer.Typer(no_args_is_help=True, help="The fleet's metrics for Prometheus.")
app.add_typer(metrics_app, name="metrics")
prometheus_app = typer.Typer(no_args_is_help=True, help="Prometheus configuration for the fleet.")
app.add_typer(prometheus_app, name="prometheus")


@metrics_app.command("serve")
def metrics_serve(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt,
                  host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
                  port: int = typer.Option(9464, "--port", help="Port to listen on."),
                  timeout: float = typer.Option(5.0, "--timeout", min=0.1,
                                                help="Seconds a scrape of all devices may take; a device slower "
                                                     "than this reads edgectl_device_up 0.")) -> None:
    """Serve every device's agent metrics on one Prometheus endpoint (/metrics), read through each device's
    transport, with device/profile/deployment/model/format/quant labels and edgectl_device_up per device."""
    from edgectl.apply import select_devices
    from edgectl.collector import FleetCollector, make_server

    spec = _load(paths)
    collector = FleetCollector(select_devices(spec, device), timeout=timeout)
    server = make_server(collector, host, port)
    err.print(f"serving the metrics of {len(collector.devices)} device(s) on http://{host}:{server.server_port}"
              "/metrics")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        collector.close()


@prometheus_app.command("targets")
def prometheus_targets(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt,
                       write: Optional[Path] = typer.Option(None, "--write", help="Write to this file (atomically, "
                                                            "as Prometheus' file_sd wants) instead of stdout.")
                       ) -> None:
    """Print file_sd targets for Prometheus to scrape the agents directly (agents that listen beyond loopback)."""
    from edgectl.apply import select_devices
    from edgectl.collector import targets_json

    text = targets_json(select_devices(_load(paths), device))
    if write is None:
        sys.stdout.write(text)
        return
    tmp = write.with_name(write.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, write)
    err.print(f"wrote {write}")


@app.command()
def stop(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt) -> None:
    """Stop the local agents edgectl started for these devices (they resume serving on the next apply)."""
    from edgectl.agents import connect
    from edgectl.apply import select_devices

    spec = _load(paths)
    for d in select_devices(spec, device):
        if d.transport.type == "local":
            stopped = connect(d).stop()
            out.print(f"{d.name}: {'stopped' if stopped else 'not running'}")


@app.command()
def trust(device_name: str = typer.Argument(..., metavar="DEVICE", help="The SSH device whose host key to pin."),
          paths: List[Path] = PathsArg,
          yes: bool = typer.Option(False, "--yes", "-y", help="Pin without asking (only after checking the "
                                   "fingerprint out of band)."),
          replace: bool = typer.Option(False, "--replace", help="Replace a different key edgectl pinned before "
                                       "(a reinstalled device).")) -> None:
    """Fetch an SSH device's host key, show its fingerprint and pin it in edgectl's known_hosts."""
    from edgectl.apply import select_devices
    from edgectl.transport.ssh import check_trust
    from edgectl.transport.ssh_trust import pin_host_key

    [device] = select_devices(_load(paths), [device_name])
    check = check_trust(device, replace=replace)
    if check.trusted:
        out.print(f"{device.name} ({check.name}) is already trusted: {check.shown}")
        return
    out.print(f"{device.name} ({check.name}) presents {check.shown}")
    if not yes and not typer.confirm("Check it on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub). "
                                     "Trust this key?", default=False):
        err.print("not pinned")
        raise typer.Exit(1)
    path = pin_host_key(check.host, check.port, check.key, replace=replace)
    out.print(f"pinned in {path}")


@app.command()
def keygen(path: Path = typer.Argument(..., help="Where to write the private key; the public key goes to PATH.pub.")
           ) -> None:
    """Make an ed25519 key pair for signing deployments (never overwrites): PATH, the private key (mode 0600), for
    a Fleet's spec.signing.key_file; PATH.pub, the public key, for each device's `edgectl-agent serve
    --verify-key-file`."""
    from edgectl.signing import generate_key, public_key_path

    key_id = generate_key(path)
    out.print(f"wrote {path} (private, 0600) and {public_key_path(path)} (public)\nkey id {key_id}\n"
              f"next: `signing: {{key_file: {path}}}` in the Fleet's spec; start each device's agent with "
              f"--verify-key-file pointing at a copy of {public_key_path(path)} (local agents get it on their first "
              "start by edgectl apply)")


@app.command()
def version() -> None:
    """Print the versions of edgectl and edgectl-agent."""
    from edgectl_agent import __version__ as agent_version

    out.print(f"edgectl {__version__}, edgectl-agent {agent_version}")


def _ago(now: datetime, then: datetime) -> str:
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    s = int((now - then).total_seconds())
    text = f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"
    return f"{then.strftime('%Y-%m-%d %H:%M:%S')} ({text} ago)"


class RichEvents:
    """Renders apply's events: one line per step, a progress bar per long transfer/build."""

    def __init__(self) -> None:
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                  TimeRemainingColumn(), console=err, transient=True)
        self._tasks: dict[str, int] = {}

    def __enter__(self):
        from edgectl.apply import Events

        outer = self

        class _E(Events):
            def info(self, device, message):
                outer._progress.console.print(f"[dim]{device + ': ' if device else ''}{escape(message)}[/dim]")

            def progress(self, key, description, done, total):
                if key not in outer._tasks:
                    outer._tasks[key] = outer._progress.add_task(description, total=total)
                outer._progress.update(outer._tasks[key], completed=done, total=total)

        self._progress.start()
        return _E()

    def __exit__(self, *exc) -> None:
        self._progress.stop()


def main() -> None:
    try:
        rc = app(standalone_mode=False)  # click returns (not raises) the code of typer.Exit in this mode
    except EdgectlError as e:
        if os.environ.get("EDGECTL_DEBUG") == "1":
            raise
        _print_error(e)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise
    if isinstance(rc, int) and rc:
        sys.exit(rc)


def _print_error(e: EdgectlError) -> None:
    from rich.text import Text

    err.print(Text("error: ", style="red") + Text(str(e)))


if __name__ == "__main__":
    main()

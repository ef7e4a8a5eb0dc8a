"""The `edgectl` command. Thin: parse, call, render with Rich. Errors print message + hint, no traceback
(set EDGECTL_DEBUG=1 for one)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from edgectl import __version__
from edgectl.errors import EdgectlError
from edgectl.render import RichEvents, err, gib, out, render_plan, status_table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Declarative edge deployment of quantized AI models.")

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
def plan_cmd(paths: List[Path] = PathsArg, device: Optional[List[str]] = DeviceOpt, as_json: bool = JsonOpt,
             offline: bool = typer.Option(False, "--offline",
                                          help="Contact no device: plan from the manifests and profiles alone "
                                               "(devices with profile 'auto' stay unknown).")) -> None:
    """Show, per device, the artifact edgectl would choose, why, and the steps apply would take."""
    from edgectl.apply import DeviceContext, make_plan, observe, select_devices

    spec = _load(paths)
    devices = select_devices(spec, device)
    contexts = ({d.name: DeviceContext(d) for d in devices} if offline
                else observe(devices, start_agents=False))
    p = make_plan(spec, contexts, _store(), reported=not offline)
    if as_json:
        sys.stdout.write(json.dumps(p.to_dict(), indent=2) + "\n")
        return
    render_plan(p, contexts)


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
        out.print(f"{'built' if fresh else 'cached'}  {art.model} {art.format} {art.quant}  {gib(art.size_bytes)}"
                  f"  {art.digest}")
    if not built:
        out.print("nothing to build")


@app.command("export")
def export_cmd(paths: List[Path] = PathsArg,
               device: str = typer.Option(..., "--device", "-d", help="Export what the plan chooses for this device."),
               deployment: Optional[str] = typer.Option(None, "--deployment",
                                                        help="The Deployment (default: the device's only one)."),
               to: Path = typer.Option(..., "--to", help="Folder to write the GGUF and its Modelfile into.")) -> None:
    """Write the GGUF a device would get, with a Modelfile that `ollama create` accepts (template, stop strings and
    context from the model and the Deployment), for devices that keep Ollama. Contacts no device."""
    from edgectl.export import export_ollama

    spec = _load(paths)
    with RichEvents() as events:
        result = export_ollama(spec, device, deployment, to, _store(), events)
    art = result.artifact
    out.print(f"wrote [bold]{escape(str(result.gguf))}[/bold]  {art.format} {art.quant}  {gib(art.size_bytes)}  "
              f"{art.digest}")
    out.print(f"wrote [bold]{escape(str(result.modelfile))}[/bold]")
    for note in result.notes:
        err.print(f"[yellow]note[/yellow]: {escape(note)}")
    out.print("Load it into Ollama:\n  " + " ".join(result.create_command), soft_wrap=True)


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
    built: dict = {}  # make_plan fills it with the store's artifacts: pull devices' digests are matched to them
    rows = diff_rows(spec, contexts, make_plan(spec, contexts, _store(), built), built)
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
def enroll(device_name: str = typer.Argument(..., metavar="DEVICE", help="The pull device to enrol."),
           paths: List[Path] = typer.Option(..., "--manifests", "-f", help="Manifest files or directories."),
           out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the pull config here (mode "
                                                   "0600) instead of printing it."),
           record: bool = typer.Option(False, "--record", help="First write the device's enrolment record to the "
                                       "registry of the Fleet with `inventory: [{registry: {}}]` (publish "
                                       "credentials), so it needs no line in a manifest."),
           fleet: Optional[str] = typer.Option(None, "--fleet", help="With --record: the Fleet, when several list "
                                               "their devices from a registry."),
           profile: Optional[str] = typer.Option(None, "--profile", help="With --record: the device's profile."),
           labels: List[str] = typer.Option([], "--label", "-l", help="With --record: a label KEY=VALUE "
                                            "(repeatable).")) -> None:
    """Print or write a pull device's agent configuration: the fleet's registry and repository, the read-only
    credentials ($<spec.pull.read_credentials_env>_USERNAME/_PASSWORD) and the fleet's verify key. On the device:
    `edgectl-agent serve --pull-config FILE`. With --record, enrol a device that no manifest names yet."""
    from edgectl.errors import PlanError
    from edgectl.pull.enroll import pull_config, record_enrolment, write_config

    if not record and (fleet or profile or labels):
        raise PlanError("--fleet, --profile and --label describe the enrolment record", hint="add --record")
    spec = _load(paths)
    if record:
        pairs = {}
        for item in labels:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise PlanError(f"--label {item!r} is not KEY=VALUE", hint="e.g. --label site=shop-a")
            pairs[key] = value
        where = record_enrolment(spec, device_name, fleet=fleet, profile=profile, labels=pairs)
        err.print(f"recorded {device_name} in {where}")  # stderr: stdout may be the config
        spec = _load(paths)  # the device now comes from the registry inventory
    config = pull_config(spec, device_name)
    if out_file is None:
        print(config.model_dump_json(indent=2))
        return
    write_config(config, out_file)
    out.print(f"wrote {out_file} (0600)\nnext: copy it to {device_name} and run `edgectl-agent serve "
              f"--pull-config {out_file.name}`")


@app.command()
def version() -> None:
    """Print the versions of edgectl and edgectl-agent."""
    from edgectl_agent import __version__ as agent_version

    out.print(f"edgectl {__version__}, edgectl-agent {agent_version}")


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

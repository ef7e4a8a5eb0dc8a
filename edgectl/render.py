"""Rich views for the CLI: the plan, the status table, and apply's events (a line per step, a bar per long
transfer or build). edgectl.cli parses and calls; this module only renders."""

from __future__ import annotations

from datetime import datetime, timezone

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

out = Console()
err = Console(stderr=True)


def gib(n: float | int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def render_plan(p, contexts) -> None:
    for dp in p.devices:
        ctx = contexts.get(dp.device)
        color = {"ok": "green", "unfit": "red"}.get(dp.status, "yellow")
        budget = f"  RAM budget {gib(dp.budget_bytes)}" if dp.budget_bytes else ""
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
                      f"[/bold] on {c.runtime}  RAM {gib(c.ram_need)} of {gib(dep.budget_bytes)} left for it"
                      f" (spare {gib(dep.budget_bytes - c.ram_need)})" + (f", GPU {gib(gpu)}" if gpu else "")
                      + (f"  measured: {c.quality.summary()}" if c.quality is not None else ""))
            out.print(f"    [dim]= weights {gib(e.weights_bytes)}{'' if e.weights_exact else ' (est.)'}"
                      f" + KV cache {gib(e.kv_bytes)} + compute {gib(e.compute_bytes)}"
                      f" + agent {gib(e.runtime_bytes)}[/dim]")
            out.print(f"    why: {escape(c.reason)}")
            if c.speed is not None:
                out.print(f"    speed: {c.speed.label()}, time to first token ~{c.speed.ttft_ms:.0f} ms for a "
                          f"{c.speed.prompt_tokens}-token prompt [dim]({escape(c.speed.basis)})[/dim]")
            elif c.recipe.kind == "llm":
                out.print("    speed: [dim]not estimated: the profile gives no memory_bandwidth_gbps / compute_gflops "
                          "(set them in the device's overrides)[/dim]")
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


def status_table(statuses, *, window: float | None = None) -> Table:
    title = f"figures over the last {window:g} s (lifetime when idle)" if window else "figures since agent start"
    table = Table("device", "deployment", "artifact", "state", "tok/s", "expected tok/s", "p50 / p95", "errors",
                  "RAM used / budget", "disk free", "drift", title=title, title_justify="left")
    now = datetime.now(timezone.utc)
    for s in statuses:
        m = s.metrics
        ram = f"{gib(m.rss_bytes if m else None)} / {gib(s.budget_bytes)}"
        lat = f"{_secs(m.p50_s)} / {_secs(m.p95_s)}" if m and m.p50_s is not None else "-"
        errors = f"{m.error_rate:.1%} of {m.requests:.0f}" if m and m.error_rate is not None else "-"
        disk = gib(m.disk_free_bytes) if m else "-"
        drift = "[green]none[/green]" if s.plan_status == "ok" and not s.drift else \
            f"[yellow]{_drift(s.drift)}[/yellow]" if s.drift else (s.plan_status or "-")
        device = s.device if s.reachable else f"{s.device}\n[red]unreachable[/red]"
        if not s.deployments:
            why = (s.error or "-").splitlines()[0]
            table.add_row(device, ", ".join(s.desired) or "-", "-", "-" if s.reachable else why, "-", "-",
                          lat, errors, ram, disk, drift)
        for i, d in enumerate(s.deployments):
            a = d.active
            art = f"{a.format} {a.quant} {a.digest[7:19]}" if a else "-"
            color = {"serving": "green", "failed": "red"}.get(d.state, "yellow")
            state = f"[{color}]{d.state}[/] {_ago(now, d.since)}" + (f"\n{d.last_error}" if d.last_error else "")
            tps = m.tokens_per_s.get(d.name) if m else None
            first = i == 0  # device-wide figures once per device
            table.add_row(device if first else "", d.name, art, state, "-" if tps is None else f"{tps:.1f}",
                          expected_speed(s.speed.get(d.name)), lat if first else "", errors if first else "", ram if first else "",
                          disk if first else "", drift if first else "")
    return table


def expected_speed(speed: dict | None) -> str:
    """The plan's decode speed for a deployment: 'measured 41.0 (est. 38)' where the device measured its artifact,
    else 'est. 38' (edgectl.plan.speed.Speed.to_dict)."""
    if not speed:
        return "-"
    if speed["source"] == "measured":
        est = speed.get("estimate")
        return f"measured {speed['decode_tokens_per_s']:.1f}" + (
            f"\n(est. {est['decode_tokens_per_s']:.0f})" if est else "")
    return f"est. {speed['decode_tokens_per_s']:.0f}"


def _drift(steps: list[dict]) -> str:
    """apply's steps, one line per deployment: 'chat: build, push, activate' (--json has the details)."""
    by_dep: dict[str, list[str]] = {}
    for step in steps:
        by_dep.setdefault(step["deployment"], []).append(step["action"])
    return "\n".join(f"{dep}: {', '.join(actions)}" if dep else ", ".join(actions) for dep, actions in by_dep.items())


def _secs(s: float | None) -> str:
    return "-" if s is None else f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


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

"""Fleet status: what each device's agent reports and measures, without changing anything (no agent is started).

State comes from the agent's control API; the numbers (tokens/s, latency, error rate, RAM, disk) from its /metrics,
read the same way the fleet collector reads them; RAM budget and drift from the plan (pure, no device touched).
Counters are cumulative: a single status shows lifetime figures, ``--watch`` the figures of each interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from edgectl_agent.api import DeploymentState, Facts

from edgectl.apply import DeviceContext, close_contexts, make_plan, observe
from edgectl.collector import parse_exposition
from edgectl.delivery import DELIVERY_MODES, by_delivery, mode_function
from edgectl.errors import EdgectlError
from edgectl.plan import selects
from edgectl.plan.settings import gate_steps
from edgectl.spec import Device, Spec

SERVING_PREFIXES = ("/v1/", "/v2/")
METRICS_TIMEOUT_S = 5.0

Samples = dict[tuple[str, frozenset], float]  # (sample name, labels) -> value


def samples_of(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value for f in parse_exposition(text) for s in f.samples}


def _sum(samples: Samples, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in samples.items()
               if n == name and all((k, val) in labels for k, val in match.items()))


def _delta(now: Samples, before: Samples | None) -> Samples:
    """Counter increase since ``before`` (a restarted agent's counters start again: then the value itself)."""
    if before is None:
        return now
    out = {}
    for key, v in now.items():
        old = before.get(key, 0.0)
        out[key] = v - old if v >= old else v
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative ``buckets`` (upper bound -> count), linear in a bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return lower  # in the +Inf bucket: the highest finite bound is all we can say
            return lower + (b - lower) * ((rank - below) / (count - below) if count > below else 0.0)
        lower, below = b, count
    return lower


@dataclass
class MetricsSummary:
    """What status shows from one device's metrics (a window, or lifetime when there is no earlier sample)."""

    tokens_per_s: dict[str, float] = field(default_factory=dict)  # deployment -> decode tokens/s
    p50_s: float | None = None
    p95_s: float | None = None
    requests: float = 0.0
    error_rate: float | None = None  # 5xx and 4xx answers / all answers, serving endpoints
    rss_bytes: float | None = None
    disk_free_bytes: float | None = None

    def to_dict(self) -> dict:
        return {"tokens_per_s": self.tokens_per_s, "p50_s": self.p50_s, "p95_s": self.p95_s,
                "requests": self.requests, "error_rate": self.error_rate, "rss_bytes": self.rss_bytes,
                "disk_free_bytes": self.disk_free_bytes}


def summarize(now: Samples, before: Samples | None = None) -> MetricsSummary:
    """Pure: the status figures from one agent's samples (``before``: the previous sample, for a window)."""
    d = _delta(now, before)
    if before is not None and _serving_requests(d) == 0 and _sum(d, "edgectl_agent_completion_tokens_total") == 0:
        d = now  # nothing happened in the window: show lifetime figures rather than blanks
    out = MetricsSummary()
    deployments = {dict(labels).get("deployment") for (n, labels) in d if n == "edgectl_agent_decode_seconds_total"}
    for dep in sorted(x for x in deployments if x):
        seconds = _sum(d, "edgectl_agent_decode_seconds_total", deployment=dep)
        if seconds > 0:
            out.tokens_per_s[dep] = _sum(d, "edgectl_agent_completion_tokens_total", deployment=dep) / seconds
    buckets: dict[float, float] = {}
    for (n, labels), v in d.items():
        if n == "edgectl_agent_request_duration_seconds_bucket":
            le = float(dict(labels)["le"])
            buckets[le] = buckets.get(le, 0.0) + v
    out.p50_s, out.p95_s = quantile(0.5, buckets), quantile(0.95, buckets)
    out.requests = _serving_requests(d)
    if out.requests:
        errors = sum(v for (n, labels), v in d.items() if n == "edgectl_agent_requests_total"
                     and dict(labels).get("endpoint", "").startswith(SERVING_PREFIXES)
                     and dict(labels).get("status", "").startswith(("4", "5")))
        out.error_rate = errors / out.requests
    rss = [v for (n, _), v in now.items() if n == "process_resident_memory_bytes"]
    out.rss_bytes = rss[0] if rss else None
    disk = [v for (n, _), v in now.items() if n == "edgectl_agent_store_disk_free_bytes"]
    out.disk_free_bytes = disk[0] if disk else None
    return out


def _serving_requests(d: Samples) -> float:
    return sum(v for (n, labels), v in d.items() if n == "edgectl_agent_requests_total"
               and dict(labels).get("endpoint", "").startswith(SERVING_PREFIXES))


@dataclass
class DeviceStatus:
    device: str
    reachable: bool
    endpoint: str | None
    error: str | None = None
    facts: Facts | None = None
    deployments: list[DeploymentState] = field(default_factory=list)
    desired: list[str] = field(default_factory=list)
    metrics: MetricsSummary | None = None
    samples: Samples | None = None  # kept for the next --watch round
    budget_bytes: int | None = None  # RAM the plan may use on the device
    drift: list[dict] = field(default_factory=list)  # apply's steps {action, deployment, detail}; empty = in sync
    plan_status: str | None = None  # ok | unfit | unknown
    # deployment -> the plan's expected speed of its chosen artifact (edgectl.plan.speed.Speed.to_dict: measured on
    # the device at enrolment, else estimated; a measured one carries the estimate beside it)
    speed: dict[str, dict] = field(default_factory=dict)
    # pull devices: deployment -> the last health gate its agent ran, {"gate_digest", "error"} (edgectl.pull.status)
    gates: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "reachable": self.reachable,
            "endpoint": self.endpoint,
            "error": self.error,
            "desired": self.desired,
            "deployments": [d.model_dump(mode="json") for d in self.deployments],
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "ram_budget_bytes": self.budget_bytes,
            "drift": self.drift,
            "plan_status": self.plan_status,
            "speed": self.speed,
        }

def collect_status(spec: Spec, devices: Iterable[Device], *, store=None,
                   previous: dict[str, DeviceStatus] | None = None, parallel: int = 8) -> list[DeviceStatus]:
    """Status of each device. ``store``: the local artifact store, for drift (None = no plan, no drift).
    ``previous``: the last round's statuses, so figures cover the interval since then. Devices are read
    ``parallel`` at a time, and every connection opened is closed before returning (``--watch`` calls this
    every few seconds)."""
    devices = list(devices)
    groups = by_delivery(devices)
    if set(groups) != {"push"} and devices:  # other modes (pull): read from their reports, never connected to
        found = {s.device: s for mode, group in groups.items() if mode != "push"
                 for s in mode_function(DELIVERY_MODES[mode].report)(spec, group)}
        if store is not None:  # their plans (speed: measured where they measured), from the facts they reported
            reported = [s for s in found.values() if s.facts is not None]
            plans = _add_plan(spec, {s.device: DeviceContext(spec.devices[s.device], facts=s.facts)
                                     for s in reported}, store, reported)
            for s in reported:  # not push steps: a pull device's drift is a gate it has not passed yet
                s.drift = gate_steps(plans[s.device], s) if s.device in plans else []
        if "push" in groups:
            found.update((s.device, s) for s in collect_status(spec, groups["push"], store=store, previous=previous,
                                                               parallel=parallel))
        return [found[d.name] for d in devices]
    contexts = observe(devices, start_agents=False, parallel=parallel)
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(devices)))) as pool:
            out = list(pool.map(lambda d: _device_status(spec, d, contexts[d.name], previous), devices))
        if store is not None:
            _add_plan(spec, contexts, store, out)
    finally:
        close_contexts(contexts)
    return out


def _device_status(spec: Spec, device: Device, ctx, previous: dict[str, DeviceStatus] | None) -> DeviceStatus:
    desired = sorted(name for name, dep in spec.deployments.items() if selects(dep.spec.selector, device))
    st = DeviceStatus(device.name, reachable=ctx.client is not None,
                      endpoint=ctx.transport.endpoint if ctx.transport else None,
                      error=ctx.error or (None if ctx.client else "agent not running"),
                      facts=ctx.facts, desired=desired)
    if ctx.observed is not None:
        st.deployments = list(ctx.observed.deployments)
    if ctx.client is not None:
        try:
            st.samples = samples_of(ctx.client.metrics(timeout=METRICS_TIMEOUT_S))
            before = previous.get(device.name) if previous else None
            st.metrics = summarize(st.samples, before.samples if before else None)
        except (EdgectlError, ValueError) as e:
            st.error = f"metrics: {e}"
    return st


def _add_plan(spec: Spec, contexts, store, statuses: list[DeviceStatus]) -> dict:
    """Each status's plan figures and drift; returns the device plans by device ({} when it cannot plan)."""
    try:
        p = make_plan(spec, contexts, store)
    except EdgectlError as e:
        for st in statuses:
            st.drift = [{"action": "cannot plan", "deployment": "", "detail": e.message}]
        return {}
    by_device = {dp.device: dp for dp in p.devices}
    for st in statuses:
        dp = by_device.get(st.device)
        if dp is None:
            continue
        st.plan_status = dp.status
        st.budget_bytes = dp.budget_bytes or None
        st.drift = [s.to_dict() for s in dp.steps]
        st.speed = {d.deployment: d.chosen.speed.to_dict() for d in dp.deployments
                    if d.chosen is not None and d.chosen.speed is not None}
    return by_device

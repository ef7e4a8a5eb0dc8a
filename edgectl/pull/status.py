"""`edgectl status` for pull devices: their last reports, read from Prometheus's HTTP API, never from the device.

Agents push a report to the Pushgateway (edgectl_agent.pull_report) when a poll changed what it says, and at least
every heartbeat (``edgectl_pull_heartbeat_seconds``, in the report); Prometheus scrapes it. Last seen is the
gateway's own ``push_time_seconds`` of the last report (the device's clock may be wrong); a device is "stale" when
it has not reported for its heartbeat plus STALE_POLLS - 1 poll intervals (jitter and one missed poll allowed;
agents without a heartbeat report every poll), or when it reports that the
registry serves it an expired state. Each report also says, per deployment, which health gate its agent ran last
(``gate_digest`` of ``edgectl_pull_gate_info``; ``DeviceStatus.gates``): edgectl diff compares it with the plan's.
Each report also carries the device's facts (the enrolment benchmark
included): :func:`reported_facts` gives them to the planner, so a pull device is planned from its measured
hardware the way a push device is from GET /control/facts.
"""

from __future__ import annotations

import json

from dataclasses import dataclass
from datetime import datetime, timezone

import httpx
import pydantic
from edgectl_agent.api import ArtifactRef, DeploymentState, Facts

from edgectl.agent_client import SmokeResult
from edgectl.observe import DeviceStatus
from edgectl.plan import selects
from edgectl.spec import Device, Spec

STALE_POLLS = 2.5
CLOCK_SKEW_WARN_S = 60.0  # as the agent's own warning (edgectl_agent.pull.CLOCK_SKEW_WARN_S)
JOB = "edgectl_pull"


def query_reports(prometheus: str, timeout: float = 10.0) -> dict[str, list[dict]]:
    """device -> the Prometheus series of its last report (``{"metric": {...}, "value": [ts, "v"]}``)."""
    r = httpx.get(f"{prometheus.rstrip('/')}/api/v1/query", timeout=timeout,
                  params={"query": f'{{job="{JOB}",__name__=~"edgectl_pull_.+|push_time_seconds"}}'})
    r.raise_for_status()
    out: dict[str, list[dict]] = {}
    for series in r.json()["data"]["result"]:
        device = series["metric"].get("device")
        if device:
            out.setdefault(device, []).append(series)
    return out


def _value(series: list[dict], name: str) -> float | None:
    for s in series:
        if s["metric"].get("__name__") == name:
            return float(s["value"][1])
    return None


def facts_of(series: list[dict] | None) -> Facts | None:
    """The facts a device's last report carried (None: none, or from an agent that does not report them; a report
    that does not parse is ignored: the device is then planned from its profile, as before it reported)."""
    for s in series or ():
        if s["metric"].get("__name__") == "edgectl_pull_facts_info" and s["metric"].get("facts"):
            try:
                return Facts.model_validate_json(s["metric"]["facts"])
            except pydantic.ValidationError:
                return None
    return None


def reported_facts(spec: Spec, devices: list[Device], *, timeout: float = 3.0) -> dict[str, Facts | None]:
    """device -> the facts its last report carried, for pull ``devices`` (read from their fleets' Prometheus; a
    Prometheus that cannot be read gives no facts: those devices are planned from their profiles)."""
    fleet_of = {d.name: f for f in spec.fleets.values() for d in f.spec.devices}
    reports: dict[str, dict[str, list[dict]]] = {}
    out: dict[str, Facts | None] = {}
    for device in devices:
        fleet = fleet_of.get(device.name)
        prometheus = fleet.spec.pull.prometheus if fleet is not None and fleet.spec.pull is not None else None
        if prometheus is None:
            out[device.name] = None
            continue
        if prometheus not in reports:
            try:
                reports[prometheus] = query_reports(prometheus, timeout=timeout)
            except (httpx.HTTPError, KeyError, ValueError):
                reports[prometheus] = {}
        out[device.name] = facts_of(reports[prometheus].get(device.name))
    return out


def device_status(spec: Spec, device: Device, series: list[dict] | None, *, now: datetime) -> DeviceStatus:
    desired = sorted(n for n, dep in spec.deployments.items() if selects(dep.spec.selector, device))
    st = DeviceStatus(device.name, reachable=False, endpoint="pull", desired=desired)
    if not series:
        st.error = "never seen: no report from this pull device in Prometheus (enrolled? agent running?)"
        return st
    st.facts = facts_of(series)
    seen = _value(series, "push_time_seconds") or _value(series, "edgectl_pull_last_seen_timestamp_seconds") or 0
    interval = _value(series, "edgectl_pull_poll_interval_seconds") or 0
    age = now.timestamp() - seen
    outcome = next((s["metric"].get("outcome") for s in series
                    if s["metric"].get("__name__") == "edgectl_pull_outcome" and s["value"][1] == "1"), None)
    # An agent that reports only on change says how long it may stay silent (its heartbeat); older ones report
    # every poll.
    heartbeat = max(_value(series, "edgectl_pull_heartbeat_seconds") or 0, interval)
    overdue = interval > 0 and age > heartbeat + (STALE_POLLS - 1) * interval
    st.reachable = not overdue and outcome != "stale"
    st.endpoint = f"pull, last seen {age:.0f} s ago, state v{_value(series, 'edgectl_pull_applied_version') or 0:.0f}"
    if overdue:
        st.error = (f"stale: last seen {age:.0f} s ago, it polls every {interval:.0f} s"
                    + (f" and reports at least every {heartbeat:.0f} s" if heartbeat > interval else ""))
    elif outcome == "stale":
        st.error = "stale: the registry serves it an expired state (run `edgectl apply` to publish a fresh one)"
    elif outcome not in (None, "applied", "unchanged"):
        st.error = f"last poll: {outcome}"
    skew = _value(series, "edgectl_pull_clock_skew_seconds")
    if skew is not None and abs(skew) > CLOCK_SKEW_WARN_S:
        st.error = ((st.error + "; ") if st.error else "") + (
            f"its clock is {skew:+.0f} s off the registry's: set its time (NTP), expiry is judged by that clock")
    for s in series:
        m = s["metric"]
        if m.get("__name__") == "edgectl_pull_gate_info" and m.get("deployment"):
            st.gates[m["deployment"]] = {"gate_digest": m.get("gate_digest") or None, "error": m.get("error") or None}
        if m.get("__name__") != "edgectl_pull_deployment_since_timestamp_seconds":
            continue
        since = datetime.fromtimestamp(float(s["value"][1]), timezone.utc)
        st.deployments.append(DeploymentState(
            name=m["deployment"], state=m.get("state", "serving"), since=since,
            active=ArtifactRef(digest=m["digest"], format=m["format"], quant=m["quant"], model=m.get("model", ""),
                               size_bytes=int(m.get("size_bytes", "0")))))
    return st


def pull_statuses(spec: Spec, devices: list[Device], *, now: datetime | None = None) -> list[DeviceStatus]:
    now = now or datetime.now(timezone.utc)
    fleet_of = {d.name: f for f in spec.fleets.values() for d in f.spec.devices}
    reports: dict[str, dict[str, list[dict]] | str] = {}
    out = []
    for device in devices:
        pull = fleet_of[device.name].spec.pull
        if pull.prometheus is None:
            st = device_status(spec, device, None, now=now)
            st.error = ("pull device: its reports are not read (set spec.pull.pushgateway and spec.pull.prometheus "
                        "on its Fleet, and enroll it again)")
            out.append(st)
            continue
        if pull.prometheus not in reports:
            try:
                reports[pull.prometheus] = query_reports(pull.prometheus)
            except (httpx.HTTPError, KeyError, ValueError) as e:
                reports[pull.prometheus] = f"cannot read pull devices' reports from {pull.prometheus}: {e}"
        found = reports[pull.prometheus]
        if isinstance(found, str):
            st = device_status(spec, device, None, now=now)
            st.error = found
        else:
            st = device_status(spec, device, found.get(device.name), now=now)
        out.append(st)
    return out


@dataclass(frozen=True)
class GateSeen:
    """The smoke request a pull device sent itself after applying state ``version`` (edgectl_agent.pull_gate)."""

    digest: str
    version: int
    result: SmokeResult
    error: str | None
    answers: tuple[str, ...] = ()  # to the gate's golden prompts after the first (SmokeRequest.more), in order
    gate_digest: str | None = None  # the health gate it ran (None: an agent from before it reported one)


@dataclass(frozen=True)
class DeviceReport:
    """One pull device's last report, as edgectl.pull.rollout reads it while a wave is out."""

    seen: float  # the Pushgateway's push time (edgectl's clock domain), seconds since the epoch
    version: int  # highest state version the agent accepted
    applied_version: int  # highest state version it fully applied
    outcome: str | None
    error: str | None
    gates: dict[str, GateSeen]


def device_report(series: list[dict]) -> DeviceReport:
    def value(name: str) -> float:
        return _value(series, name) or 0.0

    outcome = next((s["metric"].get("outcome") for s in series
                    if s["metric"].get("__name__") == "edgectl_pull_outcome" and s["value"][1] == "1"), None)
    error = next((s["metric"].get("error") for s in series
                  if s["metric"].get("__name__") == "edgectl_pull_error_info"), None)
    timings: dict[tuple[str, str], float] = {}
    for s in series:
        m = s["metric"]
        if m.get("__name__", "").startswith("edgectl_pull_gate_") and m["__name__"] != "edgectl_pull_gate_info":
            timings[(m["deployment"], m["__name__"])] = float(s["value"][1])
    gates = {}
    for s in series:
        m = s["metric"]
        if m.get("__name__") != "edgectl_pull_gate_info":
            continue
        name = m["deployment"]
        tokens = timings.get((name, "edgectl_pull_gate_tokens"))
        gates[name] = GateSeen(digest=m.get("digest", ""), version=int(m.get("version", "0")),
                               result=SmokeResult(ttft_s=timings.get((name, "edgectl_pull_gate_ttft_seconds")),
                                                  tokens=int(tokens) if tokens is not None else None,
                                                  decode_s=timings.get((name, "edgectl_pull_gate_decode_seconds")),
                                                  text=m.get("answer") or None),
                               error=m.get("error") or None, answers=_answers(m.get("answers")),
                               gate_digest=m.get("gate_digest") or None)
    return DeviceReport(seen=value("push_time_seconds") or value("edgectl_pull_last_seen_timestamp_seconds"),
                        version=int(value("edgectl_pull_state_version")),
                        applied_version=int(value("edgectl_pull_applied_version")),
                        outcome=outcome, error=error, gates=gates)


def _answers(label: str | None) -> tuple[str, ...]:
    """The ``answers`` label (a JSON list of strings; absent from agents without golden prompts 2..n)."""
    try:
        value = json.loads(label) if label else []
    except ValueError:
        return ()
    return tuple(str(a) for a in value) if isinstance(value, list) else ()


def read_reports(prometheus: str) -> dict[str, DeviceReport]:
    """device -> its last report, from Prometheus's HTTP API."""
    return {device: device_report(series) for device, series in query_reports(prometheus).items()}

"""Pull mode's status report: what the agent tells the outside world, pushed to a Prometheus Pushgateway.

A pull device is never dialled, so its state travels outward: after a poll whose outcome changed what the report
says (and at least every ``heartbeat_s``, so "last seen" and "stale" keep working; the report carries it) the agent
PUTs its metrics group ``job="edgectl_pull", device="<name>"`` to the Pushgateway named in its pull config
(``report_url``); Prometheus
scrapes the gateway (``honor_labels: true``) and edgectl reads the figures back through Prometheus's HTTP API
(edgectl.pull.status). Pushgateway rather than remote write: the agent already speaks the Prometheus text format
(prometheus-client), the gateway keeps each device's last report, which is exactly "last seen", and remote write
would add protobuf and snappy to the device for one small message per poll.

The device's facts travel in the same report, as the JSON of the Facts model in one label of an info series
(``edgectl_pull_facts_info``): a few KiB, replaced whole at each report, read back whole by edgectl.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request

from edgectl_agent.api import DeploymentState, Facts
from edgectl_agent.pull_state import PullStatus

log = logging.getLogger(__name__)
JOB = "edgectl_pull"
OUTCOMES = ("unchanged", "applied", "refused", "stale", "failed", "registry_unreachable", "error", "no_state")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def report_text(status: PullStatus, deployments: list[DeploymentState], *, now: float | None = None,
                facts: Facts | None = None, heartbeat_s: float | None = None) -> str:
    """The Prometheus text exposition of one poll's outcome and what serves, and the device's ``facts`` (what a
    push device answers on GET /control/facts, the enrolment benchmark included): the planner plans a pull device
    from them (edgectl.pull.status.reported_facts)."""
    now = time.time() if now is None else now
    expires = status.expires_at.timestamp() if status.expires_at else 0
    lines = ["# TYPE edgectl_pull_last_seen_timestamp_seconds gauge",
             f"edgectl_pull_last_seen_timestamp_seconds {now:.3f}",
             "# TYPE edgectl_pull_state_version gauge", f"edgectl_pull_state_version {status.version}",
             "# TYPE edgectl_pull_applied_version gauge", f"edgectl_pull_applied_version {status.applied_version}",
             "# TYPE edgectl_pull_poll_interval_seconds gauge",
             f"edgectl_pull_poll_interval_seconds {status.poll_interval_s or 0}",
             "# TYPE edgectl_pull_state_expires_timestamp_seconds gauge",
             f"edgectl_pull_state_expires_timestamp_seconds {expires:.0f}",
             "# TYPE edgectl_pull_outcome gauge"]
    lines += [f'edgectl_pull_outcome{{outcome="{o}"}} {int(o == status.outcome)}' for o in OUTCOMES]
    if heartbeat_s is not None:
        lines += ["# TYPE edgectl_pull_heartbeat_seconds gauge", f"edgectl_pull_heartbeat_seconds {heartbeat_s:.0f}"]
    if status.error:
        lines += ["# TYPE edgectl_pull_error_info gauge",
                  f'edgectl_pull_error_info{{error="{_label(status.error[:300])}"}} 1']
    if status.clock_skew_s is not None:
        lines += ["# TYPE edgectl_pull_clock_skew_seconds gauge",
                  f"edgectl_pull_clock_skew_seconds {status.clock_skew_s:.1f}"]
    lines += _gate_lines(status)
    if facts is not None:
        lines += ["# TYPE edgectl_pull_facts_info gauge",
                  f'edgectl_pull_facts_info{{facts="{_label(facts.model_dump_json(exclude_defaults=True))}"}} 1']
    lines.append("# TYPE edgectl_pull_deployment_since_timestamp_seconds gauge")
    for d in deployments:
        a = d.active
        if a is None:
            continue
        labels = (f'deployment="{_label(d.name)}",state="{d.state}",digest="{a.digest}",format="{a.format}",'
                  f'quant="{_label(a.quant)}",model="{_label(a.model or "")}",size_bytes="{a.size_bytes}"')
        lines.append(f"edgectl_pull_deployment_since_timestamp_seconds{{{labels}}} {d.since.timestamp():.0f}")
    return "\n".join(lines) + "\n"


def _gate_lines(status: PullStatus) -> list[str]:
    """The last health-gate smoke request per deployment: one info series (version, digest, answer, error, and
    ``gate_digest``: the health gate it ran, which edgectl diff compares with the plan's) and its timings
    (edgectl.pull.status reads them back into a SmokeResult and judges it with the push gate rule)."""
    if not status.gates:
        return []
    lines = ["# TYPE edgectl_pull_gate_info gauge"]
    timings: list[str] = []
    for name, g in sorted(status.gates.items()):
        labels = f'deployment="{_label(name)}",digest="{g.digest}",version="{g.version}"'
        answers = f',answers="{_label(json.dumps(g.answers))}"' if g.answers else ""  # golden prompts 2..n
        gate = f',gate_digest="{g.gate_digest}"' if g.gate_digest else ""  # which health gate it ran
        lines.append(f'edgectl_pull_gate_info{{{labels},answer="{_label(g.answer or "")}",'
                     f'error="{_label(g.error or "")}"{answers}{gate}}} 1')
        for metric, value in (("ttft_seconds", g.ttft_s), ("tokens", g.tokens), ("decode_seconds", g.decode_s)):
            if value is not None:
                timings.append(f"edgectl_pull_gate_{metric}{{{labels}}} {value}")
    return lines + timings


# Lines that change at every poll without anything having happened: left out of what "changed" compares.
_VOLATILE = ("edgectl_pull_last_seen_timestamp_seconds ", "edgectl_pull_clock_skew_seconds ",
             "edgectl_pull_facts_info{")


def report_changed(text: str, last: str | None, *, skew_s: float | None, skew_warn_s: float) -> str:
    """What a report says that matters for "changed": ``text`` without its timestamp, clock skew and facts lines,
    plus whether the clock skew is past ``skew_warn_s``. Returns it when it differs from ``last`` (the value of
    the last report sent), else the empty string."""
    key = "\n".join(x for x in text.splitlines() if not x.startswith(_VOLATILE))
    key += f"\nskew_off {skew_s is not None and abs(skew_s) > skew_warn_s}"
    return key if key != last else ""


def push_report(url: str, device: str, text: str, timeout: float = 10.0) -> bool:
    """PUT ``text`` as the device's group on the Pushgateway at ``url``; False (logged) when that fails: a report
    that cannot leave never stops serving or polling."""
    target = f"{url.rstrip('/')}/metrics/job/{JOB}/device/{device}"
    req = urllib.request.Request(target, data=text.encode(), method="PUT",
                                 headers={"Content-Type": "text/plain; version=0.0.4"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
        return True
    except (urllib.error.URLError, OSError) as e:
        log.warning("pull: cannot report status to %s: %s", target, getattr(e, "reason", e))
        return False

"""Pull mode's status report: what the agent tells the outside world, pushed to a Prometheus Pushgateway.

A pull device is never dialled, so its state travels outward: after every poll the agent PUTs its metrics group
``job="edgectl_pull", device="<name>"`` to the Pushgateway named in its pull config (``report_url``); Prometheus
scrapes the gateway (``honor_labels: true``) and edgectl reads the figures back through Prometheus's HTTP API
(edgectl.pull.status). Pushgateway rather than remote write: the agent already speaks the Prometheus text format
(prometheus-client), the gateway keeps each device's last report, which is exactly "last seen", and remote write
would add protobuf and snappy to the device for one small message per poll.
"""

from __future__ import annotations

import logging
import time
import urllib.error
import urllib.request

from edgectl_agent.api import DeploymentState
from edgectl_agent.pull_state import PullStatus

log = logging.getLogger(__name__)
JOB = "edgectl_pull"
OUTCOMES = ("unchanged", "applied", "refused", "stale", "failed", "registry_unreachable", "error")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def report_text(status: PullStatus, deployments: list[DeploymentState], *, now: float | None = None) -> str:
    """The Prometheus text exposition of one poll's outcome and what serves."""
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
    lines.append("# TYPE edgectl_pull_deployment_since_timestamp_seconds gauge")
    for d in deployments:
        a = d.active
        if a is None:
            continue
        labels = (f'deployment="{_label(d.name)}",state="{d.state}",digest="{a.digest}",format="{a.format}",'
                  f'quant="{_label(a.quant)}",model="{_label(a.model or "")}",size_bytes="{a.size_bytes}"')
        lines.append(f"edgectl_pull_deployment_since_timestamp_seconds{{{labels}}} {d.since.timestamp():.0f}")
    return "\n".join(lines) + "\n"


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

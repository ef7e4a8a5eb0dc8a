"""Fleet status: what each device's agent reports, without changing anything (no agent is started)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from edgectl_agent.api import DeploymentState, Facts

from edgectl.apply import observe
from edgectl.plan import selects
from edgectl.spec import Device, Spec


@dataclass
class DeviceStatus:
    device: str
    reachable: bool
    endpoint: str | None
    error: str | None = None
    facts: Facts | None = None
    deployments: list[DeploymentState] = field(default_factory=list)
    desired: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "device": self.device,
            "reachable": self.reachable,
            "endpoint": self.endpoint,
            "error": self.error,
            "desired": self.desired,
            "deployments": [d.model_dump(mode="json") for d in self.deployments],
        }


def collect_status(spec: Spec, devices: Iterable[Device]) -> list[DeviceStatus]:
    devices = list(devices)
    contexts = observe(devices, start_agents=False)
    out = []
    for device in devices:
        ctx = contexts[device.name]
        desired = sorted(name for name, dep in spec.deployments.items()
                         if selects(dep.spec.selector, device))
        st = DeviceStatus(device.name, reachable=ctx.client is not None,
                          endpoint=ctx.transport.endpoint if ctx.transport else None,
                          error=ctx.error or (None if ctx.client else "agent not running"),
                          facts=ctx.facts, desired=desired)
        if ctx.observed is not None:
            st.deployments = list(ctx.observed.deployments)
        out.append(st)
    return out

"""How each device gets its desired state: the delivery modes, as data. apply, status, diff and the transports read
this one table instead of testing for pull devices themselves.

- **push**: edgectl reaches the device through a transport (edgectl.transport: local, ssh, docker) and the agent
  lifecycle with an installer per target (edgectl.agents), and rolls out through edgectl.apply; status and diff ask
  the live agent.
- **pull**: edgectl never connects. apply publishes to the fleet's registry (edgectl.pull.publish, with its waves in
  edgectl.pull.rollout); status and diff read what the device last reported (edgectl.pull.status).

A mode's functions are named ``"module:function"`` and imported only when a device uses the mode: edgectl.pull builds
on edgectl.apply and edgectl.observe, which read this table, so neither can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import import_module

from edgectl.spec import Device


@dataclass(frozen=True)
class DeliveryMode:
    name: str
    connects: bool  # edgectl opens a transport to the device (push) or never does (pull)
    publish: str | None = None  # apply for its devices: (spec, devices, *, store, events, skip_unfit) -> ApplyResult
    report: str | None = None  # status for its devices: (spec, devices) -> list[DeviceStatus], read from reports
    facts: str | None = None  # facts for the planner: (spec, devices) -> {device: Facts | None}, from reports
    refusal: str | None = None  # what a command that would connect to such a device says
    refusal_hint: str | None = None


PUSH = DeliveryMode("push", connects=True)
PULL = DeliveryMode(
    "pull", connects=False, publish="edgectl.pull.publish:publish_pull_devices",
    report="edgectl.pull.status:pull_statuses", facts="edgectl.pull.status:reported_facts",
    refusal="it is a pull device: edgectl never connects to it; its agent polls the fleet's registry",
    refusal_hint="`edgectl status` shows what it last reported (docs/pull.md); leave it out of this command with "
                 "--device")
DELIVERY_MODES: dict[str, DeliveryMode] = {m.name: m for m in (PUSH, PULL)}
# transport.type -> delivery mode, for the types that are not pushed through a transport
NOT_PUSHED: dict[str, str] = {"pull": "pull"}


def mode_of_transport(kind: str) -> DeliveryMode:
    return DELIVERY_MODES[NOT_PUSHED.get(kind, "push")]


def delivery_of(device: Device) -> DeliveryMode:
    return mode_of_transport(device.transport.type)


def by_delivery(devices: Iterable[Device]) -> dict[str, list[Device]]:
    """The devices per delivery mode's name, each list in the given order."""
    out: dict[str, list[Device]] = {}
    for d in devices:
        out.setdefault(delivery_of(d).name, []).append(d)
    return out


def mode_function(ref: str) -> Callable:
    """The function a mode names as ``"module:function"``."""
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)

"""Transports are dumb pipes: run a command (argv), put a file, open a channel to the device's agent.

Registered as data: ``TRANSPORTS`` maps a device's ``transport.type`` to the class that implements it, imported
only when a device uses it (paramiko and docker are optional extras). The agent's lifecycle above the transports
lives in edgectl.agents.
"""

from __future__ import annotations

from importlib import import_module

from edgectl.delivery import mode_of_transport
from edgectl.errors import TransportError
from edgectl.spec import Device
from edgectl.transport.base import Transport

# transport.type -> "module:Class"
TRANSPORTS: dict[str, str] = {
    "local": "edgectl.transport.local:LocalTransport",
    "ssh": "edgectl.transport.ssh:SshTransport",
    "docker": "edgectl.transport.docker:DockerTransport",
    "fake": "edgectl.transport.fake:FakeTransport",
}


def transport_class(kind: str) -> type[Transport]:
    target = TRANSPORTS.get(kind)
    mode = mode_of_transport(kind)
    if not mode.connects:  # no pipe by design (pull: the device's agent calls out to the registry)
        raise TransportError(mode.refusal or f"a {mode.name} device is never connected to", hint=mode.refusal_hint)
    if target is None:
        raise TransportError(
            f"transport '{kind}' cannot deploy in this version of edgectl",
            hint="`edgectl plan` works for every device; to deploy now, use `transport: {type: local}` on the device "
                 "itself, or exclude it with --device")
    module, _, cls = target.partition(":")
    return getattr(import_module(module), cls)


def transport_for(device: Device) -> Transport:
    """The transport (pipe) to a device, chosen by ``device.transport.type``."""
    try:
        cls = transport_class(device.transport.type)
    except TransportError as e:
        raise TransportError(f"device '{device.name}': {e.message}", hint=e.hint) from None
    return cls(device)


__all__ = ["TRANSPORTS", "Transport", "transport_class", "transport_for"]

"""Transports are dumb pipes: run a command (argv), put a file, open a channel to the device's agent."""

from __future__ import annotations

from edgectl.errors import TransportError
from edgectl.spec import Device
from edgectl.transport.base import Transport


def transport_for(device: Device, *, verify_key: bytes | None = None) -> Transport:
    """The transport object for a device, chosen by ``device.transport.type``. ``verify_key``: the public key (PEM)
    of the device's fleet signing key; a local or SSH agent that edgectl starts is pinned to it (Docker agents get
    their verify key from whoever builds their image)."""
    kind = device.transport.type
    if kind == "local":
        from edgectl.transport.local import LocalTransport

        return LocalTransport(device, verify_key=verify_key)
    if kind == "ssh":
        from edgectl.transport.ssh import SshTransport

        return SshTransport(device, verify_key=verify_key)
    if kind == "docker":
        from edgectl.transport.docker import DockerTransport

        return DockerTransport(device)
    raise TransportError(
        f"device '{device.name}': transport '{kind}' cannot deploy in this version of edgectl",
        hint="`edgectl plan` works for every device; to deploy now, use `transport: {type: local}` on the device "
             "itself, or exclude it with --device",
    )


__all__ = ["Transport", "transport_for"]

"""A device's agent as edgectl sees it: reach it, install/start it when asked, read its facts.

    link = connect(device, verify_key=pem)      # no network until asked
    client = link.agent(start=True, runtimes={"llamacpp"})
    link.close()

``connect`` is the one entry point above the transports for apply, status, diff and the collector.
"""

from __future__ import annotations

from edgectl.spec import Device
from edgectl.transport import Transport, transport_for


def connect(device: Device, *, verify_key: bytes | None = None) -> Transport:
    """The link to ``device``'s agent. ``verify_key``: the fleet's public signing key (PEM) that an agent edgectl
    starts is pinned to. The returned object has ``agent(start=, runtimes=)``, ``facts_without_agent()``,
    ``endpoint`` and ``close()``."""
    return transport_for(device, verify_key=verify_key)


__all__ = ["connect"]

"""A device's agent as edgectl sees it: reach it, install/start it when asked, read its facts.

    link = connect(device, verify_key=pem)      # no network until asked
    client = link.agent(start=True, runtimes={"llamacpp"})
    link.close()

``connect`` is the one entry point above the transports for apply, status, diff and the collector. The layers:

    edgectl.transport      pipes: run an argv, put a file, reach the agent's port (local, ssh, docker, fake)
    lifecycle.AgentLink    one lifecycle: there? ours? version? pinned? install, start, wait, replace, stop
    install_*.py           one installer per target, registered in INSTALLERS by transport kind
    platform, wheelhouse   a target's platform facts; its wheelhouse built here (downloaded, cross-built), cached
    ondevice               transport.install: on-device: a source house pushed, the device's pip compiles it
    service_units          launchd plist (macOS) and termux-services scripts (Android), where there is no systemd
"""

from __future__ import annotations

from importlib import import_module

from edgectl.agents.lifecycle import AgentLink
from edgectl.spec import Device
from edgectl.transport import Transport, transport_for

# transport kind -> "module:Installer" (imported only when used: docker, paramiko and uvicorn stay lazy)
INSTALLERS: dict[str, str] = {
    "local": "edgectl.agents.install_local:LocalInstaller",
    "ssh": "edgectl.agents.install_venv:VenvInstaller",
    "docker": "edgectl.agents.install_docker:DockerInstaller",
    "fake": "edgectl.agents.install_inprocess:InProcessInstaller",
}


def link(transport: Transport, *, verify_key: bytes | None = None) -> AgentLink:
    """The agent behind ``transport``, managed by the installer of its kind."""
    module, _, cls = INSTALLERS[transport.kind].partition(":")
    installer = getattr(import_module(module), cls)(transport, verify_key=verify_key)
    return AgentLink(transport, installer)


def connect(device: Device, *, verify_key: bytes | None = None) -> AgentLink:
    """The link to ``device``'s agent. ``verify_key``: the fleet's public signing key (PEM) that an agent edgectl
    starts is pinned to (and a running agent that verifies nothing is replaced by one that does). The returned
    object has ``agent(start=, runtimes=)``, ``facts_without_agent()``, ``endpoint``, ``stop()`` and ``close()``."""
    return link(transport_for(device), verify_key=verify_key)


__all__ = ["INSTALLERS", "AgentLink", "connect", "link"]

"""Observe the devices: reach each one's agent (starting it only when asked) and read its facts and state, many
devices at once. Read-only unless ``start_agents``."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edgectl_agent.api import AgentState, Facts

from edgectl.agent_client import AgentClient
from edgectl.agents import AgentLink, connect
from edgectl.errors import EdgectlError, NotFoundError
from edgectl.signing import Signer
from edgectl.spec import Device, Spec

# Observing (read-only: an SSH handshake and a few small requests per device) waits on the network and the devices
# far more than it computes, so it overlaps more devices than a rollout works on at once (--parallel).
OBSERVE_PARALLEL = 32


@dataclass
class DeviceContext:
    device: Device
    transport: AgentLink | None = None  # the link to the device's agent (its pipe is .transport.transport)
    client: AgentClient | None = None
    facts: Facts | None = None
    observed: AgentState | None = None
    error: str | None = None
    signer: Signer | None = None  # the device's fleet signing key (None: deployments go unsigned)


def select_devices(spec: Spec, names: Iterable[str] | None) -> list[Device]:
    devices = spec.devices
    if not names:
        return list(devices.values())
    out = []
    for n in names:
        if n not in devices:
            raise NotFoundError(f"no device named '{n}' in the manifests",
                                hint="known devices: " + (", ".join(sorted(devices)) or "(none)"))
        out.append(devices[n])
    return out


def observe(devices: Iterable[Device], *, start_agents: bool, runtimes: dict[str, set[str]] | None = None,
            parallel: int = OBSERVE_PARALLEL, signers: dict[str, Signer | None] | None = None,
            events=None) -> dict[str, DeviceContext]:
    """Reach each device's agent (starting it only if asked, able to run ``runtimes[device]``) and read its facts
    and state; ``parallel`` devices at a time (a fleet's SSH handshakes and agent starts overlap). ``signers``:
    per device, its fleet's signing key (an agent started now is pinned to its public key). A device that cannot
    be observed keeps the reason in its context's ``error``."""
    devices = list(devices)
    if not devices:
        return {}

    def one(device: Device) -> DeviceContext:
        ctx = DeviceContext(device, signer=(signers or {}).get(device.name))
        try:
            ctx.transport = connect(device, verify_key=ctx.signer.public_pem if ctx.signer else None)
            if events is not None:  # an install's long work (cross-builds, builds on the device) shows its progress
                ctx.transport.installer.progress = (
                    lambda stage, done, total, _n=device.name: events.progress(f"{_n}:{stage}", f"{_n}: {stage}", done,
                                                                          total))
            ctx.client = ctx.transport.agent(start=start_agents, runtimes=(runtimes or {}).get(device.name, ()))
            if ctx.client is not None:
                ctx.facts = ctx.client.facts()
                ctx.observed = ctx.client.state()
            else:
                ctx.facts = ctx.transport.facts_without_agent()
        except EdgectlError as e:
            ctx.error = str(e)
        return ctx

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(devices)))) as pool:
        return {ctx.device.name: ctx for ctx in pool.map(one, devices)}


def close_contexts(contexts: dict[str, DeviceContext]) -> None:
    """Close every agent client and transport ``observe`` opened (SSH connections, docker clients, HTTP pools)."""
    for ctx in contexts.values():
        for thing in (ctx.client, ctx.transport):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - a broken connection may fail to close; it is dropped anyway
                    pass


def endpoint_of(ctx: DeviceContext) -> str | None:
    return ctx.transport.endpoint if ctx.transport is not None else None

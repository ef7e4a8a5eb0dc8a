"""One agent lifecycle for every target: is an agent there, is it ours, which version, is it pinned to the fleet's
verify key; install, start, wait until healthy (and done reloading), replace an older or unpinned one, stop.

How a target gets and runs its agent is its Installer (edgectl.agents.installer); how bytes and requests reach the
device is its Transport (edgectl.transport). This module only decides what happens when.
"""

from __future__ import annotations

import time
from typing import Iterable

import httpx
from edgectl_agent import __version__ as AGENT_VERSION
from edgectl_agent.api import Facts

from edgectl.agent_client import AgentClient
from edgectl.agents.installer import Installer, sorted_runtimes
from edgectl.errors import AgentError, TransportError
from edgectl.transport.base import Transport

HEALTH_TIMEOUT_S = 10.0
POLL_S = 0.1


class AgentLink:
    """A device's agent as edgectl sees it, through ``transport``, managed by ``installer``. No I/O until asked."""

    def __init__(self, transport: Transport, installer: Installer) -> None:
        self.transport = transport
        self.installer = installer

    @property
    def device(self):
        return self.transport.device

    @property
    def name(self) -> str:
        return self.transport.name

    @property
    def endpoint(self) -> str:
        return self.transport.endpoint

    def facts_without_agent(self) -> Facts | None:
        return self.transport.facts_without_agent()

    def close(self) -> None:
        self.transport.close()

    def client(self, token: str) -> AgentClient:
        return AgentClient(self.transport.base_url, token, device=self.name, transport=self.transport.http_transport())

    def health(self) -> dict | None:
        """/healthz (open, no token) through the transport; None when nothing answers."""
        try:
            with httpx.Client(transport=self.transport.http_transport(), timeout=HEALTH_TIMEOUT_S) as http:
                r = http.get(f"{self.transport.base_url}/healthz")
                return r.json() if r.status_code == 200 else {"status": f"http {r.status_code}"}
        except (httpx.HTTPError, ValueError):
            return None

    # -- the lifecycle -----------------------------------------------------------------------------------------
    def agent(self, *, start: bool, runtimes: Iterable[str] = ()) -> AgentClient | None:
        """A client for the device's agent. ``start=True`` installs/starts it when needed (with the libraries of
        ``runtimes``, the ones the plan chose for it) and replaces one of another version, one installed without
        those runtimes, or one running unverified while the fleet signs; ``start=False`` returns None when no agent
        answers (read-only commands: plan, status). An agent on the port that is not ours is an error."""
        runtimes = sorted_runtimes(runtimes)
        # The usual case is an agent of this version: its token first, then one HTTP connection (on SSH: one
        # channel) for health and what the caller asks next (facts, state), not one each.
        token = self.installer.token()
        client = self.client(token) if token is not None else None
        health = _health_of(client) if client is not None else self.health()
        if health is None:
            if client is not None:
                client.close()
            return self._install_and_start(runtimes) if start else None
        if client is None:
            raise self.installer.not_ours(health)
        if not start:
            return client
        if (health.get("version") == AGENT_VERSION and self.installer.current(runtimes)
                and not self._unpinned(client)):
            if self.installer.restarts_by_itself:
                return self._recovered(client, time.monotonic() + self.installer.start_timeout_s)
            return client
        client.close()  # older, lacking runtimes, or unverified while the fleet signs: replace it
        self.installer.stop()
        return self._install_and_start(runtimes)

    def stop(self) -> bool:
        """Stop the device's agent (it comes back on the next apply). True if one was running."""
        return self.installer.stop()

    def _unpinned(self, client: AgentClient) -> bool:
        return self.installer.verify_key is not None and runs_unverified(self.installer.verify_key, client.facts())

    def _install_and_start(self, runtimes: list[str]) -> AgentClient:
        self.installer.install(runtimes)
        self.installer.start()
        deadline = time.monotonic() + self.installer.start_timeout_s
        while time.monotonic() < deadline:
            health = self.health()
            if health and health.get("status") == "ok":
                if health.get("version") != AGENT_VERSION:
                    raise TransportError(f"device '{self.name}': the agent started there is version "
                                         f"{health.get('version')}, edgectl needs {AGENT_VERSION}",
                                         hint="install edgectl-agent " + AGENT_VERSION + " there (a user-given "
                                              "image or venv holds another version), then apply again")
                token = self.installer.token()
                if token is None:
                    raise self.installer.not_ours(health)
                return self._recovered(self.client(token), deadline)
            if not self.installer.running():
                break
            time.sleep(POLL_S)
        raise self.installer.start_failed()

    def _recovered(self, client: AgentClient, deadline: float) -> AgentClient:
        """Wait until a (re)started agent has reloaded what its root says it served: observed mid-recovery, a
        deployment reads 'loading' and the plan would activate it again for nothing."""
        while time.monotonic() < deadline:
            if not any(d.state == "loading" for d in client.state().deployments):
                return client
            time.sleep(POLL_S * 2)
        client.close()
        raise TransportError(f"device '{self.name}': the agent is still reloading its deployments after "
                             f"{self.installer.start_timeout_s:.0f} s",
                             hint="see the agent's log on the device; apply again once it serves")


def runs_unverified(verify_key: bytes | None, facts: Facts | None) -> bool:
    """The fleet signs (``verify_key``), and the agent that reported ``facts`` verifies nothing: it was started
    before signing was turned on. ``agent(start=True)`` replaces such an agent with one pinned to the key, so a
    caller that observed it read-only must count it as work (start it), even when the plan is empty."""
    return verify_key is not None and facts is not None and facts.verify_key_id is None


def _health_of(client: AgentClient) -> dict | None:
    """/healthz through ``client``; None when nothing answers (as AgentLink.health)."""
    try:
        return client.health()
    except AgentError as e:
        return {"status": f"http {e.status}"}
    except TransportError:
        return None

"""The agent lifecycle with the local installer and a real agent process: a local agent started before the fleet
signed keeps serving unverified no longer once signing is turned on: the lifecycle replaces it with one pinned to
the fleet's key (and a root pinned once stays pinned to that key)."""

from __future__ import annotations

import pytest

from edgectl.agents import link
from edgectl.signing import Signer, generate_key
from edgectl.spec import Device
from edgectl.transport.local import LocalTransport
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration


def test_an_unverified_local_agent_is_replaced_by_a_pinned_one_when_the_fleet_starts_signing(tmp_path):
    generate_key(tmp_path / "fleet.key")
    key = Signer.load(tmp_path / "fleet.key")
    d = Device(name="here", profile="x86-cpu-server", agent={"port": free_port()}, transport={"type": "local"})
    root = tmp_path / "agent"
    unsigned = link(LocalTransport(d, root=root))
    try:
        client = unsigned.agent(start=True)
        assert client.facts().verify_key_id is None
        pid = (root / "agent.pid").read_text()
        client.close()

        signing = link(LocalTransport(d, root=root), verify_key=key.public_pem)
        assert signing.agent(start=False).facts().verify_key_id is None  # read-only commands change nothing
        client = signing.agent(start=True)
        assert client.facts().verify_key_id == key.key_id
        assert (root / "agent.pid").read_text() != pid  # replaced
        assert (root / "verify-key.pub").read_bytes() == key.public_pem
        client.close()

        # the pin outlives the fleet's signing: an agent started there later still verifies with that key
        unsigned.stop()
        again = link(LocalTransport(d, root=root)).agent(start=True)
        assert again.facts().verify_key_id == key.key_id
        again.close()
    finally:
        unsigned.stop()

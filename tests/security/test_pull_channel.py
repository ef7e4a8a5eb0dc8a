"""The pull channel's protections (docs/pull.md, TUF-style checks in edgectl_agent.pull_state).

Fast cases check the state verification itself; the real case runs a real registry and a real agent process in
pull mode and attacks it through the registry: a replayed older signed state (rollback), a validly signed but
expired state (freeze), a blob whose bytes do not match the pinned digest, and a state pinning more bytes than
the device allows (refused before any download).
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from edgectl_agent.api import ArtifactRef, DesiredDeployment
from edgectl_agent.pull_state import (STATE_CONTEXT, StateRefused, check_state, document_bytes, new_state,
                                      parse_state)
from edgectl_agent.signing import SIGNED_CONTEXT, key_id

from edgectl.signing import Signer, generate_key

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def signer(tmp_path) -> Signer:
    generate_key(tmp_path / "fleet.key")
    return Signer.load(tmp_path / "fleet.key")


def deployment(signer: Signer, digest: str = "sha256:" + "ab" * 32) -> DesiredDeployment:
    return signer.sign(DesiredDeployment(name="chat", runtime="llamacpp", artifact=ArtifactRef(
        digest=digest, format="gguf", quant="Q8_0", size_bytes=10, model="tiny-llama")))


def state(signer: Signer, version: int, *, valid_for=timedelta(days=1), now=NOW, device="shop-1"):
    from edgectl.pull.publish import sign_state

    return sign_state(signer, new_state(device, version, [deployment(signer)], poll_interval_s=60,
                                        valid_for=valid_for, now=now))


def check(signer: Signer, s, *, accepted: int = 0, accepted_digest=None, now=NOW, device="shop-1") -> None:
    data = document_bytes(s)
    check_state(parse_state(data), public_key=signer.key.public_key(), key_id=signer.key_id, device=device,
                accepted_version=accepted, accepted_digest=accepted_digest,
                digest="sha256:" + hashlib.sha256(data).hexdigest(), now=now)


def refused(kind: str, fn, *args, **kw) -> str:
    with pytest.raises(StateRefused) as e:
        fn(*args, **kw)
    assert e.value.kind == kind, e.value.message
    return e.value.message


def test_a_valid_state_passes_and_newer_versions_are_accepted(signer):
    check(signer, state(signer, 1))
    check(signer, state(signer, 5), accepted=4)


def test_replayed_older_state_is_refused_rollback(signer):
    assert "rollback" in refused("rollback", check, signer, state(signer, 3), accepted=4)


def test_a_different_document_under_the_applied_version_is_refused(signer):
    refused("rollback", check, signer, state(signer, 4, now=NOW - timedelta(hours=1)), accepted=4,
            accepted_digest="sha256:" + "00" * 32)


def test_expired_state_is_reported_stale_freeze(signer):
    s = state(signer, 2, valid_for=timedelta(hours=1), now=NOW - timedelta(hours=2))
    assert "freeze" in refused("expired", check, signer, s)


def test_tampered_state_is_refused(signer):
    s = state(signer, 2)
    bigger = s.model_copy(update={"poll_interval_s": 5})
    refused("signature", check, signer, bigger)
    refused("signature", check, signer, s.model_copy(update={"signature": None}))


def test_state_signed_by_another_key_is_refused(signer, tmp_path):
    generate_key(tmp_path / "other.key")
    other = Signer.load(tmp_path / "other.key")
    refused("signature", check, signer, state(other, 2))


def test_state_for_another_device_is_refused(signer):
    refused("device", check, signer, state(signer, 2, device="shop-2"))


def test_oversized_state_document_is_refused_before_parsing():
    refused("malformed", parse_state, b"{" + b" " * (256 * 1024) + b"}")


def test_state_and_deployment_signatures_cannot_stand_in_for_each_other(signer):
    assert STATE_CONTEXT != SIGNED_CONTEXT and not STATE_CONTEXT.startswith(SIGNED_CONTEXT.rstrip())
    s = state(signer, 1)
    d = s.deployments[0]  # a deployment's valid signature put on a state is refused
    forged = s.model_copy(update={"signature": s.signature.model_copy(update={"value": d.signature.value})})
    refused("signature", check, signer, forged)


def test_key_ids_match_between_edgectl_and_agent(signer):
    raw = signer.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert key_id(raw) == signer.key_id and isinstance(signer.key, ed25519.Ed25519PrivateKey)


# -- the real channel ----------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_attacks_through_a_real_registry_on_a_real_pull_agent(tmp_path):
    from edgectl_agent.pull import Puller
    from edgectl_agent.pull_state import PullConfig
    from edgectl_agent.store import ArtifactStore as AgentStore

    from edgectl.pull.oci import RegistryWriter
    from edgectl.pull.publish import current_state, push_state_document, sign_state
    from tests.integration.conftest import AgentProcess, free_port
    from tests.integration.test_pull_registry import PullWorld, edgectl, pull_status, serving_digest, wait_for

    world = PullWorld(tmp_path)
    agent = None
    try:
        world.write("Q8_0")
        edgectl("apply", str(world.dir), env=world.env)
        writer = RegistryWriter(world.registry.address, "shops/models", plain_http=True, username="publisher",
                                password="push-secret")
        v1 = current_state(writer, "shop-1")
        world.write("Q4_0")
        edgectl("apply", str(world.dir), env=world.env)
        v2 = current_state(writer, "shop-1")
        assert (v1.version, v2.version) == (1, 2)
        world.enroll(tmp_path / "pull.json")
        root = tmp_path / "device"
        agent = AgentProcess(root, free_port(), env={"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / "pull.json")})
        serving = wait_for("the agent to serve version 2", lambda: serving_digest(agent))
        assert serving == v2.deployments[0].artifact.digest

        def outcome_after(before: str | None, expected: str) -> dict:
            status = wait_for(f"outcome {expected}", lambda: (s := pull_status(root)).get("checked_at") != before
                              and s.get("outcome") == expected and s)
            assert serving_digest(agent) == serving  # whatever happened, the good artifact keeps serving
            return status

        # rollback: the older, validly signed version 1 is put back under the tag
        before = pull_status(root).get("checked_at")
        push_state_document(writer, "shop-1", document_bytes(v1))
        assert "rollback" in outcome_after(before, "refused")["error"]

        # freeze: a validly signed version 3 that has already expired
        signer = Signer.load(world.dir / "fleet.key")
        stale = sign_state(signer, new_state("shop-1", 3, list(v2.deployments), poll_interval_s=5,
                                             valid_for=timedelta(minutes=1),
                                             now=datetime.now(timezone.utc) - timedelta(hours=1)))
        before = pull_status(root).get("checked_at")
        push_state_document(writer, "shop-1", document_bytes(stale))
        assert "expired" in outcome_after(before, "stale")["error"]

        # a blob whose stored bytes no longer match the digest the signed state pins
        blob = tmp_path / "fake.gguf"
        blob.write_bytes(b"GGUF" + os.urandom(4096))
        digest = "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
        writer.push_blob_file(blob, digest)
        hexd = digest.split(":")[1]
        stored = world.registry.base / "storage/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        stored.write_bytes(b"GGUF" + os.urandom(4096))  # same size, other bytes
        pinned = v2.deployments[0].model_copy(update={"signature": None, "artifact": ArtifactRef(
            digest=digest, format="gguf", quant="Q8_0", size_bytes=4100, model="tiny-llama")})
        v4 = sign_state(signer, new_state("shop-1", 4, [signer.sign(pinned)], poll_interval_s=5,
                                          valid_for=timedelta(hours=1)))
        before = pull_status(root).get("checked_at")
        push_state_document(writer, "shop-1", document_bytes(v4))
        assert "sha256 mismatch" in outcome_after(before, "failed")["error"]
        assert not list((root / "artifacts").glob(hexd + "*"))  # the bad bytes were deleted

        # size limit: a device allowing fewer bytes than the state pins refuses before downloading anything
        small = tmp_path / "small-device"
        small.mkdir()
        config = PullConfig.model_validate_json((tmp_path / "pull.json").read_text())
        tiny = config.model_copy(update={"max_artifact_bytes": 4099})
        fake_agent = SimpleNamespace(settings=SimpleNamespace(root=small), store=AgentStore(small),
                                     uploads_in_progress=set(), recovery=None, deployments=None)
        import asyncio

        assert asyncio.run(Puller(fake_agent, tiny).poll_once()) == "refused"
        assert "max_artifact_bytes" in pull_status(small)["error"]
        assert AgentStore(small).status(digest).received_bytes == 0
    finally:
        if agent is not None:
            agent.stop()
        world.registry.stop()

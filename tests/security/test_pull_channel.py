"""The pull channel's protections (docs/pull.md, TUF-style checks in edgectl_agent.pull_state).

Fast cases check the state verification itself; the real case runs a real registry and a real agent process in
pull mode and attacks it through the registry: a replayed older signed state (rollback), a validly signed but
expired state (freeze), a blob whose bytes do not match the pinned digest, and a state pinning more bytes than
the device allows (refused before any download). Then, each with the real registry: Bearer-token auth with a
read-only device user, device clock skew (libfaketime), a state manifest swapped under its tag mid-poll, and a disk
that fills up during a download.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
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


# -- registry auth, clock skew, swapped manifests, full disks ------------------------------------------------------

@pytest.mark.integration
def test_bearer_token_auth_publisher_pushes_and_devices_only_read(tmp_path):
    """Distribution with ``auth: token`` (a token service on 127.0.0.1, as Harbor and cloud registries run one):
    edgectl publishes with the push user, a real agent pulls and serves with the fleet's read-only user, and that
    read-only user's token cannot push (the per-fleet read-only credential is enforced by the registry)."""
    from edgectl.pull.oci import RegistryError, RegistryWriter
    from tests.integration.conftest import AgentProcess, free_port
    from tests.integration.test_pull_registry import PullWorld, chat, edgectl, serving_digest, wait_for
    from tests.registry import TokenService

    tokens = TokenService(tmp_path / "tokens", {"publisher": "push-secret", "shop": "read-secret"},
                          {"publisher": {"pull", "push"}, "shop": {"pull"}})
    world = PullWorld(tmp_path, token=tokens)
    agent = None
    try:
        world.write("Q8_0")
        assert "published state version 1" in edgectl("apply", str(world.dir), env=world.env).stdout
        world.enroll(tmp_path / "pull.json")
        agent = AgentProcess(tmp_path / "device", free_port(),
                             env={"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / "pull.json")})
        assert wait_for("the agent to pull through token auth and serve", lambda: serving_digest(agent))
        chat(agent)
        users = {user for user, _ in tokens.issued}
        assert users == {"publisher", "shop"}
        assert all(a["actions"] == ["pull"] for user, access in tokens.issued if user == "shop" for a in access)
        device_creds = RegistryWriter(world.registry.address, "shops/models", plain_http=True, username="shop",
                                      password="read-secret")
        with pytest.raises(RegistryError) as e:
            device_creds.push_blob_bytes(b"a device must not publish")
        assert "HTTP 401" in e.value.message, e.value.message
        wrong = RegistryWriter(world.registry.address, "shops/models", plain_http=True, username="shop",
                               password="guess")
        with pytest.raises(RegistryError):
            wrong.manifest("state-shop-1")
    finally:
        if agent is not None:
            agent.stop()
        world.registry.stop()
        tokens.stop()


@pytest.mark.integration
def test_device_clock_skew_is_measured_reported_and_expiry_judged_by_the_device(tmp_path):
    """Two real agents under libfaketime: one whose clock runs two days ahead sees a one-hour state as expired,
    refuses it as stale, keeps serving nothing new, and says its clock is ahead of the registry's (the registry's
    HTTP Date); one two days behind applies it and reports the skew too."""
    from tests.integration.conftest import AgentProcess, free_port
    from tests.integration.test_pull_registry import PullWorld, edgectl, pull_status, serving_digest, wait_for

    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    assert found, "libfaketime missing: run `scripts/setup.sh test` (Debian package faketime)"
    lib = found[0]
    world = PullWorld(tmp_path)
    agents = []
    try:
        world.write("Q8_0", extra=", valid_for_h: 1")
        edgectl("apply", str(world.dir), env=world.env)
        world.enroll(tmp_path / "pull.json")

        def skewed(name: str, offset: str) -> tuple[AgentProcess, Path]:
            env = {"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / "pull.json"), "LD_PRELOAD": str(lib),
                   "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
            agents.append(AgentProcess(tmp_path / name, free_port(), env=env))
            return agents[-1], tmp_path / name
        ahead, ahead_root = skewed("ahead", "+2d")
        behind, behind_root = skewed("behind", "-2d")

        status = wait_for("the fast clock to judge the state stale",
                          lambda: (s := pull_status(ahead_root)).get("outcome") == "stale" and s)
        assert "expired" in status["error"] and "ahead of the registry's" in status["error"], status
        assert 2 * 86400 - 300 < status["clock_skew_s"] < 2 * 86400 + 300
        assert serving_digest(ahead) is None and status["applied_version"] == 0

        status = wait_for("the slow clock to apply the state",
                          lambda: (s := pull_status(behind_root)).get("applied_version") == 1 and s)
        assert serving_digest(behind) and -2 * 86400 - 300 < status["clock_skew_s"] < -2 * 86400 + 300
        from edgectl_agent.pull_report import report_text
        from edgectl_agent.pull_state import PullStatus

        line = next(x for x in report_text(PullStatus.model_validate(status), []).splitlines()
                    if x.startswith("edgectl_pull_clock_skew_seconds "))
        assert abs(float(line.split()[1]) + 2 * 86400) < 300
    finally:
        for a in agents:
            a.stop()
        world.registry.stop()


@pytest.mark.integration
def test_state_manifest_swapped_under_the_tag_mid_poll_is_read_by_digest(tmp_path):
    """The agent resolves its tag once (HEAD) and reads everything after by digest: a state pushed under the tag
    in between does not change what this poll applies (the next poll takes it); the old manifest deleted in
    between ends the poll with a retry; a manifest whose stored bytes were changed under its digest is refused."""
    import asyncio

    from edgectl_agent.oci import RegistryError, RegistryReader
    from edgectl_agent.pull import Puller
    from edgectl_agent.pull_state import PullConfig

    from edgectl.pull.oci import RegistryWriter
    from edgectl.pull.publish import push_state_document, sign_state
    from tests.registry import Registry

    registry = Registry(tmp_path / "registry", {"u": "p"}).start()
    try:
        generate_key(tmp_path / "k")
        signer = Signer.load(tmp_path / "k")
        writer = RegistryWriter(registry.address, "r/m", plain_http=True, username="u", password="p")
        v1 = sign_state(signer, new_state("shop-1", 1, [deployment(signer)], poll_interval_s=60,
                                          valid_for=timedelta(days=1)))
        v2 = sign_state(signer, new_state("shop-1", 2, [deployment(signer)], poll_interval_s=60,
                                          valid_for=timedelta(days=1)))
        d1 = push_state_document(writer, "shop-1", document_bytes(v1))
        reader = RegistryReader(registry.address, "r/m", scheme="http", username="u", password="p")
        config = PullConfig(device="shop-1", registry=registry.address, repository="r/m", scheme="http",
                            username="u", password="p", verify_key_pem=signer.public_pem.decode())
        root = tmp_path / "device"
        root.mkdir()
        puller = Puller(SimpleNamespace(settings=SimpleNamespace(root=root), recovery=None), config, reader=reader)

        assert reader.tag_digest("state-shop-1") == d1
        d2 = push_state_document(writer, "shop-1", document_bytes(v2))  # swapped after the HEAD, before the GET
        state, _ = puller._read_state(d1)
        assert state.version == 1  # what the HEAD resolved, verified by its digest
        assert reader.tag_digest("state-shop-1") == d2

        writer._request("DELETE", f"{writer.base}/manifests/{d1}", (202,))
        with pytest.raises(RegistryError) as e:  # gone mid-poll: the poll ends as a registry error, retried
            puller._read_state(d1)
        assert e.value.status == 404

        hexd = d2.split(":")[1]
        stored = registry.base / "storage/docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"
        stored.write_bytes(stored.read_bytes().replace(b'"size":', b'"size": '))  # other bytes, same digest path
        with pytest.raises(RegistryError) as e:
            asyncio.run(puller.poll_once())
        assert "hashes to" in e.value.message
        assert puller.status.version == 0  # nothing accepted
    finally:
        registry.stop()


def _mount_tmpfs(path: Path, size: str) -> None:
    if os.geteuid() != 0:
        raise AssertionError("the disk-full test mounts a small tmpfs: run it as root (CI does)")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


def _fill(path: Path, leave: int) -> Path:
    """Write a ballast file until ``leave`` bytes are free on ``path``'s filesystem."""
    ballast = path / "ballast"
    free = shutil.disk_usage(path).free
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return ballast


@pytest.mark.integration
def test_disk_full_during_a_pull_keeps_serving_and_resumes_once_space_is_freed(tmp_path):
    """A real agent whose store is on a small tmpfs: the next state's artifact does not fit, the agent says so,
    keeps serving the old model and retries each poll; once space is freed it applies the new state. And a disk
    that fills up in the middle of a download (ENOSPC on a real filesystem) ends that download cleanly and the
    next attempt completes."""
    import asyncio

    from edgectl_agent.errors import AgentError
    from edgectl_agent.oci import RegistryReader
    from edgectl_agent.pull import Puller
    from edgectl_agent.pull_state import PullConfig
    from edgectl_agent.store import ArtifactStore as AgentStore

    from edgectl.pull.oci import RegistryWriter
    from tests.integration.conftest import AgentProcess, free_port
    from tests.integration.test_pull_registry import PullWorld, chat, edgectl, pull_status, serving_digest, wait_for

    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "48m")
    world = PullWorld(tmp_path)
    agent = None
    try:
        world.write("Q8_0")
        edgectl("apply", str(world.dir), env=world.env)
        world.enroll(tmp_path / "pull.json")
        root = disk / "device"
        agent = AgentProcess(root, free_port(), env={"EDGECTL_AGENT_PULL_CONFIG": str(tmp_path / "pull.json")})
        old = wait_for("the agent to serve", lambda: serving_digest(agent))

        ballast = _fill(disk, 64 * 1024)  # less than any artifact
        world.write("Q4_0")
        edgectl("apply", str(world.dir), env=world.env)
        status = wait_for("the agent to report the full disk",
                          lambda: (s := pull_status(root)).get("outcome") == "failed" and s)
        assert "not enough disk" in status["error"] and "more bytes needed" in status["error"], status
        assert serving_digest(agent) == old
        chat(agent)

        ballast.unlink()
        wait_for("the agent to apply the new state once space is free",
                 lambda: pull_status(root).get("applied_version") == 2)
        assert serving_digest(agent) not in (None, old)
        chat(agent)

        # ENOSPC in the middle of a download, on a real filesystem
        data = os.urandom(4 << 20)
        (tmp_path / "blob").write_bytes(data)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        RegistryWriter(world.registry.address, "shops/models", plain_http=True, username="publisher",
                       password="push-secret").push_blob_file(tmp_path / "blob", digest)
        small = disk / "small"
        small.mkdir()
        store = AgentStore(small)
        reader = RegistryReader(world.registry.address, "shops/models", scheme="http", username="shop",
                                password="read-secret")
        stream = reader.blob_stream
        filled: list[Path] = []

        def filling_stream(d, offset):
            start, chunks = stream(d, offset, chunk=256 * 1024)

            def gen():
                for i, chunk in enumerate(chunks):
                    if i == 1 and not filled:  # another writer takes the rest of the disk mid-download
                        filled.append(_fill(disk, 0))
                    yield chunk
            return start, gen()
        reader.blob_stream = filling_stream
        config = PullConfig.model_validate_json((tmp_path / "pull.json").read_text())
        fake = SimpleNamespace(settings=SimpleNamespace(root=small), store=store, uploads_in_progress=set(),
                               recovery=None, deployments=None)
        puller = Puller(fake, config, reader=reader)
        with pytest.raises(AgentError) as e:
            asyncio.run(puller.fetch_blob(digest, len(data)))
        assert e.value.type == "insufficient_storage", e.value.message
        assert store.status(digest).received_bytes == 0 and not store.has(digest)
        filled[0].unlink()
        asyncio.run(puller.fetch_blob(digest, len(data)))
        assert store.has(digest) and store.path(digest).read_bytes() == data
    finally:
        if agent is not None:
            agent.stop()
        world.registry.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)

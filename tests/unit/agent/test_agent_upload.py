"""Resumable, verified uploads into the on-device store; digests can never name a path outside it."""

from __future__ import annotations

import asyncio
import os

import pytest

from edgectl_agent.api import CONTROL_PREFIX
from edgectl_agent.errors import BadRequest
from edgectl_agent.store import ArtifactStore, StateFile, digest_hex


def test_control_endpoints_need_the_right_token(agent):
    url = f"{CONTROL_PREFIX}/state"
    missing = agent.client.get(url)
    wrong = agent.client.get(url, headers={"Authorization": "Bearer " + "x" * 43})
    basic = agent.client.get(url, headers={"Authorization": f"Basic {agent.token}"})
    assert [r.status_code for r in (missing, wrong, basic)] == [401, 401, 401]
    assert missing.json()["error"]["type"] == "authentication_error"
    assert "token" in missing.json()["error"]["hint"]
    assert agent.client.get(url, headers=agent.auth).status_code == 200
    assert agent.client.get("/healthz").json()["status"] == "ok"  # liveness is open


def test_token_file_is_private_and_stable(make_agent, tmp_path):
    first = make_agent(tmp_path / "r")
    assert (tmp_path / "r" / "token").stat().st_mode & 0o777 == 0o600
    assert len(first.token) >= 40
    first.close()
    assert make_agent(tmp_path / "r").token == first.token


def test_upload_cut_then_resumed_at_the_received_offset(agent):
    data = agent.A
    digest = agent.digest_of(data)
    r = agent.put_bytes(digest, data[:1000], size=len(data))  # the connection "ends" after 1000 bytes
    assert r.status_code == 200 and r.json() == {"digest": digest, "size_bytes": len(data), "received_bytes": 1000,
                                                 "complete": False}
    status = agent.client.get(f"{CONTROL_PREFIX}/artifacts/{digest}", headers=agent.auth).json()
    assert status["received_bytes"] == 1000 and status["size_bytes"] == len(data)

    wrong = agent.put_bytes(digest, data[500:], offset=500, size=len(data))
    assert wrong.status_code == 409
    assert wrong.json()["error"]["code"] == "1000" and "offset 1000" in wrong.json()["error"]["message"]

    done = agent.put_bytes(digest, data[1000:], offset=1000, size=len(data))
    assert done.status_code == 200 and done.json()["complete"] is True
    assert (agent.root / "artifacts" / digest[7:]).read_bytes() == data
    assert list((agent.root / "staging").iterdir()) == []
    assert digest in agent.state()["artifacts"]
    again = agent.put_bytes(digest, data, size=len(data))  # already complete: idempotent
    assert again.status_code == 200 and again.json()["complete"] is True


def test_sha_mismatch_is_rejected_and_the_bytes_deleted(agent):
    digest = agent.digest_of(agent.A)
    r = agent.put_bytes(digest, agent.B)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["type"] == "digest_mismatch" and "deleted" in err["message"] and err["hint"]
    assert agent.client.get(f"{CONTROL_PREFIX}/artifacts/{digest}", headers=agent.auth).json()["received_bytes"] == 0
    assert list((agent.root / "staging").glob("*.part")) == []
    assert not (agent.root / "artifacts" / digest[7:]).exists()


def test_chunk_beyond_declared_size_and_missing_size_are_400(agent):
    digest = agent.digest_of(agent.A)
    assert agent.put_bytes(digest, agent.A, size=10).status_code == 400
    r = agent.client.put(f"{CONTROL_PREFIX}/artifacts/{digest}", content=b"GGUF", headers=agent.auth)
    assert r.status_code == 400 and "X-Edgectl-Size" in r.json()["error"]["message"]


def test_upload_bigger_than_free_disk_is_refused_before_reading(agent):
    digest = agent.digest_of(agent.A)
    r = agent.put_bytes(digest, b"", size=1 << 60)
    assert r.status_code == 507 and "free" in r.json()["error"]["message"]
    assert agent.client.get(f"{CONTROL_PREFIX}/artifacts/{digest}", headers=agent.auth).json()["size_bytes"] is None


@pytest.mark.parametrize("bad", [
    "sha256:" + "A" * 64,                 # uppercase
    "sha256:" + "0" * 63,                 # short
    "sha256:" + "0" * 65,                 # long
    "md5:" + "0" * 32,
    "sha256:..",
    "sha256:" + "0" * 62 + "..",
    "..%2F..%2Fstate.json",
    "sha256:" + "0" * 64 + "%00",
])
def test_digest_traversal_attempts_are_rejected(agent, bad):
    for r in (agent.client.get(f"{CONTROL_PREFIX}/artifacts/{bad}", headers=agent.auth),
              agent.put_bytes(bad, b"GGUF")):
        assert r.status_code in (400, 404), r.text
    assert sorted(p.name for p in agent.root.iterdir()) == ["artifacts", "staging", "token", "trees"]
    assert list((agent.root / "staging").iterdir()) == []


def test_digest_hex_accepts_only_the_exact_form():
    assert digest_hex("sha256:" + "ab" * 32) == "ab" * 32
    for bad in ("sha256:" + "ab" * 32 + "\n", " sha256:" + "ab" * 32, "sha256:" + "g" * 64):
        with pytest.raises(BadRequest):
            digest_hex(bad)


def test_cut_connection_keeps_what_arrived(tmp_path):
    store = ArtifactStore(tmp_path)
    digest = "sha256:" + "1" * 64
    size = store.begin(digest, 0, 100, None)

    async def cut():
        yield b"x" * 30
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        asyncio.run(store.receive(digest, 0, size, cut()))
    assert store.status(digest).received_bytes == 30


def test_state_file_is_replaced_atomically(tmp_path):
    state = StateFile(tmp_path)
    state.save([], {})
    assert state.load() == ([], {})
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temp file left behind

"""Case 3, truncated and corrupted artifacts: an upload of a tiny GGUF cut at byte 0, right after the magic, at the
end of the GGUF header, where the tensor data starts, one byte before the end and at seeded random offsets; and
uploads with one byte flipped. A partial upload is never an artifact (activating it is refused), resuming from
the offset the agent reports completes it, a sha256 mismatch deletes every received byte, and the artifact serving
before keeps answering throughout. In-process agents with real llama.cpp, plus one real agent process whose
connection is really cut.
"""

from __future__ import annotations

import random
import socket
import time

import httpx
import pytest

from edgectl_agent.api import CONTROL_PREFIX
from tests.faults.device import MODEL, Artifact, answering_digest, push_and_activate, staged, stored, tiny_gguf

pytestmark = pytest.mark.integration

SEED = 3
RANDOM_CUTS = 4
GGUF_HEADER = 24  # magic (4) + version (4) + tensor count (8) + key/value count (8)
CUTS = ["byte 0", "after the magic", "header boundary", "tensor data start", "last byte",
        *(f"random {i}" for i in range(RANDOM_CUTS))]
FLIPS = ["magic", "header", "tensor data", "last byte", "random"]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory) -> tuple[Artifact, Artifact, bytes, dict[str, int], dict[str, int]]:
    """A (serving), B (uploaded), B's bytes, the cut offsets and the flip offsets in B."""
    from gguf import GGUFReader

    folder = tmp_path_factory.mktemp("ggufs")
    a, b = tiny_gguf(folder, 1), tiny_gguf(folder, 2)
    data = b.blobs[0][1].read_bytes()
    tensors_at = GGUFReader(b.blobs[0][1]).data_offset
    rng = random.Random(SEED)
    cuts = {"byte 0": 0, "after the magic": 4, "header boundary": GGUF_HEADER, "tensor data start": tensors_at,
            "last byte": len(data) - 1}
    cuts.update({f"random {i}": at for i, at in enumerate(sorted(rng.sample(range(1, len(data) - 1), RANDOM_CUTS)))})
    flips = {"magic": 0, "header": 9, "tensor data": tensors_at + 17, "last byte": len(data) - 1,
             "random": rng.randrange(len(data))}
    return a, b, data, cuts, flips


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def serving_a(make_agent, a: Artifact, **settings):
    agent = make_agent(**settings)
    agent.wait_recovered()
    assert agent.put_bytes(a.digest, a.blobs[0][1].read_bytes()).json()["complete"] is True
    assert activate(agent, a).status_code == 200
    return agent


def activate(agent, art: Artifact) -> httpx.Response:
    return agent.client.put(f"{CONTROL_PREFIX}/deployments/{MODEL}", json=art.desired.model_dump(mode="json"),
                            headers=agent.auth)


def upload_status(agent, art: Artifact) -> dict:
    return agent.client.get(f"{CONTROL_PREFIX}/artifacts/{art.digest}", headers=agent.auth).json()


def assert_a_serves_and_b_is_no_artifact(agent, a: Artifact, b: Artifact) -> None:
    refused = activate(agent, b)
    assert refused.status_code == 409 and refused.json()["error"]["type"] == "artifact_missing", refused.text
    assert "upload it first" in refused.json()["error"]["hint"]
    dep = agent.deployment(MODEL)
    assert dep["state"] == "serving" and dep["active"]["digest"] == a.digest and dep["last_error"] is None, dep
    r = agent.chat(MODEL, max_tokens=4)
    assert r.status_code == 200 and r.json()["system_fingerprint"] == a.digest, r.text
    assert b.digest not in agent.state()["artifacts"] and b.digest[7:] not in stored(agent.root)


@pytest.mark.parametrize("cut", CUTS)
def test_a_cut_upload_is_never_activated_and_resumes_from_the_received_offset(ggufs, make_agent, cut):
    a, b, data, cuts, _ = ggufs
    at = cuts[cut]
    agent = serving_a(make_agent, a)

    r = agent.put_bytes(b.digest, data[:at], size=len(data))  # the connection ends after `at` bytes
    assert r.status_code == 200 and r.json() == {"digest": b.digest, "size_bytes": len(data), "received_bytes": at,
                                                 "complete": False}
    assert upload_status(agent, b)["received_bytes"] == at
    assert_a_serves_and_b_is_no_artifact(agent, a, b)

    for wrong in {0, at - 1, at + 1} - {at, -1}:  # resuming anywhere but the received offset is refused
        r = agent.put_bytes(b.digest, data[wrong:], offset=wrong, size=len(data))
        assert r.status_code == 409 and r.json()["error"]["code"] == str(at), (wrong, r.text)
    assert upload_status(agent, b)["received_bytes"] == at  # and changes nothing

    done = agent.put_bytes(b.digest, data[at:], offset=at, size=len(data))
    assert done.status_code == 200 and done.json()["complete"] is True, done.text
    assert (agent.root / "artifacts" / b.digest[7:]).read_bytes() == data and staged(agent.root) == set()
    assert activate(agent, b).status_code == 200
    assert agent.chat(MODEL, max_tokens=4).json()["system_fingerprint"] == b.digest


@pytest.mark.parametrize("where", FLIPS)
def test_one_flipped_byte_is_never_activated_and_every_received_byte_is_deleted(ggufs, make_agent, where):
    a, b, data, _, flips = ggufs
    agent = serving_a(make_agent, a)
    r = agent.put_bytes(b.digest, flipped(data, flips[where]), size=len(data))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["type"] == "digest_mismatch" and "were deleted" in err["message"] and "rebuild" in err["hint"]
    assert upload_status(agent, b) == {"digest": b.digest, "size_bytes": None, "received_bytes": 0,
                                       "complete": False}
    assert staged(agent.root) == set()
    assert_a_serves_and_b_is_no_artifact(agent, a, b)
    assert agent.put_bytes(b.digest, data).json()["complete"] is True  # the right bytes are taken afterwards


def test_a_flipped_byte_in_the_resumed_part_deletes_the_part_received_before_too(ggufs, make_agent):
    a, b, data, cuts, flips = ggufs
    at = cuts["tensor data start"]
    agent = serving_a(make_agent, a)
    assert agent.put_bytes(b.digest, data[:at], size=len(data)).json()["received_bytes"] == at
    bad = flipped(data, flips["last byte"])
    r = agent.put_bytes(b.digest, bad[at:], offset=at, size=len(data))
    assert r.status_code == 422 and r.json()["error"]["type"] == "digest_mismatch", r.text
    assert upload_status(agent, b)["received_bytes"] == 0 and staged(agent.root) == set()
    assert_a_serves_and_b_is_no_artifact(agent, a, b)


def test_an_artifact_corrupted_on_disk_is_not_served_after_a_restart_the_previous_one_is(ggufs, make_agent, tmp_path):
    """Bit rot after the upload: with verify_on_start the agent re-hashes, refuses B and falls back to A."""
    a, b, data, _, flips = ggufs
    agent = serving_a(make_agent, a, verify_on_start=True)
    assert agent.put_bytes(b.digest, data).json()["complete"] is True
    assert activate(agent, b).status_code == 200
    agent.close()
    blob = agent.root / "artifacts" / b.digest[7:]
    blob.write_bytes(flipped(data, flips["random"]))

    again = make_agent(agent.root, verify_on_start=True)
    again.wait_recovered()
    dep = again.deployment(MODEL)
    assert dep["state"] == "failed" and dep["active"]["digest"] == a.digest, dep
    assert "fell back to the previous artifact" in dep["last_error"] and "corrupted" in dep["last_error"]
    assert again.chat(MODEL, max_tokens=4).json()["system_fingerprint"] == a.digest


def cut_connection(agent, art: Artifact, at: int) -> None:
    """PUT the whole artifact by its Content-Length, send ``at`` bytes of it, then drop the connection."""
    data = art.blobs[0][1].read_bytes()
    head = (f"PUT {CONTROL_PREFIX}/artifacts/{art.digest}?offset=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {agent.token}\r\nX-Edgectl-Size: {len(data)}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", agent.port)) as s:
        s.sendall(head + data[:at])
    deadline = time.monotonic() + 30  # the agent syncs what arrived once it sees the connection end
    while httpx.get(f"{agent.url}{CONTROL_PREFIX}/artifacts/{art.digest}", headers=agent.auth,
                    timeout=10).json()["received_bytes"] != at:
        assert time.monotonic() < deadline, "the agent did not keep the bytes that arrived"
        time.sleep(0.05)


def test_real_agent_cut_connection_resumes_from_the_cut_and_a_flipped_upload_is_refused(ggufs, start_agent,
                                                                                        tmp_path):
    from edgectl.agent_client import AgentClient
    from edgectl.errors import AgentError

    a, b, data, cuts, flips = ggufs
    agent = start_agent()
    assert push_and_activate(agent, a).state == "serving"

    bad = tmp_path / "flipped.gguf"
    bad.write_bytes(flipped(data, flips["tensor data"]))
    with AgentClient(agent.url, agent.token, device="cut") as client:
        with pytest.raises(AgentError) as e:
            client.upload(b.digest, bad)
        assert e.value.status == 422 and "sha256 mismatch" in e.value.message
        assert client.upload_status(b.digest).received_bytes == 0

        at = cuts["random 1"]
        cut_connection(agent, b, at)
        assert answering_digest(agent, a) == a.digest  # A serves meanwhile
        asked: list[int] = []
        ask = client.upload_status
        client.upload_status = lambda d: asked.append(ask(d).received_bytes) or ask(d)
        assert client.upload(b.digest, b.blobs[0][1]).complete
        assert asked[0] == at  # resumed at the cut, not from zero
        assert client.put_deployment(b.desired).state == "serving"
    assert answering_digest(agent, b) == b.digest and staged(agent.root) == set()

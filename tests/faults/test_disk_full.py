"""Case 4, disk full, with a small tmpfs as the agent's root (the tests run as root: they mount it, and unmount it
at teardown). The agent refuses an upload bigger than its free space before reading a byte; edgectl refuses to push
unless the agent reports the artifact's size + 10% free (edgectl.apply.check_disk, before any byte is sent); and a
disk that fills up in the middle of an upload (another writer takes the space) ends it with a clear 507, no staging
bytes left, and the old model intact and serving. Real agent processes, real llama.cpp, tiny GGUFs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from edgectl_agent.api import CONTROL_PREFIX
from tests.faults.device import Artifact, answering_digest, push_and_activate, staged, stored, tiny_gguf

pytestmark = pytest.mark.integration

MB = 1024 * 1024
PAGE = 4096


@pytest.fixture
def small_disk():
    """``small_disk(path, size_bytes)`` mounts a tmpfs of that size there; all are unmounted at teardown."""
    mounted: list[Path] = []

    def mount(path: Path, size: int) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def size_of(art: Artifact) -> int:
    return art.blobs[0][1].stat().st_size


def free_bytes(agent) -> int:
    return httpx.get(f"{agent.url}{CONTROL_PREFIX}/facts", headers=agent.auth, timeout=10).json()["disk_free_bytes"]


def fill(path: Path, leave: int = 0) -> Path:
    """Write ``path`` until the filesystem has ``leave`` bytes (rounded to pages) free, or is full (leave=0)."""
    block = b"\0" * (64 * 1024)
    with open(path, "ab") as f:
        try:
            while True:
                free = shutil.disk_usage(path.parent).free
                if free <= leave:
                    break
                f.write(block[:max(PAGE, min(len(block), (free - leave) // PAGE * PAGE))])
                f.flush()
        except OSError:  # ENOSPC: full
            pass
    return path


def test_the_agent_refuses_an_upload_bigger_than_its_free_disk_before_reading_a_byte(tmp_path, start_agent,
                                                                                     small_disk):
    a, b = tiny_gguf(tmp_path, 1), tiny_gguf(tmp_path, 2)
    root = small_disk(tmp_path / "root", size_of(a) + size_of(b) // 2)
    agent = start_agent(root)
    assert push_and_activate(agent, a).state == "serving"
    r = httpx.put(f"{agent.url}{CONTROL_PREFIX}/artifacts/{b.digest}", content=b.blobs[0][1].read_bytes(),
                  headers={**agent.auth, "X-Edgectl-Size": str(size_of(b))}, timeout=30)
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["type"] == "insufficient_storage" and f"{size_of(b)} more bytes needed" in err["message"]
    assert "free space on the device" in err["hint"]
    assert staged(root) == set() and stored(root) == a.hexes
    assert answering_digest(agent, a) == a.digest


def test_edgectl_pushes_only_when_the_agent_has_the_size_plus_ten_percent_free(tmp_path, start_agent, small_disk):
    from edgectl.agent_client import AgentClient
    from edgectl.apply import Refused, check_disk
    from edgectl.builders.store import ArtifactStore
    from edgectl.spec.artifact import BuiltArtifact

    a, b = tiny_gguf(tmp_path, 1), tiny_gguf(tmp_path, 2)
    store = ArtifactStore(tmp_path / "store")
    digest, size = store.put_file(b.blobs[0][1])
    built = BuiltArtifact(digest=digest, model="tiny", format="gguf", quant="F16", size_bytes=size,
                          source_digest=digest, tool_version="tests", cache_key="faults-disk")
    root = small_disk(tmp_path / "root", size_of(a) + 2 * size + 2 * MB)
    agent = start_agent(root)
    assert push_and_activate(agent, a).state == "serving"

    with AgentClient(agent.url, agent.token, device="small") as client:
        fill(root / "filler-1", leave=int(size * 1.12))  # size + 12% free: edgectl pushes
        free = free_bytes(agent)
        assert size * 1.1 <= free < size * 1.15, free
        check_disk("small", "tiny", built, store, client)

        fill(root / "filler-2", leave=int(size * 1.05))  # size + 5% free: enough for the agent, not for edgectl
        free = free_bytes(agent)
        assert size <= free < size * 1.1, free
        with pytest.raises(Refused) as e:
            check_disk("small", "tiny", built, store, client)
        assert f"({size} bytes) to push + 10% = " in e.value.message and f"({free} bytes) free" in e.value.message
        assert "nothing was pushed" in e.value.message and "smaller quant" in e.value.hint
        assert client.upload_status(digest).received_bytes == 0 and staged(root) == set()

        assert client.upload(digest, b.blobs[0][1]).complete  # the agent's own rule is the size alone
    assert answering_digest(agent, a) == a.digest


def test_the_disk_filling_up_mid_upload_ends_it_with_507_and_no_staging_bytes(tmp_path, start_agent, small_disk):
    a, b = tiny_gguf(tmp_path, 1), tiny_gguf(tmp_path, 2)
    data = b.blobs[0][1].read_bytes()
    root = small_disk(tmp_path / "root", size_of(a) + len(data) + MB)
    agent = start_agent(root)
    assert push_and_activate(agent, a).state == "serving"
    state_before = (root / "state.json").read_bytes()
    status_url = f"{agent.url}{CONTROL_PREFIX}/artifacts/{b.digest}"

    head = (f"PUT {CONTROL_PREFIX}/artifacts/{b.digest}?offset=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {agent.token}\r\nX-Edgectl-Size: {len(data)}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as s:
        s.sendall(head + data[:MB])  # the preflight passed: the size fits
        deadline = time.monotonic() + 30
        while httpx.get(status_url, headers=agent.auth, timeout=10).json()["received_bytes"] == 0:
            assert time.monotonic() < deadline, "the agent wrote nothing"
            time.sleep(0.02)
        fill(root / "filler")  # another program takes the rest of the disk
        try:
            s.sendall(data[MB:])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the agent answered and closed before reading everything
        reply = http.client.HTTPResponse(s)
        reply.begin()
        body = reply.read()
    assert reply.status == 507, body[:500]
    err = json.loads(body)["error"]
    assert "filled up while receiving" in err["message"] and "partial upload was deleted" in err["message"]
    assert "free space on the device" in err["hint"]

    assert staged(root) == set()  # no staging bytes
    assert httpx.get(status_url, headers=agent.auth, timeout=10).json() == {
        "digest": b.digest, "size_bytes": None, "received_bytes": 0, "complete": False}
    assert stored(root) == a.hexes and (root / "state.json").read_bytes() == state_before
    assert "sha256:" + hashlib.sha256((root / "artifacts" / a.digest[7:]).read_bytes()).hexdigest() == a.digest
    assert answering_digest(agent, a) == a.digest  # the old model is intact and serving

    (root / "filler").unlink()
    assert push_and_activate(agent, b).state == "serving"  # with the space back, the same push goes through
    assert answering_digest(agent, b) == b.digest

"""Path traversal (issue 06, case 8): nothing a request names, and nothing planted in the agent's folders, makes the
agent write (or read) outside its root.

Every test runs the agent on ``<tmp>/agent`` beside decoy files in ``<tmp>/outside``, snapshots everything under
``<tmp>`` but the root before and after, and asserts it did not change: 0 files written outside the root.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from edgectl_agent.api import CONTROL_PREFIX
from edgectl_agent.errors import Conflict
from edgectl_agent.store import ArtifactStore, StateFile, sha256_file
from edgectl_agent.tree import TreeFile, manifest_bytes
from tests.security.conftest import asgi_request
from tests.unit.agent.conftest import GGUF_A, digest_of
from tests.unit.agent.tiny_onnx import linear_model_bytes

VICTIM = b"precious bytes outside the agent root\n" * 10


def snapshot(base: Path, root: Path) -> dict[str, tuple]:
    """Every entry under ``base`` except inside ``root``: type, size, mtime and content hash (links not followed)."""
    out = {}
    for top, dirs, files in os.walk(base):
        if Path(top) == root or root in Path(top).parents:
            dirs[:] = []
            continue
        for name in dirs + files:
            p = Path(top, name)
            if p == root:
                continue
            st = os.lstat(p)
            content = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else None
            out[str(p.relative_to(base))] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink, content)
    return out


@pytest.fixture
def outside(tmp_path):
    """Decoys beside the root: a file a link may point at, a 'token' and a 'state.json' one '..' away."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "victim.bin").write_bytes(VICTIM)
    (d / "model.gguf").write_bytes(GGUF_A)  # the content of a real artifact, for a link to it
    (d / "model.onnx").write_bytes(linear_model_bytes())
    (tmp_path / "token").write_text("decoy\n")
    (tmp_path / "state.json").write_text("{}\n")
    return d


@pytest.fixture
def guarded(make_agent, tmp_path, outside):
    """The agent, and after the test: nothing outside its root changed."""
    agent = make_agent(tmp_path / "agent")
    before = snapshot(tmp_path, agent.root)
    yield agent
    after = snapshot(tmp_path, agent.root)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


HEX = "ab" * 32
BAD_DIGESTS = [
    "..", "...", "../token", "../../state.json", "..%2Ftoken", "..%2F..%2Fstate.json", "%2e%2e%2ftoken",
    "%2E%2E%5Ctoken", "%252e%252e%252ftoken", "..%5C..%5Ctoken", "%2Fetc%2Fpasswd", "%2F%2Fetc%2Fpasswd",
    "sha256:..", "sha256:..%2F..%2Ftoken", f"sha256:{HEX}%00", f"sha256:{HEX}%00.part", f"sha256:{HEX[:-1]}%00",
    "%00", f"sha256:{HEX}%2F..", f"sha256:{HEX}%2F..%2F..%2Ftoken", f"sha256:{HEX.upper()}", f"SHA256:{HEX}",
    f"sha256:{HEX}%0A", f"%20sha256:{HEX}", f"sha256:{'%E2%80%A5' * 4}", "sha256:" + "%C0%AE" * 64,
    "sha512:" + "0" * 128, "md5:" + "0" * 32, HEX, f"sha256:{HEX}0",
]
BAD_NAMES = ["..", "../x", "..%2Fx", "%2e%2e", "%2Fetc%2Fpasswd", "a%00b", "a%2F..%2F..%2Ftoken", "-rf", "A", ".x",
             "x.", "a b", "a;b", "$(id)", "%C0%AE%C0%AE", "x" * 64]


def refused(status: int) -> bool:
    return status in (400, 404, 405)


def test_every_path_taking_endpoint_refuses_traversal_in_digests_and_names(guarded):
    agent = guarded
    auth = agent.auth
    tried = 0
    for d in BAD_DIGESTS:
        raw = f"{CONTROL_PREFIX}/artifacts/{d}".encode()
        for method, body, headers in (("GET", b"", {}), ("PUT", b"GGUF", {"X-Edgectl-Size": "4"})):
            status, text = asgi_request(agent, method, raw, headers={**auth, **headers}, body=body)
            assert refused(status), (method, d, status, text)
            tried += 1
        # the digest inside a deployment body
        desired = agent.desired("ok", agent.A)
        desired["artifact"]["digest"] = d
        r = agent.client.put(f"{CONTROL_PREFIX}/deployments/ok", json=desired, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["param"] == "artifact.digest", (d, r.text)
        tried += 1
    for n in BAD_NAMES:
        for method, path in (("PUT", f"{CONTROL_PREFIX}/deployments/{n}"), ("DELETE", f"{CONTROL_PREFIX}/deployments/{n}"),
                             ("GET", f"/v2/models/{n}"), ("GET", f"/v2/models/{n}/ready"),
                             ("POST", f"/v2/models/{n}/infer")):
            body = json.dumps(agent.desired(n, agent.A) if method == "PUT" else {"inputs": []}).encode()
            status, text = asgi_request(agent, method, path.encode(), body=body,
                                        headers={**auth, "content-type": "application/json"})
            assert refused(status), (method, n, status, text)
            tried += 1
        r = agent.chat(n.replace("%2F", "/").replace("%00", "\x00"))
        assert r.status_code == 404, r.text
        tried += 1
    # literal '../' and absolute paths, as a raw HTTP client could send them (no client-side normalization)
    for raw in (b"/control/v1/artifacts/../../token", b"/control/v1/../../../etc/passwd", b"//etc/passwd",
                b"/control/v1/artifacts//etc/passwd", b"/control/v1/deployments/../state.json",
                b"/control/v1/artifacts/sha256:" + HEX.encode() + b"/../../token", b"/../../token"):
        for method in ("GET", "PUT", "DELETE"):
            status, text = asgi_request(agent, method, raw, headers=auth, body=b"GGUF")
            assert refused(status), (method, raw, status, text)
            tried += 1
    assert tried > 200
    assert sorted(p.name for p in agent.root.iterdir()) == ["artifacts", "staging", "token", "trees"]
    assert [list((agent.root / d).iterdir()) for d in ("artifacts", "staging", "trees")] == [[], [], []]


def test_a_staged_part_planted_as_a_symlink_is_never_followed(guarded, outside):
    agent, victim = guarded, outside / "victim.bin"
    data = agent.A
    digest = digest_of(data)
    part = agent.root / "staging" / f"{digest[7:]}.part"
    part.symlink_to(victim)
    # the victim's size is not reported as received (no size oracle), so no resume can append to it
    status = agent.client.get(f"{CONTROL_PREFIX}/artifacts/{digest}", headers=agent.auth).json()
    assert status["received_bytes"] == 0 and not status["complete"]
    r = agent.put_bytes(digest, data[:10], offset=len(VICTIM), size=len(data))
    assert r.status_code == 409 and r.json()["error"]["code"] == "0", r.text
    # a fresh upload replaces the link with the agent's own file and completes
    r = agent.put_bytes(digest, data)
    assert r.status_code == 200 and r.json()["complete"], r.text
    blob = agent.root / "artifacts" / digest[7:]
    assert not blob.is_symlink() and blob.read_bytes() == data
    assert victim.read_bytes() == VICTIM


def test_a_staged_part_planted_as_a_hard_link_is_never_written(guarded, outside):
    agent, victim = guarded, outside / "victim.bin"
    data = agent.B
    digest = digest_of(data)
    part = agent.root / "staging" / f"{digest[7:]}.part"
    os.link(victim, part)
    assert agent.client.get(f"{CONTROL_PREFIX}/artifacts/{digest}", headers=agent.auth).json()["received_bytes"] == 0
    r = agent.put_bytes(digest, data[:10], offset=len(VICTIM), size=len(data))
    assert r.status_code == 409, r.text
    assert agent.put_bytes(digest, data).json()["complete"]
    assert victim.read_bytes() == VICTIM and victim.stat().st_nlink == 1


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_a_part_swapped_for_a_link_mid_upload_is_refused(tmp_path, outside, plant):
    """The link appears between the checks of begin() and the write of receive(): receive opens with O_NOFOLLOW
    and checks the link count on the open file, so it refuses and writes nothing."""
    store = ArtifactStore(tmp_path / "agent")
    digest = digest_of(b"x" * 100)
    victim = outside / "victim.bin"
    store.begin(digest, 0, 100, None)
    part = store.staging / f"{digest[7:]}.part"
    part.unlink()
    part.symlink_to(victim) if plant == "symlink" else os.link(victim, part)

    async def chunks():
        yield b"x" * 100

    with pytest.raises(Conflict, match="partial upload"):
        asyncio.run(store.receive(digest, 0, 100, chunks()))
    assert victim.read_bytes() == VICTIM and victim.stat().st_nlink == 1  # the planted hard link was removed


def test_an_artifact_blob_planted_as_a_symlink_is_not_an_artifact(guarded, outside):
    """Even with the right content behind it (a file whose sha256 is the digest), a link in artifacts/ is absent:
    not reported complete, not loaded; an upload replaces it with the agent's own file."""
    agent = guarded
    outside_copy = outside / "model.gguf"
    digest = digest_of(agent.A)
    blob = agent.root / "artifacts" / digest[7:]
    blob.symlink_to(outside_copy)
    assert digest not in agent.state()["artifacts"]
    assert agent.client.get(f"{CONTROL_PREFIX}/artifacts/{digest}", headers=agent.auth).json()["complete"] is False
    r = agent.activate("chat", agent.A)
    assert r.status_code == 409 and r.json()["error"]["type"] == "artifact_missing", r.text
    assert agent.put_bytes(digest, agent.A).json()["complete"]
    assert not blob.is_symlink()
    assert agent.activate("chat", agent.A).json()["state"] == "serving"


def test_sha256_of_a_symlink_is_refused(tmp_path, outside):
    link = tmp_path / "link"
    link.symlink_to(outside / "victim.bin")
    with pytest.raises(OSError):
        sha256_file(link)


def test_atomic_writes_never_follow_a_planted_temp_file(tmp_path, outside):
    victim = outside / "victim.bin"
    state = StateFile(tmp_path / "agent")
    (tmp_path / "agent").mkdir()
    (tmp_path / "agent" / f".state.json.{os.getpid()}.tmp").symlink_to(victim)
    state.save([], {})
    assert state.load() == ([], {}) and victim.read_bytes() == VICTIM
    assert not (tmp_path / "agent" / "state.json").is_symlink()
    store = ArtifactStore(tmp_path / "agent")
    digest = digest_of(b"y" * 10)
    (store.staging / f".{digest[7:]}.size.{os.getpid()}.tmp").symlink_to(victim)
    store.begin(digest, 0, 10, None)
    assert victim.read_bytes() == VICTIM and store.status(digest).size_bytes == 10


def tree_of(members: dict[str, bytes]) -> bytes:
    return manifest_bytes([TreeFile(path=p, sha256=digest_of(b), size=len(b)) for p, b in members.items()])


MEMBERS = {"model.xml": b"<net/>" * 50, "model.bin": b"\x01\x02" * 400, "tok/tokenizer.json": b"{}"}


def test_tree_folders_planted_or_altered_with_links_are_laid_out_again(guarded, outside):
    agent = guarded
    store = agent.app.state.agent.store
    manifest = tree_of(MEMBERS)
    digest = agent.upload(manifest)
    for data in MEMBERS.values():
        agent.upload(data)
    # 1. trees/<hex> planted as a symlink to a folder outside: never used, never deleted through
    tree = store.tree_path(digest)
    tree.symlink_to(outside, target_is_directory=True)
    folder = store.materialize(digest)
    assert not folder.is_symlink() and (folder / "model.xml").read_bytes() == MEMBERS["model.xml"]
    # 2. a member replaced by a symlink to a file outside (same size): detected, the folder is laid out again
    (folder / "model.bin").unlink()
    (folder / "model.bin").symlink_to(outside / "victim.bin")
    folder = store.materialize(digest)
    assert not (folder / "model.bin").is_symlink() and (folder / "model.bin").read_bytes() == MEMBERS["model.bin"]
    # 3. a sub-folder replaced by a symlink to a folder outside
    import shutil
    shutil.rmtree(folder / "tok")
    (folder / "tok").symlink_to(outside, target_is_directory=True)
    folder = store.materialize(digest)
    assert not (folder / "tok").is_symlink() and (folder / "tok" / "tokenizer.json").read_bytes() == b"{}"
    # 4. an extra file slipped in
    (folder / "extra.so").write_bytes(b"\x7fELF")
    assert not (store.materialize(digest) / "extra.so").exists()
    # delete through a planted link removes the link only
    store.delete(digest)
    tree.symlink_to(outside, target_is_directory=True)
    store.delete(digest)
    assert not tree.exists() and not tree.is_symlink() and (outside / "victim.bin").read_bytes() == VICTIM
    assert [p.name for p in (agent.root / "staging").iterdir()] == []


@pytest.mark.parametrize("path", ["../x", "../../outside/victim.bin", "/etc/passwd", "a/../../x", "..\\x", "a\x00b",
                                  ".hidden", "a//b", "./a", "a/.", "x" * 129, "/".join(["d"] * 9), "a:b", "a b",
                                  "%2e%2e/x", "\u2025/x", "C:\\x"])
def test_tree_manifests_whose_paths_escape_are_refused_at_activation(guarded, path):
    agent = guarded
    data = b"member"
    files = [{"path": path, "sha256": digest_of(data), "size": len(data)}]
    manifest = json.dumps({"edgectl_tree": 1, "files": files}, sort_keys=True, separators=(",", ":")).encode()
    agent.upload(data)
    digest = agent.upload(manifest)
    desired = agent.desired("t", manifest)
    desired["artifact"] |= {"layout": "tree", "size_bytes": len(data)}
    r = agent.client.put(f"{CONTROL_PREFIX}/deployments/t", json=desired, headers=agent.auth)
    assert r.status_code == 422 and r.json()["error"]["type"] == "invalid_manifest", r.text
    assert not agent.app.state.agent.store.tree_path(digest).exists()


# -- ONNX external data, end to end through the control API ------------------------------------------------------
def onnx_desired(agent, name: str, data: bytes) -> dict:
    return {"name": name, "runtime": "onnxruntime", "threads": 1,
            "artifact": {"digest": digest_of(data), "format": "onnx", "quant": "F32", "size_bytes": len(data),
                         "model": "tiny-linear"}}


@pytest.mark.parametrize("location", ["../token", "../../outside/victim.bin", "/etc/passwd", "sub/../../token",
                                      "..\\token", "C:\\x.bin", "planted.bin", "planted-dir/w.bin"])
def test_onnx_external_data_escaping_its_folder_is_refused(guarded, outside, location):
    """Direct escapes, and escapes through a link planted beside the blob (artifacts/planted.bin -> outside)."""
    agent = guarded
    (agent.root / "artifacts" / "planted.bin").symlink_to(outside / "victim.bin")
    (agent.root / "artifacts" / "planted-dir").symlink_to(outside, target_is_directory=True)
    model = linear_model_bytes(external_location=location)
    agent.upload(model)
    r = agent.client.put(f"{CONTROL_PREFIX}/deployments/lin", json=onnx_desired(agent, "lin", model),
                         headers=agent.auth)
    assert r.status_code == 422, r.text
    assert "outside the artifact directory" in r.json()["error"]["message"], r.text
    assert agent.deployment("lin")["state"] == "failed"


def test_onnx_genai_config_naming_a_model_outside_the_folder_is_refused(guarded, outside):
    """A tree artifact whose genai_config.json points the decoder at '../../..': refused before the library (or
    the external-data check) opens anything outside."""
    from edgectl_agent.runtimes.onnxruntime_genai import OnnxGenaiRuntime

    agent = guarded
    agent.app.state.agent.deployments.runtimes["onnxruntime-genai"] = OnnxGenaiRuntime()
    config = json.dumps({"model": {"decoder": {"filename": "../../../outside/model.onnx"},
                                   "context_length": 64, "eos_token_id": 0}}).encode()
    members = {"genai_config.json": config, "tokenizer.json": b"{}"}
    for data in members.values():
        agent.upload(data)
    manifest = tree_of(members)
    agent.upload(manifest)
    desired = {"name": "g", "runtime": "onnxruntime-genai", "context_length": 128,
               "artifact": {"digest": digest_of(manifest), "format": "onnx", "quant": "INT4", "layout": "tree",
                            "size_bytes": sum(map(len, members.values())), "model": "tiny"}}
    r = agent.client.put(f"{CONTROL_PREFIX}/deployments/g", json=desired, headers=agent.auth)
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert "model.decoder.filename" in message and "not a file inside the artifact folder" in message, message


# -- OpenVINO's compiled-model cache: a runtime option that names a folder -----------------------------------------
@pytest.mark.parametrize("cache_dir", ["/tmp/ov-cache", "../outside", "../../etc", "a/../../x", "~/x", "", "a\x00b",
                                       ".", "C:\\x", 7])
def test_openvino_cache_dir_outside_the_root_is_refused_through_the_control_api(guarded, cache_dir):
    from edgectl_agent.runtimes.openvino import OpenVinoRuntime

    agent = guarded
    agent.app.state.agent.deployments.runtimes["openvino"] = OpenVinoRuntime()
    members = {"model.xml": b"<net/>", "model.bin": b"\0" * 8}
    for data in members.values():
        agent.upload(data)
    manifest = tree_of(members)
    agent.upload(manifest)
    desired = {"name": "ov", "runtime": "openvino", "runtime_options": {"cache_dir": cache_dir},
               "artifact": {"digest": digest_of(manifest), "format": "openvino", "quant": "INT8", "layout": "tree",
                            "size_bytes": sum(map(len, members.values())), "model": "m"}}
    r = agent.client.put(f"{CONTROL_PREFIX}/deployments/ov", json=desired, headers=agent.auth)
    assert r.status_code == 422, r.text
    assert "runtime_options.cache_dir" in r.json()["error"]["message"], r.text
    assert "<root>/cache/<name>" in r.json()["error"]["hint"]


def test_openvino_cache_dir_is_a_folder_under_the_agent_root(tmp_path):
    from edgectl_agent.api import DesiredDeployment
    from edgectl_agent.runtimes.openvino import cache_root, openvino_config

    desired = DesiredDeployment.model_validate({
        "name": "ov", "runtime": "openvino", "runtime_options": {"cache_dir": "ov-cache"},
        "artifact": {"digest": "sha256:" + "0" * 64, "format": "openvino", "quant": "INT8", "size_bytes": 1,
                     "model": "m", "layout": "tree"}})
    root = tmp_path / "agent"
    assert cache_root(root / "trees" / ("0" * 64)) == root / "cache"
    assert openvino_config(desired, cache=root / "cache")[1] == {"CACHE_DIR": str(root / "cache" / "ov-cache")}


@pytest.mark.parametrize("folder", ["staging", "artifacts", "trees"])
def test_a_store_folder_planted_as_a_symlink_stops_the_agent_before_any_write(tmp_path, outside, folder):
    from edgectl_agent.errors import AgentError

    root = tmp_path / "agent"
    root.mkdir()
    (root / folder).symlink_to(outside, target_is_directory=True)
    before = snapshot(tmp_path, root)
    with pytest.raises(AgentError) as e:
        ArtifactStore(root)
    assert "symbolic link" in e.value.message and f"rm {root / folder}" in e.value.hint
    assert snapshot(tmp_path, root) == before
    # the root itself may be a link (a data disk mounted elsewhere)
    (tmp_path / "data").mkdir()
    (tmp_path / "linked-root").symlink_to(tmp_path / "data", target_is_directory=True)
    assert ArtifactStore(tmp_path / "linked-root").has(digest_of(b"x")) is False

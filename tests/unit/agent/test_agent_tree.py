"""Directory artifacts: a canonical manifest names every member by sha256; the agent lays the folder out only from
verified members and never outside its root."""

from __future__ import annotations

import pytest

from edgectl_agent.errors import Conflict, Unprocessable
from edgectl_agent.tree import TreeError, TreeFile, check_relpath, is_manifest, manifest_bytes, parse_manifest

from tests.unit.agent.conftest import digest_of

MEMBERS = {"model.xml": b"<net/>" * 50, "model.bin": b"\x01\x02" * 400, "tok/tokenizer.json": b"{}"}


def tree_of(members: dict[str, bytes]) -> tuple[bytes, list[TreeFile]]:
    files = [TreeFile(path=p, sha256=digest_of(b), size=len(b)) for p, b in members.items()]
    return manifest_bytes(files), files


def test_manifest_is_canonical_and_round_trips():
    data, files = tree_of(MEMBERS)
    assert is_manifest(data)
    assert [f.path for f in parse_manifest(data)] == sorted(MEMBERS)
    assert manifest_bytes(list(reversed(files))) == data  # order of input never changes the digest
    pretty = data.replace(b",", b", ")
    with pytest.raises(TreeError, match="canonical"):
        parse_manifest(pretty)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a\\b", "a\x00b", ".hidden", "a//b", "",
                                  "a/./b", "x;rm -rf", "/".join(["d"] * 9)])
def test_unsafe_paths_are_refused(path):
    with pytest.raises(TreeError):
        check_relpath(path)


def test_manifest_refuses_duplicates_bad_digests_and_file_folder_clashes():
    good = digest_of(b"x")
    with pytest.raises(TreeError, match="twice"):
        manifest_bytes([TreeFile("a", good, 1), TreeFile("a", good, 1)])
    with pytest.raises(TreeError, match="digest"):
        manifest_bytes([TreeFile("a", "sha256:abc", 1)])
    with pytest.raises(TreeError, match="both a file and a folder"):
        manifest_bytes([TreeFile("a", good, 1), TreeFile("a/b", good, 1)])
    with pytest.raises(TreeError, match="not an edgectl tree"):
        parse_manifest(b'{"files":[]}')
    escaping = b'{"edgectl_tree":1,"files":[{"path":"../../x","sha256":"' + good.encode() + b'","size":1}]}'
    with pytest.raises(TreeError, match="unsafe segment"):
        parse_manifest(escaping)


def test_tree_upload_materializes_verified_members_atomically(agent):
    manifest, _ = tree_of(MEMBERS)
    digest = agent.upload(manifest)
    store = agent.app.state.agent.store
    assert store.is_tree(digest)
    assert {f.path for f in store.missing_members(digest)} == set(MEMBERS)
    with pytest.raises(Conflict, match="not in this device's store"):
        store.materialize(digest)
    assert not store.tree_path(digest).exists()
    for data in MEMBERS.values():
        agent.upload(data)
    assert store.missing_members(digest) == []
    folder = store.materialize(digest, rehash=True)
    assert folder == store.tree_path(digest)
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == MEMBERS
    assert list((agent.root / "staging").iterdir()) == []

    store.delete(digest)
    assert not folder.exists() and not store.has(digest)


def test_corrupted_member_is_caught_on_rehash(agent):
    manifest, _ = tree_of(MEMBERS)
    digest = agent.upload(manifest)
    for data in MEMBERS.values():
        agent.upload(data)
    store = agent.app.state.agent.store
    blob = store.path(digest_of(MEMBERS["model.bin"]))
    blob.write_bytes(b"\xff" * len(MEMBERS["model.bin"]))  # same size, other bytes
    with pytest.raises(Unprocessable, match="no longer matches"):
        store.materialize(digest, rehash=True)
    assert not store.tree_path(digest).exists()

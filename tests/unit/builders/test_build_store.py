"""ArtifactStore: content addressing, atomic writes, strict digests, cache lookups that never trust a bad blob."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgectl_agent.cas import HASH_CHUNK

from edgectl.builders import store as store_module
from edgectl.builders.store import ArtifactStore, sha256_file
from edgectl.errors import BuildError, NotFoundError
from edgectl.spec.artifact import BuiltArtifact


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _artifact(digest: str, size: int, key: str = "a" * 64, quant: str = "Q4_0") -> BuiltArtifact:
    return BuiltArtifact(digest=digest, model="tiny", format="gguf", quant=quant, size_bytes=size,
                         source_digest="sha256:" + "0" * 64, tool_version="test 1", cache_key=key)


def _put(store: ArtifactStore, data: bytes) -> tuple[str, int]:
    tmp = store.new_tmp_path()
    tmp.write_bytes(data)
    return store.put_file(tmp)


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(3 * HASH_CHUNK + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    assert sha256_file(path, progress=lambda d, t: seen.append((d, t))) == _digest(data)
    assert seen[-1] == (len(data), len(data)) and len(seen) == 4


def test_put_file_names_blob_by_content_and_consumes_tmp(store: ArtifactStore) -> None:
    data = b"GGUF artifact bytes"
    digest, size = _put(store, data)
    assert digest == _digest(data) and size == len(data)
    assert store.path(digest) == store.root / "blobs" / "sha256" / digest.removeprefix("sha256:")
    assert store.path(digest).read_bytes() == data
    assert list(store.tmp_dir.iterdir()) == []


def test_put_file_copies_a_file_from_outside_and_leaves_it(store: ArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1000)
    digest, _ = store.put_file(outside)
    assert outside.read_bytes() == b"x" * 1000
    assert store.verify(digest)
    assert list(store.tmp_dir.iterdir()) == []


def test_put_file_same_bytes_twice_is_one_blob(store: ArtifactStore) -> None:
    first, _ = _put(store, b"same")
    second, _ = _put(store, b"same")
    assert first == second
    assert len(list(store.blobs_dir.iterdir())) == 1


def test_put_file_with_wrong_expected_digest_stores_nothing(store: ArtifactStore) -> None:
    tmp = store.new_tmp_path()
    tmp.write_bytes(b"actual")
    with pytest.raises(BuildError, match="expected sha256:") as exc:
        store.put_file(tmp, expected_digest=_digest(b"something else"))
    assert exc.value.hint
    assert not store.blobs_dir.exists() or list(store.blobs_dir.iterdir()) == []
    assert list(store.tmp_dir.iterdir()) == []


def test_put_file_missing_file_is_a_build_error(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="not a file"):
        store.put_file(tmp_path / "nope")


@pytest.mark.parametrize("bad", [
    "sha256:../../../etc/passwd",
    "../" + "a" * 64,
    "a" * 64,
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "a" * 64 + "\n",
    "sha512:" + "a" * 64,
    "sha256:" + "a" * 62 + "/.",
    "",
])
def test_path_refuses_anything_but_a_strict_digest(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(BuildError, match="invalid artifact digest"):
        store.path(bad)


@pytest.mark.parametrize("bad_key", ["../index", "a" * 63, "A" * 64, "a" * 64 + "\n", "a" * 64 + ".json"])
def test_get_refuses_a_malformed_cache_key(store: ArtifactStore, bad_key: str) -> None:
    with pytest.raises(BuildError, match="invalid build cache key"):
        store.get(bad_key)


def test_record_then_get_returns_the_artifact(store: ArtifactStore) -> None:
    digest, size = _put(store, b"blob")
    artifact = _artifact(digest, size)
    store.record(artifact)
    assert store.get(artifact.cache_key) == artifact
    assert store.get("b" * 64) is None


def test_record_refuses_an_artifact_whose_blob_is_missing(store: ArtifactStore) -> None:
    with pytest.raises(BuildError, match="blob is not in"):
        store.record(_artifact(_digest(b"never stored"), 12))


def test_get_is_a_miss_when_the_blob_is_gone_or_truncated(store: ArtifactStore) -> None:
    digest, size = _put(store, b"0123456789")
    store.record(_artifact(digest, size))
    store.path(digest).write_bytes(b"01234")  # truncated
    assert store.get("a" * 64) is None
    store.path(digest).unlink()
    assert store.get("a" * 64) is None


def test_get_is_a_miss_when_the_index_entry_is_corrupt(store: ArtifactStore) -> None:
    digest, size = _put(store, b"blob")
    store.record(_artifact(digest, size))
    (store.index_dir / ("a" * 64 + ".json")).write_text("{not json")
    assert store.get("a" * 64) is None


def test_get_is_a_miss_when_the_entry_names_another_key(store: ArtifactStore) -> None:
    digest, size = _put(store, b"blob")
    store.record(_artifact(digest, size, key="c" * 64))
    os.replace(store.index_dir / ("c" * 64 + ".json"), store.index_dir / ("a" * 64 + ".json"))
    assert store.get("a" * 64) is None


def test_verify_rehashes_and_catches_same_size_corruption(store: ArtifactStore) -> None:
    digest, _ = _put(store, b"abcdef")
    assert store.verify(digest)
    store.path(digest).write_bytes(b"abcdeX")
    assert not store.verify(digest)
    assert not store.verify(_digest(b"never stored"))


def test_list_find_and_remove(store: ArtifactStore) -> None:
    d1, s1 = _put(store, b"one")
    d2, s2 = _put(store, b"two")
    store.record(_artifact(d1, s1, key="1" * 64, quant="Q8_0"))
    store.record(_artifact(d2, s2, key="2" * 64, quant="Q4_0"))
    store.record(_artifact(d2, s2, key="3" * 64, quant="Q4_0"))  # another recipe, same bytes
    assert [a.quant for a in store.list()] == ["Q4_0", "Q4_0", "Q8_0"]
    assert store.find(d1).quant == "Q8_0"
    assert store.remove(d2)
    assert [a.digest for a in store.list()] == [d1]
    assert not store.path(d2).exists()
    assert not store.remove(d2)
    with pytest.raises(NotFoundError, match="no artifact"):
        store.find(d2)


def test_tmp_file_is_removed_when_the_build_fails(store: ArtifactStore) -> None:
    with pytest.raises(RuntimeError):
        with store.tmp_file() as tmp:
            tmp.write_bytes(b"half an artifact")
            raise RuntimeError("quantizer crashed")
    assert list(store.tmp_dir.iterdir()) == []


def test_clean_tmp_removes_leftovers_of_dead_processes_only(store: ArtifactStore) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    store.tmp_dir.mkdir(parents=True)
    leftover = store.tmp_dir / f"{dead.stdout.strip()}-deadbeef.part"
    leftover.write_bytes(b"killed mid-build")
    mine = store.new_tmp_path()
    mine.write_bytes(b"in progress")
    assert store.clean_tmp() == [leftover]
    assert mine.exists() and not leftover.exists()


def test_default_root_follows_edgectl_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGECTL_CACHE_DIR", str(tmp_path / "cache"))
    assert ArtifactStore().root == tmp_path / "cache"
    assert ArtifactStore(tmp_path / "explicit").root == tmp_path / "explicit"


def test_source_digest_is_hashed_once_per_path_size_mtime(store: ArtifactStore, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "source.gguf"
    src.write_bytes(b"v1")
    calls: list[Path] = []
    real = store_module.sha256_file

    def counting(path: Path, **kw) -> str:
        calls.append(path)
        return real(path, **kw)

    monkeypatch.setattr(store_module, "sha256_file", counting)
    assert store.source_digest(src) == _digest(b"v1")
    assert store.source_digest(src) == _digest(b"v1")
    assert len(calls) == 1
    src.write_bytes(b"v2 longer")
    assert store.source_digest(src) == _digest(b"v2 longer")
    assert len(calls) == 2

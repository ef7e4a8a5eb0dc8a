"""The content-addressed store core both stores build on: edgectl's build store (edgectl/builders/store.py) and the
agent's on-device store (edgectl_agent/store.py).

sha256 of a file (read in 1 MiB chunks, optionally copied in the same pass), fsync of a file's folder, atomic writes
(temp file created exclusively, never through a planted link, fsynced, renamed over the target) and the laying out
of a directory artifact from its blobs (hard links, a copy where the filesystem has none). What each store adds on
top (its layout, its error types, its recovery) stays with it. The digest rules are edgectl_agent.names'.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from edgectl_agent.tree import TreeFile, is_manifest

HASH_CHUNK = 1024 * 1024

# progress(bytes_done, bytes_total) while hashing or copying
ByteProgress = Callable[[int, int], None]


def _hash(src: BinaryIO, total: int, progress: ByteProgress | None, copy_to: BinaryIO | None = None) -> str:
    h = hashlib.sha256()
    done = 0
    while chunk := src.read(HASH_CHUNK):
        h.update(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
        done += len(chunk)
        if progress:
            progress(done, total)
    return f"sha256:{h.hexdigest()}"


def sha256_bytes(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def sha256_file(path: Path, *, follow_symlinks: bool = False, progress: ByteProgress | None = None) -> str:
    """``sha256:<hex>`` of a file. A symlink is refused (OSError ELOOP) unless ``follow_symlinks``: a store hashes
    its own files, never what a planted link points at; a build source may be a link (a Hugging Face cache)."""
    flags = os.O_RDONLY | (0 if follow_symlinks else os.O_NOFOLLOW)
    with open(os.open(path, flags), "rb") as f:
        return _hash(f, os.fstat(f.fileno()).st_size, progress)


def copy_and_hash(src: Path, dst: Path, *, progress: ByteProgress | None = None) -> str:
    """Copy ``src`` to ``dst`` (fsynced) and return the sha256 of the bytes written, in one pass."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        digest = _hash(fin, os.fstat(fin.fileno()).st_size, progress, copy_to=fout)
        fout.flush()
        os.fsync(fout.fileno())
    return digest


def fsync_dir(path: Path, *, required: bool = True) -> None:
    """Make a rename or create in folder ``path`` durable. Not ``required``: a filesystem that cannot open or
    fsync a folder is let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if required:
            raise


def create_exclusive(path: Path, mode: int = 0o600) -> int:
    """A new empty file at ``path``: whatever was there is unlinked first (a planted link is never followed), then
    it is created with O_EXCL | O_NOFOLLOW. Returns an fd for writing. FileExistsError: something was put there
    between the unlink and the create."""
    path.unlink(missing_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)


def write_atomic(path: Path, data: bytes, *, tmp: Path | None = None, dir_sync_required: bool = True) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old or the new content, never a mix: into ``tmp`` (default:
    ``.<name>.<pid>.tmp`` beside it; it must be on the same filesystem), fsynced, renamed over ``path``, the folder
    fsynced. A failed write removes its temp file."""
    tmp = tmp if tmp is not None else path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = create_exclusive(tmp, 0o644)
    try:
        with open(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent, required=dir_sync_required)


def is_manifest_file(path: Path) -> bool:
    """Is the blob at ``path`` a directory artifact's manifest? (reads 16 bytes; False when absent)"""
    try:
        with open(path, "rb") as f:
            return is_manifest(f.read(16))
    except FileNotFoundError:
        return False


def link_tree(files: Iterable[TreeFile], blob: Callable[[str], Path], folder: Path,
              after_each: Callable[[], None] | None = None) -> None:
    """Lay out a directory artifact's ``files`` in the existing, empty ``folder``: each a hard link to its blob
    (``blob(sha256)``), a copy where the filesystem has no hard links. Paths come from a validated manifest
    (edgectl_agent.tree.check_relpath), so nothing lands outside ``folder``; the caller renames the folder into
    place in one step."""
    for f in files:
        target = folder.joinpath(*f.path.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(blob(f.sha256), target)
        except OSError:
            shutil.copyfile(blob(f.sha256), target)
        if after_each is not None:
            after_each()


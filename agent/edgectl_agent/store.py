"""On-device artifact store and state file, both under the agent's root.

Layout::

    <root>/staging/<hex>.part    bytes received so far (resume from its size)
    <root>/staging/<hex>.size    total size declared by the uploader
    <root>/artifacts/<hex>       complete, sha256-verified blobs (moved in by atomic rename): single-file
                                 artifacts, and the manifests and member files of directory artifacts
    <root>/trees/<hex>/          a directory artifact laid out from its verified blobs (hard links), made at
                                 activation from its manifest (edgectl_agent.tree), atomically (staged, renamed)
    <root>/state.json            deployments (desired, active, previous), written atomically
    <root>/attempts.json         load attempts not known to have finished (edgectl_agent.attempts)

A crash at any step leaves at most: one partial upload (kept, to resume), a half-laid-out tree folder or a temp
file in staging/ (removed at the next start), artifacts no deployment refers to any more (state.json lists them as
garbage; collected at the next start).

A digest is only ever turned into a path after strict validation (``sha256:`` + 64 lowercase hex), so no request
can reach outside these folders. Nor can something planted in them: files are opened with ``O_NOFOLLOW`` and a
symlink (or a special file) where a blob, a ``.part`` or a tree should be counts as absent; a ``.part`` with more
than one hard link (a name for some file outside) is never written to; files are created with ``O_EXCL``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from edgectl_agent import cas
from edgectl_agent.api import DeploymentState, DesiredDeployment, UploadStatus
from edgectl_agent.cas import fsync_dir, sha256_file
from edgectl_agent.errors import AgentError, BadRequest, Conflict, InsufficientStorage, Unprocessable
from edgectl_agent.faults import crash_point
from edgectl_agent.names import DIGEST_RE, digest_hex_or_none
from edgectl_agent.tree import MAX_MANIFEST_BYTES, TreeError, TreeFile, parse_manifest

log = logging.getLogger(__name__)

STATE_VERSION = 1
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def digest_hex(digest: str) -> str:
    """The 64 hex characters of a ``sha256:<hex>`` digest; BadRequest for anything else."""
    hex_digest = digest_hex_or_none(digest)
    if hex_digest is None:
        raise BadRequest(f"invalid artifact digest {digest[:80]!r}: expected 'sha256:' followed by 64 lowercase "
                         "hex characters", hint="use the digest edgectl build printed, e.g. sha256:9f86d0...",
                         param="digest", type="invalid_digest")
    return hex_digest


def regular_file(path: Path, *, single_link: bool = False) -> os.stat_result | None:
    """``lstat(path)`` when ``path`` is a regular file itself (not a symlink, device or folder) and, with
    ``single_link``, has no other hard link; None otherwise (absent included)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or (single_link and st.st_nlink != 1):
        return None
    return st


def _create_exclusive(path: Path, mode: int = 0o600) -> int:
    """cas.create_exclusive, a race with another writer answered as a Conflict."""
    try:
        return cas.create_exclusive(path, mode)
    except FileExistsError:  # something was put there between the unlink and the create
        raise Conflict(f"{path} appeared while the agent was creating it",
                       hint="retry; if it happens again, another process writes into the agent's root") from None


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old or the new content, never a mix (cas.write_atomic)."""
    try:
        cas.write_atomic(path, data)
    except FileExistsError:  # its temp file appeared between the unlink and the create
        raise Conflict(f"a temporary file beside {path} appeared while the agent was writing it",
                       hint="retry; if it happens again, another process writes into the agent's root") from None


class ArtifactStore:
    """Resumable, verified uploads and the complete artifacts they produce."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / "staging"
        self.artifacts = root / "artifacts"
        self.trees = root / "trees"
        for d in (root, self.staging, self.artifacts, self.trees):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.staging, self.artifacts, self.trees):  # the root may be a link (a data disk); these not
            if d.is_symlink() or not d.is_dir():
                raise AgentError(f"{d} is not a folder of the agent's own (a symbolic link or a file): the store "
                                 "would write where it points", hint=f"remove it (rm {d}); the agent creates the "
                                 "folder at its next start")
        self._migrate_suffixes()
        self._remove_leftovers()

    def _migrate_suffixes(self) -> None:
        """Earlier agents named every blob ``<hex>.gguf``; blobs are plain ``<hex>`` now (any format)."""
        for old in self.artifacts.glob("*.gguf"):
            if DIGEST_RE.fullmatch("sha256:" + old.stem):
                os.replace(old, self.artifacts / old.stem)

    def _remove_leftovers(self) -> None:
        """Remove what a crash can leave behind that no one will finish: half-laid-out tree folders and temp files
        in staging/, write_atomic's temp files in the root, and the staging files of uploads that are complete (or
        a size file without its partial). One agent owns a root, so at its start nothing else writes there."""
        removed = []
        for p in [*self.staging.iterdir(), *self.root.glob(".*.tmp")]:
            stem, _, suffix = p.name.partition(".")
            if p.is_dir() and suffix.startswith("tree-"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.name.startswith(".") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)
            elif suffix in ("part", "size") and (self.artifacts / stem).is_file():
                p.unlink(missing_ok=True)
            elif suffix == "size" and not (self.staging / f"{stem}.part").exists():
                p.unlink(missing_ok=True)
            else:
                continue
            removed.append(p.name)
        if removed:
            log.info("removed %d leftovers of an interrupted run: %s", len(removed), ", ".join(sorted(removed)))

    # -- paths (validated) ------------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        return self.artifacts / digest_hex(digest)

    def tree_path(self, digest: str) -> Path:
        return self.trees / digest_hex(digest)

    def _part(self, digest: str) -> Path:
        return self.staging / f"{digest_hex(digest)}.part"

    def _size_file(self, digest: str) -> Path:
        return self.staging / f"{digest_hex(digest)}.size"

    # -- queries ----------------------------------------------------------------------------------------------
    def has(self, digest: str) -> bool:
        return regular_file(self.path(digest)) is not None

    def digests(self) -> list[str]:
        return sorted("sha256:" + p.name for p in self.artifacts.iterdir()
                      if DIGEST_RE.fullmatch("sha256:" + p.name) and regular_file(p) is not None)

    def _declared_size(self, digest: str) -> int | None:
        try:
            return int(self._size_file(digest).read_text().strip())
        except (OSError, ValueError):
            return None

    def status(self, digest: str) -> UploadStatus:
        done = regular_file(self.path(digest))
        if done is not None:
            return UploadStatus(digest=digest, size_bytes=done.st_size, received_bytes=done.st_size, complete=True)
        part = regular_file(self._part(digest), single_link=True)
        received = part.st_size if part is not None else 0
        return UploadStatus(digest=digest, size_bytes=self._declared_size(digest), received_bytes=received,
                            complete=False)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    # -- upload -----------------------------------------------------------------------------------------------
    def begin(self, digest: str, offset: int, size: int | None, content_length: int | None) -> int:
        """Check an upload chunk before reading its body; returns the declared total size."""
        status = self.status(digest)
        if status.complete:
            return status.received_bytes
        if offset < 0:
            raise BadRequest(f"offset {offset} is negative", param="offset", hint="resume at the agent's "
                             f"received_bytes ({status.received_bytes})")
        if offset != status.received_bytes:
            raise Conflict(f"upload of {digest} must continue at offset {status.received_bytes}, not {offset}",
                           hint=f"GET /control/v1/artifacts/{digest} and resume from its received_bytes",
                           type="offset_mismatch", code=str(status.received_bytes))
        declared = status.size_bytes
        if size is None:
            if declared is None:
                raise BadRequest("the X-Edgectl-Size header (total artifact size in bytes) is missing",
                                 hint="send X-Edgectl-Size: <total bytes> with every chunk", param="X-Edgectl-Size")
            size = declared
        if size < 0:
            raise BadRequest(f"X-Edgectl-Size {size} is negative", param="X-Edgectl-Size",
                             hint="send the artifact's total size in bytes")
        if declared is not None and declared != size and status.received_bytes > 0:
            raise Conflict(f"upload of {digest} was started with size {declared}, this chunk declares {size}",
                           hint="send the same X-Edgectl-Size as the first chunk did", type="size_mismatch")
        if offset > size or (content_length is not None and offset + content_length > size):
            raise BadRequest(f"chunk ends beyond the declared size {size} of {digest}",
                             hint="send at most X-Edgectl-Size - offset bytes", param="offset")
        needed = size - offset
        free = self.free_bytes()
        if needed > free:
            raise InsufficientStorage(
                f"not enough disk for {digest}: {needed} more bytes needed, {free} free on {self.root}",
                hint="free space on the device (remove unused deployments) or choose a smaller quant")
        try:
            if offset == 0:  # a fresh .part, replacing whatever name was there (a symlink is not followed)
                os.close(_create_exclusive(self._part(digest)))
            write_atomic(self._size_file(digest), f"{size}\n".encode())
        except OSError as e:
            if e.errno in DISK_FULL:
                raise self._disk_full(digest, e) from e
            raise
        crash_point("upload.begin", digest)
        return size

    async def receive(self, digest: str, offset: int, size: int, chunks: AsyncIterator[bytes]) -> None:
        """Append ``chunks`` to the partial file. What arrived before a cut connection is kept (and synced); a
        disk that fills up meanwhile ends the upload with 507 and its bytes deleted."""
        part = self._part(digest)
        written = offset
        try:
            fd = os.open(part, os.O_RDWR | os.O_NOFOLLOW)
        except OSError as e:  # ELOOP: a symlink was put there; ENOENT: removed since begin()
            raise Conflict(f"the partial upload of {digest} is gone or is not a plain file ({e.strerror})",
                           hint=f"start the upload again at offset 0: PUT /control/v1/artifacts/{digest}?offset=0",
                           type="offset_mismatch", code="0") from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # a hard link to a file elsewhere: never write it
            os.close(fd)
            part.unlink(missing_ok=True)
            raise Conflict(f"the partial upload of {digest} was not the agent's own file (it was removed)",
                           hint=f"start the upload again at offset 0: PUT /control/v1/artifacts/{digest}?offset=0",
                           type="offset_mismatch", code="0")
        try:
            with open(fd, "r+b") as f:
                f.seek(offset)
                try:
                    async for chunk in chunks:
                        if written + len(chunk) > size:
                            f.truncate(offset)
                            raise BadRequest(f"received more than the declared {size} bytes of {digest}",
                                             hint="send exactly X-Edgectl-Size bytes in total", param="offset")
                        f.write(chunk)
                        if written == offset:
                            crash_point("upload.after_write", digest)
                        written += len(chunk)
                finally:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            if e.errno in DISK_FULL:
                raise self._disk_full(digest, e) from e
            raise

    def _disk_full(self, digest: str, error: OSError) -> InsufficientStorage:
        """The disk filled up during an upload: its partial bytes are deleted (a resume could not fit either)."""
        self.discard(digest)
        return InsufficientStorage(
            f"the disk holding {self.root} filled up while receiving {digest} ({os.strerror(error.errno)}); the "
            "partial upload was deleted", hint="free space on the device (remove unused deployments, or files "
            "other programs write there) and push again; the artifact serving now is unaffected")

    def finish(self, digest: str, size: int) -> UploadStatus:
        """Verify and move a complete upload into place (blocking: run it in a thread). Mismatch = bytes deleted."""
        part = self._part(digest)
        st = regular_file(part, single_link=True)
        received = st.st_size if st is not None else 0
        if received < size:
            return UploadStatus(digest=digest, size_bytes=size, received_bytes=received, complete=False)
        crash_point("verify", digest)
        actual = sha256_file(part)
        if actual != digest:
            self.discard(digest)
            raise Unprocessable(f"sha256 mismatch: the {size} bytes received hash to {actual}, not {digest}; "
                                "they were deleted", hint="the local artifact changed or was corrupted in transit; "
                                "rebuild it (edgectl build) and push again", type="digest_mismatch")
        final = self.path(digest)
        crash_point("finish.before_rename", digest)
        os.replace(part, final)
        fsync_dir(self.artifacts)
        crash_point("finish.after_rename", digest)
        self._size_file(digest).unlink(missing_ok=True)
        log.info("artifact %s complete (%d bytes)", digest, size)
        return UploadStatus(digest=digest, size_bytes=size, received_bytes=size, complete=True)

    def discard(self, digest: str) -> None:
        self._part(digest).unlink(missing_ok=True)
        self._size_file(digest).unlink(missing_ok=True)

    def delete(self, digest: str) -> None:
        """Delete a blob (and the laid-out folder when it is a tree manifest; member blobs are the caller's)."""
        tree = self.tree_path(digest)
        if tree.is_symlink():
            tree.unlink()  # planted: remove the link, never what it points at
        elif tree.exists():  # moved out first, so trees/ never holds a half-deleted folder
            doomed = self.staging / f"{tree.name}.tree-{secrets.token_hex(4)}"
            os.replace(tree, doomed)
            shutil.rmtree(doomed)
        self.path(digest).unlink(missing_ok=True)
        self.discard(digest)
        log.info("artifact %s deleted (no deployment refers to it)", digest)

    # -- directory artifacts ----------------------------------------------------------------------------------
    def tree_files(self, digest: str) -> list[TreeFile]:
        """The files of the tree artifact whose manifest is blob ``digest`` (validated: no path escapes)."""
        path = self.path(digest)
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_MANIFEST_BYTES + 1)  # never read a multi-GB blob whole
        except FileNotFoundError:
            raise Conflict(f"artifact manifest {digest} is not in this device's store",
                           hint=f"upload it first: PUT /control/v1/artifacts/{digest} (edgectl apply does this)",
                           type="artifact_missing", code=digest) from None
        try:
            return parse_manifest(data)
        except TreeError as e:
            raise Unprocessable(f"artifact {digest} is not a valid directory manifest: {e}",
                                hint="rebuild the artifact with edgectl build; a manifest lists only relative "
                                     "paths inside the artifact", type="invalid_manifest") from e

    def is_tree(self, digest: str) -> bool:
        """Is blob ``digest`` a directory artifact's manifest? (reads 16 bytes)"""
        return cas.is_manifest_file(self.path(digest))

    def missing_members(self, digest: str) -> list[TreeFile]:
        """Member files of a tree not (completely) in the store yet."""
        return [f for f in self.tree_files(digest) if not self.has(f.sha256)]

    def materialize(self, digest: str, *, rehash: bool = False) -> Path:
        """The folder of tree artifact ``digest``, laid out from its verified member blobs (blocking).

        Every member must be in the store with its declared size (blobs were sha256-verified on upload; with
        ``rehash`` they are hashed again). The folder is built in staging and renamed into ``trees/`` in one step,
        so it is complete or absent. Only validated relative paths are created, in folders made here.
        """
        files = self.tree_files(digest)
        for f in files:
            blob = self.path(f.sha256)
            st = regular_file(blob)
            if st is None:
                raise Conflict(f"file {f.path} ({f.sha256}) of artifact {digest} is not in this device's store",
                               hint=f"upload it first: PUT /control/v1/artifacts/{f.sha256} (edgectl apply does "
                                    "this)", type="artifact_missing", code=f.sha256)
            if st.st_size != f.size:
                raise Unprocessable(f"file {f.path} of artifact {digest} has {st.st_size} bytes on the "
                                    f"device, its manifest says {f.size}", hint="push the artifact again")
            if rehash and sha256_file(blob) != f.sha256:
                raise Unprocessable(f"file {f.path} of artifact {digest} no longer matches its sha256 (corrupted)",
                                    hint="push it again: edgectl apply uploads missing artifacts")
        final = self.tree_path(digest)
        if final.is_symlink():
            final.unlink()  # planted: lay the folder out afresh below, inside the root
        elif final.is_dir():
            if _holds_exactly(final, files):
                return final
            self._set_aside(final)  # changed since it was laid out (a symlink put in it?): lay it out again
        stage = self.staging / f"{digest_hex(digest)}.tree-{secrets.token_hex(4)}"
        stage.mkdir(mode=0o700)
        try:
            cas.link_tree(files, self.path, stage, after_each=lambda: crash_point("stage.after_link", digest))
            crash_point("stage.before_rename", digest)
            os.replace(stage, final)
            fsync_dir(self.trees)
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        return final

    def _set_aside(self, tree: Path) -> None:
        aside = self.staging / f"{tree.name}.bad-{secrets.token_hex(4)}"
        os.replace(tree, aside)
        shutil.rmtree(aside, ignore_errors=True)  # rmtree unlinks symlinks, never follows them
        log.warning("tree %s did not match its manifest (a file changed, added or replaced by a link); laid out "
                    "again", tree)


def _holds_exactly(folder: Path, files: list[TreeFile]) -> bool:
    """Does ``folder`` hold exactly ``files`` as regular files of their sizes, in real folders, nothing else?"""
    want = {f.path: f.size for f in files}
    seen = 0
    for top, dirs, names in os.walk(folder):  # followlinks=False: a symlinked folder shows up in dirs, refused below
        for d in dirs:
            if not stat.S_ISDIR(os.lstat(os.path.join(top, d)).st_mode):
                return False
        for name in names:
            rel = os.path.relpath(os.path.join(top, name), folder).replace(os.sep, "/")
            st = regular_file(Path(top, name))
            if st is None or want.get(rel) != st.st_size:
                return False
            seen += 1
    return seen == len(want)


_states = TypeAdapter(list[DeploymentState])
_loaded = TypeAdapter(dict[str, DesiredDeployment])


class StateFile:
    """``<root>/state.json``: the deployments the agent serves, so it restarts serving them without edgectl.

    Beside the wire ``deployments`` it keeps ``loaded``: per deployment, the desired settings its active artifact
    was loaded with (these differ from ``desired`` after a failed activation); ``previous``: the desired
    deployment its previous artifact was served with; and ``garbage``: artifacts the last change stopped referring
    to, written before they are deleted, so a crash in between cannot leak them.
    """

    def __init__(self, root: Path) -> None:
        self.path = root / "state.json"

    def load(self) -> tuple[list[DeploymentState], dict[str, DesiredDeployment]]:
        states, loaded, _previous = self.load_all()
        return states, loaded

    def load_all(self) -> tuple[list[DeploymentState], dict[str, DesiredDeployment], dict[str, DesiredDeployment]]:
        """The states, the ``loaded`` settings, and ``previous``: per deployment, the desired deployment its
        previous artifact was served with (as received, signature included, so recovery can verify it)."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return [], {}, {}
        except (OSError, ValueError) as e:
            raise Unprocessable(f"cannot read {self.path}: {e}",
                                hint="restore the file from a backup, or delete it to start with no deployments "
                                     "(edgectl apply then re-activates them)") from e
        try:
            return (_states.validate_python(raw.get("deployments", [])),
                    _loaded.validate_python(raw.get("loaded", {})),
                    _loaded.validate_python(raw.get("previous", {})))
        except (ValidationError, AttributeError) as e:
            raise Unprocessable(f"{self.path} is not a valid agent state file: {e}",
                                hint="delete it to start with no deployments; edgectl apply re-activates them") from e

    def garbage(self) -> set[str]:
        """The digests the last save listed as garbage (only valid digests; nothing when the file is absent)."""
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return set()
        listed = raw.get("garbage", []) if isinstance(raw, dict) else []
        return {d for d in listed if isinstance(d, str) and DIGEST_RE.fullmatch(d)}

    def save(self, states: list[DeploymentState], loaded: dict[str, DesiredDeployment],
             previous: dict[str, DesiredDeployment] | None = None, *, garbage: set[str] = frozenset()) -> None:
        body = {"version": STATE_VERSION,
                "deployments": [s.model_dump(mode="json") for s in states],
                "loaded": {name: d.model_dump(mode="json") for name, d in sorted(loaded.items())},
                "previous": {name: d.model_dump(mode="json") for name, d in sorted((previous or {}).items())},
                "garbage": sorted(garbage)}
        write_atomic(self.path, (json.dumps(body, indent=2) + "\n").encode())

"""Content-addressed artifact store on the control machine.

Layout under ``root``::

    blobs/sha256/<hex>        artifact bytes, named by their sha256 (for a directory artifact: its manifest and,
                              each under its own sha256, its member files; see edgectl_agent.tree)
    trees/<hex>/              a directory artifact laid out from its blobs (hard links), made on demand
    index/<cache_key>.json    BuiltArtifact metadata: cache key -> artifact in one file read
    sources/<hex>.json        source digests remembered by (path, size, mtime) so big sources are hashed once
    tmp/<pid>-<rand>.part     builds in progress; renamed into blobs/ only once complete

Every write goes to ``tmp/`` first and lands with ``os.replace``, so a crash leaves either the old state or the
new one, never a half-written blob or index entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from edgectl_agent import cas
from edgectl_agent.cas import ByteProgress, copy_and_hash, fsync_dir
from edgectl_agent.names import DIGEST_RE, SHA256_HEX_RE, digest_hex_or_none
from edgectl_agent.tree import TreeError, TreeFile, manifest_bytes, parse_manifest
from pydantic import ValidationError

from edgectl.errors import BuildError, NotFoundError
from edgectl.spec.artifact import BuiltArtifact

CACHE_KEY_RE = SHA256_HEX_RE  # a build cache key is a bare sha256 (Recipe.cache_key)


def sha256_file(path: Path, *, progress: ByteProgress | None = None) -> str:
    """``sha256:<hex>`` of a file, read in 1 MiB chunks; a symlink is followed (a source in a Hugging Face cache
    is one)."""
    return cas.sha256_file(path, follow_symlinks=True, progress=progress)


def tree_digest(folder: Path, *, progress: ByteProgress | None = None) -> str:
    """The digest a folder would have as a tree artifact: sha256 of the canonical manifest of its regular files
    (hidden files, e.g. .cache/ or .git/, are skipped; symlinks are followed for reading)."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    total, done, files = sum(p.stat().st_size for p in paths), 0, []
    for p in paths:
        def file_progress(d: int, _t: int, _base: int = done) -> None:
            if progress:
                progress(_base + d, total)
        files.append(TreeFile(path=p.relative_to(folder).as_posix(), sha256=sha256_file(p, progress=file_progress),
                              size=p.stat().st_size))
        done += files[-1].size
    try:
        return cas.sha256_bytes(manifest_bytes(files))
    except TreeError as e:
        raise BuildError(f"source folder {folder} has a file edgectl cannot ship: {e}",
                         hint="rename or remove that file") from e


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<64 hex>`` digest; anything else (paths, '..', upper case) is refused."""
    hex_digest = digest_hex_or_none(digest)
    if hex_digest is None:
        raise BuildError(f"invalid artifact digest {digest!r}",
                         hint="a digest is 'sha256:' followed by 64 lowercase hex characters")
    return hex_digest


def _check_cache_key(cache_key: str) -> str:
    if not (isinstance(cache_key, str) and CACHE_KEY_RE.fullmatch(cache_key)):
        raise BuildError(f"invalid build cache key {cache_key!r}",
                         hint="a cache key is 64 lowercase hex characters (Recipe.cache_key)")
    return cache_key


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ArtifactStore:
    """Artifacts named by the sha256 of their bytes, with an index from build cache key to artifact."""

    def __init__(self, root: Path | None = None) -> None:
        if root is None:
            from edgectl.paths import store_dir  # EDGECTL_CACHE_DIR, else the platform's user cache dir

            root = store_dir()
        self.root = Path(root).expanduser()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.index_dir = self.root / "index"
        self.sources_dir = self.root / "sources"
        self.tmp_dir = self.root / "tmp"
        self.trees_dir = self.root / "trees"

    def __repr__(self) -> str:
        return f"ArtifactStore({str(self.root)!r})"

    # -- paths -----------------------------------------------------------------------------------------------

    def path(self, digest: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists). The digest is validated strictly."""
        return self.blobs_dir / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def _index_path(self, cache_key: str) -> Path:
        return self.index_dir / f"{_check_cache_key(cache_key)}.json"

    # -- temporary files -------------------------------------------------------------------------------------

    def new_tmp_path(self, suffix: str = ".part") -> Path:
        """A fresh path in ``tmp/`` (same filesystem as blobs/, so the final rename is atomic). Not created."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{os.getpid()}-{secrets.token_hex(8)}{suffix}"

    @contextlib.contextmanager
    def tmp_file(self, suffix: str = ".part") -> Iterator[Path]:
        """A temporary path in the store (file or folder, as the caller makes it) that is removed on exit if it still
        exists (failed or interrupted)."""
        path = self.new_tmp_path(suffix)
        try:
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()

    def clean_tmp(self) -> list[Path]:
        """Remove leftovers of builds whose process is gone (killed mid-build). Returns what was removed."""
        removed: list[Path] = []
        if not self.tmp_dir.is_dir():
            return removed
        for entry in self.tmp_dir.iterdir():
            pid_text = entry.name.split("-", 1)[0]
            if pid_text.isdigit() and _pid_alive(int(pid_text)):
                continue
            with contextlib.suppress(FileNotFoundError):
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
        return removed

    def _write_json_atomic(self, path: Path, data: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cas.write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(),
                         tmp=self.new_tmp_path(".json"), dir_sync_required=False)  # not every filesystem syncs folders

    # -- blobs -----------------------------------------------------------------------------------------------

    def put_file(self, tmp_path: Path, *, expected_digest: str | None = None,
                 progress: ByteProgress | None = None) -> tuple[str, int]:
        """Move a finished file into the store under its sha256; returns ``(digest, size_bytes)``.

        ``tmp_path`` should be under ``tmp/`` (from :meth:`new_tmp_path`; it is then renamed, atomically, and
        consumed); a file elsewhere is copied into ``tmp/`` first and left in place. With ``expected_digest`` a mismatch is a
        BuildError and nothing is stored.
        """
        tmp_path = Path(tmp_path)
        if not tmp_path.is_file():
            raise BuildError(f"cannot store {tmp_path}: not a file", hint="build the artifact before storing it")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        own_tmp = tmp_path.resolve().is_relative_to(self.tmp_dir.resolve())
        staged = tmp_path if own_tmp else self.new_tmp_path()
        try:
            if own_tmp:
                with open(staged, "rb+") as f:
                    os.fsync(f.fileno())
                digest = sha256_file(staged, progress=progress)
            else:
                digest = copy_and_hash(tmp_path, staged, progress=progress)
            if expected_digest is not None and digest != expected_digest:
                raise BuildError(f"{tmp_path} has digest {digest}, expected {expected_digest}",
                                 hint="the file changed while it was being stored; run the build again")
            size = staged.stat().st_size
            final = self.path(digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.is_file() and final.stat().st_size == size:
                staged.unlink()  # same bytes already stored
            else:
                os.replace(staged, final)
                fsync_dir(final.parent, required=False)
            return digest, size
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()  # already renamed on success; a failed attempt leaves nothing in tmp/

    def verify(self, digest: str) -> bool:
        """Re-hash the stored blob; True when its bytes still match its name. A missing blob is False."""
        path = self.path(digest)
        if not path.is_file():
            return False
        return sha256_file(path) == digest

    # -- index -----------------------------------------------------------------------------------------------

    def record(self, artifact: BuiltArtifact) -> None:
        """Index a stored blob under its cache key (atomic). The blob must already be in the store."""
        if not self.has(artifact.digest):
            raise BuildError(f"cannot index {artifact.digest}: its blob is not in {self.blobs_dir}",
                             hint="store the file with put_file() first")
        self._write_json_atomic(self._index_path(artifact.cache_key), artifact.model_dump(mode="json"))

    def get(self, cache_key: str) -> BuiltArtifact | None:
        """The artifact built for this cache key, or None. A missing, truncated or unreadable entry is a miss.

        This checks existence and size, not the full hash (a hit must cost no work); :meth:`verify` re-hashes.
        """
        index = self._index_path(cache_key)
        try:
            artifact = BuiltArtifact.model_validate_json(index.read_bytes())
        except (FileNotFoundError, ValidationError, ValueError):
            return None
        if artifact.cache_key != cache_key:
            return None
        try:
            if artifact.layout == "tree":
                files = self.tree_files(artifact.digest)
                if sum(f.size for f in files) != artifact.size_bytes or not all(
                        self.path(f.sha256).stat().st_size == f.size for f in files):
                    return None
            elif self.path(artifact.digest).stat().st_size != artifact.size_bytes:
                return None
        except (FileNotFoundError, BuildError):
            return None
        return artifact

    def list(self) -> list[BuiltArtifact]:
        """Every indexed artifact whose blob is present, sorted by model, quant, digest."""
        out: list[BuiltArtifact] = []
        if self.index_dir.is_dir():
            for entry in self.index_dir.glob("*.json"):
                artifact = self.get(entry.stem) if CACHE_KEY_RE.fullmatch(entry.stem) else None
                if artifact is not None:
                    out.append(artifact)
        return sorted(out, key=lambda a: (a.model, a.quant, a.digest))

    def find(self, digest: str) -> BuiltArtifact:
        """The indexed artifact with this digest, or NotFoundError."""
        digest_hex(digest)
        for artifact in self.list():
            if artifact.digest == digest:
                return artifact
        raise NotFoundError(f"no artifact {digest} in {self.root}",
                            hint="list the stored artifacts with ArtifactStore.list() ('edgectl artifacts')")

    def remove(self, digest: str) -> bool:
        """Delete a blob and every index entry that points at it; for a directory artifact also its laid-out
        folder and the member blobs no other indexed artifact lists. Returns whether anything was removed."""
        removed = False
        members: set[str] = set()
        if self.has(digest) and self.is_tree(digest):
            with contextlib.suppress(BuildError):
                members = {f.sha256 for f in self.tree_files(digest)}
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.trees_dir / digest_hex(digest))
        if self.index_dir.is_dir():
            for entry in self.index_dir.glob("*.json"):
                try:
                    if json.loads(entry.read_text(encoding="utf-8")).get("digest") == digest:
                        entry.unlink()
                        removed = True
                except (OSError, ValueError):
                    continue
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()
            removed = True
        if members:
            for other in self.list():
                if other.layout == "tree":
                    members -= {f.sha256 for f in self.tree_files(other.digest)}
            for member in members:
                with contextlib.suppress(FileNotFoundError):
                    self.path(member).unlink()
        return removed

    # -- directory artifacts ---------------------------------------------------------------------------------

    def put_tree(self, tmp_dir: Path, *, progress: ByteProgress | None = None) -> tuple[str, int]:
        """Move a finished folder into the store: each regular file becomes a blob under its own sha256, then the
        manifest listing them (edgectl_agent.tree) is stored; returns ``(manifest digest, total file bytes)``.

        Symlinks, special files and names the agent would refuse are a BuildError (nothing indexed). The folder
        should come from :meth:`new_tmp_path` (its files are then moved, not copied).
        """
        tmp_dir = Path(tmp_dir)
        if not tmp_dir.is_dir():
            raise BuildError(f"cannot store {tmp_dir}: not a folder", hint="build the artifact before storing it")
        entries: list[tuple[str, Path]] = []
        for path in sorted(tmp_dir.rglob("*")):
            rel = path.relative_to(tmp_dir).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise BuildError(f"built artifact {tmp_dir} contains {rel}, which is not a regular file or folder",
                                 hint="directory artifacts hold only regular files (no links, devices or pipes)")
            if path.is_file():
                entries.append((rel, path))
        if not entries:
            raise BuildError(f"built artifact folder {tmp_dir} is empty", hint="check the builder's output")
        total = sum(p.stat().st_size for _, p in entries)
        done = 0
        files: list[TreeFile] = []
        for rel, path in entries:
            size = path.stat().st_size

            def file_progress(d: int, _t: int, _base: int = done) -> None:
                if progress:
                    progress(_base + d, total)

            digest, _ = self.put_file(path, progress=file_progress)
            files.append(TreeFile(path=rel, sha256=digest, size=size))
            done += size
        try:
            manifest = manifest_bytes(files)
        except TreeError as e:
            raise BuildError(f"built artifact {tmp_dir} cannot be shipped: {e}",
                             hint="rename the file (the agent accepts letters, digits, '.', '_', '+', '-')") from e
        manifest_tmp = self.new_tmp_path(".manifest")
        manifest_tmp.write_bytes(manifest)
        digest, _ = self.put_file(manifest_tmp)
        return digest, total

    def is_tree(self, digest: str) -> bool:
        """Is the stored blob ``digest`` a directory artifact's manifest? (reads 16 bytes)"""
        return cas.is_manifest_file(self.path(digest))

    def tree_files(self, digest: str) -> list[TreeFile]:
        """The files a stored manifest lists (validated)."""
        try:
            return parse_manifest(self.path(digest).read_bytes())
        except FileNotFoundError:
            raise NotFoundError(f"no artifact {digest} in {self.root}",
                                hint="build it first (edgectl build)") from None
        except TreeError as e:
            raise BuildError(f"stored artifact {digest} is not a valid directory manifest: {e}",
                             hint=f"remove {self.path(digest)} and build again") from e

    def blobs_of(self, artifact: BuiltArtifact) -> list[tuple[str, Path]]:
        """What to upload for an artifact, in order: ``(digest, path)`` of each member file, then the manifest
        (a directory artifact), or just the blob (a file)."""
        if artifact.layout != "tree":
            return [(artifact.digest, self.path(artifact.digest))]
        members = {f.sha256: self.path(f.sha256) for f in self.tree_files(artifact.digest)}
        return [*sorted(members.items()), (artifact.digest, self.path(artifact.digest))]

    def local_path(self, artifact: BuiltArtifact) -> Path:
        """A path a runtime can load: the blob of a file artifact, or the laid-out folder of a directory artifact
        (``trees/<hex>/``, built from hard links to the blobs on first use, atomically)."""
        if artifact.layout != "tree":
            return self.path(artifact.digest)
        final = self.trees_dir / digest_hex(artifact.digest)
        if final.is_dir():
            return final
        stage = self.new_tmp_path(".tree")
        stage.mkdir()
        try:
            cas.link_tree(self.tree_files(artifact.digest), self.path, stage)
            self.trees_dir.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(stage, final)
            except OSError:
                if not final.is_dir():  # another process laid it out first: fine
                    raise
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        return final

    # -- source digests --------------------------------------------------------------------------------------

    def source_digest(self, path: Path, *, progress: ByteProgress | None = None) -> str:
        """sha256 of a source file, remembered by (absolute path, size, mtime) so an unchanged source is not
        re-hashed on every apply. A source folder (a Hugging Face model directory) is digested like a tree
        artifact (:func:`tree_digest`); its stamp is the newest mtime and the total size of its files."""
        path = Path(path).resolve()
        if path.is_dir():
            stats = [f.stat() for f in path.rglob("*") if f.is_file()]
            size, mtime_ns = sum(f.st_size for f in stats), max((f.st_mtime_ns for f in stats), default=0)
            mtime_ns += len(stats)  # a removed file changes the stamp even if it was not the newest
        else:
            st = path.stat()
            size, mtime_ns = st.st_size, st.st_mtime_ns
        key = hashlib.sha256(str(path).encode()).hexdigest()
        entry_path = self.sources_dir / f"{key}.json"
        stamp = {"path": str(path), "size": size, "mtime_ns": mtime_ns}
        try:
            cached = json.loads(entry_path.read_text(encoding="utf-8"))
            if {k: cached.get(k) for k in stamp} == stamp and DIGEST_RE.fullmatch(str(cached.get("digest", ""))):
                return cached["digest"]
        except (FileNotFoundError, ValueError):
            pass
        digest = tree_digest(path, progress=progress) if path.is_dir() else sha256_file(path, progress=progress)
        self._write_json_atomic(entry_path, {**stamp, "digest": digest})
        return digest

"""Directory-shaped artifacts (an OpenVINO IR folder, an onnxruntime-genai folder, an MLX folder).

A tree artifact is a *manifest*: canonical JSON listing every file with its relative path, size and sha256.
The artifact's digest is the sha256 of the manifest bytes, so it is content-addressed like a single file, and
each file is itself a blob named by its own sha256: stored, uploaded (resumably) and verified one by one.

    {"edgectl_tree":1,"files":[{"path":"model.xml","sha256":"sha256:...","size":123},...]}

Both sides use this module: edgectl writes manifests (:func:`manifest_bytes`), the agent parses what it receives
(:func:`parse_manifest`), which refuses anything that could escape the artifact's folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from edgectl_agent.names import DIGEST_RE

TREE_VERSION = 1
MAX_FILES = 10_000
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
# One path segment: letters, digits and . _ - + (no leading dot: no '.', '..' or hidden files).
_SEGMENT = re.compile(r"[A-Za-z0-9_+\-][A-Za-z0-9._+\-]{0,127}")
MAX_DEPTH = 8


class TreeError(ValueError):
    """A manifest that is malformed or names a path outside the artifact's folder."""


@dataclass(frozen=True, order=True)
class TreeFile:
    path: str  # relative, '/'-separated, validated by check_relpath
    sha256: str  # sha256:<hex> of the file's bytes
    size: int


def check_relpath(path: str) -> str:
    """``path`` if it is a safe relative file path inside a tree; TreeError otherwise.

    Refused: absolute paths, backslashes, NUL and control characters, empty, '.' or '..' segments, hidden names,
    characters outside ``[A-Za-z0-9._+-]``, more than MAX_DEPTH levels.
    """
    if not isinstance(path, str) or not path:
        raise TreeError("empty file path in artifact manifest")
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise TreeError(f"artifact file path {path[:80]!r} is absolute or contains '\\' or NUL")
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        raise TreeError(f"artifact file path {path[:80]!r} is deeper than {MAX_DEPTH} levels")
    for part in parts:
        if not _SEGMENT.fullmatch(part):
            raise TreeError(f"artifact file path {path[:80]!r} has an unsafe segment {part[:40]!r} (allowed: "
                            "letters, digits, '.', '_', '+', '-'; no leading '.', no empty segment)")
    return path


def manifest_bytes(files: list[TreeFile]) -> bytes:
    """The canonical manifest of ``files`` (sorted by path, compact JSON): same files = same bytes = same digest."""
    seen: set[str] = set()
    entries = []
    for f in sorted(files):
        check_relpath(f.path)
        if f.path in seen:
            raise TreeError(f"artifact file {f.path!r} listed twice")
        if not DIGEST_RE.fullmatch(f.sha256) or f.size < 0:
            raise TreeError(f"artifact file {f.path!r} has an invalid digest or size")
        seen.add(f.path)
        entries.append({"path": f.path, "sha256": f.sha256, "size": f.size})
    _check_prefixes(seen)
    return json.dumps({"edgectl_tree": TREE_VERSION, "files": entries}, sort_keys=True,
                      separators=(",", ":")).encode()


def _check_prefixes(paths: set[str]) -> None:
    """A path may not be both a file and a folder of another path ('a' and 'a/b')."""
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in paths:
                raise TreeError(f"artifact path {'/'.join(parts[:i])!r} is both a file and a folder")


def is_manifest(data: bytes) -> bool:
    """Cheap sniff: do these bytes start like a tree manifest?"""
    return data[:16].startswith(b'{"edgectl_tree"')


def parse_manifest(data: bytes) -> list[TreeFile]:
    """The files a manifest lists, fully validated (paths, digests, sizes, duplicates, canonical form)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise TreeError(f"artifact manifest is {len(data)} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise TreeError(f"artifact manifest is not JSON: {e}") from e
    if not isinstance(raw, dict) or raw.get("edgectl_tree") != TREE_VERSION or not isinstance(raw.get("files"), list):
        raise TreeError(f"artifact manifest is not an edgectl tree manifest version {TREE_VERSION}")
    if len(raw["files"]) > MAX_FILES:
        raise TreeError(f"artifact manifest lists {len(raw['files'])} files, more than {MAX_FILES}")
    files = []
    for entry in raw["files"]:
        if not isinstance(entry, dict) or set(entry) != {"path", "sha256", "size"}:
            raise TreeError("artifact manifest entry must have exactly path, sha256 and size")
        size = entry["size"]
        if not isinstance(size, int) or isinstance(size, bool):
            raise TreeError(f"artifact manifest entry {str(entry['path'])[:80]!r} has a non-integer size")
        files.append(TreeFile(path=check_relpath(entry["path"]), sha256=str(entry["sha256"]), size=size))
    if manifest_bytes(files) != data:
        raise TreeError("artifact manifest is not in canonical form (sorted, compact, no extra keys)")
    return files

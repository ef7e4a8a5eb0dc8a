"""The name and digest rules both sides check, in one place (edgectl's manifests and stores import them).

Names end up in file names, URLs and remote argv: a conservative DNS-label-like charset, no leading '-' (would read
as an option), no path separators, no shell metacharacters. A digest is ``sha256:`` + 64 lowercase hex characters;
only a digest that matches is ever turned into a path.
"""

from __future__ import annotations

import re

NAME_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"

SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"  # a bare sha256 (sha256sum's output, a build cache key)
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DIGEST_RE = re.compile(r"sha256:([0-9a-f]{64})")  # fullmatch it; group 1 is the hex
SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")  # fullmatch it


def digest_hex_or_none(digest: object) -> str | None:
    """The 64 hex characters of a ``sha256:<hex>`` digest; None for anything else (paths, '..', upper case)."""
    m = DIGEST_RE.fullmatch(digest) if isinstance(digest, str) else None
    return m.group(1) if m else None

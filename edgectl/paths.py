"""Where edgectl keeps its state on the control machine. ``EDGECTL_HOME`` overrides everything (tests use it)."""

from __future__ import annotations

import os
from pathlib import Path


def edgectl_home() -> Path:
    env = os.environ.get("EDGECTL_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("edgectl"))


def store_dir() -> Path:
    env = os.environ.get("EDGECTL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if os.environ.get("EDGECTL_HOME"):
        return edgectl_home() / "store"
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgectl")) / "store"


def local_agent_root(device: str) -> Path:
    return edgectl_home() / "agents" / device


# The pinned public key of the fleet's signing key, in an agent's root (like a known_hosts entry): written at the
# first start when the fleet signs, never overwritten; every start there passes --verify-key-file.
VERIFY_KEY_FILE = "verify-key.pub"

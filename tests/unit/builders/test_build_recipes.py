"""Builder registry, cache keys and the build() flow for as-shipped copies (no quantizer involved)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

import edgectl.builders.pipeline
import edgectl.builders.gguf as gguf_builder
from edgectl.builders import build, check_buildable
from edgectl.builders.gguf import _captured_stderr
from edgectl.builders.registry import COPY_TOOL_VERSION, tool_version
from edgectl.builders.registry import GGUF_FTYPES, builder_for
from edgectl.builders.store import ArtifactStore
from edgectl.errors import BuildError
from edgectl.spec.model import Model
from edgectl.spec.artifact import Recipe


def _recipe(quant: str, source_precision: str = "F16", model: str = "tiny") -> Recipe:
    return Recipe(model=model, format="gguf", quant=quant, source_precision=source_precision)


def test_unsupported_quant_lists_the_valid_ones() -> None:
    with pytest.raises(BuildError, match="cannot build gguf quant 'Q7_X' for model 'tiny'") as exc:
        check_buildable(_recipe("Q7_X"))
    assert exc.value.hint.startswith("use one of: F32, F16, BF16, Q8_0")
    assert "Q4_K_M" in exc.value.hint


def test_as_shipped_is_buildable_whatever_the_precision() -> None:
    assert check_buildable(_recipe("Q4_1", "Q4_1")).format == "gguf"
    assert check_buildable(_recipe("TQ1_0", "TQ1_0")).format == "gguf"


def test_unknown_format_lists_the_known_ones() -> None:
    with pytest.raises(BuildError, match="no builder for format 'mlx' for tensor models") as exc:
        builder_for("mlx", "tensor")
    assert exc.value.hint == ("buildable: bnb (llm), gguf (llm), gptq (llm), mlx (llm), onnx (llm), onnx (tensor), openvino (llm), "
                              "openvino (tensor)")


def test_every_quant_maps_to_a_llama_cpp_ftype() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    for quant, ftype_name in GGUF_FTYPES.items():
        assert isinstance(getattr(llama_cpp, ftype_name), int), quant


def test_cache_key_is_stable_and_covers_source_recipe_and_tool() -> None:
    recipe = _recipe("Q4_0")
    key = recipe.cache_key("sha256:" + "1" * 64, "llama-cpp-python 0.3.36")
    # Golden value: changing it invalidates every user's cache, so it must be a deliberate change.
    assert key == "b337ae7828aa16ddf2d49d82a30f7fabe9558992e686017add18a36a36ff3cf4"
    others = {
        recipe.cache_key("sha256:" + "2" * 64, "llama-cpp-python 0.3.36"),
        recipe.cache_key("sha256:" + "1" * 64, "llama-cpp-python 0.3.37"),
        _recipe("Q4_1").cache_key("sha256:" + "1" * 64, "llama-cpp-python 0.3.36"),
        _recipe("Q4_0", "BF16").cache_key("sha256:" + "1" * 64, "llama-cpp-python 0.3.36"),
    }
    assert key not in others and len(others) == 4


def test_as_shipped_copies_do_not_depend_on_the_quantizer_version() -> None:
    assert tool_version(_recipe("F16", "F16")) == COPY_TOOL_VERSION
    pytest.importorskip("llama_cpp")
    assert tool_version(_recipe("Q4_0")).startswith("llama-cpp-python ")


def test_build_as_shipped_copies_then_hits(make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file)})
    events: list[tuple[str, int, int | None]] = []
    artifact, built = build(_recipe("F16"), model, store, progress=lambda *e: events.append(e),
                            measure_quality=False)
    assert built
    assert artifact.digest == artifact.source_digest
    assert artifact.tool_version == COPY_TOOL_VERSION
    assert store.path(artifact.digest).read_bytes() == gguf_header_file.read_bytes()
    assert {e[0] for e in events} == {"hash source", "copy", "hash artifact"}

    def no_work(*args, **kwargs):
        raise AssertionError("a cache hit must not build")

    monkeypatch.setattr(edgectl.builders.pipeline, "copy_and_hash", no_work)
    monkeypatch.setattr(gguf_builder, "quantize_gguf", no_work)
    again, built_again = build(_recipe("F16"), model, store)
    assert (again, built_again) == (artifact, False)


def test_build_rebuilds_when_the_blob_was_deleted(make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path) -> None:
    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file)})
    artifact, _ = build(_recipe("F16"), model, store, measure_quality=False)
    store.path(artifact.digest).unlink()
    again, built = build(_recipe("F16"), model, store, measure_quality=False)
    assert built and again == artifact and store.verify(artifact.digest)


def test_build_refuses_a_source_that_is_not_gguf(make_model: Callable[..., Model], store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model.safetensors"
    src.write_bytes(b"\x00" * 64)
    model = make_model({"type": "gguf", "precision": "F16", "path": str(src)})
    with pytest.raises(BuildError, match="is not a GGUF file") as exc:
        build(_recipe("F16"), model, store)
    assert "convert_hf_to_gguf" in exc.value.hint
    assert store.list() == [] and list(store.tmp_dir.glob("*")) == []


def test_build_refuses_a_gguf_source_with_a_crafted_header(make_model: Callable[..., Model], store: ArtifactStore,
                                                           tmp_path: Path) -> None:
    """The agent's header check runs on GGUF sources too: a file every device would refuse fails the build early."""
    src = tmp_path / "crafted.gguf"
    src.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2**64 - 1))  # claims 2^64-1 key-value pairs
    model = make_model({"type": "gguf", "precision": "F16", "path": str(src)})
    with pytest.raises(BuildError, match=f"source {src}: invalid GGUF header at byte 16: the header claims "
                                         "18446744073709551615 key-value pairs") as exc:
        build(_recipe("F16"), model, store)
    assert "download or convert the source again" in exc.value.hint
    assert store.list() == [] and list(store.tmp_dir.glob("*")) == []


def test_build_refuses_a_recipe_for_another_model(make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path) -> None:
    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file)})
    with pytest.raises(BuildError, match="recipe is for model 'other'"):
        build(_recipe("F16", model="other"), model, store)


def test_build_drives_a_rich_progress(make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path) -> None:
    from rich.console import Console
    from rich.progress import Progress

    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file)})
    with Progress(console=Console(file=open(os.devnull, "w"))) as progress:
        build(_recipe("F16"), model, store, progress=progress, measure_quality=False)
    descriptions = [t.description for t in progress.tasks]
    assert descriptions == ["hash source tiny F16", "copy tiny F16", "hash artifact tiny F16"]
    assert all(t.finished for t in progress.tasks)


def test_a_failed_quality_measurement_warns_and_keeps_the_artifact(
        make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path) -> None:
    pytest.importorskip("llama_cpp")
    from edgectl.builders import QualityWarning

    model = make_model({"type": "gguf", "precision": "F16", "path": str(gguf_header_file)})
    events: list[tuple[str, int, int | None]] = []
    with pytest.warns(QualityWarning, match="could not measure the quality of tiny gguf F16"):
        artifact, built = build(_recipe("F16"), model, store, progress=lambda *e: events.append(e))  # not a model
    assert built and artifact.quality is None and store.verify(artifact.digest)
    assert ("measure quality", 1, 1) in events
    again, built_again = build(_recipe("F16"), model, store)  # a hit does not measure again
    assert (again, built_again) == (artifact, False)


def test_quiet_mode_captures_what_c_writes_to_fd_2() -> None:
    with _captured_stderr(True) as lines:
        os.write(2, b"from C: failed to quantize\n")
    assert lines == ["from C: failed to quantize"]
    with _captured_stderr(False) as nothing:
        pass
    assert nothing == []

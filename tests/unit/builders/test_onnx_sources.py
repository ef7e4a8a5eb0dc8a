"""What the ONNX builders refuse before any tool runs, and the command lines/inputs they build (no model is built)."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from edgectl.builders.onnx_genai import OFFLINE_ENV, builder_argv, builder_env, read_hf_config
from edgectl.errors import BuildError
from edgectl.spec import Recipe

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 256, "intermediate_size": 384,
         "vocab_size": 512}


def hf_folder(tmp_path: Path, config: dict = LLAMA, files: tuple[str, ...] = ("model.safetensors",)) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    for name in files:
        (folder / name).write_bytes(b"weights")
    return folder


# -- onnxruntime-genai builder ---------------------------------------------------------------------------------
def test_genai_argv_is_offline_child_with_cache_outside_output(tmp_path):
    out, cache = tmp_path / "art.onnx", tmp_path / "art.onnx.cache"
    argv = builder_argv(tmp_path / "src", out, "INT4", cache)
    assert argv == [sys.executable, "-m", "edgectl.builders.onnx_genai_compat", "-i", str(tmp_path / "src"),
                    "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(cache)]
    env = builder_env(3, base={"PATH": "/bin", "HF_HUB_OFFLINE": "0"})
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1" and env["OMP_NUM_THREADS"] == "3"
    assert OFFLINE_ENV.items() <= env.items() and env["PATH"] == "/bin"


def test_genai_accepts_a_safetensors_llama(tmp_path):
    assert read_hf_config(hf_folder(tmp_path))["model_type"] == "llama"


@pytest.mark.parametrize("files", [("model.safetensors", "pytorch_model.bin"), ("model.safetensors", "extra.pt"),
                                   ("model.safetensors", "opt.pkl")])
def test_genai_refuses_pickle_weight_files(tmp_path, files):
    with pytest.raises(BuildError, match="pickle") as e:
        read_hf_config(hf_folder(tmp_path, files=files))
    assert "safetensors" in e.value.hint


def test_genai_refuses_folder_without_safetensors(tmp_path):
    with pytest.raises(BuildError, match="no \\*.safetensors"):
        read_hf_config(hf_folder(tmp_path, files=()))


def test_genai_refuses_unknown_architecture_and_non_folder(tmp_path):
    with pytest.raises(BuildError, match="cannot build architecture") as e:
        read_hf_config(hf_folder(tmp_path, {**LLAMA, "architectures": ["BertModel"]}))
    assert "gguf" in e.value.hint
    with pytest.raises(BuildError, match="not a Hugging Face model folder"):
        read_hf_config(tmp_path / "missing")


def test_genai_refuses_vocab_equal_to_a_projection_width(tmp_path):
    """The builder takes any Linear of vocab_size outputs for the LM head: such a model would build wrong."""
    with pytest.raises(BuildError, match="vocab_size 512 equals intermediate_size"):
        read_hf_config(hf_folder(tmp_path, {**LLAMA, "intermediate_size": 512}))


def test_genai_quants_are_the_registry_quants():
    from edgectl.builders.onnx_genai import GENAI_PRECISIONS
    from edgectl.builders.registry import builder_for

    info = builder_for("onnx", "llm")
    assert set(info.quants) == set(GENAI_PRECISIONS) and info.extra == "onnx-genai" and info.layout == "tree"
    assert info.runtime == "onnxruntime-genai"


# -- ONNX tensor sources ----------------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")


def linear(path: Path, *, external: str | None = None) -> Path:
    from tests.unit.agent.tiny_onnx import linear_model_bytes

    path.write_bytes(linear_model_bytes(external_location=external))
    return path


def test_onnx_source_in_one_file_passes(tmp_path):
    from edgectl.builders.onnx import check_onnx_file

    check_onnx_file(linear(tmp_path / "m.onnx"))


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.data", "sub/../../x.data"])
def test_onnx_external_data_escaping_the_folder_is_refused(tmp_path, location):
    from edgectl.builders.onnx import check_onnx_file

    with pytest.raises(BuildError, match="outside the artifact directory") as e:
        check_onnx_file(linear(tmp_path / "m.onnx", external=location))
    assert "folder" in e.value.hint


def test_onnx_external_data_through_a_symlink_out_is_refused(tmp_path):
    from edgectl.builders.onnx import check_onnx_file

    (tmp_path / "secret").write_bytes(b"\0" * 64)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "w.data").symlink_to(tmp_path / "secret")
    with pytest.raises(BuildError, match="outside"):
        check_onnx_file(linear(model_dir / "m.onnx", external="w.data"))


def test_onnx_external_data_inside_the_folder_passes_unless_pickled(tmp_path):
    from edgectl.builders.onnx import check_external_locations, check_onnx_file

    (tmp_path / "w.data").write_bytes(np.zeros(12, np.float32).tobytes())
    assert check_external_locations(linear(tmp_path / "m.onnx", external="w.data")) == ["w.data"]
    (tmp_path / "w.pt").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(BuildError, match="pickle-based"):
        check_onnx_file(linear(tmp_path / "p.onnx", external="w.pt"))


def test_onnx_source_that_is_a_pickle_checkpoint_is_refused(tmp_path):
    from edgectl.builders.onnx import check_onnx_file

    pt = tmp_path / "model.pt"
    pt.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(BuildError, match="not an .onnx file") as e:
        check_onnx_file(pt)
    assert "never loaded" in e.value.hint


def test_torch_zip_checkpoint_is_detected_by_content(tmp_path):
    import zipfile

    from edgectl.builders.onnx import is_pickle_file

    ckpt = tmp_path / "weights.data"
    with zipfile.ZipFile(ckpt, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": 1}))
    assert is_pickle_file(ckpt)
    raw = tmp_path / "raw.data"
    raw.write_bytes(b"\x80" + bytes(63))  # raw tensor bytes may start like a pickle: suffix and zip decide
    assert not is_pickle_file(raw)


# -- calibration ------------------------------------------------------------------------------------------------
class Input:
    def __init__(self, name: str, shape: list, type: str = "tensor(float)") -> None:
        self.name, self.shape, self.type = name, shape, type


def test_generated_calibration_samples_follow_the_input_spec_and_seed():
    from edgectl.builders.onnx import CALIBRATION_SAMPLES, calibration_samples

    inputs = [Input("X", ["batch", 4]), Input("ids", [None, 3], "tensor(int64)")]
    a, b = calibration_samples(inputs, None), calibration_samples(inputs, None)
    assert len(a) == CALIBRATION_SAMPLES
    assert a[0]["X"].shape == (1, 4) and a[0]["X"].dtype == np.float32 and a[0]["ids"].dtype == np.int64
    assert all(np.array_equal(x["X"], y["X"]) for x, y in zip(a, b))


def test_user_calibration_npz_is_split_into_samples(tmp_path):
    from edgectl.builders.onnx import calibration_samples

    path = tmp_path / "s.npz"
    np.savez(path, X=np.arange(20, dtype=np.float32).reshape(5, 4))
    samples = calibration_samples([Input("X", ["batch", 4])], path)
    assert len(samples) == 5 and samples[2]["X"].tolist() == [[8, 9, 10, 11]]


def test_user_calibration_missing_input_or_pickled_is_refused(tmp_path):
    from edgectl.builders.onnx import calibration_samples

    path = tmp_path / "s.npz"
    np.savez(path, Y=np.zeros((2, 4), np.float32))
    with pytest.raises(BuildError, match=r"no samples for graph input\(s\) \['X'\]"):
        calibration_samples([Input("X", ["batch", 4])], path)
    np.savez(path, X=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(BuildError, match="without pickled objects"):
        calibration_samples([Input("X", ["batch", 4])], path)


def test_calibration_changes_the_cache_key_by_content_not_path():
    plain = Recipe(model="m", format="onnx", kind="tensor", quant="INT8_STATIC", source_precision="FP32")
    a = plain.model_copy(update={"calibration": "/one/s.npz"})
    b = plain.model_copy(update={"calibration": "/two/s.npz"})
    assert a.cache_key("s", "t", "sha256:1") == b.cache_key("s", "t", "sha256:1") != plain.cache_key("s", "t")
    assert a.cache_key("s", "t", "sha256:2") != a.cache_key("s", "t", "sha256:1")
    # no calibration: the key is the one recipes had before the field existed
    import hashlib

    old = json.dumps({"source": "s", "recipe": plain.model_dump(exclude={"calibration"}), "tool": "t"}, sort_keys=True)
    assert plain.cache_key("s", "t") == hashlib.sha256(old.encode()).hexdigest()


def test_calibration_for_a_quant_that_does_not_calibrate_is_refused(tmp_path):
    from edgectl.builders.onnx import build_onnx

    recipe = Recipe(model="m", format="onnx", kind="tensor", quant="INT4", source_precision="FP32",
                    calibration=str(tmp_path / "s.npz"))
    with pytest.raises(BuildError, match="does not calibrate"):
        build_onnx(recipe, linear(tmp_path / "m.onnx"), tmp_path / "out.onnx")

"""The pure parts of the OpenVINO builders: INT4 group size, generated calibration samples, early refusals."""

from __future__ import annotations

import numpy as np
import pytest

from edgectl.builders.openvino import build_openvino_llm, build_openvino_tensor, calibration_samples, int4_group_size
from edgectl.errors import BuildError
from edgectl.spec.artifact import Recipe


def test_int4_group_size_divides_every_weight_width():
    assert int4_group_size({"hidden_size": 576, "intermediate_size": 1536}) == 64  # SmolLM2-135M: 576 = 4.5 x 128
    assert int4_group_size({"hidden_size": 4096, "intermediate_size": 11008}) == 128
    assert int4_group_size({"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
                            "head_dim": 64}) == 128
    assert int4_group_size({"hidden_size": 96, "intermediate_size": 200}) == -1  # gcd 8: per channel
    assert int4_group_size({"hidden_size": 48}) == 16
    with pytest.raises(BuildError) as e:
        int4_group_size({"model_type": "llama"})
    assert "hidden_size" in e.value.message and "save_pretrained" in e.value.hint


def test_calibration_samples_are_seeded_and_fit_the_input_spec():
    spec = [("x", "float32", [-1, 3]), ("ids", "int64", [2, -1]), ("mask", "bool", [4])]
    a, b = calibration_samples(spec, count=5), calibration_samples(spec, count=5)
    assert len(a) == 5
    for s, t in zip(a, b):
        assert s.keys() == {"x", "ids", "mask"}
        assert s["x"].shape == (1, 3) and s["x"].dtype == np.float32 and np.array_equal(s["x"], t["x"])
        assert s["ids"].shape == (2, 1) and s["ids"].dtype == np.int64 and 0 <= s["ids"].min() <= s["ids"].max() < 16
        assert s["mask"].dtype == np.bool_
    assert not np.array_equal(a[0]["x"], calibration_samples(spec, count=1, seed=1)[0]["x"])
    with pytest.raises(BuildError) as e:
        calibration_samples([("s", "str", [1])])
    assert "FP16" in e.value.hint


def test_bad_quants_and_sources_fail_before_any_tool_runs(tmp_path):
    llm = Recipe(model="m", format="openvino", kind="llm", quant="INT4", source_precision="FP32")
    with pytest.raises(BuildError) as e:
        build_openvino_llm(llm, tmp_path / "nothing", tmp_path / "out")
    assert "config.json" in e.value.message and "save_pretrained" in e.value.hint
    with pytest.raises(BuildError):
        build_openvino_llm(llm.model_copy(update={"quant": "Q4_K_M"}), tmp_path, tmp_path / "out")
    tensor = Recipe(model="m", format="openvino", kind="tensor", quant="INT4", source_precision="FP32")
    with pytest.raises(BuildError) as e:
        build_openvino_tensor(tensor, tmp_path / "m.onnx", tmp_path / "out")
    assert "INT8" in e.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("location", ["../outside.data", "/etc/passwd"])
def test_tensor_build_refuses_external_data_escaping_the_source_folder(tmp_path, location):
    """The same refusal as the ONNX builder's, before openvino.convert_model reads anything."""
    pytest.importorskip("onnx")
    from tests.unit.agent.tiny_onnx import linear_model_bytes

    (tmp_path / "outside.data").write_bytes(np.zeros(12, np.float32).tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "m.onnx").write_bytes(linear_model_bytes(external_location=location))
    tensor = Recipe(model="m", format="openvino", kind="tensor", quant="FP16", source_precision="FP32")
    with pytest.raises(BuildError, match="outside the artifact directory") as e:
        build_openvino_tensor(tensor, model_dir / "m.onnx", tmp_path / "out")
    assert "folder" in e.value.hint
    assert not (tmp_path / "out").exists()


def test_tensor_build_refuses_pickled_external_data(tmp_path):
    pytest.importorskip("onnx")
    import pickle

    from tests.unit.agent.tiny_onnx import linear_model_bytes

    (tmp_path / "w.pt").write_bytes(pickle.dumps({"w": 1}))
    (tmp_path / "m.onnx").write_bytes(linear_model_bytes(external_location="w.pt"))
    tensor = Recipe(model="m", format="openvino", kind="tensor", quant="FP32", source_precision="FP32")
    with pytest.raises(BuildError, match="pickle-based"):
        build_openvino_tensor(tensor, tmp_path / "m.onnx", tmp_path / "out")

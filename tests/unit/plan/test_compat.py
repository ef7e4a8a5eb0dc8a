"""Compatibility rules (edgectl.plan.compat) with real version pairs, and the fact readers on real files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from edgectl.plan import compat
from edgectl.plan.compat import artifact_facts, mismatch, parse_version

sys.path.insert(0, str(Path(__file__).parents[1] / "agent"))
from tiny_onnx import linear_model_bytes  # noqa: E402


@pytest.mark.parametrize("text,want", [("2024.4.1-16618", (2024, 4, 1)), ("1.22.0rc1", (1, 22, 0)),
                                       ("0.3.16", (0, 3, 16)), ("2021.4", (2021, 4))])
def test_parse_version(text: str, want: tuple[int, ...]) -> None:
    assert parse_version(text) == want


@pytest.mark.parametrize("facts,runtime,version,needle", [
    # ORT 1.16 stops at IR 9: "Unsupported model IR version: 10, max supported IR version: 9".
    ({"onnx.ir_version": "10"}, "onnxruntime", "1.16.3",
     "ONNX IR version 10 needs onnxruntime >= 1.18, the device has onnxruntime 1.16.3"),
    ({"onnx.opset": "21"}, "onnxruntime", "1.17.1", "ONNX opset 21 needs onnxruntime >= 1.18"),
    ({"openvino.ir_version": "11"}, "openvino", "2021.4.2",
     "OpenVINO IR version 11 needs openvino >= 2022.1, the device has openvino 2021.4.2"),
    ({"gguf.version": "1"}, "llamacpp", "0.3.16", "GGUF version 1 is no longer loaded"),
    ({"gguf.version": "4"}, "llamacpp", "0.3.16", "newer than any llamacpp release"),
    ({"genai.builder": "0.18.0"}, "onnxruntime-genai", "0.17.1", "needs onnxruntime-genai >= 0.18"),
    ({"mlx.builder": "0.29.1"}, "mlx", "0.28.0", "needs mlx >= 0.29"),
    ({"onnx.ir_version": "14"}, "onnxruntime", "1.22.0", "needs onnxruntime >= 1.23"),  # beyond the table
])
def test_mismatch_names_both_versions_and_the_fix(facts: dict, runtime: str, version: str, needle: str) -> None:
    why = mismatch(facts, runtime, version)
    assert why is not None and needle in why
    assert "pip install" in why or "rebuild" in why


@pytest.mark.parametrize("facts,runtime,version", [
    ({"onnx.ir_version": "10", "onnx.opset": "21"}, "onnxruntime", "1.18.0"),
    ({"onnx.ir_version": "8", "onnx.opset": "13"}, "onnxruntime", "1.10.0"),
    ({"openvino.ir_version": "11"}, "openvino-genai", "2022.1.0"),
    ({"openvino.ir_version": "10"}, "openvino", "2021.4.2"),
    ({"gguf.version": "3", "gguf.architecture": "llama"}, "llamacpp", "0.3.16"),
    ({"genai.builder": "0.18.0"}, "onnxruntime-genai", "0.18.2"),
    ({"onnx.ir_version": "10"}, "llamacpp", "0.1.0"),  # a rule only applies to its runtimes
    ({}, "onnxruntime", "1.0"),
])
def test_compatible_pairs_pass(facts: dict, runtime: str, version: str) -> None:
    assert mismatch(facts, runtime, version) is None


# What the onnxruntime-genai 0.18.0 model builder writes (IR 10, opset 22: measured on a real INT4 build in
# tests/integration/test_onnx_genai.py), and the ONNX Runtime each genai release runs graphs on.
GENAI_BUILT = {"onnx.ir_version": "10", "onnx.opset": "22", "genai.model_type": "llama", "genai.builder": "0.18.0"}


@pytest.mark.parametrize("facts,genai,ort,needles", [
    # 0.6.0 requires onnxruntime>=1.20.1; opset 22 came with ONNX Runtime 1.21.
    ({"onnx.ir_version": "10", "onnx.opset": "22"}, "0.6.0", "1.20.1",
     ["ONNX opset 22 needs onnxruntime >= 1.21, the device has onnxruntime-genai 0.6.0, which runs graphs on "
      "onnxruntime 1.20.1 (installed beside it)", "pip install -U 'onnxruntime>=1.21'"]),
    # 0.3.0 bundles libonnxruntime.so.1.18.0, whatever onnxruntime is installed beside it.
    ({"onnx.ir_version": "10", "onnx.opset": "22"}, "0.3.0", "1.32.0",
     ["needs onnxruntime >= 1.21, the device has onnxruntime-genai 0.3.0, which runs graphs on onnxruntime 1.18.0 "
      "(bundled with it)", "pip install -U 'onnxruntime-genai>=0.7'"]),
    ({"onnx.ir_version": "10"}, "0.1.0", None,
     ["ONNX IR version 10 needs onnxruntime >= 1.18", "onnxruntime 1.17.1 (bundled with it)"]),
    (GENAI_BUILT, "0.17.1", "1.30.0", ["onnxruntime-genai model builder version 0.18.0 needs onnxruntime-genai >= "
                                       "0.18, the device has onnxruntime-genai 0.17.1"]),
])
def test_genai_is_checked_against_the_onnxruntime_it_runs_on(facts, genai, ort, needles) -> None:
    reported = {"onnxruntime-genai": genai, **({"onnxruntime": ort} if ort else {})}
    why = mismatch(facts, "onnxruntime-genai", genai, reported)
    assert why is not None
    for needle in needles:
        assert needle in why


@pytest.mark.parametrize("genai,ort", [("0.18.0", "1.32.0"), ("0.18.0", None), ("0.18.2", "1.31.0")])
def test_what_genai_builds_loads_on_current_genai(genai: str, ort: str | None) -> None:
    runtimes = {"onnxruntime-genai": genai, **({"onnxruntime": ort} if ort else {})}
    assert mismatch(GENAI_BUILT, "onnxruntime-genai", genai, runtimes) is None
    assert mismatch({"onnx.ir_version": "10", "onnx.opset": "22"}, "onnxruntime-genai", "0.7.0",
                    {"onnxruntime": "1.21.0"}) is None


def test_genai_onnxruntime_table() -> None:
    assert compat.genai_onnxruntime("0.2.0") == ("1.18.0", "bundled with it")
    assert compat.genai_onnxruntime("0.18.0", "1.32.0") == ("1.32.0", "installed beside it")
    assert compat.genai_onnxruntime("0.19.0") == ("1.31.0", "the least its package requires")
    floors = [parse_version(v) for v in compat.GENAI_ORT.values()]
    assert floors == sorted(floors) and list(compat.GENAI_ORT) == sorted(compat.GENAI_ORT)
    assert compat.genai_for_onnxruntime("1.21") == "0.7" and compat.genai_for_onnxruntime("9.0") is None


def test_unknown_device_version_is_not_a_mismatch() -> None:
    assert mismatch({"onnx.ir_version": "10"}, "onnxruntime", None) is None


def test_matrix_is_ordered_and_monotonic() -> None:
    releases = [parse_version(r) for r, _, _ in compat.ORT_MATRIX]
    assert releases == sorted(releases)
    assert [ir for _, ir, _ in compat.ORT_MATRIX] == sorted(ir for _, ir, _ in compat.ORT_MATRIX)
    assert [op for _, _, op in compat.ORT_MATRIX] == sorted(op for _, _, op in compat.ORT_MATRIX)


def test_facts_of_a_real_gguf_file(tmp_path: Path) -> None:
    from tests.tinymodels import write_tiny_llama_gguf

    path = write_tiny_llama_gguf(tmp_path / "m.gguf")
    assert artifact_facts("gguf", path) == {"gguf.version": "3", "gguf.architecture": "llama"}


def test_facts_of_a_real_onnx_file_and_genai_folder(tmp_path: Path) -> None:
    (tmp_path / "m.onnx").write_bytes(linear_model_bytes())
    assert artifact_facts("onnx", tmp_path / "m.onnx") == {"onnx.ir_version": "8", "onnx.opset": "13"}
    folder = tmp_path / "genai"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(linear_model_bytes())
    (folder / "genai_config.json").write_text(json.dumps({"model": {"type": "llama"}}))
    facts = artifact_facts("onnx", folder, "onnxruntime-genai 0.18.0 + onnxruntime 1.32.0")
    assert facts == {"onnx.ir_version": "8", "onnx.opset": "13", "genai.model_type": "llama",
                     "genai.builder": "0.18.0"}


def test_facts_of_a_real_openvino_ir(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    (tmp_path / "m.onnx").write_bytes(linear_model_bytes())
    ov.save_model(ov.convert_model(str(tmp_path / "m.onnx")), str(tmp_path / "model.xml"))
    assert artifact_facts("openvino", tmp_path) == {"openvino.ir_version": "11"}


def test_facts_of_an_mlx_folder_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama",
                                                      "quantization": {"group_size": 64, "bits": 4}}))
    assert artifact_facts("mlx", tmp_path, "mlx-lm 0.29.1") == {"mlx.bits": "4", "mlx.group_size": "64",
                                                                "mlx.builder": "0.29.1"}
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf")
    assert artifact_facts("gguf", tmp_path / "bad.gguf") == {}
    assert artifact_facts("onnx", tmp_path / "missing.onnx") == {}

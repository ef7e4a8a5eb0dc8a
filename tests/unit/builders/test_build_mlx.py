"""The mlx builder's pure parts: convert arguments per quant, group size, source checks, output pruning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgectl.builders.mlx import (convert_kwargs, expected_quantization, mlx_group_size, prune_output_folder,
                               read_source_config, supported_model_types)
from edgectl.builders.registry import builder_for
from edgectl.errors import BuildError
from edgectl.spec.artifact import Recipe

LLAMA = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4,
         "head_dim": 64}


def _recipe(quant: str) -> Recipe:
    return Recipe(model="tiny", format="mlx", kind="llm", quant=quant, source_precision="FP32")


def test_registry_entry_is_a_tree_served_by_the_mlx_runtime() -> None:
    info = builder_for("mlx", "llm")
    assert (info.layout, info.runtime, info.extra, info.quants) == ("tree", "mlx", "mlx", ("FP16", "INT8", "INT4"))


@pytest.mark.parametrize(("quant", "extra"), [
    ("FP16", {}),
    ("INT8", {"quantize": True, "q_bits": 8, "q_group_size": 64}),
    ("INT4", {"quantize": True, "q_bits": 4, "q_group_size": 64}),
])
def test_convert_kwargs_per_quant(quant: str, extra: dict, tmp_path: Path) -> None:
    kw = convert_kwargs(_recipe(quant), tmp_path / "src", tmp_path / "out", LLAMA)
    assert kw == {"hf_path": str(tmp_path / "src"), "mlx_path": str(tmp_path / "out"), "dtype": "float16", **extra}


def test_convert_kwargs_refuses_other_quants(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="cannot build mlx Q4_K_M") as e:
        convert_kwargs(_recipe("Q4_K_M"), tmp_path, tmp_path / "out", LLAMA)
    assert e.value.hint == "mlx quant types: FP16, INT8, INT4"


def test_group_size_falls_back_to_32_and_fails_when_nothing_divides() -> None:
    assert mlx_group_size(LLAMA) == 64
    assert mlx_group_size({**LLAMA, "intermediate_size": 1376}) == 32  # 1376 = 43 x 32
    with pytest.raises(BuildError, match=r"layer widths \[200, 512, 256\]") as e:
        mlx_group_size({**LLAMA, "hidden_size": 200})
    assert "FP16" in e.value.hint


def test_source_must_be_a_folder_with_config_and_safetensors(tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="is not a folder") as e:
        read_source_config(tmp_path / "model.gguf")
    assert "type huggingface" in e.value.hint
    with pytest.raises(BuildError, match="cannot read .*config.json"):
        read_source_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(BuildError, match="has no model_type"):
        read_source_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(BuildError, match="no model\\*.safetensors") as e:
        read_source_config(tmp_path)
    assert "safe_serialization" in e.value.hint
    (tmp_path / "model.safetensors").write_bytes(b"x")
    assert read_source_config(tmp_path) == LLAMA


def test_supported_model_types_are_model_modules_and_their_aliases() -> None:
    types = supported_model_types(["llama", "qwen2", "base", "cache", "_private", "switch_layers"],
                                  {"mistral": "llama", "unknown_alias": "missing"})
    assert types == ["llama", "mistral", "qwen2"]


def test_prune_keeps_what_mlx_lm_loads(tmp_path: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "modeling_x.py", ".cache"):
        (tmp_path / name).write_text("x")
    (tmp_path / ".locks").mkdir()
    prune_output_folder(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_written_config_must_say_the_quantization_asked_for() -> None:
    expected_quantization({"quantization": {"group_size": 64, "bits": 4, "mode": "affine"}}, 4)
    expected_quantization({}, None)
    with pytest.raises(BuildError, match="expected 8 bits"):
        expected_quantization({"quantization": {"group_size": 64, "bits": 4}}, 8)
    with pytest.raises(BuildError, match="expected 4 bits"):
        expected_quantization({}, 4)
    with pytest.raises(BuildError, match="for an FP16 build") as e:
        expected_quantization({"quantization": {"group_size": 64, "bits": 4}}, None)
    assert "already quantized" in e.value.hint

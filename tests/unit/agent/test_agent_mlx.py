"""The mlx runtime's pure parts: runtime_options, sampler settings, EOS ids, pieces from stream_generate."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.facts import RUNTIME_PACKAGES
from edgectl_agent.runtimes import default_runtimes
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.mlx import (MlxRuntime, compute_dtype, generate_kwargs, generation_eos_ids,
                                        sampler_settings, token_pieces)


def desired(**kw) -> DesiredDeployment:
    return DesiredDeployment.model_validate({
        "name": "tiny", "runtime": "mlx",
        "artifact": {"digest": "sha256:" + "0" * 64, "format": "mlx", "quant": "INT4", "size_bytes": 1,
                     "model": "tiny", "layout": "tree"}, **kw})


def test_registered_under_the_registry_name_with_its_package() -> None:
    assert isinstance(default_runtimes()["mlx"], MlxRuntime)
    assert RUNTIME_PACKAGES["mlx"] == "mlx-lm"
    assert MlxRuntime.capabilities.formats == ("mlx",) and MlxRuntime.capabilities.extra == "mlx"


def test_runtime_options_pass_through_by_name_only() -> None:
    assert generate_kwargs(desired()) == {}
    assert generate_kwargs(desired(runtime_options={"kv_bits": 8, "prefill_step_size": 512})) == {
        "kv_bits": 8, "prefill_step_size": 512}
    with pytest.raises(RuntimeFailure, match=r"unknown mlx runtime_options \['n_gpu_layers'\]") as e:
        generate_kwargs(desired(runtime_options={"n_gpu_layers": 1}))
    assert "kv_bits" in e.value.hint
    for bad in (0, "8", True, 1.5):
        with pytest.raises(RuntimeFailure, match="must be a positive integer"):
            generate_kwargs(desired(runtime_options={"kv_bits": bad}))


def test_compute_dtype_is_float32_on_the_cpu_unless_asked() -> None:
    assert compute_dtype(desired(), on_cpu=True) == "float32"
    assert compute_dtype(desired(), on_cpu=False) is None  # Metal: the artifact's float16
    assert compute_dtype(desired(runtime_options={"dtype": "float16"}), on_cpu=True) == "float16"
    assert generate_kwargs(desired(runtime_options={"dtype": "bfloat16"})) == {}
    with pytest.raises(RuntimeFailure, match="dtype 'int8' is not one of float32, float16, bfloat16"):
        compute_dtype(desired(runtime_options={"dtype": "int8"}), on_cpu=False)


def test_sampler_settings_default_to_openai_and_zero_is_greedy() -> None:
    assert sampler_settings(GenerationParams()) == {"temp": 1.0, "top_p": 1.0}
    assert sampler_settings(GenerationParams(temperature=0, top_p=0.9)) == {"temp": 0.0, "top_p": 0.9}


def test_generation_config_eos_ids(tmp_path) -> None:
    assert generation_eos_ids(tmp_path) == []
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009, "x", True]}))
    assert generation_eos_ids(tmp_path) == [128001, 128009]
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert generation_eos_ids(tmp_path) == [2]
    (tmp_path / "generation_config.json").write_text("{broken")
    assert generation_eos_ids(tmp_path) == []


def r(text: str, finish: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(text=text, finish_reason=finish)


def test_pieces_one_per_token_with_the_eos_flush_joined_to_the_last() -> None:
    # length cut: the final response is the last token
    assert list(token_pieces([r("a"), r("b"), r("c", "length")])) == ["a", "b", "c"]
    # end of sequence after two tokens: the final response only flushes the detokenizer
    assert list(token_pieces([r("a"), r("b"), r("\u00e9", "stop")])) == ["a", "b\u00e9"]
    # end of sequence first: no token at all
    assert list(token_pieces([r("", "stop")])) == []


def test_load_refuses_a_folder_that_is_not_mlx_before_touching_mlx(tmp_path) -> None:
    # mlx_lm.load would go to the Hugging Face hub for a path without a model: the runtime stops first.
    with pytest.raises(RuntimeFailure, match="is not an MLX folder") as e:
        MlxRuntime().load(tmp_path / "missing", desired())
    assert "format: mlx" in e.value.hint

"""The onnxruntime-genai runtime's pure parts: search options per request, and what it refuses before loading."""

from __future__ import annotations

import pytest

from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes import default_runtimes
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.onnxruntime_genai import genai_config, search_options, session_overlay


def test_registered_with_its_package():
    from edgectl_agent.facts import RUNTIME_PACKAGES

    runtime = default_runtimes()["onnxruntime-genai"]
    assert runtime.capabilities.formats == ("onnx",) and runtime.capabilities.chat
    assert RUNTIME_PACKAGES["onnxruntime-genai"] == "onnxruntime-genai"


def test_greedy_by_default_and_max_length_counts_the_prompt():
    assert search_options(GenerationParams(), 10, 16, 512) == {"max_length": 26, "do_sample": False}
    assert search_options(GenerationParams(temperature=0), 500, 16, 512)["max_length"] == 512


def test_sampling_when_temperature_is_positive():
    opts = search_options(GenerationParams(temperature=0.7, top_p=0.9, seed=5), 4, 8, 512)
    assert opts == {"max_length": 12, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 0,
                    "random_seed": 5}


def test_folder_without_genai_config_is_refused(tmp_path):
    with pytest.raises(RuntimeFailure, match="genai_config.json") as e:
        genai_config(tmp_path)
    assert "onnxruntime-genai builder" in e.value.hint
    (tmp_path / "genai_config.json").write_text('{"model": {"decoder": {}}}')
    with pytest.raises(RuntimeFailure, match="names no decoder"):
        genai_config(tmp_path)


def test_the_deployments_threads_hold_the_decoder_session():
    import json

    assert session_overlay(None) is None  # onnxruntime's default: one thread per physical core
    assert json.loads(session_overlay(3)) == {"model": {"decoder": {"session_options": {
        "intra_op_num_threads": 3, "inter_op_num_threads": 1}}}}

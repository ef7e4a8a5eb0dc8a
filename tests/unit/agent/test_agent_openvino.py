"""The pure parts of the openvino and openvino-genai runtimes: runtime_options, sampling settings, incremental
decoding, and refusing a folder that is not an OpenVINO artifact before any library is imported."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgectl_agent.api import DesiredDeployment
from edgectl_agent.errors import RuntimeFailure
from edgectl_agent.runtimes import default_runtimes
from edgectl_agent.runtimes.base import GenerationParams
from edgectl_agent.runtimes.openvino import OpenVinoRuntime, openvino_config
from edgectl_agent.runtimes.openvino_genai import (GENAI_PROPERTIES, IncrementalDecoder, OpenVinoGenAIRuntime,
                                                   sampling)


def desired(**kw) -> DesiredDeployment:
    return DesiredDeployment.model_validate({
        "name": "ov", "runtime": "openvino", "artifact": {"digest": "sha256:" + "0" * 64, "format": "openvino",
                                                          "quant": "INT8", "size_bytes": 1, "model": "m",
                                                          "layout": "tree"}, **kw})


def test_device_defaults_to_cpu_and_threads_apply_only_there():
    assert openvino_config(desired()) == ("CPU", {})
    assert openvino_config(desired(threads=3)) == ("CPU", {"INFERENCE_NUM_THREADS": 3})
    device, config = openvino_config(desired(threads=3, runtime_options={"device": "GPU.1",
                                                                         "performance_hint": "LATENCY"}))
    assert device == "GPU.1" and config == {"PERFORMANCE_HINT": "LATENCY"}
    assert openvino_config(desired(runtime_options={"device": "AUTO:GPU,CPU"}))[0] == "AUTO:GPU,CPU"
    assert openvino_config(desired(runtime_options={"device": "NPU"}))[0] == "NPU"


def test_unknown_options_and_bad_devices_are_refused_by_name():
    with pytest.raises(RuntimeFailure) as e:
        openvino_config(desired(runtime_options={"ENABLE_MMAP": False}))
    assert "ENABLE_MMAP" in e.value.message and "performance_hint" in e.value.hint
    with pytest.raises(RuntimeFailure) as e:
        openvino_config(desired(runtime_options={"device": "cpu; rm -rf /"}))
    assert "GPU.1" in e.value.hint
    with pytest.raises(RuntimeFailure):
        openvino_config(desired(runtime_options={"kv_cache_precision": "u8"}))  # an LLM option, not a tensor one
    assert openvino_config(desired(runtime_options={"kv_cache_precision": "u8"}), GENAI_PROPERTIES)[1] == {
        "KV_CACHE_PRECISION": "u8"}


def test_sampling_greedy_at_zero_model_default_when_unset():
    def config():
        return SimpleNamespace(max_new_tokens=None, apply_chat_template=True, do_sample=True, temperature=0.7,
                               top_p=1.0, rng_seed=0)

    c = sampling(config(), GenerationParams(temperature=0.0), 5)
    assert (c.max_new_tokens, c.apply_chat_template, c.do_sample) == (5, False, False)
    c = sampling(config(), GenerationParams(), 9)
    assert (c.do_sample, c.temperature) == (True, 0.7)  # generation_config.json's choice stands
    c = sampling(config(), GenerationParams(temperature=1.3, top_p=0.5, seed=11), 9)
    assert (c.do_sample, c.temperature, c.top_p, c.rng_seed) == (True, 1.3, 0.5, 11)


def test_incremental_decoder_gives_one_piece_per_token_and_waits_for_whole_characters():
    vocab = {1: b"he", 2: b"llo", 3: b" \xc3", 4: b"\xa9", 5: b"!"}  # token 3 ends inside "é"

    def decode(ids: list[int]) -> str:
        return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")

    d = IncrementalDecoder(decode)
    pieces = [d.piece(t) for t in (1, 2, 3, 4, 5)]
    assert pieces == ["he", "llo", "", " é", "!"]


def test_registered_under_the_registry_names():
    from edgectl.builders.registry import builder_for

    runtimes = default_runtimes()
    assert isinstance(runtimes[builder_for("openvino", "tensor").runtime], OpenVinoRuntime)
    assert isinstance(runtimes[builder_for("openvino", "llm").runtime], OpenVinoGenAIRuntime)


def test_a_folder_without_the_ir_is_refused_with_the_missing_files(tmp_path):
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    with pytest.raises(RuntimeFailure) as e:
        OpenVinoGenAIRuntime().load(tmp_path, desired(runtime="openvino-genai"))
    assert "openvino_tokenizer.xml" in e.value.message and "kind llm" in e.value.hint
    with pytest.raises(RuntimeFailure) as e:
        OpenVinoRuntime().load(tmp_path, desired())
    assert "model.xml" in e.value.message and "kind tensor" in e.value.hint


def test_full_precision_tensor_artifacts_compute_in_f32_on_the_cpu():
    from edgectl_agent.runtimes.openvino import tensor_config

    def at(quant: str, **kw) -> DesiredDeployment:
        d = desired(**kw)
        return d.model_copy(update={"artifact": d.artifact.model_copy(update={"quant": quant})})

    assert tensor_config(at("FP32")) == ("CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert tensor_config(at("FP16")) == ("CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    assert tensor_config(at("INT8")) == ("CPU", {})  # quantized: the plugin's own choice
    assert tensor_config(at("FP32", runtime_options={"inference_precision": "bf16"}))[1] == {
        "INFERENCE_PRECISION_HINT": "bf16"}  # the deployment's own setting wins
    assert tensor_config(at("FP32", runtime_options={"device": "GPU"})) == ("GPU", {})

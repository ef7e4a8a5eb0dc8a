"""The Olive backend's pure parts: its workflow and pass config, the child's argv and environment, the option
translation for onnxruntime-genai, the recipe option through the spec, planner and registry, the cache key, and the
setup command when Olive is missing. The real workflow runs in tests/integration/test_olive_backend.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from edgectl.builders import olive
from edgectl.builders.olive_workflow import builder_option_strings
from edgectl.builders.registry import builder_for, check_buildable, is_as_shipped, quants_for, tool_version
from edgectl.errors import BuildError
from edgectl.spec import Recipe
from edgectl.spec.deployment import Quantization


def recipe(quant: str = "INT4", backend: str | None = "olive") -> Recipe:
    return Recipe(model="tiny", format="onnx", kind="llm", quant=quant, source_precision="FP32", backend=backend)


def test_int4_workflow_is_olives_cpu_model_builder_pass():
    flow = olive.workflow("INT4")
    (step,) = flow["passes"].values()
    assert step == {"type": "ModelBuilder", "precision": "int4", "int4_block_size": 32, "int4_accuracy_level": 4,
                    "int4_op_types_to_quantize": ["MatMul", "Gather"]}
    (accelerator,) = flow["systems"]["local_system"]["accelerators"]
    assert accelerator == {"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}
    assert flow["evaluate_input_model"] is False and flow["host"] == flow["target"] == "local_system"
    assert olive.workflow("INT8")["passes"]["builder"]["precision"] == "int8"
    with pytest.raises(BuildError) as e:
        olive.workflow("FP16")
    assert "INT4, INT8" in e.value.hint


def test_worker_argv_and_env(tmp_path):
    assert olive.worker_argv("/py", "versions") == ["/py", "-m", "edgectl.builders.olive_workflow", "versions"]
    env = olive.worker_env(tmp_path / "overlay", 3, tmp_path / "hf", base={"PYTHONPATH": "/mine", "HOME": "/h"})
    paths = env["PYTHONPATH"].split(":")
    assert paths[0] == str(tmp_path / "overlay") and paths[-1] == "/mine"  # Olive's pins win only in the child
    assert Path(paths[1], "edgectl", "builders", "olive.py").is_file()
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1" and env["OMP_NUM_THREADS"] == "3"
    assert env["HF_HUB_CACHE"] == str(tmp_path / "hf") and env["HOME"] == "/h"


def test_overlay_path_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECTL_OLIVE_OVERLAY", str(tmp_path))
    assert olive.overlay_path() == tmp_path
    monkeypatch.delenv("EDGECTL_OLIVE_OVERLAY")
    assert olive.overlay_path() == Path.home() / ".cache" / "edgectl" / "olive-overlay"


def test_olive_options_reach_the_model_builder_under_their_current_names():
    strings = builder_option_strings({"filename": "model.onnx", "int4_block_size": 32, "int4_accuracy_level": 4,
                                      "int4_op_types_to_quantize": ["MatMul", "Gather"], "int4_is_symmetric": True})
    assert strings == ["filename=model.onnx", "block_size=32", "accuracy_level=4", "op_types_to_quantize=MatMul/Gather",
                       "is_symmetric=true"]


def test_registry_has_olive_as_a_backend_of_onnx_llms():
    info = builder_for("onnx", "llm", "olive")
    assert info.backend == "olive" and info.runtime == "onnxruntime-genai" and info.layout == "tree"
    assert info.builder == "edgectl.builders.olive:build_olive"
    assert quants_for("onnx", "llm", "olive") == ("INT8", "INT4")
    assert builder_for("onnx", "llm").backend is None  # the default builder is unchanged
    with pytest.raises(BuildError) as e:
        builder_for("onnx", "tensor", "olive")
    assert "olive (onnx llm)" in e.value.hint and "remove quantization.backend" in e.value.hint
    with pytest.raises(BuildError):
        check_buildable(recipe("FP32"))  # the default builder makes FP32, the Olive backend does not
    assert check_buildable(recipe()).backend == "olive"
    assert not is_as_shipped(recipe("FP32"))


def test_backend_is_in_the_cache_key_and_default_keys_are_unchanged():
    plain = recipe(backend=None)
    # The key of a recipe without a backend is computed exactly as before the field existed.
    before = hashlib.sha256(json.dumps({"source": "s", "recipe": {
        "model": "tiny", "format": "onnx", "kind": "llm", "quant": "INT4", "source_precision": "FP32"},
        "tool": "t"}, sort_keys=True).encode()).hexdigest()
    assert plain.cache_key("s", "t") == before
    assert recipe().cache_key("s", "t") != before


def test_cache_key_tool_version_holds_the_pass_config_and_versions(monkeypatch):
    monkeypatch.setattr(olive, "_overlay_versions", lambda overlay: "olive-ai 0.13.0, onnxruntime-genai 0.18.0")
    version = tool_version(recipe())
    assert version == f"olive workflow {olive.passes_digest()}, olive-ai 0.13.0, onnxruntime-genai 0.18.0"
    digest = olive.passes_digest()
    monkeypatch.setitem(olive.PASSES, "INT4", {**olive.PASSES["INT4"], "int4_block_size": 64})
    assert olive.passes_digest() != digest  # a changed pass changes every Olive artifact's key


def test_missing_olive_names_the_setup_command(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECTL_OLIVE_OVERLAY", str(tmp_path / "nowhere"))
    with pytest.raises(BuildError) as e:
        tool_version(recipe())
    assert str(tmp_path / "nowhere") in str(e.value) and "bash scripts/setup.sh olive" in e.value.hint


def test_deployment_backend_needs_the_onnx_format():
    assert Quantization(format="onnx", backend="olive").backend == "olive"
    with pytest.raises(ValidationError, match="format: onnx"):
        Quantization(format="gguf", backend="olive")
    with pytest.raises(ValidationError, match="format: onnx"):
        Quantization(backend="olive")
    with pytest.raises(ValidationError):
        Quantization(format="onnx", backend="tensorrt")


def test_planner_offers_olive_recipes_only_for_the_pinned_format():
    from edgectl.plan.result import recipe_id, recipe_label
    from edgectl.plan.select import candidate_recipes
    from edgectl.spec import Deployment, Model

    model = Model.model_validate({
        "apiVersion": "edgectl.dev/v1alpha1", "kind": "Model", "metadata": {"name": "tiny"},
        "spec": {"task": "chat", "architecture": {
            "family": "llama", "parameters": 1_200_000, "layers": 2, "hidden_size": 256, "attention_heads": 4,
            "kv_heads": 2, "head_dim": 64, "vocab_size": 512, "max_context": 512},
            "sources": [{"type": "huggingface", "path": "/nonexistent", "precision": "FP32"}]}})
    dep = Deployment.model_validate({
        "apiVersion": "edgectl.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": "tiny"},
        "spec": {"model": "tiny", "selector": {"devices": ["d"]},
                 "quantization": {"format": "onnx", "backend": "olive"}}})
    recipes = candidate_recipes(dep, model, None)
    assert [(r.format, r.quant, r.backend) for r in recipes] == [("onnx", "INT4", "olive"), ("onnx", "INT8", "olive")]
    assert recipe_id(recipes[0]) == "tiny/onnx/INT4@FP32+olive" and recipe_label(recipes[0]) == "onnx INT4 (olive)"

"""The GPTQ builder's pure parts: group size, the worker's argv, the calibration text shipped, the registry entry
(its real counterpart: tests/integration/test_vllm_gptq.py builds and serves a tiny model for real)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgectl.builders import gptq, gptq_oneshot
from edgectl.builders.registry import BUILDERS
from edgectl.errors import BuildError


def test_group_size_is_the_largest_that_divides_every_input_width() -> None:
    assert gptq.group_size({"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4}) == 128
    # SmolLM2-135M: hidden 576 = 9 x 64, FF 1536
    assert gptq.group_size({"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                            "head_dim": 64}) == 64
    with pytest.raises(BuildError, match="not multiples of 32"):
        gptq.group_size({"hidden_size": 100, "intermediate_size": 200, "num_attention_heads": 4})


def test_quantize_argv_runs_the_worker_with_the_venv_python(tmp_path: Path) -> None:
    argv = gptq.quantize_argv(Path("/venv/bin/python"), tmp_path / "src", tmp_path / "out", bits=4, group=64,
                              calibration=gptq.CALIBRATION, threads=2)
    assert argv[:3] == ["/venv/bin/python", str(gptq.WORKER), "quantize"]
    assert argv[3:] == [str(tmp_path / "src"), str(tmp_path / "out"), "--bits", "4", "--group-size", "64",
                        "--calibration", str(gptq.CALIBRATION), "--threads", "2"]


def test_worker_parses_the_builder_argv_and_stands_alone(tmp_path: Path) -> None:
    """The worker imports nothing of edgectl (it runs in the vLLM venv): its --help works from a bare Python."""
    out = subprocess.run([sys.executable, "-I", str(gptq.WORKER), "quantize", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--group-size" in out.stdout
    source = Path(gptq.WORKER).read_text()
    assert "import edgectl" not in source and "from edgectl" not in source


def test_shipped_calibration_text_has_a_few_hundred_short_lines() -> None:
    lines = gptq_oneshot.calibration_lines(str(gptq.CALIBRATION))
    assert 200 <= len(lines) <= 1000
    assert all(0 < len(line) < 300 for line in lines)
    assert any("\n" in line for line in lines)  # code samples keep their newlines
    assert any("Paris" in line for line in lines)


def test_registry_entry_and_missing_venv_says_how_to_make_it(tmp_path: Path, monkeypatch) -> None:
    info = BUILDERS[("gptq", "llm")]
    assert info.runtime == "vllm" and info.layout == "tree" and "W4A16" in info.quants
    monkeypatch.setenv("EDGECTL_VLLM_VENV", str(tmp_path / "nowhere"))
    gptq._venv_versions.cache_clear()
    with pytest.raises(BuildError, match="nowhere/bin/python does not exist") as e:
        gptq.gptq_tool_versions()
    assert "setup.sh vllm" in e.value.hint


def test_cache_key_versions_name_the_recipe_and_the_calibration(monkeypatch) -> None:
    gptq._venv_versions.cache_clear()
    monkeypatch.setattr(gptq, "_venv_versions", lambda python: "llmcompressor 1.0, transformers 5.0, torch 2.0")
    versions = gptq.gptq_tool_versions()
    assert versions.startswith(gptq.RECIPE_ID + ", calibration ")
    assert versions.endswith("llmcompressor 1.0, transformers 5.0, torch 2.0")


def test_logits_argv_passes_the_source_tokens(tmp_path: Path) -> None:
    argv = gptq.logits_argv(Path("/p"), tmp_path, tmp_path / "t.txt", tmp_path / "o.npy", tokens=tmp_path / "k.npy",
                            max_tokens=256, threads=2)
    assert argv[2] == "logits" and argv[-2:] == ["--tokens", str(tmp_path / "k.npy")]
    assert json.dumps(argv)  # plain strings only


# --- the awq backend (quantization: {format: gptq, backend: awq}); real counterpart: test_vllm_gptq's AWQ test ---


def test_awq_argv_names_the_algorithm_and_the_worker_accepts_it(tmp_path: Path) -> None:
    argv = gptq.quantize_argv(Path("/p"), tmp_path / "src", tmp_path / "out", bits=4, group=64,
                              calibration=gptq.CALIBRATION, threads=1, algorithm="awq")
    assert argv[-2:] == ["--algorithm", "awq"]
    out = subprocess.run([sys.executable, "-I", str(gptq.WORKER), "quantize", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert "--algorithm" in out.stdout and "{gptq,awq}" in out.stdout


def test_awq_calibration_blocks_keep_every_token_in_order_without_padding() -> None:
    samples = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    assert gptq_oneshot.calibration_blocks(samples, 4) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert gptq_oneshot.calibration_blocks(samples, 100) == [list(range(1, 11))]
    assert gptq_oneshot.calibration_blocks([], 4) == []
    # the shipped text (320 lines of ~13 tokens, ~4300 in all) becomes 9 forward calls per grid point, not 320
    lines = [[0] * 13] * 320
    assert [len(b) for b in gptq_oneshot.calibration_blocks(lines, gptq_oneshot.AWQ_BLOCK_TOKENS)] == [512] * 8 + [64]


def test_awq_recipe_id_names_the_grid_and_the_block_size_the_worker_uses() -> None:
    """Changing the worker's AWQ grid or calibration blocks without a new recipe id would reuse stale cache entries."""
    assert f"grid{gptq_oneshot.AWQ_N_GRID}" in gptq.AWQ_RECIPE_ID
    assert f"blocks{gptq_oneshot.AWQ_BLOCK_TOKENS}" in gptq.AWQ_RECIPE_ID


def test_awq_cache_key_differs_from_gptq_by_recipe_id_and_backend(monkeypatch) -> None:
    from edgectl.spec import Recipe

    monkeypatch.setattr(gptq, "_venv_versions", lambda python: "llmcompressor 1.0, transformers 5.0, torch 2.0")
    awq, plain = gptq.awq_tool_versions(), gptq.gptq_tool_versions()
    assert awq.startswith(gptq.AWQ_RECIPE_ID + ", calibration ") and awq != plain
    assert awq.split(", ", 1)[1] == plain.split(", ", 1)[1]  # same calibration digest and venv tools
    recipe = Recipe(model="m", format="gptq", kind="llm", quant="W4A16", source_precision="F16")
    with_awq = recipe.model_copy(update={"backend": "awq"})
    assert recipe.cache_key("src", plain) != with_awq.cache_key("src", plain)
    assert "backend" not in recipe.model_dump() and with_awq.model_dump()["backend"] == "awq"


def test_awq_backend_registry_entry_builds_w4a16_only() -> None:
    from edgectl.builders.registry import BACKENDS, builder_for, check_buildable
    from edgectl.spec import Recipe

    info = builder_for("gptq", "llm", "awq")
    assert info is BACKENDS[("gptq", "llm", "awq")] and info.runtime == "vllm" and info.quants == ("W4A16",)
    assert info.versions == "edgectl.builders.gptq:awq_tool_versions"
    with pytest.raises(BuildError, match="cannot build gptq quant 'W8A16'") as e:
        check_buildable(Recipe(model="m", format="gptq", quant="W8A16", source_precision="F16", backend="awq"))
    assert "W4A16" in e.value.hint


def test_awq_backend_needs_the_gptq_format() -> None:
    from pydantic import ValidationError

    from edgectl.spec.deployment import Quantization

    assert Quantization(format="gptq", backend="awq").backend == "awq"
    with pytest.raises(ValidationError, match="backend 'awq' builds the gptq format only: add 'format: gptq'"):
        Quantization(format="gguf", backend="awq")
    with pytest.raises(ValidationError, match="backend 'olive' builds the onnx format only"):
        Quantization(format="gptq", backend="olive")


def test_build_runs_the_worker_with_awq_for_the_awq_backend(tmp_path: Path, monkeypatch) -> None:
    """The build passes the recipe's backend to the worker as --algorithm (the worker itself is faked here: it
    needs the vLLM venv, where test_vllm_gptq runs it for real)."""
    from edgectl.spec import Recipe

    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"hidden_size": 256, "intermediate_size": 512,
                                                    "num_attention_heads": 4, "model_type": "llama"}))
    seen: list[list[str]] = []

    def fake_run(argv, **kwargs):
        seen.append(argv)
        out = Path(argv[4])
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"")
        (out / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "compressed-tensors"}}))
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(gptq.subprocess, "run", fake_run)
    stages: list[str] = []
    for backend, out in ((None, tmp_path / "gptq"), ("awq", tmp_path / "awq")):
        recipe = Recipe(model="m", format="gptq", quant="W4A16", source_precision="F32", backend=backend)
        gptq.build_gptq(recipe, source, out, progress=lambda stage, done, total: stages.append(stage))
    assert "--algorithm" not in seen[0] and seen[1][-2:] == ["--algorithm", "awq"]
    assert stages == ["quantize (gptq)"] * 2 + ["quantize (awq)"] * 2


def test_awq_from_a_converted_source_keys_on_the_awq_recipe_id(monkeypatch) -> None:
    """A GGUF source converted to a Hugging Face folder (SmolLM2's path) keeps the backend's own tool versions: the
    AWQ record once carried GPTQ's recipe id there, so an AWQ recipe change would not have changed its cache key."""
    from edgectl.builders.convert import CONVERSIONS, build_tool_version
    from edgectl.spec import Recipe

    monkeypatch.setattr(gptq, "_venv_versions", lambda python: "llmcompressor 1.0, transformers 5.0, torch 2.0")
    monkeypatch.setattr("edgectl.builders.convert.conversion_version", lambda conversion: "transformers 4.57")
    recipe = Recipe(model="m", format="gptq", kind="llm", quant="W4A16", source_precision="Q4_1", backend="awq")
    conversion = CONVERSIONS[("gguf", "huggingface")]
    awq = build_tool_version(recipe, conversion)
    assert awq.startswith(gptq.AWQ_RECIPE_ID + ", calibration ")
    assert build_tool_version(recipe.model_copy(update={"backend": None}), conversion).startswith(gptq.RECIPE_ID)

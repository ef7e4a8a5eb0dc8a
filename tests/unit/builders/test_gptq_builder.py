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

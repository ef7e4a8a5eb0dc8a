"""Every builder names an extra that exists, and a missing builder tool names the exact pip install."""

from __future__ import annotations

import builtins
import tomllib
from pathlib import Path

import pytest

from edgectl.builders.registry import BUILDERS, tool_version
from edgectl.errors import TORCH_EXTRAS, TORCH_PIN, MissingExtraError
from edgectl.spec import Recipe

REPO = Path(__file__).resolve().parents[3]


def test_every_builder_extra_and_runtime_extra_exists() -> None:
    from edgectl_agent.facts import RUNTIME_EXTRAS

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    agent_extras = tomllib.loads((REPO / "agent" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for info in BUILDERS.values():
        assert info.extra in extras, f"{info.format}/{info.kind}: extra {info.extra!r} is not in pyproject.toml"
        assert RUNTIME_EXTRAS[info.runtime] in agent_extras, f"runtime {info.runtime}: no agent extra"


@pytest.mark.parametrize("key", sorted(BUILDERS), ids=lambda k: "-".join(k))
def test_missing_builder_tool_names_the_pip_install(key, monkeypatch: pytest.MonkeyPatch) -> None:
    info = BUILDERS[key]
    real_import = builtins.__import__

    def no_tool(name, *args, **kwargs):
        if name == info.module or name.startswith(info.module + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tool)
    import importlib
    from importlib import metadata
    monkeypatch.setattr(importlib, "import_module", lambda name, package=None: no_tool(name))
    real_version = metadata.version

    def not_installed(dist: str) -> str:  # a missing tool has no installed distribution either
        if dist in info.tools:
            raise metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(metadata, "version", not_installed)
    recipe = Recipe(model="m", format=info.format, kind=info.kind, quant=info.quants[-1], source_precision="F32")
    with pytest.raises(MissingExtraError) as e:
        tool_version(recipe)
    hint = e.value.hint or ""
    assert f"pip install 'edgectl[{info.extra}]'" in hint
    if info.extra in TORCH_EXTRAS:  # torch first, pinned: the extra alone would resolve a CUDA torch
        assert hint.startswith(f"pip install {TORCH_PIN} first") and hint.index(TORCH_PIN) < hint.index("edgectl[")
    else:
        assert "torch" not in hint


def test_extras_that_need_torch_pin_it_and_their_hint_installs_it_first() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    with_torch = {name for name, deps in extras.items() if any(d.startswith("torch") for d in deps)}
    assert with_torch == TORCH_EXTRAS
    for name in sorted(with_torch):
        assert TORCH_PIN in extras[name], f"extra {name}: {extras[name]}"
    assert TORCH_PIN == "torch==2.13.0"
    assert MissingExtraError("torch", "convert").hint == ("pip install torch==2.13.0 first (an unpinned torch pulls "
                                                          "several GB of CUDA packages), then pip install "
                                                          "'edgectl[convert]'")
    assert MissingExtraError("llama_cpp", "llama", package="edgectl-agent").hint == "pip install 'edgectl-agent[llama]'"

"""The runtime catalog is the one table: every other table of runtime facts agrees with it, and a runtime added to
it (one entry) appears in every one of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args

from edgectl_agent import api, facts
from edgectl_agent.runtimes import catalog, default_runtimes

from edgectl.builders.registry import BUILDERS
from edgectl.plan import planner
from edgectl.spec import profile
from edgectl.agents import install_venv as bootstrap

REPO = Path(__file__).resolve().parents[3]
REAL = [r for r in catalog.RUNTIMES if not r.for_tests]


def test_agent_tables_are_the_catalogs() -> None:
    assert get_args(api.RuntimeName) == catalog.RUNTIME_NAMES == tuple(r.name for r in catalog.RUNTIMES)
    assert set(get_args(api.ArtifactFormat)) == {f for r in catalog.RUNTIMES for f in r.formats}
    runtimes = default_runtimes()
    assert list(runtimes) == list(catalog.RUNTIME_NAMES)
    for name, runtime in runtimes.items():
        entry = catalog.entry(name)
        assert runtime.name == name
        assert runtime.capabilities.runtime == name
        assert runtime.capabilities.formats == entry.formats and runtime.capabilities.extra == entry.extra
        assert runtime.capabilities.chat == (entry.kind == "llm")
    assert facts.RUNTIME_PACKAGES == {r.name: r.package for r in catalog.RUNTIMES if r.package}
    assert facts.RUNTIME_EXTRAS == {r.name: r.extra for r in catalog.RUNTIMES if r.extra}


def test_controller_tables_are_the_catalogs() -> None:
    assert get_args(profile.RuntimeName) == tuple(r.name for r in REAL)
    assert profile.RUNTIME_FORMATS == {r.name: r.formats[0] for r in REAL}
    assert set(planner.AUTO_RUNTIME_ORDER) == {r.name for r in REAL if r.auto_rank is not None}
    assert [catalog.entry(n).auto_rank for n in planner.AUTO_RUNTIME_ORDER] == sorted(
        r.auto_rank for r in REAL if r.auto_rank is not None)
    assert set(planner.OPENVINO_RUNTIMES) == {r.name for r in catalog.RUNTIMES if r.openvino}
    assert bootstrap.RUNTIME_EXTRAS == {r.name: r.extra for r in catalog.RUNTIMES}
    for info in BUILDERS.values():
        entry = catalog.entry(info.runtime)
        assert info.format in entry.formats and info.kind == entry.kind and not entry.for_tests


def test_every_real_runtime_has_a_builder_an_extra_and_its_package_in_it() -> None:
    extras = tomllib.loads((REPO / "agent" / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    served = {(info.format, info.kind): info.runtime for info in BUILDERS.values()}
    links = [(f, r.kind) for r in REAL for f in r.formats]
    assert len(links) == len(set(links)), "two runtimes serve the same (format, kind): a builder would be ambiguous"
    for r in REAL:
        for fmt in r.formats:
            assert served.get((fmt, r.kind)) == r.name, f"{r.name}: no builder makes {fmt} {r.kind} artifacts"
        assert r.extra in extras, f"{r.name}: extra {r.extra!r} is not in agent/pyproject.toml"
        assert any(dep.split("=")[0].split(">")[0].split(";")[0].split("[")[0].strip() == r.package
                   for dep in extras[r.extra]), f"{r.name}: {r.package} is not in the {r.extra} extra"
        module, _, cls = r.implementation.partition(":")
        assert cls and module.startswith("edgectl_agent.runtimes.")


# Run in a fresh interpreter: the catalog with one more entry is put in place before anything imports it.
ONE_MORE_ENTRY = r'''
import json, sys, types
from pathlib import Path
import edgectl_agent
path = Path(edgectl_agent.__file__).parent / "runtimes" / "catalog.py"
source = path.read_text()
end = source.index("\n)\n", source.index("RUNTIMES: tuple"))
entry = ('\n    RuntimeEntry(name="toyrt", formats=("toyfmt",), kind="llm", extra="toy", package="toy-lib", '
         'implementation="edgectl_agent.runtimes.fake:FakeRuntime", auto_rank=99, openvino=True),')
module = types.ModuleType("edgectl_agent.runtimes.catalog")
module.__file__ = str(path)
sys.modules[module.__name__] = module
exec(compile(source[:end] + entry + source[end:], str(path), "exec"), module.__dict__)

from edgectl_agent import api, facts
from edgectl_agent.runtimes import default_runtimes
from edgectl.builders.registry import BuilderInfo
from edgectl.plan import planner
from edgectl.spec import profile
from edgectl.agents import install_venv as bootstrap

desired = api.DesiredDeployment(name="m", runtime="toyrt", artifact={
    "digest": "sha256:" + "0" * 64, "format": "toyfmt", "quant": "Q", "size_bytes": 1, "model": "m"})
builder = BuilderInfo(format="toyfmt", kind="llm", quants=("Q",), extra="toy", module="toy", tools=(),
                      source_types=("huggingface",), builder="toy:build")
print(json.dumps({
    "wire": desired.runtime,
    "profile": "toyrt" in profile.RuntimeName.__args__,
    "profile_format": profile.RUNTIME_FORMATS.get("toyrt"),
    "package": facts.RUNTIME_PACKAGES.get("toyrt"),
    "agent_extra": facts.RUNTIME_EXTRAS.get("toyrt"),
    "bootstrap": bootstrap.extras_for(["toyrt"]),
    "auto_last": planner.AUTO_RUNTIME_ORDER[-1],
    "openvino": "toyrt" in planner.OPENVINO_RUNTIMES,
    "default": "toyrt" in default_runtimes(),
    "builder": builder.runtime,
}))
'''


def test_one_catalog_entry_adds_a_runtime_everywhere() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "agent"),
                                                        os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", ONE_MORE_ENTRY], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {
        "wire": "toyrt", "profile": True, "profile_format": "toyfmt", "package": "toy-lib", "agent_extra": "toy",
        "bootstrap": ["toy"], "auto_last": "toyrt", "openvino": True, "default": True, "builder": "toyrt"}

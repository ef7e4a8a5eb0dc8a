"""The module graph of edgectl/ and agent/edgectl_agent has no import cycle (issue 07), and the agent never imports
edgectl (one direction of dependency). Imports inside functions count too: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTS = {"edgectl": REPO / "edgectl", "edgectl_agent": REPO / "agent" / "edgectl_agent"}


def _modules() -> dict[str, Path]:
    mods = {}
    for root in ROOTS.values():
        for f in root.rglob("*.py"):
            parts = f.relative_to(root.parent).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports. ``from pkg import sub`` depends on ``pkg.sub``, not on ``pkg``."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        package = m.split(".") if f.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            graph[m].update(n for n in names if n in mods and n != m)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle_among_edgectl_and_agent_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_agent_never_imports_edgectl():
    graph = import_graph()
    assert not {(m, n) for m, deps in graph.items() if m.startswith("edgectl_agent") for n in deps
                if n == "edgectl" or n.startswith("edgectl.")}


def test_no_two_test_files_share_a_name():
    """tests/ folders have no __init__.py everywhere: two test files of one basename stop pytest's collection of the
    whole suite ("import file mismatch"), which runs of one folder do not show."""
    names: dict[str, list[str]] = {}
    for f in (REPO / "tests").rglob("test_*.py"):
        names.setdefault(f.name, []).append(str(f.relative_to(REPO)))
    assert {n: paths for n, paths in names.items() if len(paths) > 1} == {}

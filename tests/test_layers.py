"""The project's layers, read from its source: an import that runs up the layers, or a cycle
between modules, fails here.

Layers, bottom up (a module may import its own layer and those below):

1. ``workers.results``: the sweep directory's contract (spec, hyperparameters, layout, storage,
   record, measures table, index, plan file, compaction);
2. the rest of ``workers`` (data, networks, training, measures) and ``conf``;
3. ``analysis`` (loading, statistics, figures, report);
4. ``sweep`` (configuration, planning, the driver, the command line).

Every import counts, also one inside a function (a lazy import still ties the modules), except
those of the compatibility modules that only forward an old name to the module's new place.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("workers", "analysis", "sweep", "conf")
SHIM_MARK = "this import path is kept for one release"


def layer(module: str) -> int:
    if module == "workers.results" or module.startswith("workers.results."):
        return 1
    top = module.split(".")[0]
    return {"workers": 2, "conf": 2, "analysis": 3, "sweep": 4}[top]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported project module, line) of every import statement in the file; ``from X import
    y`` counts as X.y when X.y is a module, else X."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub if sub in known else base, node.lineno))
    return list(dict.fromkeys((m, line) for m, line in out if m.split(".")[0] in PACKAGES))


def is_shim(path: Path) -> bool:
    return SHIM_MARK in path.read_text()


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = project_modules()
    known = set(mods)
    return {name: [(m, line) for m, line in imports(path, name, known) if m != name]
            for name, path in mods.items() if not is_shim(path)}


def test_no_import_runs_up_the_layers():
    wrong = []
    for name, deps in graph().items():
        for dep, line in deps:
            if layer(dep) > layer(name):
                wrong.append(f"{name}:{line} imports {dep} (layer {layer(dep)} above "
                             f"{layer(name)})")
    assert not wrong, "\n".join(wrong)


def find_cycles(edges: dict[str, list[str]]) -> list[str]:
    """Every cycle a depth-first walk of ``edges`` (module -> modules it imports) closes."""
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in edges.get(node, ()):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle():
    g = graph()
    # (a package's __init__ importing its own submodules is not a cycle through them)
    edges = {name: sorted({dep for dep, _ in deps if dep in g and not dep.startswith(name + ".")})
             for name, deps in g.items()}
    cycles = find_cycles(edges)
    assert not cycles, "\n".join(cycles)


@pytest.mark.parametrize("text,expected", [
    ("from sweep.config import compose\n", [("sweep.config", 1)]),
    ("def f():\n    import analysis.load\n", [("analysis.load", 2)]),
    ("from . import driver\n", [("sweep.driver", 1)]),
    ("import numpy\n", []),
])
def test_the_reader_sees_every_kind_of_import(tmp_path, text, expected):
    (tmp_path / "sweep").mkdir()
    path = tmp_path / "sweep" / "x.py"
    path.write_text(text)
    assert imports(path, "sweep.x", {"sweep.driver", "sweep.config"}) == expected


def test_the_checks_fail_on_a_wrong_import():
    """The layer rule on known wrong edges, and the cycle finder on hand-made graphs."""
    assert layer("workers.results.record") < layer("workers.data") < layer("analysis.load") \
        < layer("sweep.driver")
    assert layer("conf") == layer("workers.train")
    assert find_cycles({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": ["b", "c"], "b": ["c"], "c": []}) == []

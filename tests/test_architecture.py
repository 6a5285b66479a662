"""The project's import structure: no module imports itself back through others (directly or in a
circle, counting imports inside functions too), and the model (hetero_qwen/model/) is math that
imports nothing from the executor. The graph is read from the source with `ast`; nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hetero_qwen", "placement_policies")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def imported_modules(name: str, path: Path, modules: dict) -> set[str]:
    """The project modules `name` imports anywhere in its file (module level or inside functions):
    `from pkg import sub` counts as importing pkg.sub when that is a module, else pkg."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import a.b.c` of a non-module attribute: its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_known_imports():
    # the reader itself must be able to fail: real edges of the project are found
    g = import_graph()
    assert "hetero_qwen.planner.context" in g["placement_policies.auto_search"]
    assert "placement_policies" in g["hetero_qwen.commands.plan"]  # an import inside a function
    assert "hetero_qwen.kernels.cpp" in g["hetero_qwen.kernels.dispatch"]  # `from . import cpp`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_project_modules():
    assert cycles(import_graph()) == []


def test_no_import_cycle_between_subpackages():
    """Collapsed to packages (hetero_qwen.model, hetero_qwen.executor, placement_policies...; a
    top-level module of hetero_qwen counts as its own node), the graph has no cycle either."""
    def node(m: str) -> str:
        parts = m.split(".")
        return ".".join(parts[:2]) if parts[0] == "hetero_qwen" else parts[0]
    collapsed: dict[str, set[str]] = {}
    for m, deps in import_graph().items():
        collapsed.setdefault(node(m), set()).update(node(d) for d in deps if node(d) != node(m))
    assert cycles(collapsed) == []


def test_the_model_imports_nothing_from_the_executor():
    g = import_graph()
    offenders = {m: sorted(d for d in deps if d.startswith("hetero_qwen.executor"))
                 for m, deps in g.items() if m.startswith("hetero_qwen.model")}
    assert {m: d for m, d in offenders.items() if d} == {}

"""The import graph of orchestrator/ and fpr_core/: no cycle, and imports between the orchestrator's
rooms point one way (down the layers: cli -> run, report -> store -> sweep -> fpr_core)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("orchestrator", "fpr_core")

ROOM_LAYERS = {"sweep": 0, "store": 1, "console": 1, "run": 2, "report": 2, "cli": 3}
"""A room may import rooms of a lower layer only (and itself), so rooms of one layer never import
each other (run and report; store and console, the display the driver and the CLI use)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Project modules ``path`` imports anywhere in its body (function-level imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a list of modules (first == last), or [] when the graph has none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "orchestrator" and len(parts) > 1 else None


def test_finder_sees_a_cycle_and_relative_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "orchestrator.sweep.spec" in graph["orchestrator.sweep.expand"]
    assert "orchestrator.store.parquet" in graph["orchestrator.run.hub"]  # `from pkg import module`


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, " -> ".join(cycle)


def test_rooms_import_one_way():
    bad = []
    for module, deps in import_graph().items():
        mine = room(module)
        if mine is None:
            continue
        for dep in deps:
            theirs = room(dep)
            if theirs is None or theirs == mine:
                continue
            if ROOM_LAYERS[theirs] >= ROOM_LAYERS[mine]:
                bad.append(f"{module} imports {dep}")
    assert not bad, bad


def test_every_room_has_a_layer_and_fpr_core_imports_no_orchestrator():
    graph = import_graph()
    assert {room(m) for m in graph if room(m)} <= set(ROOM_LAYERS)
    leaks = [f"{m} imports {d}" for m, deps in graph.items() if m.startswith("fpr_core")
             for d in deps if d.startswith("orchestrator")]
    assert not leaks, leaks

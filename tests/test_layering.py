"""The import direction of the project's packages: each layer imports only itself and the layers below it, and no
module takes part in an import cycle.

Layers, bottom up: `conventions` (task specs, normalisations, naming and label conventions), `models` (networks,
checkpoint format, family registry), `infer` (engine, I/O, runner, evaluation), `train` (data, losses, loops;
validates with the inference engine). `docker/` only calls the command lines.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS: tuple[str, ...] = ("conventions", "models", "infer", "train")


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, is_package: bool) -> set[str]:
    """Our modules (in LAYERS) that the file imports anywhere in its body, absolute and relative."""
    found: set[str] = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in LAYERS}


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the project's modules it imports (names that are not modules, e.g. imported classes, dropped)."""
    files = {module_name(p, root): p for layer in LAYERS for p in sorted((root / layer).rglob("*.py"))}
    return {name: {m for m in imports_of(path, name, path.name == "__init__.py") if m in files and m != name}
            for name, path in files.items()}


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a imports b' for every import of a higher layer than the importer's."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return [f"{a} imports {b}" for a, deps in sorted(graph.items()) for b in sorted(deps)
            if rank[b.split(".")[0]] > rank[a.split(".")[0]]]


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_every_import_points_down():
    assert layering_violations(import_graph(REPO)) == []


def test_no_import_cycles():
    assert import_cycles(import_graph(REPO)) == []


def test_conventions_import_nothing_of_ours():
    graph = import_graph(REPO)
    assert {m: deps for m, deps in graph.items() if m.startswith("conventions") and
            any(not d.startswith("conventions") for d in deps)} == {}


@pytest.mark.parametrize("source, wrong", [("models/checkpoint.py", "from infer.engine.slices import VolumePredictor"),
                                           ("infer/engine/slices.py", "import train.loop"),
                                           ("conventions/tasks.py", "from models import checkpoint")])
def test_one_wrong_import_is_caught(tmp_path, source, wrong):
    for layer in LAYERS:
        for path in (REPO / layer).rglob("*.py"):
            copy = tmp_path / path.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(path.read_text() + (f"\n{wrong}\n" if path == REPO / source else ""))
    violations = layering_violations(import_graph(tmp_path))
    assert violations and all(v.startswith(module_name(REPO / source, REPO) + " imports") for v in violations)


def test_a_cycle_is_caught():
    graph = {"infer.a": {"infer.b"}, "infer.b": {"infer.c"}, "infer.c": {"infer.a"}, "infer.d": {"infer.a"}}
    assert import_cycles(graph) == [["infer.a", "infer.b", "infer.c"]]

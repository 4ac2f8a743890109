"""The import graph of ztpki's own modules, drawn from the code (ast): no
circles, and every import points down the floors
bench -> ztpki -> protocols -> ra -> vendor_trust -> ca -> hsm -> storage
(issue 12; storage is the database plumbing of ca, ra and vendor_trust and
imports nothing of ours).

Every import counts, also those inside functions and under TYPE_CHECKING:
a circle there still ties the two modules together for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Highest floor first; a module may import its own floor and those below.
FLOORS = ("bench", "ztpki", "protocols", "ra", "vendor_trust", "ca", "hsm", "storage")

Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for floor in FLOORS:
        for path in sorted((ROOT / floor).rglob("*.py")):
            if "migrations" in path.relative_to(ROOT).parts:
                continue  # alembic scripts, run by alembic, not imported
            found[_module_name(path)] = path
    return found


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The repo's modules `module` imports (the module itself when a name is
    imported from it, the submodule when the name is one)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            # `import a.b.c` names a.b.c; fall back to the nearest enclosing known module.
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
    return targets


def import_graph() -> Graph:
    modules = _modules()
    known = set(modules)
    return {name: _imported(name, path, known) for name, path in modules.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: Graph) -> list[str]:
    def floor(module: str) -> int:
        return FLOORS.index(module.split(".")[0])

    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if floor(target) < floor(source)
    )


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph()


def test_the_graph_sees_the_floors_and_their_imports(graph: Graph) -> None:
    # Guards the two checks below against a graph that lost its edges.
    assert {m.split(".")[0] for m in graph} == set(FLOORS)
    assert "ztpki.instance" in graph["ztpki.http.app"]
    assert "hsm.handles" in graph["hsm.token"]
    assert "storage.db" in graph["ra.db"]
    assert "storage.db" in graph["vendor_trust.credentials"]


def test_no_import_circles(graph: Graph) -> None:
    assert cycles(graph) == []


def test_imports_point_down_the_floors(graph: Graph) -> None:
    assert upward_imports(graph) == []


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    drawn: Graph = {"ca.a": {"hsm.b"}, "hsm.b": {"hsm.c"}, "hsm.c": {"hsm.b", "ca.a"}}
    assert cycles(drawn) == [["ca.a", "hsm.b", "hsm.c"]]
    assert upward_imports(drawn) == ["hsm.c -> ca.a"]

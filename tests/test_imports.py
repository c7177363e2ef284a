"""One direction of imports: the modules of ``rnnkit`` import one another without a cycle.

The graph is read from the source, not from ``sys.modules``: every module ``pkgutil.walk_packages`` finds is parsed
(``ast``) and each import it runs at import time that names an ``rnnkit`` module is an edge. What counts:

- statements at module level, including those inside ``if TYPE_CHECKING:``, other ``if``/``try``/``with`` blocks
  and class bodies: a type-only import is still a dependency of the design, and the circle it closes is one a
  reader walks;
- not imports inside function bodies: those are deliberate lazy imports (an optional dependency, a command that
  loads the tasks), taken when the function runs.

Targets: ``import rnnkit.x.y`` is an edge to the module ``rnnkit.x.y``; ``from rnnkit.x import name`` to
``rnnkit.x.name`` where that is a module, else to ``rnnkit.x``; relative imports are resolved first.

Packages: a package's ``__init__`` is a node like any module, named by the package (``rnnkit.cells``), with the
edges of what it imports (its re-exports). Importing ``rnnkit.x.y`` also runs ``rnnkit/__init__`` and
``rnnkit/x/__init__`` first, but those implicit edges to the parents are left out: every module would then sit in a
circle with ``rnnkit/__init__``, which imports the public API. Python tolerates that one (the parent is already in
``sys.modules``), so the test asks only of the imports written down; ``from rnnkit import RNN`` inside the
package is written down, an edge to ``rnnkit`` itself, and would show as a cycle.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path

import rnnkit

PACKAGE = "rnnkit"


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name -> its source file (packages: their ``__init__.py``)."""
    out = {PACKAGE: Path(rnnkit.__file__)}
    for info in pkgutil.walk_packages(rnnkit.__path__, PACKAGE + "."):
        spec = importlib.util.find_spec(info.name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            out[info.name] = Path(spec.origin)
    return out


def _import_time_statements(body: list[ast.stmt]):
    """The import statements that run when the module is imported: none from inside a function."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue  # lazy imports, by design
        else:
            for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    yield from _import_time_statements([n for n in inner if isinstance(n, ast.AST)])


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module an import of ``name`` loads: itself, else its nearest enclosing module of the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _import_time_statements(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for t in targets:
            if t == PACKAGE or t.startswith(PACKAGE + "."):
                target = _target(t, modules)
                if target is not None and target != name:
                    out.add(target)
    return out


def import_graph() -> dict[str, set[str]]:
    """rnnkit module -> the rnnkit modules it imports at import time."""
    modules = _modules()
    return {name: _edges(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None: a depth-first search that stops at the first back edge."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt, BLACK) == GREY:  # a back edge: the cycle is the path from nxt on
                return [*path[path.index(nxt) :], nxt]
            if colour.get(nxt) == WHITE:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        colour[node] = BLACK
        return None

    for start in sorted(graph):
        if colour[start] == WHITE:
            found = visit(start)
            if found:
                return found
    return None


def test_the_graph_sees_the_core():
    graph = import_graph()
    assert {"rnnkit.recurrent", "rnnkit.backends", "rnnkit.kernels", "rnnkit.export", "rnnkit.cells.spec"} <= set(graph)
    assert "rnnkit.cells.spec" in graph["rnnkit.cells"]  # a package's re-exports are its edges


def test_find_cycle_reports_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_kernels_import_nothing_above_them():
    """The fast paths sit below the layers: no module of ``rnnkit.kernels`` imports ``rnnkit.recurrent`` or the
    backends, even for types."""
    graph = import_graph()
    above = {"rnnkit", "rnnkit.recurrent", "rnnkit.combinators", "rnnkit.backends", "rnnkit.layers", "rnnkit.twin"}
    above |= {"rnnkit.export"}
    for name, targets in graph.items():
        if name == "rnnkit.kernels" or name.startswith("rnnkit.kernels."):
            assert not targets & above, f"{name} imports {sorted(targets & above)}"

"""The package's import structure: no import cycle inside ``anomaly/``, local imports counted too.

Every module under ``anomaly/`` is parsed with :mod:`ast`; every ``import anomaly.x`` / ``from anomaly[.x]
import y`` -- at module level AND inside functions, since a cycle hidden behind a function-local import is
still a cycle -- is an arrow from the importing module to the module it names (``from anomaly.models import
Detector`` -> ``anomaly.models``; ``from anomaly import calibration`` -> ``anomaly.calibration``). The test
fails on any cycle, printing it, and on a function-local import of a package module that nothing but a
cycle would explain.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anomaly"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module of the package."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str | None:
    """The absolute module an ``ImportFrom`` reads from (relative imports resolved)."""
    if not node.level:
        return node.module
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """``(module, line, local)`` for every package module ``path`` imports; ``local``: inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    importer, is_package = module_name(path), path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((_owner(a.name, known), child.lineno, local) for a in child.names
                             if _owner(a.name, known))
            elif isinstance(child, ast.ImportFrom):
                source = _resolve(child, importer, is_package)
                if source and (source == "anomaly" or source.startswith("anomaly.")):
                    for alias in child.names:  # `from anomaly import calibration`: the submodule itself
                        target = f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                        found.append((target, child.lineno, local))
            visit(child, inside)

    visit(tree, False)
    return [(target, line, local) for target, line, local in found if target in known and target != importer]


def _owner(name: str, known: set[str]) -> str | None:
    """The longest known module that ``import name`` loads (``anomaly.models.base`` for itself)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in known:
            return ".".join(parts[:n])
    return None


@functools.cache
def import_graph() -> dict[str, dict[str, list[tuple[int, bool]]]]:
    """``{importer: {imported: [(line, local), ...]}}`` over the whole package."""
    mods = modules()
    graph: dict[str, dict[str, list[tuple[int, bool]]]] = {name: {} for name in mods}
    for name, path in mods.items():
        for target, line, local in imports_of(path, set(mods)):
            graph[name].setdefault(target, []).append((line, local))
    return graph


def find_cycles(graph: dict[str, dict[str, list]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a closed path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, dict[str, list]], component: set[str]) -> list[str]:
    """A closed path through the component, starting at its first module (breadth-first back to it)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target in component and target not in parents:
                    parents[target] = node
                    nxt.append(target)
        frontier = nxt
    return sorted(component)


def describe(graph: dict[str, dict[str, list]], cycle: list[str]) -> str:
    arrows = []
    for a, b in zip(cycle, cycle[1:]):
        where = ", ".join(f"line {line}{' (local)' if local else ''}" for line, local in sorted(set(graph[a][b])))
        arrows.append(f"  {a} -> {b}  [{where}]")
    return " -> ".join(cycle) + "\n" + "\n".join(arrows)


def test_the_graph_sees_module_and_function_local_imports() -> None:
    graph = import_graph()
    assert "anomaly.pipeline" in graph and "anomaly.models.base" in graph
    assert "anomaly.runs" in graph["anomaly.pipeline"]  # a module-level import
    assert "anomaly.models" in graph["anomaly.pipeline"]  # `from anomaly.models import ...`
    toy = {"a": {"b": [(1, False)]}, "b": {"c": [(2, True)]}, "c": {"a": [(3, True)]}, "d": {}}
    assert find_cycles(toy) == [["a", "b", "c", "a"]]
    assert "(local)" in describe(toy, ["a", "b", "c", "a"])


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles inside anomaly/:\n" + "\n".join(describe(graph, c) for c in cycles)


CLI_MODULES = ("anomaly.cli", "anomaly.cli_data", "anomaly.cli_service")  # lazy imports keep `anomaly --help` fast


def test_function_local_imports_say_what_heavy_dependency_they_defer() -> None:
    """Outside the CLI, a package module is imported inside a function only to defer a heavy dependency
    (matplotlib, scipy, pandas, timm, ...), and the line says so: ``# deferred: <what>``."""
    mods = modules()
    unexplained = []
    for name, path in mods.items():
        if name in CLI_MODULES:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, line, local in imports_of(path, set(mods)):
            if local and "# deferred" not in lines[line - 1]:
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {lines[line - 1].strip()}")
    assert not unexplained, ("function-local imports that defer nothing heavy (import at the top; if that makes a "
                             "cycle, move the shared code down a layer):\n" + "\n".join(sorted(set(unexplained))))


@pytest.mark.parametrize("low, high", [("anomaly.geometry", "anomaly.models"),
                                       ("anomaly.station.inspection", "anomaly.pipeline"),
                                       ("anomaly.station.web", "anomaly.station.service")])
def test_lower_layers_do_not_import_upwards(low: str, high: str) -> None:
    graph = import_graph()
    upward = [t for t in graph[low] if t == high or t.startswith(high + ".")]
    assert not upward, f"{low} imports {upward}"


def layer_of(module: str) -> int:
    """0 the core (data, detectors, metrics, calibration, runs, inference, export), 1 ``anomaly.station``,
    2 ``anomaly.study``, 3 the CLI: a module imports only its own layer or those below."""
    if module in CLI_MODULES or module in ("anomaly.cli_args", "anomaly.__main__"):
        return 3
    if module.startswith("anomaly.study"):
        return 2
    if module.startswith("anomaly.station"):
        return 1
    return 0


def test_folders_import_only_downwards() -> None:
    graph = import_graph()
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))
    assert not upward, "imports that run up a layer (core < station < study < CLI):\n" + "\n".join(upward)

"""The import layers: ``schemas`` < ``stream`` < ``agents`` < ``livestream``, no import upward, no circle.

``schemas`` (the published records) and ``stream`` (the pure core) import no Kafka, Redis or faust client, so
they can be used and tested without services. Imports under ``if TYPE_CHECKING:`` are annotations only and are
not counted (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = {"schemas": 0, "stream": 1, "agents": 2, "livestream": 3}
IO_CLIENTS = {"faust", "mode", "aiokafka", "redis", "kafka", "confluent_kafka", "aiohttp"}


def _runtime_imports(tree: ast.AST) -> list[str]:
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.extend(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append(child.module)
                found.extend(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    modules: dict[str, list[str]] = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = _runtime_imports(ast.parse(path.read_text()))
    return {name: {i for i in imports if i in modules and i != name} for name, imports in modules.items()} | {
        f"{name}!raw": set(imports) for name, imports in modules.items()
    }


def test_no_layer_imports_a_layer_above_it() -> None:
    graph = _graph()
    upward = [
        (name, target)
        for name, targets in graph.items()
        if not name.endswith("!raw")
        for target in targets
        if LAYERS[target.split(".")[0]] > LAYERS[name.split(".")[0]]
    ]
    assert upward == []


def test_the_pure_core_and_the_schemas_import_no_client_library() -> None:
    graph = _graph()
    clients = [
        (name.removesuffix("!raw"), target)
        for name, targets in graph.items()
        if name.endswith("!raw") and name.split(".")[0] in ("schemas", "stream")
        for target in targets
        if target.split(".")[0] in IO_CLIENTS
    ]
    assert clients == []


def test_no_import_circle() -> None:
    graph = {name: targets for name, targets in _graph().items() if not name.endswith("!raw")}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        path.append(name)
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert circles == []

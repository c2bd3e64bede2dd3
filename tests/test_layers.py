"""The code's own imports keep its layers: no cycles, nothing imports upwards.

Layers, lowest first: messages <- config <- actors <- supervisors | inference
<- bridges. Inside bridges: the seam (bridges' own modules) <- nats <- stores
| workers <- http <- node <- cli. Imports under `if TYPE_CHECKING:` count:
a cycle in the types is a cycle in the design.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parent.parent
PACKAGES: Final = ("messages", "config", "actors", "supervisors", "inference", "bridges")
LAYER: Final = {
    "messages": 0,
    "config": 1,
    "actors": 2,
    "supervisors": 3,
    "inference": 3,
    "bridges": 4,
}
BRIDGES_LAYER: Final = {
    "": 0,  # the seam: bridges/_loop.py, _outbox.py, _seam.py, _held.py
    "nats": 1,
    "stores": 2,
    "workers": 2,
    "http": 3,
    "node": 4,
    "cli": 5,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: Final = {
    _module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
}


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        if node.level > 1:
            base = base[: len(base) - node.level + 1]
        prefix = ".".join(base) if node.level else ""
        target = ".".join(p for p in (prefix, node.module or "") if p)
        names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
    for name in names:
        known = name
        while known and known not in MODULES:
            known = known.rpartition(".")[0]
        if known and known != module:
            yield known


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _targets(module, path, node)
        }
    return graph


GRAPH: Final = _graph()


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of `graph` (first module repeated last), or [] if it has none."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(error.args[1])
    return []


def _bridges_part(module: str) -> str:
    """The edge a bridges module belongs to ("" for the seam modules)."""
    part = module.split(".")[1] if "." in module else ""
    return part if part in BRIDGES_LAYER else ""


def test_the_graph_sees_the_imports_it_checks() -> None:
    assert "bridges.nats._bridge" in GRAPH["bridges.node._edges"]
    assert "messages" in GRAPH["actors._context"]
    assert len(MODULES) > 100


def test_no_modules_import_each_other_in_a_cycle() -> None:
    assert _cycle(GRAPH) == []


def test_a_cycle_is_found_when_there_is_one() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(set(_cycle(graph))) == ["a", "b", "c"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_a_higher_layer(module: str) -> None:
    package = module.split(".", maxsplit=1)[0]
    upward = [target for target in GRAPH[module] if LAYER[target.split(".")[0]] > LAYER[package]]
    siblings = [
        target
        for target in GRAPH[module]
        if target.split(".")[0] != package and LAYER[target.split(".")[0]] == LAYER[package]
    ]
    assert upward == []
    assert siblings == []


# `python -m bridges` is the command: it sits above everything it runs.
_EDGE_MODULES: Final = sorted(
    m for m in MODULES if m.startswith("bridges.") and m != "bridges.__main__"
)


@pytest.mark.parametrize("module", _EDGE_MODULES)
def test_no_edge_of_bridges_imports_a_higher_one(module: str) -> None:
    part = _bridges_part(module)
    upward = [
        target
        for target in GRAPH[module]
        if target.startswith("bridges")
        and target != "bridges"
        and BRIDGES_LAYER[_bridges_part(target)] > BRIDGES_LAYER[part]
    ]
    assert upward == []
    assert "bridges" not in GRAPH[module]  # the face is for users, not for its own parts


def test_the_reference_app_imports_only_public_names() -> None:
    private = [
        f"{module} imports {target}"
        for module in MODULES
        if module.startswith("actors.support")
        for target in GRAPH[module]
        if not target.startswith("actors.support")
        and any(part.startswith("_") for part in target.split("."))
    ]
    assert private == []

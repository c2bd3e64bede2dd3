"""The project uses pykka's public API only, so that a pykka release cannot break it unannounced."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("actors", "bench", "bridges", "config", "inference", "messages", "supervisors", "tests")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def pykka_private_names() -> frozenset[str]:
    """Private attributes that pykka's public classes define (`_handle_failure`, ...)."""
    names: set[str] = set()
    for public in pykka.__all__:
        obj = getattr(pykka, public)
        if not inspect.isclass(obj):
            continue
        for cls in obj.__mro__:
            if cls.__module__.startswith("pykka"):
                names.update(n for n in (*vars(cls), *vars(cls).get("__annotations__", {})))
    return frozenset(n for n in names if _private(n) and n != "_abc_impl")


def project_modules() -> Iterator[tuple[str, ast.Module]]:
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            yield str(path.relative_to(ROOT)), ast.parse(path.read_text(encoding="utf-8"))


def dotted(node: ast.expr) -> list[str]:
    """`pykka.messages._ActorStop` -> ["pykka", "messages", "_ActorStop"]; [] if no name chain."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return []


def own_attributes(tree: ast.Module) -> set[str]:
    """The attributes a module assigns on its own objects (`self._actor = ...`)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign):
            targets = [node.target]
        own.update(t.attr for t in targets if isinstance(t, ast.Attribute))
        if isinstance(node, ast.ClassDef):
            own.update(
                s.name for s in node.body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return own


def private_imports(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names if a.name.split(".")[0] == "pykka"]
    elif (node.module or "").split(".")[0] == "pykka":
        names = [f"{node.module}.{a.name}" for a in node.names]
    else:
        names = []
    yield from (f"imports {name}" for name in names if any(map(_private, name.split("."))))


def private_attribute(node: ast.Attribute, pykka_private: frozenset[str], own: set[str]) -> str:
    chain = dotted(node)
    if chain[:1] == ["pykka"] and any(map(_private, chain[1:])):
        return f"uses {'.'.join(chain)}"
    if node.attr in pykka_private and node.attr not in own:
        return f"uses pykka's private {node.attr}"
    return ""


def private_overrides(node: ast.ClassDef, pykka_private: frozenset[str]) -> Iterator[str]:
    if any(dotted(base)[:1] == ["pykka"] for base in node.bases):
        for statement in node.body:
            name = getattr(statement, "name", "")
            if name in pykka_private:
                yield f"overrides pykka's private {node.name}.{name}"


def private_uses(path: str, tree: ast.Module, pykka_private: frozenset[str]) -> Iterator[str]:
    own = own_attributes(tree)
    for node in ast.walk(tree):
        found: list[str] = []
        if isinstance(node, ast.Import | ast.ImportFrom):
            found = list(private_imports(node))
        elif isinstance(node, ast.Attribute):
            found = [private_attribute(node, pykka_private, own)]
        elif isinstance(node, ast.ClassDef):
            found = list(private_overrides(node, pykka_private))
        line = getattr(node, "lineno", 0)
        yield from (f"{path}:{line} {what}" for what in found if what)


def test_the_scan_knows_pykkas_private_hooks() -> None:
    assert {"_handle_failure", "_start_actor_loop", "_actor_loop_teardown"} <= pykka_private_names()


@pytest.mark.parametrize(
    "source",
    [
        "from pykka._envelope import Envelope",
        "import pykka._actor",
        "from pykka.messages import _ActorStop",
        "import pykka\npykka._registry.ActorRegistry",
        "import pykka\nclass A(pykka.ThreadingActor):\n    def _handle_failure(self): ...",
        "def start(actor):\n    actor._start_actor_loop()",
    ],
)
def test_the_scan_catches_each_kind_of_private_use(source: str) -> None:
    assert list(private_uses("example.py", ast.parse(source), pykka_private_names())) != []


def test_nothing_in_the_project_imports_overrides_or_touches_pykkas_privates() -> None:
    pykka_private = pykka_private_names()
    uses = [u for path, tree in project_modules() for u in private_uses(path, tree, pykka_private)]
    assert uses == []

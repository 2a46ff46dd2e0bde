"""The floor plan (docs/architecture.md): lower floors never import higher ones, there is
no import cycle, and the never-rules hold. Read from the source's own imports (the AST),
including imports inside functions; imports under ``if TYPE_CHECKING:`` never run and are
left out, as import-linter's ``exclude_type_checking_imports`` does."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "slimserve"

ARCHITECTURE = Path(__file__).parent.parent / "docs" / "architecture.md"


def documented_floors() -> dict[str, int]:
    """docs/architecture.md's floor table: ``| `module` | floor | what it is for |``."""
    rows = re.findall(r"^\| `(slimserve[\w.]*)` \| (\d+) \|", ARCHITECTURE.read_text(), re.M)
    return {module: int(number) for module, number in rows}


FLOORS: dict[str, int] = documented_floors()
"""Module prefix -> floor (the longest matching prefix wins), as docs/architecture.md
gives it: the page contributors read is the table this test holds."""

NEVER: list[tuple[str, tuple[str, ...]]] = [
    ("slimserve.serve", ("slimserve.techniques", "slimserve.pipeline", "slimserve.recipe")),
    ("slimserve.runtime", ("slimserve.recipe", "slimserve.pipeline")),
    ("slimserve.artifact", ("slimserve.recipe", "slimserve.pipeline")),
    ("slimserve.techniques", ("slimserve.cli", "slimserve.measure", "slimserve.pipeline")),
]
"""(importer prefix, prefixes it must never import)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The slimserve modules ``path`` imports (deepest known module of each name)."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor) + (f".{base}" if base else "")
            names = [f"{base}.{alias.name}" for alias in node.names] or [base]
        for target in names:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("slimserve") and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def floor(name: str) -> int:
    prefix = max((p for p in FLOORS if name == p or name.startswith(p + ".")), key=len)
    return FLOORS[prefix]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    result: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return result


def test_every_module_has_a_floor() -> None:
    assert len(FLOORS) > 20  # the table was found and read
    # "slimserve" itself (the public API, floor 10) must not be the catch-all of a module
    # the table forgot.
    unplaced = [
        name
        for name in modules()
        if name != "slimserve"
        and not any(name.startswith(p + ".") or name == p for p in FLOORS if p != "slimserve")
    ]
    assert unplaced == []


def test_every_floor_in_the_table_names_a_module_that_exists() -> None:
    found = modules()
    assert [p for p in FLOORS if not any(m == p or m.startswith(p + ".") for m in found)] == []


def test_there_is_no_import_cycle() -> None:
    assert cycles(graph()) == []


def test_lower_floors_never_import_higher_ones() -> None:
    upward = [
        f"{name} (floor {floor(name)}) imports {target} (floor {floor(target)})"
        for name, targets in sorted(graph().items())
        for target in sorted(targets)
        if floor(target) > floor(name)
    ]
    assert upward == []


@pytest.mark.parametrize(("importer", "forbidden"), NEVER, ids=[n for n, _ in NEVER])
def test_the_never_rules_hold(importer: str, forbidden: tuple[str, ...]) -> None:
    broken = [
        f"{name} imports {target}"
        for name, targets in sorted(graph().items())
        if name == importer or name.startswith(importer + ".")
        for target in sorted(targets)
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    ]
    assert broken == []


def test_no_source_file_is_over_400_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > 400
    }
    assert long == {}


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    # The contract is only as good as its reader: a planted cycle must show.
    edges = {"slimserve.a": {"slimserve.b"}, "slimserve.b": {"slimserve.a"}, "slimserve.c": set()}
    assert cycles(edges) == [["slimserve.a", "slimserve.b"]]
    source = tmp_path / "slimserve" / "core" / "x.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from slimserve.cli import app\n"
        "def f():\n    from slimserve.pipeline import run_recipe\n"
    )
    known = {"slimserve.cli", "slimserve.pipeline", "slimserve.core.x"}
    assert imports(source, "slimserve.core.x", known) == {"slimserve.pipeline"}

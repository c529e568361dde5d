"""Where code lives: dependencies point from tests to the package, never back (issue 19)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_nothing_outside_the_tests_imports_them() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for folder in ("pdserve", "benchmarks", "scripts")
        for path in (ROOT / folder).rglob("*.py")
        for name in _imports(path)
        if name == "tests" or name.startswith("tests.")
    ]
    assert offenders == []


def test_benchmarks_live_in_benchmarks() -> None:
    assert sorted(p.name for p in (ROOT / "scripts").glob("bench*.py")) == []

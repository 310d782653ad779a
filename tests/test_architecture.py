"""One-way imports between our packages (DESIGN.md), checked on the source AST."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"serving", "training", "batch", "selfmaker", "infra"}
ALLOWED: dict[str, set[str]] = {
    "serving": set(),
    "training": set(),
    "batch": {"serving"},
    "selfmaker": {"serving", "training", "batch"},
    "infra": set(),
}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """Top-level names of our packages that ``path`` imports, with the line of each import."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
    return {(name, line) for name, line in found if name in OURS}


def _sources() -> list[tuple[str, Path]]:
    return [(pkg, path) for pkg in sorted(OURS) for path in sorted((ROOT / pkg).rglob("*.py"))]


@pytest.mark.parametrize(("package", "path"), _sources(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_imports_point_one_way(package: str, path: Path) -> None:
    bad = sorted(
        f"line {line}: imports {name}"
        for name, line in imported_packages(path)
        if name != package and name not in ALLOWED[package]
    )
    assert not bad, f"{path.relative_to(ROOT)} ({package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}): {bad}"


def test_checker_catches_a_forbidden_edge(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom selfmaker.cli import main\nimport batch.engine\n")
    assert imported_packages(bad) == {("selfmaker", 2), ("batch", 3)}

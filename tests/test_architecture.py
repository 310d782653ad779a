"""One-way imports between our packages (DESIGN.md), checked on the source AST."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"common", "serving", "training", "batch", "selfmaker", "infra", "bench"}
#: ``common`` is the leaf every package may import; it imports nothing of ours
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "serving": {"common"},
    "training": {"common"},
    "batch": {"common", "serving"},
    "selfmaker": {"common", "serving", "training", "batch"},
    "infra": {"common"},
    "bench": {"common", "serving", "training", "batch", "selfmaker"},
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
    bad = forbidden(package, path)
    assert not bad, f"{path.relative_to(ROOT)} ({package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}): {bad}"


def forbidden(package: str, path: Path) -> list[str]:
    """The imports of ``path`` (a module of ``package``) that :data:`ALLOWED` forbids."""
    return sorted(
        f"line {line}: imports {name}"
        for name, line in imported_packages(path)
        if name != package and name not in ALLOWED[package]
    )


def test_checker_catches_a_forbidden_edge(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom selfmaker.cli import main\nimport batch.engine\nfrom common import uris\n")
    assert imported_packages(bad) == {("selfmaker", 2), ("batch", 3), ("common", 4)}
    assert forbidden("serving", bad) == ["line 2: imports selfmaker", "line 3: imports batch"]


def test_common_is_a_leaf_that_everyone_may_import(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from serving.errors import ServingError\n")
    assert forbidden("common", wrong) == ["line 1: imports serving"], "common must import nothing of ours"
    uses = tmp_path / "uses.py"
    uses.write_text("from common.s3 import client\nimport common.uris\n")
    assert all(not forbidden(package, uses) for package in OURS)

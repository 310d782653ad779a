"""The docs name only files that exist: every repository path in README.md and docs/*.md (``selfmaker/…``,
``tests/…``, ``images/requirements*.txt`` …), and every module of the layout map in
docs/platform-internals.md (``api/app.py`` is ``selfmaker/api/app.py``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = "selfmaker|serving|common|batch|training|infra|bench|tests|docs|scripts|images|examples"
#: a repository path: one of our top-level folders, then a file with an extension or a folder ending in ``/``
#: (``a training/transform job`` is prose, not a path)
REPO_PATH = re.compile(rf"(?<![\w./-])((?:{TOP})/[\w./*<>-]*(?:\.[\w*]+|/))(?![\w*<>-])")
#: made by a build, not in the repository (gitignored)
GENERATED = {"images/.build/"}
#: a module named relative to selfmaker/ in the layout map (``commands/up.py``, ``features/<name>/``)
MAP_MODULE = re.compile(r"(?<![\w./-])((?:[a-z_]+/)*[a-z_]+\.py)\b")


def named_paths(text: str) -> set[str]:
    """The repository paths ``text`` names."""
    return {m.group(1) for m in REPO_PATH.finditer(text)} - GENERATED


def exists(path: str, *, bases: tuple[Path, ...] = (ROOT,)) -> bool:
    """``path`` (``*`` a glob, ``<name>`` any one folder) names at least one file or folder under a base."""
    pattern = re.sub(r"<[^>]+>", "*", path).rstrip("/")
    return any(any(base.glob(pattern)) if "*" in pattern else (base / pattern).exists() for base in bases)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_named_in_the_docs_exist(doc: Path) -> None:
    missing = sorted(p for p in named_paths(doc.read_text(encoding="utf-8")) if not exists(p))
    assert not missing, f"{doc.relative_to(ROOT)} names files that are not in the repository: {missing}"


def test_the_layout_map_names_existing_modules() -> None:
    text = (ROOT / "docs" / "platform-internals.md").read_text(encoding="utf-8")
    modules = {m.group(1) for m in MAP_MODULE.finditer(text)}
    assert {"commands/up.py", "platform.py", "api/app.py", "endpoints/manager.py"} <= modules
    # a bare file name is one of a feature's or an executor's modules, listed beside its folder
    missing = sorted(
        m
        for m in modules
        if not (
            exists(m, bases=(ROOT, ROOT / "selfmaker"))
            if "/" in m
            else exists(f"**/{m}", bases=(ROOT / "selfmaker",))
        )
    )
    assert not missing, f"docs/platform-internals.md names modules that do not exist: {missing}"


def test_the_checker_sees_paths_and_misses() -> None:
    text = (
        "see `selfmaker/api/app.py`, images/requirements*.txt, tests/selfmaker/ and a training/transform job"
    )
    assert named_paths(text) == {"selfmaker/api/app.py", "images/requirements*.txt", "tests/selfmaker/"}
    assert all(exists(p) for p in named_paths(text))
    assert not exists("selfmaker/endpoints/upstream.py") and not exists("docs/nothing-*.md")
    assert named_paths("debootstrap → docs/man/locales stripped") == set()


def test_the_map_names_every_hook_of_the_registry() -> None:
    """Every decorator a feature can register with (selfmaker/api/registry.py) is in the map, as ``@name``."""
    tree = ast.parse((ROOT / "selfmaker" / "api" / "registry.py").read_text(encoding="utf-8"))
    hooks = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")} - {
        "discover"
    }
    assert {"operation", "metrics_source", "deployment_strategy"} <= hooks
    text = (ROOT / "docs" / "platform-internals.md").read_text(encoding="utf-8")
    assert sorted(h for h in hooks if f"@{h}" not in text) == []


#: ``pulumi stack output <name>`` (also with ``--json``) in a doc or shell command
STACK_OUTPUT = re.compile(r"""pulumi(?: stack output |", "stack", "output", ")(?:--json )?"?([A-Za-z]+)""")


def stack_outputs() -> set[str]:
    """The output names ``infra.program.build`` returns (the keys of its returned dict literal)."""
    tree = ast.parse((ROOT / "infra" / "program.py").read_text(encoding="utf-8"))
    (build,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build"]
    returns = [
        n.value for n in ast.walk(build) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)
    ]
    return {k.value for d in returns for k in d.keys if isinstance(k, ast.Constant)}


def test_stack_outputs_named_in_the_docs_exist() -> None:
    """A new user copies ``pulumi stack output endpointUrl`` from the README; the output must be there."""
    outputs = stack_outputs()
    assert {"endpointUrl", "endpoints", "modelsBucket", "repositoryUrls"} <= outputs
    named = {
        (doc.name, m.group(1)) for doc in DOCS for m in STACK_OUTPUT.finditer(doc.read_text(encoding="utf-8"))
    }
    assert ("README.md", "endpointUrl") in named and ("README.md", "modelsBucket") in named
    missing = sorted((doc, name) for doc, name in named if name not in outputs)
    assert not missing, f"the docs name stack outputs the program does not export: {missing}"

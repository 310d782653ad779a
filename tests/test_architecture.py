"""One-way imports between our packages (the arrows at the top of docs/contracts.md), checked on the source
AST."""

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


@pytest.mark.parametrize(
    ("package", "path"), _sources(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v
)
def test_imports_point_one_way(package: str, path: Path) -> None:
    bad = forbidden(package, path)
    assert not bad, (
        f"{path.relative_to(ROOT)} ({package} may import only "
        f"{sorted(ALLOWED[package]) or 'nothing of ours'}): {bad}"
    )


def forbidden(package: str, path: Path) -> list[str]:
    """The imports of ``path`` (a module of ``package``) that :data:`ALLOWED` forbids."""
    return sorted(
        f"line {line}: imports {name}"
        for name, line in imported_packages(path)
        if name != package and name not in ALLOWED[package]
    )


def test_checker_catches_a_forbidden_edge(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text(
        "import os\nfrom selfmaker.cli import main\nimport batch.engine\nfrom common import uris\n"
    )
    assert imported_packages(bad) == {("selfmaker", 2), ("batch", 3), ("common", 4)}
    assert forbidden("serving", bad) == ["line 2: imports selfmaker", "line 3: imports batch"]


def test_common_is_a_leaf_that_everyone_may_import(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from serving.errors import ServingError\n")
    assert forbidden("common", wrong) == ["line 1: imports serving"], "common must import nothing of ours"
    uses = tmp_path / "uses.py"
    uses.write_text("from common.s3 import client\nimport common.uris\n")
    assert all(not forbidden(package, uses) for package in OURS)


# ---- inside selfmaker/: layers, the composition root, no cycles -----------------------------------------

#: selfmaker's layers, lowest first: a module may import modules of its own layer and of the layers below
#: (docs/platform-internals.md). A module belongs to the longest name listed that is itself or one of its
#: packages (``selfmaker`` itself only to its own ``__init__``: a new top-level module needs a place here).
SELFMAKER_LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "selfmaker",
            "selfmaker.errors",
            "selfmaker.arns",
            "selfmaker.settings",
            "selfmaker.logcontext",
            "selfmaker.state",
            "selfmaker.modeldata",
            "selfmaker.logfiles",
            "selfmaker.credentials",
            "selfmaker.logrotate",
            "selfmaker.metricstore",
        ),
    ),
    ("executors", ("selfmaker.executors",)),
    (
        "endpoints and jobs",
        ("selfmaker.endpoints", "selfmaker.jobs", "selfmaker.logstreams", "selfmaker.alarms"),
    ),
    # the web console: served by api/app.py, reads through Services
    ("api", ("selfmaker.api", "selfmaker.services", "selfmaker.console")),
    ("features", ("selfmaker.features",)),
    (
        "entry points",
        (
            "selfmaker.platform",
            "selfmaker.commands",
            "selfmaker.cli",
            "selfmaker.__main__",
            "selfmaker.aws_batch",
        ),
    ),  # the CLI's AWS Batch client (selfmaker train --aws-batch …)
)
#: the composition root, and the one module that may import it
COMPOSITION_ROOT = "selfmaker.platform"
ENTRY_POINT = "selfmaker.commands.up"


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of the module at ``path`` (a package is its ``__init__``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str], package: str) -> set[tuple[str, int]]:
    """The modules among ``known`` that ``path`` imports, with the line of each import: module level,
    inside functions and under ``if TYPE_CHECKING`` alike (a type-only arrow is an arrow too).
    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name, node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against this module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                child = f"{module}.{alias.name}"
                found.add((child if child in known else module, node.lineno))
    return {(name, line) for name, line in found if name in known}


def layer_of(module: str) -> int:
    """The index in :data:`SELFMAKER_LAYERS` of the layer ``module`` belongs to (longest prefix)."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(SELFMAKER_LAYERS):
        for prefix in prefixes:
            inside = prefix != "selfmaker" and module.startswith(prefix + ".")
            if (module == prefix or inside) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def selfmaker_graph(root: Path = ROOT) -> dict[str, set[tuple[str, int]]]:
    """``{module: {(imported selfmaker module, line)}}`` of every module under ``root/selfmaker``."""
    paths = {module_name(p, root): p for p in sorted((root / "selfmaker").rglob("*.py"))}
    known = set(paths)
    graph: dict[str, set[tuple[str, int]]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = {(m, line) for m, line in imported_modules(path, known, package) if m != name}
    return graph


def layer_violations(graph: dict[str, set[tuple[str, int]]]) -> list[str]:
    """Imports that point up the layers, and imports of the composition root by anything but the entry
    point."""
    bad = []
    for module, imports in sorted(graph.items()):
        for imported, line in sorted(imports):
            if imported == COMPOSITION_ROOT and module != ENTRY_POINT:
                bad.append(
                    f"{module} line {line}: imports the composition root {COMPOSITION_ROOT} "
                    f"(only {ENTRY_POINT} may)"
                )
            elif layer_of(imported) > layer_of(module):
                bad.append(
                    f"{module} line {line}: imports {imported} "
                    f"({SELFMAKER_LAYERS[layer_of(module)][0]} may not import "
                    f"{SELFMAKER_LAYERS[layer_of(imported)][0]})"
                )
    return bad


def import_cycles(graph: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (or a module importing itself)."""
    edges = {m: sorted({i for i, _ in imports}) for m, imports in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for start in sorted(edges):  # iterative Tarjan: the graph is small, but recursion limits are not ours
        if start in index:
            continue
        work = [(start, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges.get(node, [])
            if position < len(targets):
                work.append((node, position + 1))
                target = targets[position]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            for target in targets:
                if target in on_stack:
                    low[node] = min(low[node], low[target])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, []):
                    cycles.append(sorted(component))
    return cycles


def test_every_selfmaker_module_has_a_layer() -> None:
    assert [m for m in selfmaker_graph() if layer_of(m) < 0] == []
    assert layer_of("selfmaker.newthing") == -1 and layer_of("selfmaker.features.x.y") == 4


def test_selfmaker_layers_point_down() -> None:
    bad = layer_violations(selfmaker_graph())
    assert not bad, "imports against selfmaker's layers (docs/platform-internals.md):\n" + "\n".join(bad)


def test_no_import_cycles_in_selfmaker() -> None:
    cycles = import_cycles(selfmaker_graph())
    assert not cycles, f"import cycles among selfmaker modules: {cycles}"


def _fake_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_layer_checker_catches_wrong_arrows(tmp_path: Path) -> None:
    root = _fake_tree(
        tmp_path,
        {
            "selfmaker/__init__.py": "",
            "selfmaker/endpoints/__init__.py": "",
            "selfmaker/endpoints/manager.py": "from selfmaker.features.shadow import hooks\n",
            "selfmaker/features/__init__.py": "",
            "selfmaker/features/shadow/__init__.py": "from . import hooks\n",
            "selfmaker/features/shadow/hooks.py": (
                "from selfmaker.endpoints import manager\nimport selfmaker.platform\n"
            ),
            "selfmaker/platform.py": "",
            "selfmaker/commands/__init__.py": "",
            "selfmaker/commands/up.py": "from selfmaker.platform import Platform\n",
        },
    )
    graph = selfmaker_graph(root)
    assert ("selfmaker.features.shadow.hooks", 1) in graph["selfmaker.features.shadow"]  # relative import
    bad = layer_violations(graph)
    assert bad == [
        "selfmaker.endpoints.manager line 1: imports selfmaker.features.shadow.hooks "
        "(endpoints and jobs may not import features)",
        "selfmaker.features.shadow.hooks line 2: imports the composition root selfmaker.platform "
        "(only selfmaker.commands.up may)",
    ]


def test_cycle_checker_catches_cycles(tmp_path: Path) -> None:
    root = _fake_tree(
        tmp_path,
        {
            "selfmaker/__init__.py": "",
            "selfmaker/a.py": "from selfmaker import b\n",
            "selfmaker/b.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from selfmaker.c import C\n"
            ),
            "selfmaker/c.py": "def f():\n    import selfmaker.a\n",
            "selfmaker/d.py": "import selfmaker.a\n",
        },
    )
    assert import_cycles(selfmaker_graph(root)) == [["selfmaker.a", "selfmaker.b", "selfmaker.c"]]


#: private names of the standard library that are meant to be called
_STDLIB_PRIVATE = {"os._exit"}


def private_reaches(path: Path, module: str) -> list[str]:
    """Uses in ``path`` (module ``module``) of another object's or package's private names: ``x._name``
    for anything but ``self``/``cls``, and ``from selfmaker.a import _name`` from outside package ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module.rpartition(".")[0] if path.name != "__init__.py" else module
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"}:
                continue
            if ast.unparse(node) not in _STDLIB_PRIVATE:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("selfmaker")
        ):
            owner = node.module or ""
            if owner == package or owner.startswith(package + "."):
                continue
            found += [
                f"line {node.lineno}: from {owner} import {a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return found


def test_selfmaker_modules_use_each_others_public_names_only() -> None:
    bad = {
        name: reaches
        for name, path in ((module_name(p), p) for p in sorted((ROOT / "selfmaker").rglob("*.py")))
        if (reaches := private_reaches(path, name))
    }
    assert not bad, f"private names used across modules (add a public method or function instead): {bad}"


def test_private_reach_checker(tmp_path: Path) -> None:
    path = tmp_path / "hooks.py"
    path.write_text(
        "from selfmaker.endpoints.manager import _ping\nfrom selfmaker.features.shadow._x import y\n"
        "from selfmaker.features.shadow.mirror import _helper\n"
        "async def f(platform, self):\n    await platform.endpoints._build_variant()\n"
        "    self._ok = 1\n    os._exit(0)\n"
    )
    assert private_reaches(path, "selfmaker.features.shadow.hooks") == [
        "line 1: from selfmaker.endpoints.manager import _ping",
        "line 5: platform.endpoints._build_variant",
    ]


# ---- imports inside functions say why ------------------------------------------------------------------

#: packages whose deferred imports must carry their reason (issue 19: selfmaker hid 14 imports in functions)
REASONED_IMPORT_PACKAGES = ("selfmaker", "common")


def unexplained_function_imports(path: Path) -> list[str]:
    """Imports inside functions of ``path`` with no comment on their line, on the line before their group
    of imports (``# dask and pyarrow: only once a job runs``) or on that line's ``try:``."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines), filename=str(path))
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            first = node.lineno - 1
            while first > 0 and lines[first - 1].strip().startswith(("import ", "from ")):
                first -= 1  # the first import of a group of them
            before = lines[first - 1] if first > 0 else ""
            if "#" not in lines[node.lineno - 1] and "#" not in lines[first] and "#" not in before:
                found.append(f"line {node.lineno}: {lines[node.lineno - 1].strip()}")
    return sorted(set(found))


def test_imports_inside_functions_say_why() -> None:
    bad = {
        str(p.relative_to(ROOT)): found
        for pkg in REASONED_IMPORT_PACKAGES
        for p in sorted((ROOT / pkg).rglob("*.py"))
        if (found := unexplained_function_imports(p))
    }
    assert not bad, f"imports hidden in functions without a comment saying why (or move them up): {bad}"


def test_function_import_checker(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "import os\n\ndef f():\n    import json\n\ndef g():\n    # heavy: only when a job runs\n"
        "    import dask\n    from dask import array\n\ndef h():\n    try:  # optional\n"
        "        import uvloop\n    except ImportError:\n        pass\n    import csv  # why\n"
    )
    assert unexplained_function_imports(path) == ["line 4: import json"]

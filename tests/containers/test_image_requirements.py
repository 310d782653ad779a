"""The image's package list (images/requirements*.txt) covers every third-party import of serving/ and
training/ -- the code that runs inside the image -- so a new import cannot silently break `serve`/`train`
in the container. Checked against this environment's installed metadata (no engine needed)."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
#: image requirement → the distribution installed here that provides the same modules
ALIASES = {"xgboost-cpu": "xgboost", "onnxruntime-gpu": "onnxruntime"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(path: Path) -> set[str]:
    names: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-r "):
            names |= _requirements(path.parent / line[3:].strip())
            continue
        names.add(_norm(re.split(r"[<>=!~;\[ ]", line, maxsplit=1)[0]))
    return names


def _closure(names: set[str]) -> set[str]:
    """The requirements plus everything they pull in (per the installed metadata)."""
    seen: set[str] = set()
    todo = [ALIASES.get(n, n) for n in names]
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[<>=!~;\[ (]", req, maxsplit=1)[0])
    return seen


def _third_party_imports() -> dict[str, str]:
    """top-level module → first file importing it, for common/, serving/ and training/ (what runs in the
    image)."""
    found: dict[str, str] = {}
    for package in ("common", "serving", "training"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    mods = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    top = mod.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in {
                        "common",
                        "serving",
                        "training",
                        "__future__",
                    }:
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("requirements", ["requirements.txt", "requirements-gpu.txt"])
def test_image_requirements_cover_serving_and_training_imports(requirements: str) -> None:
    provided = _closure(_requirements(ROOT / "images" / requirements))
    providers = metadata.packages_distributions()
    missing = {}
    for module, where in _third_party_imports().items():
        dists = {_norm(d) for d in providers.get(module, [])}
        if not dists:
            missing[module] = f"{where} (not installed here either)"
        elif not dists & provided:
            missing[module] = f"{where} (from {', '.join(sorted(dists))})"
    assert not missing, f"add to images/{requirements} (or requirements-common.txt): {missing}"


def _specs(path: Path) -> list[Requirement]:
    """The requirement lines of ``path`` (following ``-r``)."""
    out: list[Requirement] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            out += _specs(path.parent / line[3:].strip())
        elif line:
            out.append(Requirement(line))
    return out


def _pins() -> dict[str, str]:
    """constraints.txt (`make constraints`) as name → exact version."""
    pins: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = version
    return pins


@pytest.mark.parametrize("requirements", ["requirements.txt", "requirements-gpu.txt"])
def test_constraints_pin_every_image_package(requirements: str) -> None:
    """The image build installs with constraints.txt: each package it installs has an exact version there,
    one that the image's requirement accepts, so a rebuild installs the same versions."""
    pins = _pins()
    path = ROOT / "images" / requirements
    for spec in _specs(path):
        assert _norm(spec.name) in pins, (
            f"{spec.name} (images/{requirements}) has no pin: run `make constraints`"
        )
        assert spec.specifier.contains(pins[_norm(spec.name)], prereleases=True), (
            spec,
            pins[_norm(spec.name)],
        )
    unpinned = sorted(_closure(_requirements(path)) - set(pins))
    assert not unpinned, f"not pinned in constraints.txt (run `make constraints`): {unpinned}"

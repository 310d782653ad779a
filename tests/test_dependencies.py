"""pyproject.toml's dependencies per part: the base is what the model server needs (less its ONNX
Runtime), each
part's extra adds what that part imports, and the heavy packages stay out of the model server's install.
Checked against this environment's installed metadata (what `make setup` installed)."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
OURS = {"common", "serving", "training", "batch", "selfmaker", "infra"}
#: the extras that make every module of each package importable, besides the base
PARTS = {
    "common": [],  # the leaf every part imports: the base alone
    "serving": ["cpu", "lambda"],  # lambda: serving/lambda_handler.py under AWS Lambda only
    "training": ["training", "cpu"],
    "batch": ["batch", "cpu"],
    "selfmaker": ["platform", "cpu"],
    "infra": ["infra"],
}
#: modules that only run when another extra is installed, imported lazily by their users with the missing
#: package named in a clear error (serving/native.py: SageMaker's xgboost-model needs xgboost + onnx)
OPTIONAL_MODULES = {
    "common/onnx_export.py": ["training", "cpu"],
    "serving/native.py": ["training", "cpu"],
    # the xgboost framework image's default hooks: xgboost imported when a model's model_fn needs it
    "serving/handlers/booster.py": ["training", "cpu"],
}
#: what installing the model server must not pull in (issue 19: xgboost with NCCL, dask, pyarrow)
HEAVY = {"xgboost", "nvidia-nccl-cu12", "dask", "distributed", "pyarrow"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extras: list[str]) -> list[Requirement]:
    """The base dependencies plus ``extras``, with the project's own ``selfmaker[...]`` extras expanded."""
    optional = PROJECT["project"]["optional-dependencies"]
    todo = [*PROJECT["project"]["dependencies"], *(line for extra in extras for line in optional[extra])]
    out: list[Requirement] = []
    seen: set[str] = set()
    while todo:
        requirement = Requirement(todo.pop())
        if _norm(requirement.name) == "selfmaker":
            todo.extend(line for extra in sorted(requirement.extras - seen) for line in optional[extra])
            seen |= requirement.extras
        elif requirement.marker is None or requirement.marker.evaluate():
            out.append(requirement)
    return out


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions ``requirements`` install, per the installed metadata (their own extras included)."""
    seen: set[str] = set()
    todo = [(r.name, frozenset(r.extras)) for r in requirements]
    while todo:
        name, extras = todo.pop()
        key = _norm(name)
        if key in seen and not extras:
            continue
        seen.add(key)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for line in requires:
            requirement = Requirement(line)
            environment = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is None or any(requirement.marker.evaluate(env) for env in environment):
                todo.append((requirement.name, frozenset(requirement.extras)))
    return seen


def _third_party_imports(package: str) -> dict[str, str]:
    """top-level module → first file of ``package`` importing it."""
    found: dict[str, str] = {}
    paths = [ROOT / package] if package.endswith(".py") else sorted((ROOT / package).rglob("*.py"))
    for path in paths:
        if not package.endswith(".py") and str(path.relative_to(ROOT)) in OPTIONAL_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OURS and top != "__future__":
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("package", sorted(PARTS) + sorted(OPTIONAL_MODULES))
def test_each_part_declares_what_it_imports(package: str) -> None:
    installed = _closure(_declared(PARTS[package] if package in PARTS else OPTIONAL_MODULES[package]))
    providers = metadata.packages_distributions()
    missing = {
        module: where
        for module, where in _third_party_imports(package).items()
        if not {_norm(d) for d in providers.get(module, [])} & installed
    }
    extras = PARTS[package] if package in PARTS else OPTIONAL_MODULES[package]
    assert not missing, f"declare in pyproject.toml (base or extras {extras}): {missing}"


def test_the_model_server_install_stays_light() -> None:
    installed = _closure(_declared(["cpu"]))
    assert "onnxruntime" in installed
    assert not installed & HEAVY, f"`pip install selfmaker[cpu]` would pull {sorted(installed & HEAVY)}"


def test_the_gpu_extra_does_not_install_the_cpu_onnxruntime() -> None:
    """onnxruntime and onnxruntime-gpu install the same module: with both, the CPU package's files win."""
    for extras in (["gpu"], ["gpu", "platform", "training", "batch", "lambda", "infra"]):
        names = {_norm(r.name) for r in _declared(extras)}
        assert "onnxruntime-gpu" in names and "onnxruntime" not in names, extras
        assert "onnxruntime" not in _closure(
            [r for r in _declared(extras) if _norm(r.name) != "onnxruntime-gpu"]
        )


def test_setuptools_is_new_enough_for_the_license_field() -> None:
    """A PEP 639 SPDX ``license = "..."`` string needs setuptools 77."""
    assert isinstance(PROJECT["project"]["license"], str)
    [setuptools] = [
        Requirement(r) for r in PROJECT["build-system"]["requires"] if Requirement(r).name == "setuptools"
    ]
    assert not setuptools.specifier.contains("76.9") and setuptools.specifier.contains("77.0")

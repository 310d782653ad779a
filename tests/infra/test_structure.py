"""Static checks of the infra sources: the component style rules (docs/infra.md) that a run under mocks
cannot see."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted((ROOT / "infra").rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _creates_resource(call: ast.Call) -> bool:
    name = _dotted(call.func)
    last = name.rsplit(".", 1)[-1]
    return (name.startswith("aws.") and last[:1].isupper()) or last in {
        "Network",
        "ModelStore",
        "ImageRepository",
        "Roles",
        "InstanceGroup",
        "Gateway",
        "RealtimeEndpoint",
    }


def resources_created_in_apply(source: str) -> list[str]:
    """Calls that construct resources inside an ``.apply()`` callback (following local functions)."""
    tree = ast.parse(source)
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found: list[str] = []

    def scan(node: ast.AST, seen: set[str]) -> None:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                if _creates_resource(sub):
                    found.append(f"line {sub.lineno}: {_dotted(sub.func)}")
                callee = _dotted(sub.func)
                if callee in functions and callee not in seen:
                    scan(functions[callee], seen | {callee})

    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "apply"
            and node.args
        ):
            callback = node.args[0]
            if isinstance(callback, ast.Lambda):
                scan(callback.body, set())
            elif isinstance(callback, ast.Name) and callback.id in functions:
                scan(functions[callback.id], {callback.id})
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_resource_is_created_inside_apply(path: Path) -> None:
    assert resources_created_in_apply(path.read_text(encoding="utf-8")) == []


def test_the_apply_checker_catches_resources_in_callbacks() -> None:
    bad = (
        "def make(v):\n    return aws.s3.Bucket('b')\n"
        "x.apply(lambda v: aws.ec2.Vpc('v'))\n"
        "y.apply(make)\n"
        "z.apply(lambda v: make(v))\n"
        "ok.apply(lambda v: json.dumps(v))\n"
    )
    assert resources_created_in_apply(bad) == [
        "line 3: aws.ec2.Vpc",
        "line 2: aws.s3.Bucket",
        "line 2: aws.s3.Bucket",
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_launch_configuration_and_no_awsx(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert "LaunchConfiguration" not in text and "pulumi_awsx" not in text


def test_every_component_follows_the_skeleton() -> None:
    """Type token selfmaker:<module>:<Type>, an …Args dataclass, register_outputs, children parented."""
    components = sorted((ROOT / "infra" / "components").glob("[!_]*.py"))
    assert {p.stem for p in components} == {"network", "storage", "registry", "iam", "compute", "jobs"}
    # endpoint kinds live in one package, all of module "endpoints" (selfmaker:endpoints:<Type>)
    endpoint_components = sorted((ROOT / "infra" / "components" / "endpoints").glob("[!_]*.py"))
    assert {"gateway", "realtime"} <= {p.stem for p in endpoint_components}
    for path in components + endpoint_components:
        module = "endpoints" if path.parent.name == "endpoints" else path.stem
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        comps = [
            c for c in classes.values() if any(_dotted(b) == "pulumi.ComponentResource" for b in c.bases)
        ]
        assert len(comps) == 1, path
        comp = comps[0]
        assert f"{comp.name}Args" in classes, f"{path.name}: no {comp.name}Args"
        source = ast.unparse(comp)
        assert f"'selfmaker:{module}:{comp.name}'" in source
        assert "self.register_outputs(" in source
        assert "child = pulumi.ResourceOptions(parent=self)" in source
        for call in (n for n in ast.walk(comp) if isinstance(n, ast.Call) and _creates_resource(n)):
            opts = {k.arg: k.value for k in call.keywords}.get("opts")
            assert opts is not None, f"{path.name} line {call.lineno}: {_dotted(call.func)} without opts"
            text = ast.unparse(opts)
            assert text in {"child", "pulumi.InvokeOutputOptions(parent=self)"} or "parent=self" in text, text

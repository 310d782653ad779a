"""Helpers shared by the container tests (imported by name: tests/containers is on sys.path)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

from testkit import wait_until  # noqa: F401 - the container tests take it from here

ROOT = Path(__file__).resolve().parents[2]
BYOC_IMAGE = "localhost/byoc-flask-test:latest"
SELFMAKER_IMAGE = "localhost/selfmaker:latest"
#: selfmaker's image under a repository name the platform classifies as "container" (not selfmaker*),
#: so `selfmaker up` runs it through the container executor instead of a local process
SELFMAKER_AS_BYOC = "localhost/smk-image-under-test:latest"


def run(
    cmd: list[str], timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with its output (so a failed build says why)."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def containers_with_label(engine: str, label: str) -> list[str]:
    """Ids of the containers (running or not) carrying ``label`` (``key=value``)."""
    out = run([engine, "ps", "-a", "-q", "--filter", f"label={label}"]).stdout
    return [line for line in out.split() if line]


def load_platform_helpers() -> Any:
    """tests/selfmaker/platform_helpers.py (tests/ is no package; loaded by path, shared module)."""
    if "platform_helpers" in sys.modules:
        return sys.modules["platform_helpers"]
    spec = importlib.util.spec_from_file_location(
        "platform_helpers", ROOT / "tests" / "selfmaker" / "platform_helpers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["platform_helpers"] = module
    spec.loader.exec_module(module)
    return module

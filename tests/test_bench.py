"""The benchmark package stays runnable: ``python -m bench`` lists every benchmark module, and each one
imports (its shared plumbing is ``bench.harness``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PLUMBING = {"__init__", "__main__", "harness"}


def _benchmark_modules() -> set[str]:
    return {p.stem for p in BENCH.glob("*.py")} - PLUMBING


def test_python_m_bench_lists_every_benchmark_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")}
    assert listed == _benchmark_modules()


def test_every_benchmark_module_imports() -> None:
    names = sorted(_benchmark_modules())
    code = "import importlib\n" + "".join(f"importlib.import_module('bench.{n}')\n" for n in names)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]

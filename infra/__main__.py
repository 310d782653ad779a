"""Pulumi entry point (``Pulumi.yaml``: ``main: infra/``). Everything lives in ``infra.program``."""

from __future__ import annotations

import sys
from pathlib import Path

# Pulumi runs this file by path; make the repository root importable even without `pip install -e .`.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from infra.program import main  # noqa: E402

main()

"""The acceptance tests drive a real `selfmaker up` with the platform tests' helpers
(``tests/selfmaker/platform_helpers.py``): make them importable as ``platform_helpers``."""

from __future__ import annotations

import sys
from pathlib import Path

_PLATFORM_TESTS = str(Path(__file__).resolve().parents[1] / "selfmaker")
if _PLATFORM_TESTS not in sys.path:
    sys.path.insert(0, _PLATFORM_TESTS)

"""Pulumi entry point (``Pulumi.yaml``: ``main: infra/``). Everything lives in ``infra.program``."""

from __future__ import annotations

import sys
from pathlib import Path

# Pulumi runs this file by path; make the repository root importable even without `pip install -e .`.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402

from infra.config import ConfigError  # noqa: E402
from infra.program import main  # noqa: E402

try:
    main()
except ConfigError as exc:
    # one line naming the key (`selfmaker:endpoints[0].variants[1].name: ...`), not a Python traceback
    raise pulumi.RunError(str(exc)) from None

"""``python -m serving`` ≡ ``selfmaker serve``."""

from __future__ import annotations

import sys

from serving.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["serve"]:  # the SageMaker container contract passes "serve"
        args = args[1:]
    raise SystemExit(main(args))

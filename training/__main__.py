"""``python -m training train …`` / ``python -m training train-local …`` (what the process executor runs)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``train`` and ``train-local``."""
    args = list(sys.argv[1:] if argv is None else argv)
    from training.cli import train_local_main, train_main

    if args and args[0] == "train-local":
        return train_local_main(args[1:])
    if args and args[0] == "train":
        args = args[1:]
    return train_main(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m training.monitoring``: the built-in Model Monitor analyzer (see :mod:`.analyzer`)."""

from __future__ import annotations

from training.monitoring.analyzer import main

if __name__ == "__main__":
    raise SystemExit(main())

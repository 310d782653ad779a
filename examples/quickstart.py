"""Quickstart (placeholder until the platform quickstart lands): runs the model-server demo."""

from __future__ import annotations

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("serve_demo.py")), run_name="__main__")

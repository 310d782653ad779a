"""The README's "5-minute tour with boto3", run as written against a real `selfmaker up`.

Only the platform URL and the /tmp paths are pointed at this test's own; AWS credentials are removed
from the environment, because a new user's machine has none and the tour must set its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def tour_code() -> str:
    """The first ``python`` block under the README's tour heading."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## 5-minute tour with boto3", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the tour has no python block"
    return found.group(1)


def test_readme_tour_runs_as_written(platform: Any, tmp_path: Path) -> None:
    code = tour_code()
    for literal in ("http://127.0.0.1:7070", "/tmp/data", "file:///tmp/output"):
        assert literal in code, f"the tour no longer uses {literal}; update this test"
    code = (
        code.replace("http://127.0.0.1:7070", platform.url)
        .replace("file:///tmp/output", (tmp_path / "output").as_uri())
        .replace("/tmp/data", str(tmp_path / "data"))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Completed [{'MetricName': 'validation:auc'"), proc.stdout
    assert re.match(r"(Champion|Challenger) b'", lines[1]), proc.stdout
    sm = platform.sagemaker()
    assert sm.list_endpoints(NameContains="quickstart")["Endpoints"] == []  # the tour cleaned up
    assert sm.list_models(NameContains="quickstart")["Models"] == []

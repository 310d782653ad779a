"""`selfmaker logs NAME`: the logs of an endpoint's model servers or of a job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfmaker.logfiles import JOB_LOG_DIRS, job_host_logs, job_log_path
from selfmaker.settings import PlatformSettings


def log_files(home: Path, name: str) -> list[Path]:
    """Log files of the endpoint or job called ``name`` (endpoint names compare case-insensitively)."""
    logs = home / "logs"
    found: list[Path] = []
    endpoints = logs / "endpoints"
    if endpoints.is_dir():
        for directory in endpoints.iterdir():
            if directory.name.lower() == name.lower():
                found += sorted(directory.glob("*.log"), key=lambda p: p.stat().st_mtime)
    for kind in JOB_LOG_DIRS:
        candidate = job_log_path(logs, kind, name)
        if candidate.exists():
            found.append(candidate)
        found += [path for _, path in sorted(job_host_logs(logs, kind, name).items())]
    tuning = logs / "hyper-parameter-tuning-jobs" / f"{name}.log"  # a tuning job's own log (no hosts)
    if tuning.exists():
        found.append(tuning)
    return found


def main(argv: list[str]) -> int:
    """Print the logs (each file under a header); exit 1 when there are none."""
    parser = argparse.ArgumentParser(prog="selfmaker logs", description=__doc__)
    parser.add_argument("name", help="endpoint, training job, transform job or tuning job name")
    parser.add_argument("--home", type=Path, help="state directory (default $SELFMAKER_HOME or ~/.selfmaker)")
    parser.add_argument("--tail", type=int, default=0, help="only the last N lines of each file")
    args = parser.parse_args(argv)
    if args.tail < 0:
        parser.error("--tail must be 0 (everything) or a positive number of lines")
    home = args.home or PlatformSettings().home
    files = log_files(home, args.name)
    if not files:
        print(f"no logs for {args.name!r} in {home}", file=sys.stderr)
        return 1
    for path in files:
        print(f"==> {path.relative_to(home)} <==")
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for line in lines[-args.tail :] if args.tail else lines:
            print(line)
    return 0

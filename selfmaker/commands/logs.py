"""`selfmaker logs NAME [--follow]`: the logs of an endpoint's model servers or of a job.

Rotated parts (``name.log.N`` … ``name.log.1``, :mod:`selfmaker.logrotate`) are printed before the live
file. ``--follow`` then keeps printing what is appended (like ``tail -F``): files that appear later (a new
instance) are picked up, and a file emptied by rotation is read again from its start.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from selfmaker.logfiles import JOB_LOG_DIRS, job_host_logs, job_log_path
from selfmaker.logrotate import rotated_parts
from selfmaker.settings import PlatformSettings

#: seconds between looks at the followed files
FOLLOW_INTERVAL = 0.25


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


#: bytes before a followed file's read position kept to notice a rotation (the file emptied and refilled)
_MARK_BYTES = 256


def _follow(home: Path, name: str, positions: dict[Path, tuple[int, bytes]], current: Path | None) -> None:
    """Print what is appended to the logs of ``name`` until interrupted. ``positions``: per file, where
    printing stopped and the bytes just before it (``current``: the file whose header was printed last)."""
    while True:
        for path in log_files(home, name):
            offset, mark = positions.get(path, (0, b""))
            try:
                with open(path, "rb") as fh:
                    if offset:
                        # rotated (emptied in place, maybe refilled past the old offset): the bytes before
                        # the position are no longer those printed, so the new content starts at 0
                        fh.seek(offset - len(mark))
                        if fh.read(len(mark)) != mark:
                            offset, mark = 0, b""
                            fh.seek(0)
                    data = fh.read()
            except FileNotFoundError:
                continue
            # only whole lines; a line still being written is printed once complete
            end = data.rfind(b"\n") + 1
            if not end:
                positions[path] = (offset, mark)
                continue
            if path != current:
                print(f"==> {path.relative_to(home)} <==")
                current = path
            sys.stdout.write(data[:end].decode("utf-8", errors="replace"))
            sys.stdout.flush()
            positions[path] = (offset + end, (mark + data[:end])[-_MARK_BYTES:])
        time.sleep(FOLLOW_INTERVAL)


def main(argv: list[str]) -> int:
    """Print the logs (each file under a header); exit 1 when there are none (and not following)."""
    parser = argparse.ArgumentParser(prog="selfmaker logs", description=__doc__)
    parser.add_argument("name", help="endpoint, training job, transform job or tuning job name")
    parser.add_argument("--home", type=Path, help="state directory (default $SELFMAKER_HOME or ~/.selfmaker)")
    parser.add_argument("--tail", type=int, default=0, help="only the last N lines of each file")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until interrupted (Ctrl-C)"
    )
    args = parser.parse_args(argv)
    if args.tail < 0:
        parser.error("--tail must be 0 (everything) or a positive number of lines")
    home = args.home or PlatformSettings().home
    files = log_files(home, args.name)
    if not files and not args.follow:
        print(f"no logs for {args.name!r} in {home}", file=sys.stderr)
        return 1
    positions: dict[Path, tuple[int, bytes]] = {}
    for path in files:
        parts = [*rotated_parts(path), path] if not args.tail else [path]
        print(f"==> {path.relative_to(home)} <==")
        for part in parts:
            data = part.read_bytes()
            if part == path and args.follow:
                # what --follow continues from: the end of the last whole line printed
                end = data.rfind(b"\n") + 1
                data = data[:end]
                positions[path] = (end, data[-_MARK_BYTES:])
            lines = data.decode("utf-8", errors="replace").splitlines()
            for line in lines[-args.tail :] if args.tail else lines:
                print(line)
    sys.stdout.flush()
    if args.follow:
        try:
            _follow(home, args.name, positions, files[-1] if files else None)
        except KeyboardInterrupt:  # Ctrl-C is how following ends
            return 0
    return 0

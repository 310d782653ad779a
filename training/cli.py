"""Command-line entries: ``selfmaker train`` (inside a container) and ``selfmaker train-local
REQUEST.json``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def _plain(doc: str | None) -> str:
    """A docstring as --help text (without reStructuredText literals)."""
    return (doc or "").replace("``", "")


def train_main(argv: list[str]) -> int:
    """``selfmaker train [--root DIR] [--algorithm NAME]``: run one training host against an /opt/ml tree.

    The root defaults to ``$SELFMAKER_ML_ROOT`` or ``/opt/ml``; the algorithm to ``$SELFMAKER_ALGORITHM``
    (set by the runner for the built-in images), else script mode.
    """
    import os

    parser = argparse.ArgumentParser(prog="selfmaker train", description=_plain(train_main.__doc__))
    parser.add_argument(
        "--root", default=None, help="the /opt/ml tree (default: $SELFMAKER_ML_ROOT or /opt/ml)"
    )
    parser.add_argument(
        "--algorithm",
        default=os.environ.get("SELFMAKER_ALGORITHM") or None,
        help="xgboost | linear-learner | kmeans | pca | script (default: $SELFMAKER_ALGORITHM, else script)",
    )
    args = parser.parse_args(argv)
    if args.root is not None and not Path(args.root).is_dir():
        parser.error(f"--root {args.root}: no such directory (the /opt/ml tree to train in)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.trainer import run

    return run(args.root, args.algorithm)


def _fmt_metric(points: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{name}={p['Value']:g}" for name, p in points.items())


def train_local_main(argv: list[str]) -> int:
    """``selfmaker train-local REQUEST.json``: run one CreateTrainingJob request here and report where the
    model went."""
    parser = argparse.ArgumentParser(
        prog="selfmaker train-local", description=_plain(train_local_main.__doc__)
    )
    parser.add_argument(
        "request",
        help="CreateTrainingJob request as JSON (the boto3 / --cli-input-json shape); '-' reads stdin",
    )
    parser.add_argument(
        "--work-dir", default=None, help="job directory (default: ./selfmaker-jobs/<job name>)"
    )
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3 / $AWS_ENDPOINT_URL / AWS)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo the training log")
    parser.add_argument(
        "--stop-grace", type=float, default=120.0, help="seconds between SIGTERM and SIGKILL on stop/timeout"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text(encoding="utf-8")
        request = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"selfmaker train-local: cannot read the request: {exc}", file=sys.stderr)
        return 2
    if not isinstance(request, dict) or not request.get("TrainingJobName"):
        print(
            "selfmaker train-local: the request must be a JSON object with TrainingJobName", file=sys.stderr
        )
        return 2
    from training.runner import TrainingJobRunner, TrainingJobState

    job = str(request["TrainingJobName"])
    work_dir = Path(args.work_dir or Path("selfmaker-jobs") / job)
    tty = sys.stdout.isatty()
    last = {"secondary": ""}

    def on_update(state: TrainingJobState) -> None:
        if state.secondary_status != last["secondary"]:
            last["secondary"] = state.secondary_status
            msg = state.transitions[-1].get("StatusMessage", "") if state.transitions else ""
            print(f"[{job}] {state.status} / {state.secondary_status}: {msg}", flush=True)

    def on_log(host: str, line: str) -> None:
        if not args.quiet:
            prefix = f"\x1b[2m{host}\x1b[0m" if tty else host
            print(f"{prefix} | {line}", flush=True)

    runner = TrainingJobRunner(
        request,
        work_dir,
        on_update=on_update,
        on_log=on_log,
        s3_endpoint_url=args.endpoint_url,
        stop_grace_seconds=args.stop_grace,
    )
    stopping = threading.Event()

    def interrupt(_signum: int, _frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            print(f"[{job}] stopping (again to force)…", flush=True)
            runner.stop()
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        state = runner.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    fields = state.describe_fields()
    print(
        f"[{job}] {state.status}"
        + (f" in {fields['TrainingTimeInSeconds']} s" if "TrainingTimeInSeconds" in fields else "")
    )
    if state.final_metrics:
        print(f"[{job}] metrics: {_fmt_metric(state.final_metrics)}")
    if state.failure_reason:
        print(f"[{job}] failure: {state.failure_reason}")
    if state.model_artifacts:
        print(f"[{job}] model: {state.model_artifacts}")
    print(f"[{job}] logs: {work_dir / 'logs'}")
    return 0 if state.status == "Completed" else 1

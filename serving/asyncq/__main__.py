"""``python -m serving.asyncq``: one async worker process (one per model-server instance)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from serving.asyncq.backends import open_queue
from serving.asyncq.worker import AsyncWorker, WorkerSettings

log = logging.getLogger("serving.asyncq")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m serving.asyncq", description=__doc__)
    p.add_argument("--queue", required=True, help="sqlite:<path> or sqs:<queue url>")
    p.add_argument("--name", required=True, help="queue name (the endpoint name)")
    p.add_argument("--state", default=None, help="state store for SQS: s3://bucket/prefix or sqlite:<path>")
    p.add_argument(
        "--model-url", required=True, help="base URL of the model server, e.g. http://127.0.0.1:8080"
    )
    p.add_argument("--concurrency", type=int, default=None, help="MaxConcurrentInvocationsPerInstance")
    p.add_argument("--visibility-timeout", type=float, default=None)
    p.add_argument("--exit-with-parent", action="store_true", help="stop gracefully when stdin reaches EOF")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a worker until SIGTERM/SIGINT (or stdin EOF with --exit-with-parent)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {
        k: v
        for k, v in {"concurrency": args.concurrency, "visibility_timeout": args.visibility_timeout}.items()
        if v is not None
    }
    settings = WorkerSettings(**overrides)
    try:
        queue = open_queue(args.queue, args.name, state=args.state)
    except ValueError as exc:
        print(f"python -m serving.asyncq: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.exit_with_parent:

        def watch_parent() -> None:
            # The parent holds the write end of our stdin; EOF means it exited (even by SIGKILL).
            # os.read, not sys.stdin: a buffered reader blocked in a daemon thread aborts interpreter exit.
            try:
                while os.read(0, 4096):
                    pass
            except OSError:
                pass
            log.info("parent exited; stopping")
            stop.set()

        threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    worker = AsyncWorker(queue, args.model_url, settings=settings)
    log.info(
        "async worker for %s on %s -> %s (concurrency %d)",
        args.name,
        args.queue,
        args.model_url,
        settings.concurrency,
    )
    worker.start()
    while not stop.wait(1.0):
        pass
    worker.stop()
    queue.close()
    log.info(
        "async worker for %s stopped (%d completed, %d failed)", args.name, worker.processed, worker.failed
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``selfmaker serve`` / ``python -m serving``: run the model server (SageMaker inference contract).

Settings come from the SageMaker environment (see :mod:`serving.settings`); the flags override them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfmaker serve",
        description=(
            "Serve a model over HTTP: GET /ping, POST /invocations, GET /execution-parameters, GET /metrics."
        ),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-dir", help="model directory (default /opt/ml/model)")
    source.add_argument("--model-data", help="model.tar.gz as a path, file:// or s3:// URI")
    parser.add_argument("--host", help="bind address (default 127.0.0.1, or 0.0.0.0 inside a container)")
    parser.add_argument("--port", type=int, help="port (default SAGEMAKER_BIND_TO_PORT or 8080)")
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes (default SAGEMAKER_MODEL_SERVER_WORKERS or one per core)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, read settings once, run gunicorn until SIGTERM/SIGINT; returns the exit code."""
    args = _parser().parse_args(argv)
    # ``serve`` is what SageMaker passes to an image; accept and ignore it when it reaches us
    from pydantic import ValidationError

    from serving.logs import configure_logging
    from serving.settings import ServingSettings

    try:
        settings = ServingSettings()
    except ValidationError as exc:
        print(f"selfmaker serve: invalid settings: {exc}")
        return 2
    updates: dict[str, object] = {}
    if args.model_dir:
        updates.update(model_dir=args.model_dir, model_data=None)
    if args.model_data:
        updates["model_data"] = args.model_data
    if args.host:
        updates["host"] = args.host
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            print("selfmaker serve: --port must be 0..65535")
            return 2
        updates["port"] = args.port
    if args.workers is not None:
        if args.workers < 1:
            print("selfmaker serve: --workers must be >= 1")
            return 2
        updates["workers"] = args.workers
    settings = settings.model_copy(update=updates)
    configure_logging(settings.log_level)

    own_state = settings.state_dir is None
    state_dir = Path(settings.state_dir or tempfile.mkdtemp(prefix="selfmaker-serve-"))
    metrics_dir = state_dir / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("worker-*.bin"):  # a reused state dir starts from zero
        stale.unlink()

    from serving.http.server import ModelServer

    log.info(
        "serving %s on %s:%s with %d worker(s) x %d ORT thread(s)",
        settings.model_data or settings.model_dir,
        settings.effective_host(),
        settings.port,
        settings.effective_workers(),
        settings.effective_ort_threads(),
    )
    try:
        ModelServer(settings, state_dir).run()
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        if own_state:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0

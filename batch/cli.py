"""``selfmaker transform REQUEST.json``: run one CreateTransformJob request on Dask, with a progress bar.

The model comes from ``--model-dir DIR``, ``--model-data URI`` (a model.tar.gz path, ``file://`` or
``s3://``) or ``--model-url URL`` (a running model server). Without those flags the request's ModelName
is looked up on a running platform (``selfmaker up``; see :func:`platform_url` for how it is found): its
primary container's ModelDataUrl and Environment are used. When no platform answers, the command says so
and asks for one of the flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:7070"
#: written by `selfmaker up` into its home while it serves: {"url": ..., "pid": ...}
PLATFORM_FILE = "platform.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def platform_url(explicit: str | None = None, environ: dict[str, str] | None = None) -> str:
    """The URL of the selfmaker platform to resolve a ModelName with, in the order a user expects:
    ``--endpoint-url``, ``AWS_ENDPOINT_URL_SAGEMAKER`` (boto3's own variable), ``SELFMAKER_ENDPOINT_URL``,
    the address a running ``selfmaker up`` announced in ``$SELFMAKER_HOME/platform.json``, else
    ``http://127.0.0.1:7070``."""
    env = os.environ if environ is None else environ
    for candidate in (explicit, env.get("AWS_ENDPOINT_URL_SAGEMAKER"), env.get("SELFMAKER_ENDPOINT_URL")):
        if candidate:
            return candidate
    home = Path(env["SELFMAKER_HOME"]) if env.get("SELFMAKER_HOME") else Path.home() / ".selfmaker"
    try:
        announced = json.loads((home / PLATFORM_FILE).read_text(encoding="utf-8"))
        if (
            isinstance(announced, dict)
            and announced.get("url")
            and _pid_alive(int(announced.get("pid") or 0))
        ):
            return str(announced["url"])
    except (OSError, ValueError, TypeError):
        pass
    return DEFAULT_ENDPOINT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfmaker transform",
        description="Run one CreateTransformJob request (JSON file, botocore shape) on Dask.",
    )
    parser.add_argument("request", help="CreateTransformJob request as a JSON file ('-' for stdin)")
    parser.add_argument(
        "--scheduler",
        help="Dask scheduler address (tcp://HOST:PORT); default a LocalCluster "
        "(env SELFMAKER_BATCH_SCHEDULER)",
    )
    model = parser.add_mutually_exclusive_group()
    model.add_argument("--model-dir", help="unpacked model directory (model.onnx, code/ ...)")
    model.add_argument("--model-data", help="model.tar.gz as a path, file:// or s3:// URI")
    model.add_argument("--model-url", help="base URL of a running model server (http://127.0.0.1:PORT)")
    parser.add_argument(
        "--endpoint-url",
        default=None,
        help="selfmaker platform URL used to resolve ModelName (default $AWS_ENDPOINT_URL_SAGEMAKER, "
        "$SELFMAKER_ENDPOINT_URL, the `selfmaker up` of $SELFMAKER_HOME, else " + DEFAULT_ENDPOINT + ")",
    )
    parser.add_argument(
        "--state-dir",
        help="where finished parts are recorded (default "
        "$SELFMAKER_HOME/transform/<TransformJobName>, SELFMAKER_HOME defaulting to ~/.selfmaker)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="skip the parts and objects a previous run finished"
    )
    parser.add_argument("--workers", type=int, help="LocalCluster worker processes (default: one per core)")
    parser.add_argument(
        "--mode",
        choices=("auto", "http", "inprocess"),
        help="run the model in model servers (http), in the workers (inprocess) or choose (auto)",
    )
    parser.add_argument(
        "--part-mb", type=float, help="byte-range size large objects are split into (default 32)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar, only the summary")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Renders :class:`batch.engine.Progress` snapshots: records, bytes, rate, ETA."""

    def __init__(self, stream: TextIO, *, width: int = 28) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self._last_line = 0.0
        self._drawn = False

    def line(self, p: Any) -> str:
        """One status line for progress ``p``."""
        fraction = (p.bytes_done / p.bytes_total) if p.bytes_total else 0.0
        fraction = min(1.0, max(0.0, fraction))
        filled = int(fraction * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        return (
            f"[{bar}] {fraction * 100:5.1f}%  {p.records:,} records  "
            f"{_fmt_bytes(p.bytes_done)}/{_fmt_bytes(p.bytes_total)}  "
            f"{p.rate_records:,.0f} rec/s {_fmt_bytes(p.rate_bytes)}/s  "
            f"parts {p.parts_done}/{p.parts_total}  files {p.files_done}/{p.files_total}  "
            f"ETA {_fmt_time(p.eta)}"
        )

    def __call__(self, p: Any) -> None:
        text = self.line(p)
        if self.tty:
            self.stream.write("\r" + text + "\033[K")
            self._drawn = True
            self.stream.flush()
        else:
            now = time.monotonic()
            if now - self._last_line >= 2.0:
                self._last_line = now
                self.stream.write(text + "\n")
                self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def summary(result: Any, out: TextIO) -> None:
    """Print the job's summary."""
    rate = result.records / result.elapsed if result.elapsed > 0 else 0.0
    lines = [
        f"TransformJobStatus: {result.status}",
        f"records: {result.records:,}  ({rate:,.0f} records/s)",
        f"objects: {result.files_done}/{result.files_total} written"
        + (f", {result.files_failed} failed" if result.files_failed else ""),
        f"parts: {result.parts_done}/{result.parts_total}"
        + (f" ({result.parts_skipped} resumed)" if result.parts_skipped else ""),
        f"bytes: {_fmt_bytes(result.bytes_in)} in, {_fmt_bytes(result.bytes_out)} out",
        f"elapsed: {result.elapsed:.1f} s  model: {result.mode or '-'}",
    ]
    if result.failure_reason:
        lines.append(f"FailureReason: {result.failure_reason}")
    out.write("\n".join(lines) + "\n")
    out.flush()


def resolve_model(
    model_name: str, endpoint_url: str, instead: str = "--model-dir / --model-data / --model-url"
) -> tuple[str, dict[str, str]]:
    """``(model data URI, container environment)`` of ModelName on a running platform.

    Raises SystemExit-friendly ValueError with an explanation when the platform does not answer or
    does not know the model; ``instead`` names the options of the calling command that give the model.
    """
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    session = boto3.session.Session()
    config = Config(connect_timeout=3, read_timeout=30, retries={"max_attempts": 1})
    if session.get_credentials() is None:
        config = config.merge(Config(signature_version=UNSIGNED))  # the local platform needs no signature
    client = session.client(
        "sagemaker", endpoint_url=endpoint_url, config=config, region_name=session.region_name or "us-east-1"
    )
    try:
        model = client.describe_model(ModelName=model_name)
    except EndpointConnectionError:
        raise ValueError(
            f"no selfmaker platform answers at {endpoint_url} to resolve ModelName {model_name!r}; "
            f"start `selfmaker up` or pass {instead}"
        ) from None
    except ClientError as exc:
        raise ValueError(
            f"ModelName {model_name!r}: {exc.response.get('Error', {}).get('Message', exc)}"
        ) from None
    except BotoCoreError as exc:
        raise ValueError(f"cannot reach the platform at {endpoint_url}: {exc}") from None
    container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
    uri = container.get("ModelDataUrl") or (
        (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
    ).get("S3Uri")
    if not uri:
        raise ValueError(f"model {model_name!r} has no model data (ModelDataUrl); pass {instead}")
    return uri, dict(container.get("Environment") or {})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``selfmaker transform``; exit code 0 Completed, 1 Failed, 2 bad input, 130 Stopped."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import distributed  # noqa: F401 - configures its loggers on import; quiet them afterwards

    logging.getLogger("distributed").setLevel(logging.WARNING)
    from pydantic import ValidationError

    from batch.engine import run_transform
    from batch.errors import TransformRequestError
    from batch.settings import BatchSettings

    try:
        text = sys.stdin.read() if args.request == "-" else Path(args.request).read_text(encoding="utf-8")
        request = json.loads(text)
    except (OSError, ValueError) as exc:
        print(f"selfmaker transform: cannot read the request {args.request}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(request, dict):
        print("selfmaker transform: the request must be a JSON object", file=sys.stderr)
        return 2
    try:
        settings = BatchSettings()
        updates: dict[str, Any] = {}
        if args.workers is not None:
            updates["workers"] = args.workers
        if args.mode:
            updates["mode"] = args.mode
        if args.part_mb is not None:
            updates["part_mb"] = args.part_mb
        settings = BatchSettings.model_validate({**settings.model_dump(), **updates})
    except ValidationError as exc:
        print(f"selfmaker transform: invalid settings: {exc}", file=sys.stderr)
        return 2
    model_env: dict[str, str] = {}
    model = args.model_dir or args.model_data or args.model_url
    if not model:
        name = request.get("ModelName")
        if not name:
            print(
                "selfmaker transform: the request has no ModelName; pass --model-dir, --model-data or "
                "--model-url",
                file=sys.stderr,
            )
            return 2
        try:
            model, model_env = resolve_model(name, platform_url(args.endpoint_url))
        except ValueError as exc:
            print(f"selfmaker transform: {exc}", file=sys.stderr)
            return 2
    job_name = str(request.get("TransformJobName") or "transform-job")
    # the platform's home (selfmaker.settings reads the same variable; batch does not import selfmaker)
    home = (
        Path(os.environ["SELFMAKER_HOME"]) if os.environ.get("SELFMAKER_HOME") else Path.home() / ".selfmaker"
    )
    state_dir = args.state_dir or str(home / "transform" / job_name)

    stop = threading.Event()
    interrupts = [0]

    def on_signal(signum: int, frame: Any) -> None:
        interrupts[0] += 1
        if interrupts[0] > 1:
            raise KeyboardInterrupt
        print(
            "\nstopping (finished objects are kept; run again with --resume to continue)...", file=sys.stderr
        )
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    bar = None if args.quiet else ProgressBar(sys.stderr)
    try:
        result = run_transform(
            request,
            model_dir=model,
            scheduler=args.scheduler,
            on_progress=bar,
            stop_event=stop,
            state_dir=state_dir,
            resume=args.resume,
            settings=settings,
            model_environment=model_env,
        )
    except TransformRequestError as exc:
        if bar:
            bar.close()
        print(f"selfmaker transform: ValidationException: {exc}", file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if bar:
        bar.close()
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(result), indent=2))
    else:
        summary(result, sys.stdout)
    return {"Completed": 0, "Failed": 1, "Stopped": 130}.get(result.status, 1)

"""The entry point of a serverless variant on AWS Lambda (the image's ``lambda`` mode).

``python -m serving.lambda_handler`` is Lambda's init phase: it starts downloading the model archive
(``SELFMAKER_MODEL_DATA``, ``s3://``) on a thread at once — with the standard library alone
(:mod:`common.s3get`) — while numpy, onnxruntime and pydantic import, then loads the model from ``/tmp``
(:class:`serving.lambda_app.LambdaApp`) and hands the process to the AWS Lambda runtime interface client
(``awslambdaric``) with :func:`handler` as the function. So the model is loaded once per sandbox, before
the first request, and provisioned-concurrency sandboxes are really warm. A model that cannot load is
reported to the Runtime API as an init error (Lambda then discards the sandbox).

``python -m awslambdaric serving.lambda_handler.handler`` works too; the model then loads on the first
invocation. This module imports only the standard library at import time: that is what lets the download
start before anything heavy.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.lambda_app import LambdaApp

log = logging.getLogger(__name__)

#: what awslambdaric resolves (module.attribute)
HANDLER = "serving.lambda_handler.handler"
INIT_ERROR_TYPE = "Runtime.ModelLoadError"

_APP: LambdaApp | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda function: one ALB event in, one ALB response out."""
    global _APP
    from serving.lambda_app import LambdaApp, unavailable

    if _APP is None:
        try:
            _APP = LambdaApp.from_environment()
        except Exception as exc:  # noqa: BLE001 - a bad setting must answer, not crash the sandbox
            log.error("%s", exc)
            return unavailable(event)
    return _APP.handle(event, str(getattr(context, "aws_request_id", "") or ""))


def post_init_error(runtime_api: str, message: str, error_type: str = INIT_ERROR_TYPE) -> None:
    """Tell the Lambda Runtime API that this sandbox cannot serve (Lambda discards it and reports
    ``error_type`` to the caller; the next request starts a new sandbox)."""
    import urllib.request

    body = json.dumps({"errorMessage": message, "errorType": error_type, "stackTrace": []}).encode()
    request = urllib.request.Request(
        f"http://{runtime_api}/2018-06-01/runtime/init/error",
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Lambda-Runtime-Function-Error-Type": error_type},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        resp.read()


class Prefetch:
    """The model archive downloading on a thread (only for ``s3://`` sources with keys in the
    environment; otherwise :meth:`result` is None and the app resolves the source itself)."""

    def __init__(self, env: dict[str, str] | os._Environ[str]) -> None:
        self.archive: Path | None = None
        self.error: str | None = None
        self.seconds = 0.0
        self._thread: threading.Thread | None = None
        source = env.get("SELFMAKER_MODEL_DATA") or ""
        from common import s3, s3get

        credentials = s3get.credentials_from_env(env)
        if not source.startswith("s3://") or credentials is None:
            return
        dest = Path(env.get("SELFMAKER_LAMBDA_STATE_DIR") or "/tmp/selfmaker") / "download" / "model.tar.gz"
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        endpoint = s3.endpoint_url(env=env)

        def run() -> None:
            started = time.perf_counter()
            try:
                self.archive = s3get.fetch(
                    source, dest, credentials=credentials, region=region, endpoint=endpoint
                )
            except s3get.S3GetError as exc:
                self.error = str(exc)
            self.seconds = time.perf_counter() - started

        self._thread = threading.Thread(target=run, name="model-prefetch", daemon=True)
        self._thread.start()

    def result(self) -> Path | None:
        """The downloaded archive (None when not prefetched); raises ``RuntimeError`` with the reason
        when the download failed."""
        if self._thread is None:
            return None
        self._thread.join()
        if self.error:
            raise RuntimeError(self.error)
        return self.archive


def main(argv: list[str] | None = None) -> int:
    """``python -m serving.lambda_handler``: load the model (Lambda's init phase), then run the runtime
    interface client with :func:`handler`. A model that cannot load is reported as an init error."""
    runtime_api = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not runtime_api:
        sys.stderr.write(
            "selfmaker lambda: AWS_LAMBDA_RUNTIME_API is not set (this mode runs inside AWS Lambda)\n"
        )
        return 2
    started = time.perf_counter()
    prefetch = Prefetch(os.environ)
    from serving.lambda_app import LambdaApp
    from serving.logs import configure_logging

    configure_logging(os.environ.get("SELFMAKER_LOG_LEVEL", "INFO"))
    try:
        app = LambdaApp.from_environment()
        try:
            archive = prefetch.result()
        except RuntimeError as exc:
            from serving.errors import ModelSourceError

            raise ModelSourceError(str(exc)) from exc
        app.load(archive)
    except Exception as exc:  # noqa: BLE001 - whatever stops the init is reported, not raised
        message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.error("init failed: %s", message)
        post_init_error(runtime_api, message)
        return 1
    log.info(
        "init done in %.3f s (model download %.3f s, overlapped with the imports)",
        time.perf_counter() - started,
        prefetch.seconds,
    )
    # Run as ``-m``, this module is ``__main__``; awslambdaric imports ``serving.lambda_handler`` afresh,
    # and that module's handler must find the loaded app.
    from serving import lambda_handler as installed  # noqa: PLW0406 - see above: not this module object

    installed._APP = app
    # From here awslambdaric owns logging (its handler tags lines with the request id): drop ours so no
    # line is written twice.
    root = logging.getLogger()
    for own in [h for h in root.handlers if getattr(h, "_selfmaker", False)]:
        root.removeHandler(own)
    from awslambdaric.__main__ import main as ric_main

    ric_main([sys.argv[0], HANDLER])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

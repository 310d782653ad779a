"""The flask application of the model server: /ping, /invocations, /execution-parameters, /metrics.

Thin transport over :class:`serving.dataplane.DataPlane`; every error becomes a JSON body in
:func:`_error` (4xx with the message, 5xx "internal error" with the traceback in the log only).
A small WSGI wrapper times each request for the access log line and the metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from serving import contract
from serving.dataplane import DataPlane
from serving.errors import PayloadTooLargeError, ServingError, error_body, error_response
from serving.metrics import Metrics
from serving.settings import ServingSettings

log = logging.getLogger(__name__)
access_log = logging.getLogger("serving.access")

_JSON = "application/json"
_MODEL_SECONDS = "selfmaker.model_seconds"


def _error(status: int, body: bytes) -> Response:
    return Response(body, status=status, content_type=_JSON)


class _Instrumented:
    """WSGI wrapper: latency, status → metrics and one structured log line per request."""

    def __init__(self, app: Callable[..., Iterable[bytes]], metrics: Metrics | None, log_requests: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.log_requests = log_requests

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        seen: list[str] = []

        def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.append(status)
            return start_response(status, headers, exc_info)

        result = self.app(environ, _start_response)
        elapsed = time.perf_counter() - started
        status = int(seen[-1][:3]) if seen else 500
        path = environ.get("PATH_INFO", "")
        model_seconds = environ.get(_MODEL_SECONDS)
        if self.metrics is not None:
            route = path if path in ("/invocations", "/ping", "/metrics", "/execution-parameters") else "other"
            self.metrics.observe(route, status, elapsed, model_seconds)
        if self.log_requests and (path == "/invocations" or status != 200):
            access_log.info(
                "%s %s %d",
                environ.get("REQUEST_METHOD"),
                path,
                status,
                extra={
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    "model_ms": None if model_seconds is None else round(model_seconds * 1000, 3),
                    "bytes_in": environ.get("CONTENT_LENGTH") or 0,
                    "request_id": environ.get("HTTP_X_AMZN_REQUESTID") or environ.get("HTTP_X_REQUEST_ID"),
                },
            )
        return result


def create_app(
    settings: ServingSettings,
    model: DataPlane,
    *,
    metrics: Metrics | None = None,
    ready: Callable[[], bool] | None = None,
) -> Flask:
    """Build the flask app serving ``model``.

    ``ready`` decides /ping (default: ``model.ready``); the gunicorn runner passes one that also waits
    for every worker. ``metrics`` enables /metrics and request accounting.
    """
    app = Flask("serving")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_payload_bytes()
    is_ready = ready or (lambda: model.ready)
    max_bytes = settings.max_payload_bytes()
    execution_parameters = orjson.dumps(
        {
            "MaxConcurrentTransforms": settings.effective_max_concurrent_transforms(),
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": settings.max_payload_mb,
        }
    )
    custom_header = contract.CUSTOM_ATTRIBUTES_HEADER

    @app.get("/ping")
    def ping() -> Response:
        if is_ready():
            return Response(b"", status=200, content_type=_JSON)
        if model.error:
            return _error(503, error_body(503, f"model failed to load: {model.error}"))
        return _error(503, error_body(503, "model is loading"))

    @app.post("/invocations")
    def invocations() -> Response:
        length = request.content_length
        if length is not None and length > max_bytes:
            raise PayloadTooLargeError(
                f"request body of {length} bytes exceeds the {settings.max_payload_mb} MB limit"
            )
        if not is_ready() and not model.ready:
            if model.error:
                return _error(503, error_body(503, "model failed to load"))
            return _error(503, error_body(503, "model is loading"))
        headers = request.headers
        attributes = headers.get(custom_header)
        result = model.invoke_full(
            request.get_data(cache=False),
            headers.get("Content-Type"),
            headers.get("Accept"),
            attributes,
            dict(headers) if model.takes_headers else None,
        )
        request.environ[_MODEL_SECONDS] = result.model_seconds
        response = Response(result.body, status=200, content_type=result.content_type)
        if result.custom_attributes is not None:
            response.headers[custom_header] = contract.sanitize_header(result.custom_attributes)
        return response

    @app.get("/execution-parameters")
    def parameters() -> Response:
        return Response(execution_parameters, status=200, content_type=_JSON)

    if metrics is not None:

        @app.get("/metrics")
        def metrics_view() -> Response:
            body, content_type = metrics.render()
            return Response(body, status=200, content_type=content_type)

    @app.errorhandler(ServingError)
    def serving_error(exc: ServingError) -> Response:
        status, body = error_response(exc)
        if status >= 500 and status != 503:
            log.error("request failed", exc_info=exc)
        return _error(status, body)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        message = exc.description or exc.name
        if code == 413:
            message = f"request body exceeds the {settings.max_payload_mb} MB limit"
        return _error(code, error_body(code, message))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        status, body = error_response(exc)
        if status >= 500:
            log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return _error(status, body)

    app.wsgi_app = _Instrumented(app.wsgi_app, metrics, settings.access_log)  # type: ignore[method-assign]
    return app

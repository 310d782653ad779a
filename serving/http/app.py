"""The flask application of the model server: /ping, /invocations, /execution-parameters, /metrics.

Thin transport over :class:`serving.dataplane.DataPlane`; every error becomes a JSON body in
:func:`_error` (4xx with the message, 5xx "internal error" with the traceback in the log only).
:class:`serving.http.fastpath.FastPath` answers the two hot routes without flask's request machinery
and times every request (metrics, access log); the flask routes below define the same behaviour and
serve everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from serving import contract
from serving.dataplane import DataPlane
from serving.errors import PayloadTooLargeError, ServingError, error_body, error_response
from serving.http.fastpath import MODEL_SECONDS_KEY, FastPath
from serving.metrics import Metrics
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

_JSON = "application/json"


def _error(status: int, body: bytes) -> Response:
    return Response(body, status=status, content_type=_JSON)


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
        request.environ[MODEL_SECONDS_KEY] = result.model_seconds
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

    app.wsgi_app = FastPath(  # type: ignore[method-assign]
        app.wsgi_app,
        model,
        ready=is_ready,
        max_bytes=max_bytes,
        max_payload_mb=settings.max_payload_mb,
        metrics=metrics,
        log_requests=settings.access_log,
        batching=settings.batching,
        endpoint_name=settings.endpoint_name,
        variant_name=settings.variant_name,
    )
    return app

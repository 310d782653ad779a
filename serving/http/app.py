"""The WSGI application of the model server: /ping, /invocations, /execution-parameters, /metrics.

Thin transport over :class:`serving.dataplane.DataPlane`. :class:`serving.http.fastpath.FastPath` is the
one route for ``GET /ping`` and ``POST /invocations`` (answered without flask's request machinery) and
times every request (metrics, access log); the flask app behind it serves the cold routes, and every
error there becomes a JSON body in :func:`_error` (4xx with the message, 5xx "internal error" with the
traceback in the log only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import orjson
from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from serving.dataplane import DataPlane
from serving.errors import ServingError, error_body, error_response
from serving.http.fastpath import FastPath
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
    for every worker. ``metrics`` enables /metrics and request accounting. ``/ping`` and
    ``/invocations`` are :class:`~serving.http.fastpath.FastPath`'s alone: flask never sees them.
    """
    app = Flask("serving")
    is_ready = ready or (lambda: model.ready)
    max_bytes = settings.max_payload_bytes()
    execution_parameters = orjson.dumps(
        {
            "MaxConcurrentTransforms": settings.effective_max_concurrent_transforms(),
            "BatchStrategy": settings.batch_strategy,
            "MaxPayloadInMB": settings.max_payload_mb,
        }
    )

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
        return _error(code, error_body(code, message))

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        status, body = error_response(exc)
        if status >= 500:
            log.error("request failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return _error(status, body)

    # FastPath is a WSGI app, except that it hands the inline worker a PendingInvocation when the worker
    # asks for one (DEFER_KEY in the environ): Flask's type for wsgi_app cannot say so.
    app.wsgi_app = FastPath(  # type: ignore[method-assign,assignment]
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

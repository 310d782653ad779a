"""A thin WSGI front for the two hot routes, in front of the flask app.

``GET /ping`` and ``POST /invocations`` are answered straight from the WSGI environ — no request
context, no routing, no Response object — because flask's per-request machinery costs more than a
small model's whole prediction. Every other path, and every other method on these paths, goes to the
flask app unchanged. Errors are mapped by the same :func:`serving.errors.error_response` the flask
handlers use. This layer also times every request: metrics and one structured access-log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from serving import contract
from serving.dataplane import DataPlane
from serving.errors import PayloadTooLargeError, error_body, error_response
from serving.metrics import Metrics

log = logging.getLogger("serving.http.app")
access_log = logging.getLogger("serving.access")

_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
_JSON = "application/json"
_ROUTES = ("/invocations", "/ping", "/metrics", "/execution-parameters")
MODEL_SECONDS_KEY = "selfmaker.model_seconds"


def _headers_of(environ: dict[str, Any]) -> dict[str, str]:
    """Request headers from a WSGI environ (for hooks, which may read any header)."""
    headers = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").title()] = value
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    if environ.get("CONTENT_LENGTH"):
        headers["Content-Length"] = environ["CONTENT_LENGTH"]
    return headers


class FastPath:
    """WSGI callable: hot routes here, everything else to ``fallback`` (the flask ``wsgi_app``)."""

    def __init__(
        self,
        fallback: Callable[..., Iterable[bytes]],
        model: DataPlane,
        *,
        ready: Callable[[], bool],
        max_bytes: int,
        max_payload_mb: int,
        metrics: Metrics | None,
        log_requests: bool,
    ) -> None:
        self.fallback = fallback
        self.model = model
        self.ready = ready
        self.max_bytes = max_bytes
        self.max_payload_mb = max_payload_mb
        self.metrics = metrics
        self.log_requests = log_requests

    # -- routes -------------------------------------------------------------------------------

    def _ping(self) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.ready():
            return 200, [("Content-Type", _JSON), ("Content-Length", "0")], b""
        if self.model.error:
            body = error_body(503, f"model failed to load: {self.model.error}")
        else:
            body = error_body(503, "model is loading")
        return 503, [("Content-Type", _JSON), ("Content-Length", str(len(body)))], body

    def _read_body(self, environ: dict[str, Any]) -> bytes:
        """The request body, at most ``max_bytes`` (413 above).

        Anything else that goes wrong while reading is the transport's: a client that went away or
        stalled past the worker's read timeout (the connection is dropped), or broken chunk framing
        (gunicorn answers 400 and closes the connection, in the server's JSON error format).
        """
        length_text = environ.get("CONTENT_LENGTH")
        if length_text:
            try:
                length = int(length_text)
            except ValueError:
                length = -1
            if length > self.max_bytes:
                raise PayloadTooLargeError(
                    f"request body of {length} bytes exceeds the {self.max_payload_mb} MB limit"
                )
            return environ["wsgi.input"].read(length) if length > 0 else b""
        # chunked: read at most one byte past the limit
        body = environ["wsgi.input"].read(self.max_bytes + 1)
        if len(body) > self.max_bytes:
            raise PayloadTooLargeError(f"request body exceeds the {self.max_payload_mb} MB limit")
        return body

    def _invoke(self, environ: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes, float | None]:
        model = self.model
        try:
            body = self._read_body(environ)
        except PayloadTooLargeError as exc:
            status, out = error_response(exc)
            return status, [("Content-Type", _JSON), ("Content-Length", str(len(out)))], out, None
        try:
            if not model.ready:
                if model.error:
                    body = error_body(503, "model failed to load")
                else:
                    body = error_body(503, "model is loading")
                return 503, [("Content-Type", _JSON), ("Content-Length", str(len(body)))], body, None
            result = model.invoke_full(
                body,
                environ.get("CONTENT_TYPE"),
                environ.get("HTTP_ACCEPT"),
                environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"),
                _headers_of(environ) if model.takes_headers else None,
            )
        except Exception as exc:  # mapped in one place; only non-ServingErrors are 500s
            status, out = error_response(exc)
            if status >= 500 and status != 503:
                log.error("invocation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
            return status, [("Content-Type", _JSON), ("Content-Length", str(len(out)))], out, None
        headers = [("Content-Type", result.content_type), ("Content-Length", str(len(result.body)))]
        if result.custom_attributes is not None:
            headers.append((contract.CUSTOM_ATTRIBUTES_HEADER, contract.sanitize_header(result.custom_attributes)))
        return 200, headers, result.body, result.model_seconds

    # -- WSGI ---------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        model_seconds: float | None = None
        if path == "/invocations" and method == "POST":
            status, headers, body, model_seconds = self._invoke(environ)
            start_response(_STATUS_LINES.get(status, str(status)), headers)
            result: Iterable[bytes] = [body]
        elif path == "/ping" and method == "GET":
            status, headers, body = self._ping()
            start_response(_STATUS_LINES.get(status, str(status)), headers)
            result = [body]
        else:
            seen: list[str] = []

            def _start_response(line: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
                seen.append(line)
                return start_response(line, hdrs, exc_info)

            result = self.fallback(environ, _start_response)
            status = int(seen[-1][:3]) if seen else 500
            model_seconds = environ.get(MODEL_SECONDS_KEY)
        elapsed = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.observe(path if path in _ROUTES else "other", status, elapsed, model_seconds)
        if self.log_requests and (status != 200 or path == "/invocations"):
            access_log.info(
                "%s %s %d",
                method,
                path,
                status,
                extra={
                    "status": status,
                    "latency_ms": round(elapsed * 1000, 3),
                    "model_ms": None if model_seconds is None else round(model_seconds * 1000, 3),
                    "bytes_in": int(environ.get("CONTENT_LENGTH") or 0),
                    "request_id": environ.get("HTTP_X_AMZN_REQUESTID") or environ.get("HTTP_X_REQUEST_ID"),
                },
            )
        return result

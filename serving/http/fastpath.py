"""A thin WSGI front that is the only route for the hot paths, in front of the flask app.

``GET /ping`` and ``POST /invocations`` are answered straight from the WSGI environ — no request
context, no routing, no Response object — because flask's per-request machinery costs more than a
small model's whole prediction. Another method on these paths is a 405 here; every other path goes to
the flask app unchanged. Errors are mapped by the same :func:`serving.errors.error_response` the flask
handlers use. This layer also times every request: metrics and one structured access-log line.

The runtime path: behind the gateway that ``pulumi up`` builds, a load balancer forwards
sagemaker-runtime's own requests, ``POST /endpoints/<name>/invocations`` (and
``/invocations-response-stream``), to the model server, which answers them as SageMaker's front end
would: the ``/invocations`` answer plus ``x-Amzn-Invoked-Production-Variant``, errors in
sagemaker-runtime's shape (:func:`serving.errors.runtime_error`: a model's 4xx/5xx is a ``ModelError``),
streams as event-stream ``PayloadPart`` messages. The load balancer has already chosen the variant
(weights, or its header rule for ``X-Amzn-SageMaker-Target-Variant``), so that header is not read here.
Checked after ``/invocations`` and ``/ping``, so those two pay nothing for it (this server's own
endpoint's paths with one dict lookup; any other ``/endpoints/...`` path after the 405 table).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from common import eventstream
from serving import contract
from serving.dataplane import DataPlane, InvocationResult
from serving.errors import PayloadTooLargeError, error_body, error_response, runtime_error, runtime_error_body
from serving.metrics import Metrics

log = logging.getLogger("serving.http.app")
access_log = logging.getLogger("serving.access")

_STATUS_LINES = {status.value: f"{status.value} {status.phrase}" for status in HTTPStatus}
_JSON = "application/json"
_ROUTES = ("/invocations", "/ping", "/metrics", "/execution-parameters")
#: The methods of the routes this layer alone answers (a 405 names them in ``Allow``).
_HOT_METHODS = {"/invocations": "POST", "/ping": "GET, HEAD"}
#: a 413 leaves the unread body on the connection: the answer says so and the server closes it
#: (serving.http.response.OneWriteResponse honours it), so the body is never parsed as a request
_CLOSE = ("Connection", "close")
#: Set by a server that can answer invocations in batches (see :class:`PendingInvocation`).
DEFER_KEY = "selfmaker.defer"
#: Larger bodies are answered at once: their records already fill a model run, and stacking them
#: with others would only add a copy.
MAX_BATCHED_BODY = 64 * 1024

_Answer = tuple[int, list[tuple[str, str]], bytes, "float | None"]
INVOKED_VARIANT_HEADER = "x-Amzn-Invoked-Production-Variant"
RUNTIME_PREFIX = "/endpoints/"
#: The runtime routes after ``/endpoints/<name>/``, and whether each streams its answer.
RUNTIME_ROUTES = {"invocations": False, "invocations-response-stream": True}
#: Bytes per PayloadPart of a streamed answer.
STREAM_PART_BYTES = 64 * 1024


def _json_headers(body: bytes) -> list[tuple[str, str]]:
    return [("Content-Type", _JSON), ("Content-Length", str(len(body)))]


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
    """WSGI callable: the hot routes here, every other path to ``fallback`` (the flask ``wsgi_app``)."""

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
        batching: bool = True,
        endpoint_name: str | None = None,
        variant_name: str = "AllTraffic",
    ) -> None:
        self.fallback = fallback
        self.model = model
        self.ready = ready
        self.max_bytes = max_bytes
        self.max_payload_mb = max_payload_mb
        self.metrics = metrics
        self.log_requests = log_requests
        self.batching = batching
        #: the endpoint this server answers the runtime path for (None: any) and the variant it reports
        self.endpoint_name = endpoint_name
        self.variant_name = variant_name
        self._variant_header = (INVOKED_VARIANT_HEADER, variant_name)
        self._runtime_routes: dict[str, tuple[str, bool]] = {}
        if endpoint_name is not None:
            self._runtime_routes = {
                f"{RUNTIME_PREFIX}{endpoint_name}/{tail}": (endpoint_name, stream)
                for tail, stream in RUNTIME_ROUTES.items()
            }

    # -- routes -------------------------------------------------------------------------------

    def _ping(self) -> tuple[int, list[tuple[str, str]], bytes]:
        if self.ready():
            return 200, [("Content-Type", _JSON), ("Content-Length", "0")], b""
        if self.model.error:
            body = error_body(503, f"model failed to load: {self.model.error}")
        else:
            body = error_body(503, "model is loading")
        return 503, _json_headers(body), body

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

    def _take_invocation(self, environ: dict[str, Any]) -> tuple[bytes, _Answer | None]:
        """Read an invocation's body; the answer instead when it cannot reach the model (413, 503)."""
        try:
            body = self._read_body(environ)
        except PayloadTooLargeError as exc:
            return b"", self._failure(exc)
        model = self.model
        if not model.ready:
            out = error_body(503, "model failed to load" if model.error else "model is loading")
            return body, (503, _json_headers(out), out, None)
        return body, None

    def _invoke(self, environ: dict[str, Any], body: bytes) -> _Answer:
        model = self.model
        try:
            result = model.invoke_full(
                body,
                environ.get("CONTENT_TYPE"),
                environ.get("HTTP_ACCEPT"),
                environ.get("HTTP_X_AMZN_SAGEMAKER_CUSTOM_ATTRIBUTES"),
                _headers_of(environ) if model.takes_headers else None,
            )
        except Exception as exc:  # mapped in one place; only non-ServingErrors are 500s
            return self._failure(exc)
        return self._success(result)

    @staticmethod
    def _failure(exc: Exception) -> _Answer:
        status, out = error_response(exc)
        if status >= 500 and status != 503:
            log.error("invocation failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
        return status, _json_headers(out), out, None

    @staticmethod
    def _success(result: InvocationResult) -> _Answer:
        headers = [("Content-Type", result.content_type), ("Content-Length", str(len(result.body)))]
        if result.custom_attributes is not None:
            headers.append(
                (contract.CUSTOM_ATTRIBUTES_HEADER, contract.sanitize_header(result.custom_attributes))
            )
        return 200, headers, result.body, result.model_seconds

    # -- WSGI ---------------------------------------------------------------------------------

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes] | PendingInvocation:
        started = time.perf_counter()
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "")
        model_seconds: float | None = None
        if path == "/invocations" and method == "POST":
            body, refused = self._take_invocation(environ)
            if refused is not None:
                status, headers, out, model_seconds = refused
            elif (
                self.batching
                and len(body) <= MAX_BATCHED_BODY
                and environ.get(DEFER_KEY)
                and self.model.batchable
            ):
                return PendingInvocation(self, environ, start_response, started, body)
            else:
                status, headers, out, model_seconds = self._invoke(environ, body)
            if status == 413:
                headers = [*headers, _CLOSE]
            start_response(_STATUS_LINES.get(status) or str(status), headers)
            result: Iterable[bytes] = [out]
        elif path == "/ping" and (method == "GET" or method == "HEAD"):
            status, headers, out = self._ping()
            start_response(_STATUS_LINES.get(status) or str(status), headers)
            result = [out] if method == "GET" else []
        elif method == "POST" and (route := self._runtime_routes.get(path)) is not None:
            # this server's own runtime paths: one dict lookup, before the 405 table and the prefix
            return self._runtime(environ, start_response, route, started)
        elif path in _HOT_METHODS:
            status = 405
            out = error_body(405, f"{method} is not allowed on {path}; use {_HOT_METHODS[path]}")
            start_response(_STATUS_LINES[405], [*_json_headers(out), ("Allow", _HOT_METHODS[path])])
            result = [out]
        elif (
            method == "POST"
            and path.startswith(RUNTIME_PREFIX)
            and (route := self._runtime_route(path)) is not None
        ):
            return self._runtime(environ, start_response, route, started)
        else:
            seen: list[str] = []

            def _start_response(line: str, hdrs: list[tuple[str, str]], exc_info: Any = None) -> Any:
                seen.append(line)
                return start_response(line, hdrs, exc_info)

            result = self.fallback(environ, _start_response)
            status = int(seen[-1][:3]) if seen else 500
        self._account(environ, path, method, status, started, model_seconds)
        return result

    # -- the runtime path (sagemaker-runtime's requests through the gateway) ------------------------

    def _runtime_route(self, path: str) -> tuple[str, bool] | None:
        """``(endpoint name, streams?)`` of a runtime path; None for any other ``/endpoints/...`` path."""
        known = self._runtime_routes.get(path)
        if known is not None:
            return known
        name, _, tail = path[len(RUNTIME_PREFIX) :].partition("/")
        stream = RUNTIME_ROUTES.get(tail)
        if stream is None or not name:
            return None
        return name, stream

    def _runtime(
        self,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        route: tuple[str, bool],
        started: float,
    ) -> Iterable[bytes] | PendingInvocation:
        name, stream = route
        model_seconds: float | None = None
        close = False
        if self.endpoint_name is not None and name != self.endpoint_name:
            # the load balancer routes by name, so this is a misrouted or hand-made request
            message = f"Endpoint {name} not found (this server answers for endpoint {self.endpoint_name})."
            out = runtime_error_body("ValidationError", message)
            status, headers = 400, [*_json_headers(out), ("x-amzn-ErrorType", "ValidationError")]
        else:
            body, refused = self._take_invocation(environ)
            if refused is not None:
                close = refused[0] == 413  # sagemaker-runtime's shape says 400, the body is still unread
                status, headers, out, model_seconds = self._runtime_answer(refused, False)
            elif (
                not stream
                and self.batching
                and len(body) <= MAX_BATCHED_BODY
                and environ.get(DEFER_KEY)
                and self.model.batchable
            ):
                return PendingInvocation(self, environ, start_response, started, body, runtime=True)
            else:
                if stream:  # InvokeEndpointWithResponseStream sends Accept under its own name
                    accept = environ.get("HTTP_X_AMZN_SAGEMAKER_ACCEPT")
                    if accept:
                        environ["HTTP_ACCEPT"] = accept
                status, headers, out, model_seconds = self._runtime_answer(
                    self._invoke(environ, body), stream
                )
        if close:
            headers = [*headers, _CLOSE]
        start_response(_STATUS_LINES.get(status) or str(status), headers)
        self._account(environ, "/invocations", "POST", status, started, model_seconds)
        return [out]

    def _runtime_answer(self, answer: _Answer, stream: bool) -> _Answer:
        """The runtime path's answer for what ``/invocations`` would have answered."""
        status, headers, out, model_seconds = answer
        if status != 200:
            status, headers, out = self._runtime_error_answer(status, out)
            return status, headers, out, model_seconds
        if stream:
            content_type = headers[0][1]
            out = b"".join(
                eventstream.event("PayloadPart", out[i : i + STREAM_PART_BYTES])
                for i in range(0, len(out), STREAM_PART_BYTES)
            )
            headers = [
                ("Content-Type", eventstream.CONTENT_TYPE),
                ("Content-Length", str(len(out))),
                ("X-Amzn-SageMaker-Content-Type", content_type),
                *headers[2:],
            ]
        headers.append(self._variant_header)
        return status, headers, out, model_seconds

    def _runtime_error_answer(self, status: int, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        out_status, code, out = runtime_error(
            status, body, endpoint=self.endpoint_name or "-", variant=self.variant_name
        )
        return out_status, [*_json_headers(out), ("x-amzn-ErrorType", code)], out

    def _account(
        self,
        environ: dict[str, Any],
        path: str,
        method: str,
        status: int,
        started: float,
        model_seconds: float | None,
    ) -> None:
        """Metrics and the access-log line of one finished request."""
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


class PendingInvocation:
    """An invocation whose body is read and whose answer waits for :meth:`run_all`.

    :class:`FastPath` returns one instead of an answer when the server (the ``inline`` worker) put
    :data:`DEFER_KEY` in the environ: the worker collects the invocations that arrived together,
    runs them with one :meth:`run_all` (one model run for records that stack), then calls
    :meth:`finish` on each — which is when the response starts and the request is accounted.
    """

    __slots__ = ("app", "environ", "start_response", "started", "body", "outcome", "runtime")

    def __init__(
        self,
        app: FastPath,
        environ: dict[str, Any],
        start_response: Callable[..., Any],
        started: float,
        body: bytes,
        runtime: bool = False,
    ) -> None:
        self.app = app
        self.environ = environ
        self.start_response = start_response
        self.started = started
        self.body = body
        self.outcome: InvocationResult | Exception | None = None
        #: arrived on the runtime path: answered in sagemaker-runtime's shape
        self.runtime = runtime

    @staticmethod
    def run_all(pending: list[PendingInvocation]) -> None:
        """Answer every pending invocation (all of one app): together when there are several."""
        app = pending[0].app
        if app.metrics is not None:
            app.metrics.observe_batch(len(pending))
        if len(pending) == 1:
            one = pending[0]
            environ = one.environ
            try:
                one.outcome = app.model.invoke_full(
                    one.body, environ.get("CONTENT_TYPE"), environ.get("HTTP_ACCEPT")
                )
            except Exception as exc:
                one.outcome = exc
            return
        requests = [(p.body, p.environ.get("CONTENT_TYPE"), p.environ.get("HTTP_ACCEPT")) for p in pending]
        try:
            outcomes = app.model.invoke_many(requests)
        except Exception as exc:  # a failure of the batch itself (not of one request): every request gets it
            outcomes = [exc] * len(pending)
        for one, outcome in zip(pending, outcomes, strict=True):
            one.outcome = outcome

    def finish(self) -> list[bytes]:
        """Start the response and return its body (after :meth:`run_all`)."""
        app = self.app
        outcome = self.outcome
        if isinstance(outcome, InvocationResult):
            answer = app._success(outcome)
        else:
            answer = app._failure(
                outcome if outcome is not None else RuntimeError("invocation was never run")
            )
        if self.runtime:
            answer = app._runtime_answer(answer, False)
        status, headers, out, model_seconds = answer
        self.start_response(_STATUS_LINES.get(status) or str(status), headers)
        app._account(self.environ, "/invocations", "POST", status, self.started, model_seconds)
        return [out]

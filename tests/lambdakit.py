"""A test AWS Lambda Runtime API and ALB events, for running the real Lambda handler as Lambda runs it.

:class:`RuntimeApi` serves the documented interface of the Runtime API on 127.0.0.1 (a few routes):
``GET /2018-06-01/runtime/invocation/next`` hands out queued events (long poll), ``POST
.../invocation/{id}/response`` and ``.../invocation/{id}/error`` complete them, ``POST .../init/error``
records an init failure. :meth:`RuntimeApi.invoke` queues one event and waits for its outcome, as the
Lambda service does for a synchronous invoke. :func:`lambda_environment` is the environment Lambda gives
a function's process; :func:`alb_event` builds the ALB's Lambda target event.
"""

from __future__ import annotations

import base64
import json
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PREFIX = "/2018-06-01/runtime"
N_FEATURES = 6
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:selfmaker-serverless"


@dataclass
class Outcome:
    """How one invocation ended: ``kind`` is ``response`` or ``error``; ``payload`` the parsed JSON."""

    kind: str
    payload: Any
    error_type: str | None = None


@dataclass
class _State:
    pending: queue.Queue[tuple[str, bytes]] = field(default_factory=queue.Queue)
    outcomes: dict[str, queue.Queue[Outcome]] = field(default_factory=dict)
    init_errors: list[tuple[str | None, Any]] = field(default_factory=list)
    polls: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add ~40 ms per answer
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        try:
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the function's process was stopped while it polled
            self.close_connection = True

    def do_GET(self) -> None:
        state = self.server.state
        if self.path != f"{PREFIX}/invocation/next":
            self._send(404, b'{"errorMessage": "unknown route"}')
            return
        with state.lock:
            state.polls += 1
        while not state.stopping.is_set():
            try:
                request_id, event = state.pending.get(timeout=0.1)
            except queue.Empty:
                continue
            deadline = int((time.time() + 60) * 1000)
            self._send(
                200,
                event,
                {
                    "Content-Type": "application/json",
                    "Lambda-Runtime-Aws-Request-Id": request_id,
                    "Lambda-Runtime-Deadline-Ms": str(deadline),
                    "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                    "Lambda-Runtime-Trace-Id": (
                        f"Root=1-{uuid.uuid4().hex[:8]}-{uuid.uuid4().hex[:24]};Sampled=0"
                    ),
                },
            )
            return
        self._send(503, b'{"errorMessage": "shutting down"}')

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
        try:
            payload: Any = json.loads(body) if body else None
        except ValueError:
            payload = body
        if self.path == f"{PREFIX}/init/error":
            state.init_errors.append((error_type, payload))
            self._send(202, b'{"status": "OK"}', {"Content-Type": "application/json"})
            return
        parts = self.path[len(PREFIX) :].strip("/").split("/")
        if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            outcome = state.outcomes.get(parts[1])
            if outcome is None:
                self._send(400, b'{"errorMessage": "unknown request id"}')
                return
            outcome.put(Outcome(parts[2], payload, error_type))
            self._send(202, b'{"status": "OK"}', {"Content-Type": "application/json"})
            return
        self._send(404, b'{"errorMessage": "unknown route"}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _State) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


class RuntimeApi:
    """The test Runtime API; use as a context manager (``address`` is ``127.0.0.1:PORT``)."""

    def __init__(self) -> None:
        self.state = _State()
        self._server = _Server(self.state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lambda-runtime-api", daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def init_errors(self) -> list[tuple[str | None, Any]]:
        """``(Lambda-Runtime-Function-Error-Type, body)`` of every init error posted."""
        return list(self.state.init_errors)

    @property
    def polls(self) -> int:
        """How many times the runtime asked for the next invocation (≥ 1 once it finished its init)."""
        return self.state.polls

    def __enter__(self) -> RuntimeApi:  # noqa: PYI034 - final class
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.state.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def invoke(self, event: dict[str, Any], timeout: float = 60.0) -> Outcome:
        """Queue ``event`` and wait for the function's response or error."""
        request_id = str(uuid.uuid4())
        outcome: queue.Queue[Outcome] = queue.Queue()
        self.state.outcomes[request_id] = outcome
        self.state.pending.put((request_id, json.dumps(event).encode()))
        try:
            return outcome.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no answer to invocation {request_id} within {timeout}s") from None
        finally:
            self.state.outcomes.pop(request_id, None)

    def wait_polling(self, timeout: float, alive: Any = None) -> None:
        """Wait until the runtime finished its init and polls for work (or fail)."""
        deadline = time.monotonic() + timeout
        while self.polls == 0:
            if self.init_errors:
                raise AssertionError(f"init failed: {self.init_errors}")
            if alive is not None and not alive():
                raise AssertionError("the function's process exited during init")
            if time.monotonic() > deadline:
                raise AssertionError(f"the runtime did not poll for an invocation within {timeout}s")
            time.sleep(0.02)


def lambda_environment(
    runtime_api: str,
    *,
    task_root: str,
    tmp: str,
    memory_mb: int = 2048,
    handler: str = "serving.lambda_handler.handler",
) -> dict[str, str]:
    """The variables Lambda sets for a function's process (the function's own come on top)."""
    return {
        "AWS_LAMBDA_RUNTIME_API": runtime_api,
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": task_root,
        "LAMBDA_RUNTIME_DIR": task_root,
        "AWS_LAMBDA_FUNCTION_NAME": "selfmaker-serverless",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory_mb),
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/selfmaker-serverless",
        "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/07/[$LATEST]0123456789abcdef",
        "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EXECUTION_ENV": "AWS_Lambda_Image",
        "TZ": ":UTC",
        "LANG": "en_US.UTF-8",
        "HOME": tmp,
        "TMPDIR": tmp,
    }


def alb_event(
    path: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    binary: bool = False,
    multi_value: bool = False,
) -> dict[str, Any]:
    """The event an ALB sends a Lambda target; ``binary`` bodies are base64 (as the ALB sends them)."""
    all_headers = {
        "host": "selfmaker-alb.example",
        "x-forwarded-for": "10.0.0.1",
        "x-forwarded-proto": "https",
        "x-forwarded-port": "443",
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    event: dict[str, Any] = {
        "requestContext": {
            "elb": {
                "targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                "targetgroup/sm-serverless/0123456789abcdef"
            }
        },
        "httpMethod": method,
        "path": path,
        "body": base64.b64encode(body).decode() if binary else body.decode("utf-8"),
        "isBase64Encoded": binary,
    }
    if multi_value:
        event["multiValueHeaders"] = {k: [v] for k, v in all_headers.items()}
        event["multiValueQueryStringParameters"] = {}
    else:
        event["headers"] = all_headers
        event["queryStringParameters"] = {}
    return event


def alb_body(response: dict[str, Any]) -> bytes:
    """The bytes an ALB would send the client for a Lambda response."""
    body = response.get("body") or ""
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode("utf-8")


def alb_headers(response: dict[str, Any]) -> dict[str, str]:
    """Response headers (lower-cased names) from ``headers`` or ``multiValueHeaders``."""
    if "multiValueHeaders" in response:
        return {k.lower(): v[-1] for k, v in response["multiValueHeaders"].items()}
    return {k.lower(): v for k, v in (response.get("headers") or {}).items()}


def build_xgboost_model(dest: Path) -> Path:
    """A model as the built-in XGBoost writes it: model.onnx (from the booster) + signature.json."""
    import numpy as np
    import xgboost as xgb

    from common.onnx_export import save, write_signature, xgboost_to_onnx

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] - x[:, 2] > 0).astype(np.float32)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "nthread": 1},
        xgb.DMatrix(x, label=y),
        num_boost_round=10,
    )
    dest.mkdir(parents=True, exist_ok=True)
    save(xgboost_to_onnx(booster, N_FEATURES, "binary:logistic"), dest)
    write_signature(
        dest,
        framework="xgboost",
        task="binary_classification",
        n_features=N_FEATURES,
        response_format="xgboost",
        classes=[0, 1],
        threshold=0.5,
        extra={"objective": "binary:logistic"},
    )
    return dest


#: content types an ALB hands to Lambda as text; anything else arrives base64-encoded
_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/jsonlines",
    "application/xml",
    "application/javascript",
)


class AlbShim:
    """A small HTTP front on 127.0.0.1 that does what the ALB does for a Lambda target group: each HTTP
    request becomes an ALB event for the function behind ``api``, its answer becomes the HTTP response
    (a function error is a 502, as at the ALB). Use as a context manager; ``url`` is the base URL."""

    def __init__(self, api: RuntimeApi, *, multi_value: bool = False) -> None:
        shim = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                content_type = self.headers.get("Content-Type") or ""
                binary = bool(body) and not content_type.startswith(_TEXT_TYPES)
                event = alb_event(
                    self.path.split("?", 1)[0],
                    body,
                    method=self.command,
                    headers=dict(self.headers.items()),
                    binary=binary,
                    multi_value=shim.multi_value,
                )
                outcome = shim.api.invoke(event, timeout=60)
                if outcome.kind != "response":
                    status, headers, payload = (
                        502,
                        {"Content-Type": "text/html"},
                        b"<html>502 Bad Gateway</html>",
                    )
                else:
                    status, headers, payload = (
                        int(outcome.payload["statusCode"]),
                        alb_headers(outcome.payload),
                        alb_body(outcome.payload),
                    )
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_POST = do_GET = _forward

        self.api = api
        self.multi_value = multi_value
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="alb-shim", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> AlbShim:  # noqa: PYI034 - final class
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

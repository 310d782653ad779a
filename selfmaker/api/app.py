"""The aiohttp application of `selfmaker up`: control plane, runtime, extension routes.

* ``POST /`` with ``X-Amz-Target: SageMaker.<Operation>`` → the registered operation handler, after
  validating the body against botocore's model (JSON 1.1 protocol); ``Logs_20140328.<Operation>`` the
  same for CloudWatch Logs (:mod:`selfmaker.api.ops.logs`) and ``GraniteServiceVersion20100801.<Operation>``
  for CloudWatch (JSON 1.0, :mod:`selfmaker.api.ops.cloudwatch`), so one endpoint URL serves them all;
* ``POST /service/<target prefix>/operation/<Operation>`` → the same handlers in smithy-rpc-v2-cbor, the
  protocol botocore's ``cloudwatch`` client speaks by default (CBOR bodies, errors with ``__type`` and the
  query-compatible code in ``x-amzn-query-error``);
* ``POST /endpoints/{name}/invocations`` → the router (rest-json protocol of ``sagemaker-runtime``);
* ``GET /ping`` → 200 once the platform is up (readiness of ``selfmaker up`` itself);
* ``GET /metrics`` → Prometheus text of the ``@metrics_source`` hooks (:mod:`selfmaker.api.metrics`);
* routes registered by features with ``@runtime_route``;
* the web console, ``GET /console…`` (and ``GET /`` of a browser): :mod:`selfmaker.console`.

Every route but ``/ping`` goes through :func:`authenticate` first (SigV4, :mod:`selfmaker.api.auth`)
once the platform has keys or listens beyond loopback; console routes also accept the console's session
cookie (:mod:`selfmaker.console.sessions`), and send a browser without one to the login form.

The invocation itself (routing, the model server call, observers) is
:func:`selfmaker.endpoints.invoke.invoke`; this module reads the request and writes the response.

Errors are rendered here and only here: control-plane errors as ``{"__type", "message"}``; runtime errors
with the ``x-amzn-ErrorType`` header and a JSON body; anything unexpected as a 500 "internal error" with
the traceback in the log only. Requests aiohttp cannot parse (a malformed request line or header, a bad
chunk size) get the same JSON shapes from :class:`PlatformRequestHandler` and one WARNING line in the log.

Before any handler runs, :func:`refusal` checks what every request carries: header values must be UTF-8
(else 400), and the ``Host`` header must name the address served, a loopback name with the port served,
or a name the operator allows (``SELFMAKER_ALLOWED_HOSTS``) — a page that rebinds its DNS name to
127.0.0.1 gets 403 (:class:`HostCheck`).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import cbor2
import orjson
from aiohttp import web, web_protocol, web_server
from aiohttp.web_request import BaseRequest
from botocore.model import ListShape, Shape, StructureShape

from common import eventstream
from common.http import header_value
from selfmaker import logcontext
from selfmaker.api.auth import Authenticator, is_loopback
from selfmaker.api.common import BODY_KEY, compact, read_limited
from selfmaker.api.metrics import METRICS_CONTENT_TYPE, render_metrics
from selfmaker.api.validation import (
    check_file_locations,
    check_invoke_request,
    service_model,
    validate_request,
)
from selfmaker.console import routes as console
from selfmaker.console.sessions import COOKIE_NAME, ConsoleSessions
from selfmaker.credentials import CredentialStore
from selfmaker.endpoints.invoke import invoke
from selfmaker.endpoints.runtime import EndpointRuntime, InvocationRecord
from selfmaker.endpoints.stats import CLIENT_ERROR, OK, SERVER_ERROR
from selfmaker.errors import (
    AuthError,
    InternalFailure,
    InvalidParameterException,
    InvalidParameterValue,
    ModelError,
    NotSignedIn,
    SageMakerError,
    ThrottlingException,
    UnknownOperation,
    ValidationError,
    ValidationException,
)
from selfmaker.services import Services
from selfmaker.settings import PlatformSettings

log = logging.getLogger(__name__)

PLATFORM_KEY: web.AppKey[Services] = web.AppKey("platform", Services)
AUTH_KEY: web.AppKey[Authenticator] = web.AppKey("authenticator", Authenticator)
JSON11 = "application/x-amz-json-1.1"
#: largest request body the HTTP layer accepts (InvokeEndpoint checks its own 6 MB limit)
CLIENT_MAX_SIZE = 64 * 1024 * 1024
#: the JSON 1.1 services of ``POST /`` by target prefix: botocore's model name and the error of bad input
JSON_SERVICES: dict[str, tuple[str, type[SageMakerError]]] = {
    "SageMaker": ("sagemaker", ValidationException),
    "Logs_20140328": ("logs", InvalidParameterException),
    "GraniteServiceVersion20100801": ("cloudwatch", InvalidParameterValue),
}


#: the names of this machine's loopback interface, accepted in ``Host`` with the port served
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: the most distinct ``Host`` values whose verdict is remembered
_HOST_CACHE_SIZE = 256


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``(name, port or None)`` of a ``Host`` header value, lower-cased; None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):  # [v6] or [v6]:port
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text_or_empty = value.partition(":")
        port_text = port_text_or_empty if colon else None
    if not name:
        return None
    if port_text is None:
        return name, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return name, int(port_text)


class HostCheck:
    """Whether a request's ``Host`` header names this platform (DNS-rebinding protection).

    Accepted: the address served (``--host``, or the local address the connection arrived on when
    bound to every interface), this machine's host name and the loopback names, each with the port
    served; the operator's ``allowed_hosts`` (``name`` with any port, ``name:port`` exactly; ``*`` accepts
    everything). A request without ``Host`` (HTTP/1.0) is accepted: a browser always sends one.
    """

    def __init__(self, served_host: str, served_port: int, allowed: frozenset[str]) -> None:
        self.everything = "*" in allowed
        #: names allowed with any port, and ``name:port`` values allowed exactly
        self.allowed_names = frozenset(a for a in allowed if ":" not in a.strip("[]"))
        self.allowed_exact = frozenset(a for a in allowed if a not in self.allowed_names)
        names = set(LOOPBACK_NAMES)
        served = served_host.strip().strip("[]").lower()
        #: bound to every interface: the address a connection arrived on is served too (a syscall per
        #: request, only then)
        self.wildcard = served in ("", "0.0.0.0", "::")
        if not self.wildcard:
            names.add(served)
        names.add(socket.gethostname().lower())
        self.names = frozenset(names)
        #: the port served; learnt from the first connection when bound to port 0
        self.port = served_port or None
        self._verdicts: dict[tuple[str, str], bool] = {}

    def check(self, request: web.Request) -> bool:
        """Whether ``request``'s ``Host`` names this platform (verdicts are remembered per value)."""
        if self.everything:
            return True
        host = request.headers.get("Host")
        if host is None:
            return True
        address = ""
        if self.wildcard or self.port is None:
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            if sockname:
                address = str(sockname[0]).lower() if self.wildcard else ""
                self.port = self.port or int(sockname[1])
        key = (host, address)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self.accepts(host, address)
            if len(self._verdicts) >= _HOST_CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def accepts(self, host: str, address: str = "") -> bool:
        """Whether the ``Host`` value ``host`` names this platform for a connection that arrived on
        ``address`` (only looked at when bound to every interface)."""
        parsed = _split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        if name in self.allowed_names or host.strip().lower() in self.allowed_exact:
            return True
        if name not in self.names and not (address and name == address):
            return False
        return port == self.port or (port is None and self.port == 80)


HOST_CHECK_KEY: web.AppKey[HostCheck] = web.AppKey("host_check", HostCheck)


def refusal(request: web.Request, *, runtime: bool = False) -> SageMakerError | None:
    """Why ``request`` is refused before its handler runs: a header value that is not UTF-8 (400, the
    runtime's ValidationError or the control plane's ValidationException), a ``Host`` that does not name
    this platform (403); None when it may go on."""
    for name, value in request.raw_headers:
        if not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                message = f"The value of header {name.decode('latin-1')} is not valid UTF-8."
                return ValidationError(message) if runtime else ValidationException(message)
    check = request.app[HOST_CHECK_KEY]
    if not check.check(request):
        return SageMakerError(
            f"Host {request.headers.get('Host')!r} is not served here: use the address the platform listens "
            "on, or add the name to SELFMAKER_ALLOWED_HOSTS.",
            code="AccessDeniedException",
            status=HTTPStatus.FORBIDDEN,
        )
    return None


def _runtime_path(path: str) -> bool:
    return path.startswith("/endpoints/")


def _control_error(exc: SageMakerError, request_id: str) -> web.Response:
    body = {"__type": exc.code, "message": exc.message if exc.status < 500 else "internal error"}
    response = web.Response(
        status=int(exc.status),
        body=orjson.dumps(body),
        content_type=JSON11,
        headers={"x-amzn-RequestId": request_id},
    )
    if exc.close_connection:
        response.force_close()
    return response


def runtime_error(exc: SageMakerError, request_id: str) -> web.Response:
    """A runtime (rest-json) error response: code in ``x-amzn-ErrorType`` and the body."""
    message = exc.message if exc.status < 500 else "internal error"
    body: dict[str, Any] = {"__type": exc.code, "Message": message, "message": message, **exc.extra}
    response = web.Response(
        status=int(exc.status),
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"x-amzn-ErrorType": exc.code, "x-amzn-RequestId": request_id},
    )
    if exc.close_connection:
        response.force_close()
    return response


async def _operation(
    request: web.Request,
    platform: Services,
    service: str,
    op_name: str,
    decode: Callable[[bytes], Any],
    document: str = "JSON",
) -> dict[str, Any]:
    """Read, decode (``decode``: ``document``, JSON or CBOR, to Python) and validate one control-plane call
    and run its handler; its result (raises SageMakerError)."""
    model_name, bad_input = JSON_SERVICES.get(service, ("", ValidationException))
    handler = platform.registry.targets.get(service, {}).get(op_name) if model_name else None
    if handler is None:
        raise UnknownOperation(f"Operation {service}.{op_name} is not supported by selfmaker.")
    raw = await read_limited(
        request,
        CLIENT_MAX_SIZE,
        lambda: bad_input(f"The request body is larger than {CLIENT_MAX_SIZE} bytes."),
    )
    try:
        params = decode(raw) if raw.strip() else {}
    except Exception:  # noqa: BLE001 - whatever the decoder raises, the body is not a document
        raise bad_input(f"The request body is not valid {document}.") from None
    if not isinstance(params, dict):
        raise bad_input(f"The request body must be a {document} object.")
    model = service_model(model_name)
    if op_name in model.operation_names:
        validate_request(model.operation_model(op_name), params, bad_input)
    settings = platform.settings
    check_file_locations(params, roots=settings.file_root_paths, forbidden=(settings.home,))
    return await handler(platform, params) or {}


async def control_plane(request: web.Request) -> web.Response:
    """Dispatch one JSON 1.1 (JSON 1.0 for CloudWatch) control-plane call."""
    platform = request.app[PLATFORM_KEY]
    request_id = str(uuid.uuid4())
    logcontext.request_id.set(request_id)
    refused = refusal(request)
    if refused is not None:
        return _control_error(refused, request_id)
    target = request.headers.get("X-Amz-Target", "")
    service, _, op_name = target.partition(".")
    try:
        if not target:
            raise UnknownOperation("Operation (no X-Amz-Target) is not supported by selfmaker.")
        result = await _operation(request, platform, service, op_name, orjson.loads)
        body = orjson.dumps(compact(result))
        return web.Response(body=body, content_type=JSON11, headers={"x-amzn-RequestId": request_id})
    except SageMakerError as exc:
        if exc.status >= 500:
            log.error("%s failed: %s", op_name, exc.message)
        return _control_error(exc, request_id)
    except Exception:
        log.exception("%s failed", op_name or target)
        return _control_error(InternalFailure("internal error"), request_id)


CBOR_CONTENT_TYPE = "application/cbor"


def _from_cbor(raw: bytes) -> Any:
    """A smithy-rpc-v2-cbor request body as JSON-protocol values (timestamps as epoch seconds)."""
    return _epochs(cbor2.loads(raw))


def _epochs(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _epochs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_epochs(v) for v in value]
    return value


def _to_cbor_values(shape: Shape | None, value: Any) -> Any:
    """``value`` with the members that ``shape`` says are timestamps as CBOR epoch tags (tag 1), which is
    how smithy-rpc-v2-cbor sends them."""
    if shape is None:
        return value
    kind = shape.type_name
    if kind == "timestamp" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return cbor2.CBORTag(1, float(value))
    if kind == "structure" and isinstance(value, dict) and isinstance(shape, StructureShape):
        return {k: _to_cbor_values(shape.members.get(k), v) for k, v in value.items()}
    if kind == "list" and isinstance(value, list) and isinstance(shape, ListShape):
        return [_to_cbor_values(shape.member, v) for v in value]
    return value


def _cbor_error(exc: SageMakerError, request_id: str) -> web.Response:
    """An rpc-v2-cbor error: ``__type`` and ``message`` in the body; the query-compatible code in
    ``x-amzn-query-error`` (CloudWatch's clients read the code there)."""
    message = exc.message if exc.status < 500 else "internal error"
    fault = "Receiver" if exc.status >= 500 else "Sender"
    response = web.Response(
        status=int(exc.status),
        body=cbor2.dumps({"__type": exc.code, "message": message}),
        content_type=CBOR_CONTENT_TYPE,
        headers={
            "x-amzn-RequestId": request_id,
            "smithy-protocol": "rpc-v2-cbor",
            "x-amzn-query-error": f"{exc.code};{fault}",
        },
    )
    if exc.close_connection:
        response.force_close()
    return response


async def cbor_control_plane(request: web.Request) -> web.Response:
    """Dispatch one smithy-rpc-v2-cbor call (``POST /service/<target prefix>/operation/<Operation>``: the
    protocol botocore's ``cloudwatch`` client speaks by default)."""
    platform = request.app[PLATFORM_KEY]
    request_id = str(uuid.uuid4())
    logcontext.request_id.set(request_id)
    refused = refusal(request)
    if refused is not None:
        return _cbor_error(refused, request_id)
    service, op_name = request.match_info["service"], request.match_info["operation"]
    try:
        result = await _operation(request, platform, service, op_name, _from_cbor, "CBOR")
        model_name = JSON_SERVICES[service][0]
        output = service_model(model_name).operation_model(op_name).output_shape
        body = cbor2.dumps(_to_cbor_values(output, compact(result)))
        return web.Response(
            body=body,
            content_type=CBOR_CONTENT_TYPE,
            headers={"x-amzn-RequestId": request_id, "smithy-protocol": "rpc-v2-cbor"},
        )
    except SageMakerError as exc:
        if exc.status >= 500:
            log.error("%s failed: %s", op_name, exc.message)
        return _cbor_error(exc, request_id)
    except Exception:
        log.exception("%s failed", op_name)
        return _cbor_error(InternalFailure("internal error"), request_id)


async def invoke_endpoint(request: web.Request) -> web.StreamResponse:
    """InvokeEndpoint: route to a variant and instance, proxy the request, answer with the model's bytes."""
    return await _invoke(request, stream=False)


async def invoke_endpoint_with_response_stream(request: web.Request) -> web.StreamResponse:
    """InvokeEndpointWithResponseStream: InvokeEndpoint whose answer is an event stream of PayloadParts."""
    return await _invoke(request, stream=True)


def _count(
    platform: Services,
    name: str,
    runtime: EndpointRuntime | None,
    record: InvocationRecord | None,
    status_class: int,
    started: float,
) -> None:
    """Count one runtime request in ``platform.invocation_stats`` (SageMaker's Invocations,
    Invocation4XX/5XXErrors, ModelLatency, OverheadLatency); requests for no endpoint are not counted."""
    if not platform.settings.endpoint_metrics:
        return
    if runtime is None:  # refused before the endpoint was resolved (bad headers, too large a body)
        runtime = platform.endpoints.live.get(name.lower())
        if runtime is None or runtime.name != name:
            return
    variant_name = record.variant_name if record is not None else None
    model = record.model_seconds if record is not None else None
    overhead = max(0.0, time.perf_counter() - started - (model or 0.0))
    variant = runtime.variants.get(variant_name) if variant_name is not None else None
    instances = variant.pool.size if variant is not None else 0
    platform.invocation_stats.record(runtime.name, variant_name, status_class, model, overhead, instances)


def _error_class(exc: SageMakerError) -> int:
    """The status class SageMaker counts a refused or failed invocation in: a ModelError by the model's
    own status (none at all: 5xx), any other error by its HTTP status."""
    if isinstance(exc, ModelError):
        original = exc.extra.get("OriginalStatusCode")
        return CLIENT_ERROR if isinstance(original, int) and 400 <= original < 500 else SERVER_ERROR
    return CLIENT_ERROR if 400 <= exc.status < 500 else SERVER_ERROR


async def _invoke(request: web.Request, *, stream: bool) -> web.StreamResponse:
    started = time.perf_counter()
    platform = request.app[PLATFORM_KEY]
    headers = request.headers
    request_id = str(uuid.uuid4())
    name = request.match_info["name"]
    runtime: EndpointRuntime | None = None
    record: InvocationRecord | None = None
    refused = refusal(request, runtime=True)
    if refused is not None:
        return runtime_error(refused, request_id)
    try:
        check_invoke_request(
            name, headers, "InvokeEndpointWithResponseStream" if stream else "InvokeEndpoint"
        )
        limit = platform.settings.max_payload_bytes
        # the size first: a body over the limit is refused (closing the connection) before anything else
        body = await read_limited(
            request,
            limit,
            lambda: ValidationError(f"Request payload is too large: the limit is {limit} bytes."),
        )
        runtime = platform.endpoints.runtime_for(name)
        if runtime.inflight >= platform.settings.endpoint_queue_limit:
            raise ThrottlingException(
                f"Endpoint {runtime.name} already has {runtime.inflight} requests in flight (the limit is "
                f"{platform.settings.endpoint_queue_limit}, SELFMAKER_ENDPOINT_QUEUE_LIMIT). Retry later."
            )
        record = InvocationRecord(
            endpoint_name=runtime.name,
            body=body,
            content_type=headers.get("Content-Type"),
            accept=headers.get("X-Amzn-SageMaker-Accept" if stream else "Accept"),
            custom_attributes=headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            target_variant=headers.get("X-Amzn-SageMaker-Target-Variant"),
            inference_id=headers.get("X-Amzn-SageMaker-Inference-Id"),
            target_container=headers.get("X-Amzn-SageMaker-Target-Container-Hostname"),
        )
        # the deployment resolved now serves this request even if an update retires it meanwhile (a guarded
        # dispatch or a cold start may await before an instance is picked): it stops once its leases are over
        runtime.lease()
        try:
            await invoke(platform.endpoints, runtime, record)
        finally:
            runtime.unlease()
        answer = _answer(record, request_id, stream=stream)
        _count(platform, name, runtime, record, OK, started)
        return answer
    except SageMakerError as exc:
        _count(platform, name, runtime, record, _error_class(exc), started)
        return runtime_error(exc, request_id)
    except Exception:
        log.exception("invocation of %s failed", name)
        _count(platform, name, runtime, record, SERVER_ERROR, started)
        return runtime_error(InternalFailure("internal error"), request_id)


#: bytes per PayloadPart event of a streamed answer
STREAM_PART_BYTES = 64 * 1024


def _answer(record: InvocationRecord, request_id: str, *, stream: bool) -> web.Response:
    """The runtime response of an answered invocation.

    With ``stream`` the answer is InvokeEndpointWithResponseStream's: the model's bytes as PayloadPart
    events (the model servers here answer whole, so the parts follow one another at once) and the
    content type in ``X-Amzn-SageMaker-Content-Type``.
    """
    payload = record.response_body or b""
    response_headers = {
        "x-Amzn-Invoked-Production-Variant": record.variant_name or "",
        "x-amzn-RequestId": request_id,
    }
    if record.response_custom_attributes:
        response_headers["X-Amzn-SageMaker-Custom-Attributes"] = header_value(
            record.response_custom_attributes
        )
    if stream:
        if record.response_content_type:
            response_headers["X-Amzn-SageMaker-Content-Type"] = record.response_content_type
        parts = b"".join(
            eventstream.event("PayloadPart", payload[i : i + STREAM_PART_BYTES])
            for i in range(0, len(payload), STREAM_PART_BYTES)
        )
        return web.Response(
            status=200, body=parts, headers=response_headers, content_type=eventstream.CONTENT_TYPE
        )
    response = web.Response(status=200, body=payload, headers=response_headers)
    if record.response_content_type:
        response.headers["Content-Type"] = record.response_content_type
    return response


async def ping(request: web.Request) -> web.Response:
    """Readiness of the platform itself."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics: endpoints, variants and model servers, the features (serverless and shadow
    variants, data capture, deployments, async), jobs."""
    refused = refusal(request, runtime=True)
    if refused is not None:
        return runtime_error(refused, str(uuid.uuid4()))
    return web.Response(
        body=render_metrics(request.app[PLATFORM_KEY]).encode("utf-8"),
        # the exposition format's own content type, so that a scraper never has to guess the format
        headers={"Content-Type": METRICS_CONTENT_TYPE, "X-Content-Type-Options": "nosniff"},
    )


def _wrap_route(
    handler: Callable[..., Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        refused = refusal(request, runtime=True)
        if refused is not None:
            return runtime_error(refused, request_id)
        try:
            return await handler(request.app[PLATFORM_KEY], request)
        except SageMakerError as exc:
            return runtime_error(exc, request_id)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return runtime_error(InternalFailure("internal error"), request_id)

    return route


#: routes answered without a signature: load balancers and health checks probe them
OPEN_PATHS = frozenset({"/ping"})
#: runtime routes whose body is an invocation payload (the middleware reads at most the payload limit)
_PAYLOAD_ROUTES = ("/invocations", "/invocations-response-stream")


@web.middleware
async def authenticate(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Refuse requests without a valid SigV4 signature (when the platform asks for them), in the error
    shape of the API called; the body is read here (it is signed) and handed to the handler."""
    auth = request.app[AUTH_KEY]
    try:
        active = auth.active()
    except Exception:  # noqa: BLE001 - a bug in the check: refused below, never let through
        active = True
    # outside the try: the handler's own exceptions (aiohttp's 404 …) are not ours
    if not active or request.path in OPEN_PATHS:
        return await handler(request)
    if console.is_console_path(request.method, request.path):
        request[console.AUTH_ACTIVE_KEY] = True
        signed = "Authorization" in request.headers or "X-Amz-Signature" in request.query
        if console.needs_no_auth(request.method, request.path) or (
            not signed and request.app[console.SESSIONS_KEY].check(request.cookies.get(COOKIE_NAME))
        ):
            return await handler(request)
        if not signed:  # a browser: to the login form; a script: 401
            if console.wants_page(request):
                return console.login_redirect()
            return runtime_error(
                NotSignedIn("Sign in at /console/login, or sign the request."), str(uuid.uuid4())
            )
    control = request.path == "/" or request.path.startswith("/service/")
    try:
        # the headers first: a stranger is refused before the platform reads any body
        identified = auth.identify(raw_path=request.raw_path, headers=request.headers)
        limit = CLIENT_MAX_SIZE
        if request.path.startswith("/endpoints/") and request.path.endswith(_PAYLOAD_ROUTES):
            limit = request.app[PLATFORM_KEY].settings.max_payload_bytes
        body = await read_limited(
            request,
            limit,
            lambda: (ValidationException if control else ValidationError)(
                f"The request body is larger than {limit} bytes."
            ),
        )
        request[BODY_KEY] = body
        auth.check(
            method=request.method,
            raw_path=request.raw_path,
            headers=request.headers,
            body=body,
            secure=request.secure,
            identified=identified,
        )
    except SageMakerError as exc:
        request_id = str(uuid.uuid4())
        if isinstance(exc, AuthError):  # who knocks matters to an operator; never the signature itself
            log.warning("refused %s %r: %s (%s)", request.method, request.path[:200], exc.code, exc.message)
        return _refused(request, exc, request_id, control=control)
    except Exception:  # a bug in the check: refused (never let through), traceback in the log only
        log.exception("authentication of %s %r failed", request.method, request.path[:200])
        return _refused(request, InternalFailure("internal error"), str(uuid.uuid4()), control=control)
    return await handler(request)


def _refused(request: web.Request, exc: SageMakerError, request_id: str, *, control: bool) -> web.Response:
    """A refusal in the error shape of the protocol called."""
    if request.path.startswith("/service/"):
        return _cbor_error(exc, request_id)
    return _control_error(exc, request_id) if control else runtime_error(exc, request_id)


def authenticator(settings: PlatformSettings) -> Authenticator:
    """The signature check of a platform with these settings: required beyond loopback, off with
    ``no_auth``, otherwise on as soon as ``<home>/credentials`` holds a key."""
    return Authenticator(
        CredentialStore(settings.home),
        settings.region,
        required=not is_loopback(settings.host),
        enabled=not settings.no_auth,
    )


class PlatformRequestHandler(web_protocol.RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse in the API's JSON error shapes.

    aiohttp answers a malformed request line or header, a bad chunk size … with a plain-text page and
    logs an ERROR traceback for each: a client's mistake is neither. Here it is a 400 in the control
    plane's shape (the runtime's under ``/endpoints/``; both carry ``message`` and ``Message``), the
    connection is closed as aiohttp does, and the log gets one WARNING line; a 5xx keeps its traceback in
    the log and says "internal error".
    """

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        text = message or str(exc or "") or HTTPStatus(status).phrase
        # aiohttp's parser messages point at the bad byte with a line of carets: keep the words
        detail = " ".join(line.strip() for line in text.splitlines() if line.strip(" ^"))[:300]
        if status < 500:
            log.warning("bad request from %s: %s", request.remote, detail)
        else:
            log.error("request from %s failed", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # aiohttp's rule: an answer already started cannot be replaced
            raise ConnectionError("Response is sent already, cannot send another response with the error")
        runtime = _runtime_path(request.path)
        error: SageMakerError
        if status >= 500:
            error = InternalFailure("internal error")
        else:
            text = f"The request could not be parsed: {detail}"
            error = ValidationError(text) if runtime else ValidationException(text)
            error.status = HTTPStatus(status)
        response = runtime_error(error, request_id) if runtime else _control_error(error, request_id)
        response.force_close()
        return response


def install_request_handler() -> None:
    """Make aiohttp's servers in this process build :class:`PlatformRequestHandler` for each connection
    (aiohttp has no option for it; `selfmaker up` is the only aiohttp server of its process)."""
    web_server.RequestHandler = PlatformRequestHandler  # type: ignore[attr-defined]


def create_app(platform: Services) -> web.Application:
    """The aiohttp application over ``platform``'s parts (the entry point starts and stops them with the
    app's lifecycle)."""
    install_request_handler()
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[authenticate])
    app[PLATFORM_KEY] = platform
    app[AUTH_KEY] = authenticator(platform.settings)
    settings = platform.settings
    app[HOST_CHECK_KEY] = HostCheck(settings.host, settings.port, settings.allowed_host_names)
    app.router.add_post("/", control_plane)
    app[console.SESSIONS_KEY] = ConsoleSessions(app[AUTH_KEY].store, settings.console_session_seconds)
    for method, path, handler in console.ROUTES:
        app.router.add_route(method, path, _wrap_route(handler))
    app.router.add_static(
        console.PREFIX + "/static", console.STATIC_DIR, show_index=False, follow_symlinks=False
    )
    app.router.add_post("/service/{service}/operation/{operation}", cbor_control_plane)
    app.router.add_get("/ping", ping)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/endpoints/{name}/invocations", invoke_endpoint)
    app.router.add_post("/endpoints/{name}/invocations-response-stream", invoke_endpoint_with_response_stream)
    for method, path, handler in platform.registry.routes:
        app.router.add_route(method, path, _wrap_route(handler))
    return app

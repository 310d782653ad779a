"""The aiohttp application of `selfmaker up`: control plane, runtime, extension routes.

* ``POST /`` with ``X-Amz-Target: SageMaker.<Operation>`` → the registered operation handler, after
  validating the body against botocore's model (JSON 1.1 protocol);
* ``POST /endpoints/{name}/invocations`` → the router (rest-json protocol of ``sagemaker-runtime``);
* ``GET /ping`` → 200 once the platform is up (readiness of ``selfmaker up`` itself);
* ``GET /metrics`` → Prometheus text of the ``@metrics_source`` hooks (:mod:`selfmaker.api.metrics`);
* routes registered by features with ``@runtime_route``.

Every route but ``/ping`` goes through :func:`authenticate` first (SigV4, :mod:`selfmaker.api.auth`)
once the platform has keys or listens beyond loopback.

The invocation itself (routing, the model server call, observers) is
:func:`selfmaker.endpoints.invoke.invoke`; this module reads the request and writes the response.

Errors are rendered here and only here: control-plane errors as ``{"__type", "message"}``; runtime errors
with the ``x-amzn-ErrorType`` header and a JSON body; anything unexpected as a 500 "internal error" with
the traceback in the log only.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from common import eventstream
from common.http import header_value
from selfmaker import logcontext
from selfmaker.api.auth import Authenticator, is_loopback
from selfmaker.api.common import BODY_KEY, compact, read_limited
from selfmaker.api.metrics import render_metrics
from selfmaker.api.validation import check_invoke_request, service_model, validate_request
from selfmaker.credentials import CredentialStore
from selfmaker.endpoints.invoke import invoke
from selfmaker.endpoints.runtime import InvocationRecord
from selfmaker.errors import (
    AuthError,
    InternalFailure,
    SageMakerError,
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


def _control_error(exc: SageMakerError, request_id: str) -> web.Response:
    body = {"__type": exc.code, "message": exc.message if exc.status < 500 else "internal error"}
    return web.Response(
        status=int(exc.status),
        body=orjson.dumps(body),
        content_type=JSON11,
        headers={"x-amzn-RequestId": request_id},
    )


def runtime_error(exc: SageMakerError, request_id: str) -> web.Response:
    """A runtime (rest-json) error response: code in ``x-amzn-ErrorType`` and the body."""
    message = exc.message if exc.status < 500 else "internal error"
    body: dict[str, Any] = {"__type": exc.code, "Message": message, "message": message, **exc.extra}
    return web.Response(
        status=int(exc.status),
        body=orjson.dumps(body),
        content_type="application/json",
        headers={"x-amzn-ErrorType": exc.code, "x-amzn-RequestId": request_id},
    )


async def control_plane(request: web.Request) -> web.Response:
    """Dispatch one JSON 1.1 control-plane call."""
    platform = request.app[PLATFORM_KEY]
    request_id = str(uuid.uuid4())
    logcontext.request_id.set(request_id)
    target = request.headers.get("X-Amz-Target", "")
    service, _, op_name = target.partition(".")
    try:
        handler = platform.registry.operations.get(op_name) if service == "SageMaker" else None
        if handler is None:
            raise UnknownOperation(
                f"Operation {target or '(no X-Amz-Target)'} is not supported by selfmaker."
            )
        raw = await read_limited(
            request,
            CLIENT_MAX_SIZE,
            lambda: ValidationException(f"The request body is larger than {CLIENT_MAX_SIZE} bytes."),
        )
        try:
            params = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError:
            raise ValidationException("The request body is not valid JSON.") from None
        if not isinstance(params, dict):
            raise ValidationException("The request body must be a JSON object.")
        model = service_model()
        if op_name in model.operation_names:
            validate_request(model.operation_model(op_name), params)
        result = await handler(platform, params)
        body = orjson.dumps(compact(result or {}))
        return web.Response(body=body, content_type=JSON11, headers={"x-amzn-RequestId": request_id})
    except SageMakerError as exc:
        if exc.status >= 500:
            log.error("%s failed: %s", op_name, exc.message)
        return _control_error(exc, request_id)
    except Exception:
        log.exception("%s failed", op_name or target)
        return _control_error(InternalFailure("internal error"), request_id)


async def invoke_endpoint(request: web.Request) -> web.StreamResponse:
    """InvokeEndpoint: route to a variant and instance, proxy the request, answer with the model's bytes."""
    return await _invoke(request, stream=False)


async def invoke_endpoint_with_response_stream(request: web.Request) -> web.StreamResponse:
    """InvokeEndpointWithResponseStream: InvokeEndpoint whose answer is an event stream of PayloadParts."""
    return await _invoke(request, stream=True)


async def _invoke(request: web.Request, *, stream: bool) -> web.StreamResponse:
    platform = request.app[PLATFORM_KEY]
    headers = request.headers
    request_id = str(uuid.uuid4())
    name = request.match_info["name"]
    try:
        check_invoke_request(
            name, headers, "InvokeEndpointWithResponseStream" if stream else "InvokeEndpoint"
        )
        runtime = platform.endpoints.runtime_for(name)
        limit = platform.settings.max_payload_bytes
        body = await read_limited(
            request,
            limit,
            lambda: ValidationError(f"Request payload is too large: the limit is {limit} bytes."),
        )
        record = InvocationRecord(
            endpoint_name=runtime.name,
            body=body,
            content_type=headers.get("Content-Type"),
            accept=headers.get("X-Amzn-SageMaker-Accept" if stream else "Accept"),
            custom_attributes=headers.get("X-Amzn-SageMaker-Custom-Attributes"),
            target_variant=headers.get("X-Amzn-SageMaker-Target-Variant"),
            inference_id=headers.get("X-Amzn-SageMaker-Inference-Id"),
        )
        await invoke(platform.endpoints, runtime, record)
        return _answer(record, request_id, stream=stream)
    except SageMakerError as exc:
        return runtime_error(exc, request_id)
    except Exception:
        log.exception("invocation of %s failed", name)
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
    """Prometheus metrics of the features (serverless and shadow variants, data capture, deployments …)."""
    return web.Response(
        text=render_metrics(request.app[PLATFORM_KEY]),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def _wrap_route(
    handler: Callable[..., Awaitable[web.StreamResponse]],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def route(request: web.Request) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
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
    control = request.path == "/"
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
        return _control_error(exc, request_id) if control else runtime_error(exc, request_id)
    except Exception:  # a bug in the check: refused (never let through), traceback in the log only
        log.exception("authentication of %s %r failed", request.method, request.path[:200])
        failure = InternalFailure("internal error")
        request_id = str(uuid.uuid4())
        return _control_error(failure, request_id) if control else runtime_error(failure, request_id)
    return await handler(request)


def authenticator(settings: PlatformSettings) -> Authenticator:
    """The signature check of a platform with these settings: required beyond loopback, off with
    ``no_auth``, otherwise on as soon as ``<home>/credentials`` holds a key."""
    return Authenticator(
        CredentialStore(settings.home),
        settings.region,
        required=not is_loopback(settings.host),
        enabled=not settings.no_auth,
    )


def create_app(platform: Services) -> web.Application:
    """The aiohttp application over ``platform``'s parts (the entry point starts and stops them with the
    app's lifecycle)."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE, middlewares=[authenticate])
    app[PLATFORM_KEY] = platform
    app[AUTH_KEY] = authenticator(platform.settings)
    app.router.add_post("/", control_plane)
    app.router.add_get("/ping", ping)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/endpoints/{name}/invocations", invoke_endpoint)
    app.router.add_post("/endpoints/{name}/invocations-response-stream", invoke_endpoint_with_response_stream)
    for method, path, handler in platform.registry.routes:
        app.router.add_route(method, path, _wrap_route(handler))
    return app

"""One invocation of an endpoint, transport aside: pre-invoke checks, routing, the call to a model server,
observers.

* :func:`invoke` runs InvokeEndpoint's pipeline on an :class:`InvocationRecord` and fills in the answer
  (the HTTP layer, :mod:`selfmaker.api.app`, reads the request and writes the response);
* :func:`call_variant` sends one request to an instance of a variant (least outstanding requests, another
  instance when the request never reached a model server) — features that send requests of their own
  (shadow copies, guarded deployments) use it too;
* :func:`outgoing_headers`: the headers that go to a model server for a record (built by
  :func:`common.http.invocation_headers`, as every caller of a model server does);
* :func:`model_error` is SageMaker's ModelError (424) for a model server's non-2xx answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from typing import TYPE_CHECKING, Any

from common.http import ConnectError, UpstreamClosed, UpstreamError, invocation_headers
from selfmaker.endpoints.runtime import (
    EndpointRuntime,
    Instance,
    InstancePool,
    InvocationRecord,
    VariantAnswer,
    VariantRuntime,
)
from selfmaker.errors import ModelError, ValidationError

if TYPE_CHECKING:
    from selfmaker.endpoints.manager import EndpointManager

log = logging.getLogger(__name__)


#: seconds this request waited for an instance (a serverless cold start, a full pool): the platform's time,
#: not the model's (SageMaker counts it in OverheadLatency, not ModelLatency)
_waited: contextvars.ContextVar[float] = contextvars.ContextVar("instance_wait", default=0.0)


async def _acquire(pool: InstancePool) -> Instance:
    began = time.perf_counter()
    try:
        return await pool.acquire()
    finally:
        _waited.set(_waited.get() + time.perf_counter() - began)


def outgoing_headers(record: InvocationRecord) -> dict[str, str]:
    """The headers a model server gets for ``record``: its content type, accept, custom attributes and
    inference id, without CR/LF."""
    return invocation_headers(
        record.content_type,
        record.accept,
        custom_attributes=record.custom_attributes,
        inference_id=record.inference_id,
    )


async def invoke(
    endpoints: EndpointManager, runtime: EndpointRuntime, record: InvocationRecord
) -> InvocationRecord:
    """Send ``record`` through ``runtime``'s router and fill in its answer (raises SageMakerError, a
    ModelError for a non-2xx answer of the model)."""
    for check in runtime.pre_invoke:
        check(record)
    headers = outgoing_headers(record)
    _waited.set(0.0)
    if runtime.dispatch is not None:  # a guarded deployment in progress picks the fleet
        began = time.perf_counter()
        try:
            variant, (status, payload, resp_headers) = await runtime.dispatch(record, record.body, headers)
        finally:
            record.model_seconds = time.perf_counter() - began - _waited.get()
    else:
        variant = runtime.route(record.target_variant)
        record.variant_name = variant.name  # the variant a failure below is counted against
        began = time.perf_counter()
        try:
            status, payload, resp_headers = await call_variant(
                endpoints, runtime, variant, record.body, headers, target_container=record.target_container
            )
        finally:
            record.model_seconds = time.perf_counter() - began - _waited.get()
    record.variant_name = variant.name
    record.latency = time.time() - record.started
    record.status = status
    if status >= 400:
        raise model_error(endpoints, runtime.name, status, payload)
    record.response_body = payload
    record.response_content_type = resp_headers.get("content-type")
    record.response_custom_attributes = resp_headers.get("x-amzn-sagemaker-custom-attributes")
    for observer in runtime.observers:
        try:
            observer(record)
        except Exception:  # noqa: BLE001 - an observer must never fail the client's request
            log.exception("invocation observer failed")
    return record


async def call_variant(
    endpoints: EndpointManager,
    runtime: EndpointRuntime,
    variant: VariantRuntime,
    body: bytes,
    headers: dict[str, str],
    *,
    attempts: int = 3,
    target_container: str | None = None,
) -> VariantAnswer:
    """POST ``body`` to ``/invocations`` of an instance of ``variant`` (least outstanding requests).

    Returns ``(status, body, headers with lower-cased names)``. Retried on another instance only when no
    connection could be made (the request never reached a model server) or the server process died before
    answering; other failures raise ModelError. A variant whose model has several containers is called
    through :func:`call_pipeline` (``target_container``: InvokeEndpoint's TargetContainerHostname).
    """
    if variant.pipeline is not None or target_container is not None:
        return await call_pipeline(endpoints, runtime, variant, body, headers, target_container, attempts)
    pool = variant.pool
    timeout = endpoints.settings.invocation_timeout
    for attempt in range(attempts):
        instance = await _acquire(pool)
        try:
            resp = await instance.upstream.request("POST", "/invocations", headers, body, timeout)
            return resp.status, resp.body, resp.headers
        except ConnectError:
            log.warning("instance %s of %s is unreachable; replacing it", instance.instance_id, runtime.name)
            endpoints.mark_dead(pool, instance)
            if attempt == attempts - 1:
                raise ModelError(
                    f'Received server error (0) from primary with message "The model server of variant '
                    f'{variant.name} is not reachable.". See `selfmaker logs {runtime.name}` '
                    "for more information.",
                    extra=_model_error_extra(endpoints, runtime.name, 0, "model server not reachable"),
                ) from None
        except asyncio.TimeoutError:
            raise ModelError(
                'Received server error (0) from primary with message "Your invocation timed out '
                "while waiting for a response from container primary. Review the latency metrics for "
                'each container in Amazon CloudWatch, resolve the issue, and try again.". '
                f"See `selfmaker logs {runtime.name}` for more information.",
                extra=_model_error_extra(endpoints, runtime.name, 0, "timeout"),
            ) from None
        except UpstreamClosed as exc:
            if instance.handle.alive() or attempt == attempts - 1:
                raise _connection_error(endpoints, runtime, exc) from None
            # The connection dropped without an answer because the model server died: the request died with
            # it, so it goes to another instance, as for a server that could not be reached.
            log.warning(
                "instance %s of %s died during a request; replacing it", instance.instance_id, runtime.name
            )
            endpoints.mark_dead(pool, instance)
        except UpstreamError as exc:
            raise _connection_error(endpoints, runtime, exc) from None
        finally:
            pool.release(instance)
    raise AssertionError("unreachable")


def _connection_error(
    endpoints: EndpointManager, runtime: EndpointRuntime, exc: Exception, container: str = "primary"
) -> ModelError:
    return ModelError(
        f'Received server error (0) from {container} with message "{exc}". '
        f"See `selfmaker logs {runtime.name}` for more information.",
        extra=_model_error_extra(endpoints, runtime.name, 0, "connection error"),
    )


def _model_error_extra(
    endpoints: EndpointManager, endpoint: str, status: int, original: str
) -> dict[str, Any]:
    settings = endpoints.settings
    return {
        "ErrorCode": "CLIENT_ERROR_FROM_MODEL" if 400 <= status < 500 else "SERVER_ERROR_FROM_MODEL",
        "OriginalStatusCode": status,
        "OriginalMessage": original,
        "LogStreamArn": (
            f"arn:aws:logs:{settings.region}:{settings.account_id}:log-group:"
            f"/aws/sagemaker/Endpoints/{endpoint}"
        ),
    }


def model_error(
    endpoints: EndpointManager, endpoint: str, status: int, payload: bytes, container: str = "primary"
) -> ModelError:
    """SageMaker's ModelError (424) for a model server's non-2xx answer (``container``: the hostname of the
    pipeline container that answered it)."""
    original = payload.decode("utf-8", errors="replace")[:4096]
    kind = "client" if 400 <= status < 500 else "server"
    return ModelError(
        f'Received {kind} error ({status}) from {container} with message "{original}". '
        f"See `selfmaker logs {endpoint}` in account {endpoints.settings.account_id} for more information.",
        extra=_model_error_extra(endpoints, endpoint, status, original),
    )


def _stages(variant: VariantRuntime, endpoint: str, target: str | None) -> tuple[int, int]:
    """The ``[first, last)`` positions of the containers a request goes through (ValidationError for a
    TargetContainerHostname the variant's execution mode refuses)."""
    pipeline = variant.pipeline
    if pipeline is None or pipeline.mode != "Direct":
        if target is not None:
            raise ValidationError(
                f"TargetContainerHostname was specified, but endpoint {endpoint} (production variant "
                f"{variant.name}) is not configured for direct invocation: its model's "
                "InferenceExecutionConfig.Mode is not Direct."
            )
        return 0, len(pipeline.hostnames) if pipeline is not None else 1
    if target is None:
        raise ValidationError(
            f"Endpoint {endpoint} (production variant {variant.name}) is configured for direct invocation: "
            "the request must specify TargetContainerHostname."
        )
    position = pipeline.position(target)
    if position is None:
        raise ValidationError(
            f"The container hostname {target} was not found for endpoint {endpoint} (production variant "
            f"{variant.name}); its containers are {', '.join(pipeline.hostnames)}."
        )
    return position, position + 1


async def call_pipeline(
    endpoints: EndpointManager,
    runtime: EndpointRuntime,
    variant: VariantRuntime,
    body: bytes,
    headers: dict[str, str],
    target: str | None,
    attempts: int = 3,
) -> VariantAnswer:
    """One request through an instance of a variant whose model has several containers.

    Serial: container 1 gets the request; each container's answer is the next one's request, with the
    answer's Content-Type as its Content-Type; only the last one gets the client's Accept (the others
    answer in their default). Direct: only the TargetContainerHostname container gets it. A non-2xx answer
    of any container is a ModelError naming that container. The answer is the last container's.
    """
    first, last = _stages(variant, runtime.name, target)
    timeout = endpoints.settings.invocation_timeout
    pool = variant.pool
    for attempt in range(attempts):
        instance = await _acquire(pool)
        hostname = ""
        try:
            stages = instance.stages or [("primary", instance.upstream)]
            payload = body
            status, resp_headers = 200, dict[str, str]()
            for position in range(first, last):
                hostname, upstream = stages[position]
                step_headers = dict(headers)
                if position > first:  # the previous container's answer, as it typed it
                    step_headers["Content-Type"] = (
                        resp_headers.get("content-type") or "application/octet-stream"
                    )
                if position < last - 1:  # the client's Accept is for the answer, i.e. the last container
                    step_headers.pop("Accept", None)
                resp = await upstream.request("POST", "/invocations", step_headers, payload, timeout)
                status, payload, resp_headers = resp.status, resp.body, resp.headers
                if status >= 400:
                    raise model_error(endpoints, runtime.name, status, payload, hostname)
            return status, payload, resp_headers
        except ConnectError:
            log.warning("instance %s of %s is unreachable; replacing it", instance.instance_id, runtime.name)
            endpoints.mark_dead(pool, instance)
            if attempt == attempts - 1:
                raise ModelError(
                    f'Received server error (0) from {hostname} with message "The model server of variant '
                    f'{variant.name} is not reachable.". See `selfmaker logs {runtime.name}` '
                    "for more information.",
                    extra=_model_error_extra(endpoints, runtime.name, 0, "model server not reachable"),
                ) from None
        except asyncio.TimeoutError:
            raise ModelError(
                f'Received server error (0) from {hostname} with message "Your invocation timed out '
                f"while waiting for a response from container {hostname}. Review the latency metrics for "
                'each container in Amazon CloudWatch, resolve the issue, and try again.". '
                f"See `selfmaker logs {runtime.name}` for more information.",
                extra=_model_error_extra(endpoints, runtime.name, 0, "timeout"),
            ) from None
        except UpstreamClosed as exc:
            if instance.handle.alive() or attempt == attempts - 1:
                raise _connection_error(endpoints, runtime, exc, hostname) from None
            log.warning(
                "instance %s of %s died during a request; replacing it", instance.instance_id, runtime.name
            )
            endpoints.mark_dead(pool, instance)
        except UpstreamError as exc:
            raise _connection_error(endpoints, runtime, exc, hostname) from None
        finally:
            pool.release(instance)
    raise AssertionError("unreachable")

"""Asynchronous inference: ``AsyncInferenceConfig``, InvokeEndpointAsync, durable queues, worker processes,
scale to zero, SNS notifications.

The registrations are here; the code is in :mod:`.supervisor`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from aiohttp import web

from selfmaker.api.metrics import Metrics
from selfmaker.api.registry import (
    config_check,
    endpoint_deleted_hook,
    endpoint_hook,
    lifecycle,
    metrics_source,
    runtime_route,
)
from selfmaker.features.async_inference import supervisor as async_inference
from selfmaker.metricstore import dims_of

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime
    from selfmaker.endpoints.stats import InvocationStats
    from selfmaker.services import Services


@config_check
def check_async_inference_config(platform: Services, params: dict[str, Any]) -> list[str]:
    """Validate and claim ``AsyncInferenceConfig``."""
    return async_inference.check_config(platform, params)


@endpoint_hook
def attach_async_inference(platform: Services, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Mark deployments of async endpoint configs (workers follow their instances)."""
    async_inference.attach(platform, runtime, config)


@endpoint_deleted_hook
async def forget_async_queue(platform: Services, name: str) -> None:
    """DeleteEndpoint drops the endpoint's queued requests (as SageMaker does)."""
    await async_inference.forget(platform, name)


@runtime_route("POST", "/endpoints/{name}/async-invocations")
async def invoke_endpoint_async(platform: Services, request: web.Request) -> web.Response:
    """InvokeEndpointAsync."""
    return await async_inference.invoke_async(platform, request)


@metrics_source
def async_metrics(platform: Services) -> Metrics:
    """Backlog, age of the oldest request and capacity of async endpoints."""
    found = Metrics("Async")
    sup = platform.features.get(async_inference.AsyncSupervisor)
    if sup is not None:
        found.lines.extend(sup.metrics())
    return found


@lifecycle("startup")
async def start_async_inference(platform: Services) -> None:
    """Start the async supervisor (after endpoints are restored); sample its backlogs each second."""
    await async_inference.start(platform)
    platform.invocation_stats.samplers.append(functools.partial(sample_backlogs, platform))


def sample_backlogs(platform: Services, stats: InvocationStats) -> None:
    """``ApproximateBacklogSize``, ``ApproximateBacklogSizePerInstance``, ``ApproximateAgeOfOldestRequest``
    (seconds) and ``HasBacklogWithoutCapacity`` (SageMaker's async endpoint metrics, dimension
    ``EndpointName``) from the supervisor's last look at each queue."""
    for runtime in list(platform.endpoints.live.values()):
        state = runtime.state.get(async_inference.AsyncEndpoint)
        if state is None:
            continue
        dims = dims_of({"EndpointName": runtime.name})
        stats.sample("ApproximateBacklogSize", dims, state.backlog)
        instances = sum(v.pool.size for v in runtime.variants.values())
        stats.sample("ApproximateBacklogSizePerInstance", dims, state.backlog / max(1, instances))
        stats.sample("ApproximateAgeOfOldestRequest", dims, state.oldest_age)
        stats.sample("HasBacklogWithoutCapacity", dims, 1.0 if state.backlog and not instances else 0.0)


@lifecycle("shutdown")
async def stop_async_inference(platform: Services) -> None:
    """Stop async workers gracefully (before model servers stop)."""
    await async_inference.stop(platform)

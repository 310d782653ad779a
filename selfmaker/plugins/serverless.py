"""Registration of serverless variants and of ``GET /metrics`` (code in :mod:`selfmaker.serverless`)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

from aiohttp import web

from selfmaker.api.registry import config_check, endpoint_hook, lifecycle, pool_factory, runtime_route
from selfmaker.serverless import integration, observe

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime, InstancePool, VariantContext
    from selfmaker.platform import Platform

_PUBLISHER = "serverless_metrics_publisher"


@config_check
def check_serverless_config(platform: Platform, params: dict[str, Any]) -> set[str] | None:
    """Validate and claim ``ServerlessConfig``."""
    return integration.check_config(platform, params)


@pool_factory
def serverless_pool(platform: Platform, ctx: VariantContext) -> InstancePool | None:
    """Scale-from-zero pools for variants with ``ServerlessConfig``."""
    return integration.make_pool(platform, ctx)


@endpoint_hook
async def attach_serverless(platform: Platform, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Warm ``ProvisionedConcurrency`` instances; cap serverless payloads."""
    await integration.attach(platform, runtime, config)


@runtime_route("GET", "/metrics")
async def metrics(platform: Platform, request: web.Request) -> web.Response:
    """Prometheus metrics of serverless and shadow variants, data capture, deployments and extensions."""
    return web.Response(
        text=observe.render_metrics(platform),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


@lifecycle("startup")
async def start_serverless(platform: Platform) -> None:
    """Install the fork executor, start the template, publish variant metrics for ``selfmaker status``."""
    await integration.start(platform)
    platform.extensions[_PUBLISHER] = asyncio.get_running_loop().create_task(
        observe.publish_loop(platform), name="variant-metrics-publisher"
    )


@lifecycle("shutdown")
async def stop_serverless(platform: Platform) -> None:
    """Stop publishing; cancel a template start in progress."""
    task = platform.extensions.pop(_PUBLISHER, None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await integration.stop(platform)

"""Registration of asynchronous inference (the code lives in :mod:`selfmaker.async_inference`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from selfmaker import async_inference
from selfmaker.api.registry import config_check, endpoint_deleted_hook, endpoint_hook, lifecycle, runtime_route

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime
    from selfmaker.platform import Platform


@config_check
def check_async_inference_config(platform: Platform, params: dict[str, Any]) -> list[str]:
    """Validate and claim ``AsyncInferenceConfig``."""
    return async_inference.check_config(platform, params)


@endpoint_hook
def attach_async_inference(platform: Platform, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Mark deployments of async endpoint configs (workers follow their instances)."""
    async_inference.attach(platform, runtime, config)


@endpoint_deleted_hook
async def forget_async_queue(platform: Platform, name: str) -> None:
    """DeleteEndpoint drops the endpoint's queued requests (as SageMaker does)."""
    await async_inference.forget(platform, name)


@runtime_route("POST", "/endpoints/{name}/async-invocations")
async def invoke_endpoint_async(platform: Platform, request: web.Request) -> web.Response:
    """InvokeEndpointAsync."""
    return await async_inference.invoke_async(platform, request)


@lifecycle("startup")
async def start_async_inference(platform: Platform) -> None:
    """Start the async supervisor (after endpoints are restored)."""
    await async_inference.start(platform)


@lifecycle("shutdown")
async def stop_async_inference(platform: Platform) -> None:
    """Stop async workers gracefully (before model servers stop)."""
    await async_inference.stop(platform)

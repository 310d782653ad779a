"""Serverless variants: scale from zero, ``MaxConcurrency`` throttling, ``MemorySizeInMB`` limits and fast
cold starts (model servers forked from a pre-imported template by :mod:`selfmaker.executors.forker`).

The registrations are here; the code is in :mod:`.hooks` (platform glue), :mod:`.pool` (the scale-to-zero
pool), :mod:`.limiter` (concurrency slots shared across processes) and :mod:`.settings`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selfmaker.api.metrics import Metrics
from selfmaker.api.registry import (
    config_check,
    endpoint_hook,
    lifecycle,
    metrics_source,
    pool_factory,
    variant_update,
)
from selfmaker.features.serverless import hooks

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime, InstancePool, VariantContext, VariantRuntime
    from selfmaker.services import Services


@config_check
def check_serverless_config(platform: Services, params: dict[str, Any]) -> set[str] | None:
    """Validate and claim ``ServerlessConfig``."""
    return hooks.check_config(platform, params)


@pool_factory
def serverless_pool(platform: Services, ctx: VariantContext) -> InstancePool | None:
    """Scale-from-zero pools for variants with ``ServerlessConfig``."""
    return hooks.make_pool(platform, ctx)


@endpoint_hook
async def attach_serverless(platform: Services, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Warm ``ProvisionedConcurrency`` instances; cap serverless payloads."""
    await hooks.attach(platform, runtime, config)


@variant_update
def update_serverless(
    platform: Services, variant: VariantRuntime, item: dict[str, Any], index: int
) -> Callable[[], dict[str, Any]] | None:
    """``ServerlessUpdateConfig`` of UpdateEndpointWeightsAndCapacities: MaxConcurrency and
    ProvisionedConcurrency of a live serverless variant."""
    if not item.get("ServerlessUpdateConfig"):
        return None
    config = hooks.check_update(variant, item["ServerlessUpdateConfig"], index)
    return lambda: hooks.apply_update(variant, config)


@metrics_source
def serverless_metrics(platform: Services) -> Metrics:
    """Counters of serverless variants."""
    return hooks.metrics(platform)


@lifecycle("startup")
async def start_serverless(platform: Services) -> None:
    """Install the fork executor and start the template when every process variant forks; sample the
    serverless variants' figures each second."""
    await hooks.start(platform)
    platform.invocation_stats.samplers.append(hooks.ServerlessSampler(platform))


@lifecycle("shutdown")
async def stop_serverless(platform: Services) -> None:
    """Cancel a template start in progress."""
    await hooks.stop(platform)

"""Shadow variants: copies of production requests sent to shadow variants, answers compared, never
returned to the caller.

The registrations are here; the code is in :mod:`.hooks` (platform glue) and :mod:`.mirror` (sampling,
bounded in-flight copies, comparison and statistics).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.metrics import Metrics
from selfmaker.api.registry import config_check, endpoint_hook, lifecycle, metrics_source
from selfmaker.features.shadow import hooks

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime
    from selfmaker.services import Services


@config_check
def check_shadow_variants(platform: Services, params: dict[str, Any]) -> set[str] | None:
    """Claim ``ShadowProductionVariants``."""
    return hooks.check_config(platform, params)


@endpoint_hook
async def attach_shadow_variants(
    platform: Services, runtime: EndpointRuntime, config: dict[str, Any]
) -> None:
    """Bring up shadow variants and mirror production traffic to them."""
    await hooks.attach(platform, runtime, config)


@metrics_source
def shadow_metrics(platform: Services) -> Metrics:
    """Counters of shadow variants."""
    return hooks.metrics(platform)


@lifecycle("shutdown")
async def stop_shadow_copies(platform: Services) -> None:
    """Cancel shadow copies in flight."""
    await hooks.stop(platform)

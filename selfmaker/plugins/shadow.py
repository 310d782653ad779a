"""Registration of shadow variants (code in :mod:`selfmaker.shadow` and :mod:`selfmaker.shadow_hooks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker import shadow_hooks
from selfmaker.api.registry import config_check, endpoint_hook, lifecycle

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime
    from selfmaker.platform import Platform


@config_check
def check_shadow_variants(platform: Platform, params: dict[str, Any]) -> set[str] | None:
    """Claim ``ShadowProductionVariants``."""
    return shadow_hooks.check_config(platform, params)


@endpoint_hook
async def attach_shadow_variants(
    platform: Platform, runtime: EndpointRuntime, config: dict[str, Any]
) -> None:
    """Bring up shadow variants and mirror production traffic to them."""
    await shadow_hooks.attach(platform, runtime, config)


@lifecycle("shutdown")
async def stop_shadow_copies(platform: Platform) -> None:
    """Cancel shadow copies in flight."""
    await shadow_hooks.stop(platform)

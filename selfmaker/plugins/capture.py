"""Registration of data capture (code in :mod:`selfmaker.capture` and :mod:`selfmaker.capture_hooks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker import capture_hooks
from selfmaker.api.registry import config_check, endpoint_hook, lifecycle

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime
    from selfmaker.platform import Platform


@config_check
def check_data_capture(platform: Platform, params: dict[str, Any]) -> set[str] | None:
    """Validate and claim ``DataCaptureConfig``."""
    return capture_hooks.check_config(platform, params)


@endpoint_hook
def attach_data_capture(platform: Platform, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Capture sampled requests of deployments with ``DataCaptureConfig``."""
    capture_hooks.attach(platform, runtime, config)


@lifecycle("startup")
async def start_capture_writer(platform: Platform) -> None:
    """Start the background writer."""
    await capture_hooks.start(platform)


@lifecycle("shutdown")
async def stop_capture_writer(platform: Platform) -> None:
    """Flush and stop the background writer."""
    await capture_hooks.stop(platform)

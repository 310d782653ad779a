"""Data capture: sampled requests and answers of endpoints with ``DataCaptureConfig`` written as SageMaker's
JSON Lines capture files (S3 or ``file://``).

The registrations are here; the code is in :mod:`.hooks` (platform glue) and :mod:`.writer` (policy,
records, the background writer).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.metrics import Metrics
from selfmaker.api.registry import config_check, endpoint_hook, lifecycle, metrics_source
from selfmaker.features.capture import hooks

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime
    from selfmaker.services import Services


@config_check
def check_data_capture(platform: Services, params: dict[str, Any]) -> set[str] | None:
    """Validate and claim ``DataCaptureConfig``."""
    return hooks.check_config(platform, params)


@endpoint_hook
def attach_data_capture(platform: Services, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Capture sampled requests of deployments with ``DataCaptureConfig``."""
    hooks.attach(platform, runtime, config)


@metrics_source
def capture_metrics(platform: Services) -> Metrics:
    """Counters of the capture writer."""
    return hooks.metrics(platform)


@lifecycle("startup")
async def start_capture_writer(platform: Services) -> None:
    """Start the background writer."""
    await hooks.start(platform)


@lifecycle("shutdown")
async def stop_capture_writer(platform: Services) -> None:
    """Flush and stop the background writer."""
    await hooks.stop(platform)

"""Deployment guardrails: UpdateEndpoint's ``BlueGreenUpdatePolicy`` (all at once, canary, linear),
baking, CloudWatch-style alarms on the new fleet and automatic rollback.

The registrations are here; the code is in :mod:`.hooks` (platform glue: the guard, the per-request
dispatcher between fleets) and :mod:`.bluegreen` (traffic steps, alarm rules, the deployment loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.metrics import Metrics
from selfmaker.api.registry import deployment_strategy, lifecycle, metrics_source, update_check
from selfmaker.features.guardrails import hooks

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime
    from selfmaker.services import Services
    from selfmaker.state import Record


@lifecycle("startup")
async def install_deployment_guard(platform: Services) -> None:
    """Read the alarm setting once and keep the guard."""
    hooks.install(platform)


@update_check
def check_deployment_config(
    platform: Services,
    params: dict[str, Any],
    record: Record,
    config: dict[str, Any],
    retain: dict[str, dict[str, Any]],
) -> None:
    """Validate UpdateEndpoint's ``DeploymentConfig`` and its alarms."""
    guard = platform.features.get(hooks.DeploymentGuard)
    if guard is not None:
        guard.check(params, record, config, retain)


@deployment_strategy
async def blue_green(
    platform: Services, name: str, old: EndpointRuntime, new: EndpointRuntime, config: dict[str, Any]
) -> str | None:
    """Shift traffic per the pending ``DeploymentConfig``; a reason means rolled back."""
    guard = platform.features.get(hooks.DeploymentGuard)
    return None if guard is None else await guard.run(name, old, new, config)


@metrics_source
def deployment_metrics(platform: Services) -> Metrics:
    """Counters of guarded deployments."""
    return hooks.metrics(platform)

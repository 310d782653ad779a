"""Registration of deployment guardrails (code in :mod:`selfmaker.guardrails` and
:mod:`selfmaker.guardrails_hooks`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from selfmaker import guardrails_hooks
from selfmaker.api.registry import lifecycle

if TYPE_CHECKING:
    from selfmaker.platform import Platform


@lifecycle("startup")
async def install_deployment_guard(platform: Platform) -> None:
    """Blue/green traffic shifting, baking and auto-rollback for UpdateEndpoint."""
    guardrails_hooks.install(platform)

"""Shadow variants inside ``selfmaker up`` (registered by :mod:`selfmaker.plugins.shadow`).

For a deployment of an endpoint config with ``ShadowProductionVariants`` this builds a variant runtime
per shadow (model data, pool, instances — the same path production variants take, serverless included)
and adds an observer that hands every answered production request to the endpoint's
:class:`~selfmaker.shadow.ShadowMirror`. Statistics live per endpoint (they survive updates) in
``platform.extensions["shadow"]``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING, Any

from selfmaker.shadow import Answer, ShadowMirror, shadow_fraction

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime, InvocationRecord, VariantRuntime
    from selfmaker.platform import Platform

log = logging.getLogger(__name__)

KEY = "shadow"


def mirrors(platform: Platform) -> dict[str, ShadowMirror]:
    """Shadow mirrors by lower-cased endpoint name."""
    current = platform.extensions.get(KEY)
    if current is None:
        current = platform.extensions[KEY] = {}
    return current


def check_config(platform: Platform, params: dict[str, Any]) -> set[str] | None:
    """Claim ``ShadowProductionVariants`` (the core checks names and models)."""
    return {"ShadowProductionVariants"} if params.get("ShadowProductionVariants") else None


def _headers(record: InvocationRecord) -> dict[str, str]:
    def clean(value: str) -> str:
        return value.replace("\r", "").replace("\n", "")

    headers = {"Content-Type": clean(record.content_type or "application/octet-stream")}
    if record.accept:
        headers["Accept"] = clean(record.accept)
    if record.custom_attributes:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = clean(record.custom_attributes)
    if record.inference_id:
        headers["X-Amzn-SageMaker-Inference-Id"] = clean(record.inference_id)
    return headers


async def _send(
    platform: Platform, runtime: EndpointRuntime, shadow: VariantRuntime, record: InvocationRecord
) -> Answer:
    from selfmaker.api.app import call_variant
    from selfmaker.capture_hooks import capture

    status, body, headers = await call_variant(platform, runtime, shadow, record.body, _headers(record))
    content_type = headers.get("content-type")  # call_variant lower-cases header names
    if 200 <= status < 300:
        capture(
            platform, runtime, shadow.name, record, response_body=body, response_content_type=content_type
        )
    return Answer(status, body, content_type)


async def attach(platform: Platform, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Bring up the shadow variants of ``config`` and mirror production traffic to them."""
    shadows = config.get("ShadowProductionVariants") or []
    if not shadows:
        return
    base = platform.settings.work_dir / "endpoints" / runtime.name.lower() / f"shadow-{uuid.uuid4().hex[:12]}"
    try:
        for variant in shadows:
            # the manager's own variant builder: model data, pool factories (serverless too), instances
            built = await platform.endpoints._build_variant(  # noqa: SLF001
                runtime.name, variant, {}, base, runtime.attributes.get("models")
            )
            runtime.shadow_variants[built.name] = built
            if built.config.get("ServerlessConfig"):
                await built.pool.start(0)  # ProvisionedConcurrency of a serverless shadow
    except BaseException:
        await asyncio.gather(
            *(v.pool.stop() for v in runtime.shadow_variants.values()), return_exceptions=True
        )
        runtime.shadow_variants.clear()
        raise
    mirror = mirrors(platform).get(runtime.name.lower())
    if mirror is None:
        mirror = mirrors(platform)[runtime.name.lower()] = ShadowMirror(
            timeout=platform.settings.invocation_timeout
        )
    for name in runtime.shadow_variants:
        mirror.stats_for(name)

    def observe(record: InvocationRecord) -> None:
        primary = runtime.variants.get(record.variant_name or "")
        if primary is None or record.response_body is None:
            return
        answer = Answer(record.status or 200, record.response_body, record.response_content_type)
        for shadow in runtime.shadow_variants.values():
            mirror.mirror(
                shadow.name,
                lambda shadow=shadow: _send(platform, runtime, shadow, record),
                answer,
                shadow_fraction(shadow.weight, primary.weight),
            )

    runtime.observers.append(observe)


async def stop(platform: Platform) -> None:
    """Cancel shadow copies still in flight."""
    for mirror in mirrors(platform).values():
        await mirror.close()


def snapshots(platform: Platform) -> dict[str, dict[str, dict[str, Any]]]:
    """``{endpoint: {shadow variant: counters}}`` of live endpoints."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for runtime in list(platform.endpoints.live.values()):
        mirror = mirrors(platform).get(runtime.name.lower())
        if mirror is not None and runtime.shadow_variants:
            out[runtime.name] = {
                name: stats.snapshot()
                for name, stats in mirror.stats.items()
                if name in runtime.shadow_variants
            }
    return out

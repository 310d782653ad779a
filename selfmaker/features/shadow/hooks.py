"""Shadow variants inside ``selfmaker up`` (registered in :mod:`selfmaker.features.shadow`).

For a deployment of an endpoint config with ``ShadowProductionVariants`` this builds a variant runtime
per shadow (model data, pool, instances — the same path production variants take, serverless included)
and adds an observer that hands every answered production request to the endpoint's
:class:`~selfmaker.features.shadow.mirror.ShadowMirror`. Statistics live per endpoint (they survive
updates) in the platform's :class:`ShadowMirrors`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from typing import TYPE_CHECKING, Any

from selfmaker.api.metrics import Buckets, Metrics, family, histogram
from selfmaker.endpoints.invoke import call_variant, outgoing_headers
from selfmaker.features.capture.hooks import capture
from selfmaker.features.shadow.mirror import Answer, ShadowMirror, shadow_fraction

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime, InvocationRecord, VariantRuntime
    from selfmaker.services import Services

log = logging.getLogger(__name__)


class ShadowMirrors(dict[str, ShadowMirror]):
    """The platform's shadow mirrors by lower-cased endpoint name (kept in ``platform.features``)."""


def mirrors(platform: Services) -> ShadowMirrors:
    """Shadow mirrors by lower-cased endpoint name."""
    return platform.features.setdefault(ShadowMirrors, ShadowMirrors)


def check_config(platform: Services, params: dict[str, Any]) -> set[str] | None:
    """Claim ``ShadowProductionVariants`` (the core checks names and models)."""
    return {"ShadowProductionVariants"} if params.get("ShadowProductionVariants") else None


async def _send(
    platform: Services, runtime: EndpointRuntime, shadow: VariantRuntime, record: InvocationRecord
) -> Answer:
    status, body, headers = await call_variant(
        platform.endpoints,
        runtime,
        shadow,
        record.body,
        outgoing_headers(record),
        # a shadow serving a Direct multi-container model gets the container the request named
        target_container=record.target_container if shadow.pipeline is not None else None,
    )
    content_type = headers.get("content-type")  # call_variant lower-cases header names
    if 200 <= status < 300:
        capture(
            platform, runtime, shadow.name, record, response_body=body, response_content_type=content_type
        )
    return Answer(status, body, content_type)


async def attach(platform: Services, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Bring up the shadow variants of ``config`` and mirror production traffic to them."""
    shadows = config.get("ShadowProductionVariants") or []
    if not shadows:
        return
    base = platform.settings.work_dir / "endpoints" / runtime.name.lower() / f"shadow-{uuid.uuid4().hex[:12]}"
    try:
        for variant in shadows:
            # the production variants' builder: model data, pool factories (serverless too), instances
            built = await platform.endpoints.builder.build_variant(
                runtime.name, variant, {}, base, runtime.models
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
                functools.partial(_send, platform, runtime, shadow, record),
                answer,
                shadow_fraction(shadow.weight, primary.weight),
            )

    runtime.observers.append(observe)


async def stop(platform: Services) -> None:
    """Cancel shadow copies still in flight."""
    for mirror in mirrors(platform).values():
        await mirror.close()


def snapshots(platform: Services) -> dict[str, dict[str, dict[str, Any]]]:
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


#: (metric, help) of a shadow variant's counters
_COUNTERS = (
    ("requests", "Copies of production requests sent to a shadow variant."),
    ("errors", "Shadow copies answered non-2xx or not at all."),
    ("dropped", "Shadow copies dropped because too many were in flight."),
    ("compared", "Shadow answers compared with the production answer."),
    ("mismatches", "Shadow answers that differ from the production answer."),
)


def metrics(platform: Services) -> Metrics:
    """The shadow variants' counters and latency histograms (``Shadow`` in ``selfmaker status``)."""
    data = snapshots(platform)
    found = Metrics("Shadow", data)
    rows = [(ep, v, s) for ep, d in data.items() for v, s in d.items()]
    for metric, help_ in _COUNTERS:
        family(
            found.lines,
            f"selfmaker_shadow_{metric}_total",
            "counter",
            help_,
            [({"endpoint": ep, "variant": v}, s.get(metric)) for ep, v, s in rows],
        )
    latencies: list[tuple[dict[str, str], Buckets | None]] = []
    for runtime in list(platform.endpoints.live.values()):
        mirror = mirrors(platform).get(runtime.name.lower())
        if mirror is None:
            continue
        for name in runtime.shadow_variants:
            stats = mirror.stats.get(name)
            if stats is not None:
                latencies.append(({"endpoint": runtime.name, "variant": name}, stats.latency.value()))
    histogram(
        found.lines,
        "selfmaker_shadow_latency_seconds",
        "Seconds from sending a shadow copy to its answer (or failure).",
        latencies,
    )
    return found

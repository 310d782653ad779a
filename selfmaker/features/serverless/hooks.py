"""Serverless variants inside ``selfmaker up`` (registered in :mod:`selfmaker.features.serverless`).

* ``check_config``: validates and claims ``ServerlessConfig`` in CreateEndpointConfig.
* ``make_pool``: a :class:`~selfmaker.features.serverless.pool.ServerlessPool` for every variant with a
  ``ServerlessConfig`` (production or shadow).
* ``attach``: warms ``ProvisionedConcurrency`` instances before the deployment takes traffic and refuses
  bodies over 4 MB on endpoints whose production variants are all serverless.
* ``check_update`` / ``apply_update``: ``ServerlessUpdateConfig`` of UpdateEndpointWeightsAndCapacities.
* ``metrics``: the pools' counters for ``/metrics`` and ``selfmaker status``.
* ``start`` / ``stop``: install the :class:`~selfmaker.executors.forker.ForkExecutor` as the ``process``
  executor (it forks serverless instances from the pre-imported template, and every other process
  instance too when ``SELFMAKER_SERVERLESS_FORK_ALL_PROCESS_VARIANTS`` is set) and start the template.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from selfmaker.api.metrics import Metrics, family, histogram
from selfmaker.errors import ValidationError, ValidationException
from selfmaker.executors.forker import ForkExecutor
from selfmaker.executors.process import ProcessExecutor
from selfmaker.features.serverless.pool import ServerlessPool
from selfmaker.features.serverless.settings import (
    ServerlessConfig,
    ServerlessSettings,
    validate_serverless_config,
)
from selfmaker.metricstore import dims_of

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import (
        EndpointRuntime,
        InstancePool,
        InvocationRecord,
        VariantContext,
        VariantRuntime,
    )
    from selfmaker.endpoints.stats import InvocationStats
    from selfmaker.services import Services

log = logging.getLogger(__name__)


@dataclass
class ServerlessState:
    """What the platform keeps for serverless variants (in ``platform.features``)."""

    settings: ServerlessSettings
    executor: ForkExecutor | None = None
    warming: set[asyncio.Task[Any]] = field(default_factory=set)
    warm_requested: bool = False
    #: the template's start, awaited (bounded) before a serverless endpoint goes InService
    warm_task: asyncio.Task[Any] | None = None


def state(platform: Services) -> ServerlessState:
    """The serverless state, created with settings read once on first use."""
    return platform.features.setdefault(ServerlessState, lambda: ServerlessState(ServerlessSettings()))


def check_config(platform: Services, params: dict[str, Any]) -> set[str] | None:
    """Validate ``ServerlessConfig`` of every variant; claim the feature when used."""
    used = False
    for member in ("ProductionVariants", "ShadowProductionVariants"):
        for index, variant in enumerate(params.get(member) or [], start=1):
            config = variant.get("ServerlessConfig")
            if not config:
                continue
            used = True
            path = f"{member[0].lower()}{member[1:]}.{index}.member.serverlessConfig"
            problems = validate_serverless_config(config, path)
            if problems:
                raise ValidationException(
                    f"{len(problems)} validation error{'s' if len(problems) > 1 else ''} "
                    f"detected: {'; '.join(problems)}"
                )
            if variant.get("AcceleratorType"):
                raise ValidationException(
                    f"Variant '{variant.get('VariantName')}': serverless variants cannot use "
                    "an AcceleratorType (serverless inference is CPU-only)."
                )
    return {"ServerlessConfig"} if used else None


def make_pool(platform: Services, ctx: VariantContext) -> InstancePool | None:
    """A serverless pool for variants with ``ServerlessConfig``."""
    config = ctx.variant.get("ServerlessConfig")
    if not config:
        return None
    st = state(platform)
    warm_template(st)
    variant = str(ctx.variant["VariantName"])
    settings = platform.settings
    slot_dir = settings.home / "run" / "serverless" / ctx.endpoint_name.lower() / variant.lower()
    extra = {
        "ErrorCode": "SERVER_ERROR_FROM_MODEL",
        "LogStreamArn": f"arn:aws:logs:{settings.region}:{settings.account_id}:log-group:"
        "/aws/sagemaker/Endpoints/"
        f"{ctx.endpoint_name}",
    }
    executor = st.executor

    def failure_detail() -> str | None:
        return executor.recent_failure(ctx.endpoint_name, variant) if executor is not None else None

    return ServerlessPool(
        ctx,
        config=ServerlessConfig.from_request(config),
        settings=st.settings,
        slot_dir=slot_dir,
        error_extra=extra,
        failure_detail=failure_detail,
    )


async def attach(platform: Services, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Wait for the template, warm provisioned instances; cap serverless payloads."""
    pools = [v.pool for v in runtime.all_variants() if isinstance(v.pool, ServerlessPool)]
    if pools:
        # InService means "a call now is a normal cold start": a first call must not also wait for the
        # template's imports (they took ~1 s while a first call waited behind them)
        await wait_for_template(state(platform))
    for pool in pools:
        await pool.start()
    production = list(runtime.variants.values())
    if production and all(isinstance(v.pool, ServerlessPool) for v in production):
        limit = state(platform).settings.max_payload_bytes

        def payload_limit(record: InvocationRecord) -> None:
            if len(record.body) > limit:
                raise ValidationError(
                    f"Request payload is too large for a serverless endpoint: the limit is {limit} bytes."
                )

        runtime.pre_invoke.append(payload_limit)


async def start(platform: Services) -> None:
    """Install the fork executor for process images and start its template in the background."""
    st = state(platform)
    if not st.settings.use_template:
        return
    executor = ForkExecutor(
        platform.settings,
        fallback=ProcessExecutor(platform.settings),
        fork_all=st.settings.fork_all_process_variants,
    )
    platform.executors.install("process", executor)
    st.executor = executor
    if st.settings.fork_all_process_variants:
        warm_template(st)


def warm_template(st: ServerlessState) -> None:
    """Start the template in the background (once): at start-up when every process variant forks,
    else when the first serverless variant is deployed, so platforms without serverless never pay for it."""
    executor = st.executor
    if executor is None or st.warm_requested:
        return
    st.warm_requested = True

    async def warm() -> None:
        try:
            await executor.warm()
        except Exception as exc:  # noqa: BLE001 - without a template instances are spawned the plain way
            log.warning(
                "serverless template did not start (%s); model servers will be spawned without it", exc
            )

    task = asyncio.get_running_loop().create_task(warm(), name="serverless-template")
    st.warming.add(task)
    st.warm_task = task
    task.add_done_callback(st.warming.discard)


async def wait_for_template(st: ServerlessState) -> None:
    """Wait until the template started (or failed: instances then spawn the plain way), at most
    ``template_wait`` seconds."""
    task = st.warm_task
    if task is None or task.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), st.settings.template_wait)
    except asyncio.TimeoutError:
        log.warning(
            "serverless template not ready after %.0f s; the endpoint goes InService without it",
            st.settings.template_wait,
        )


async def stop(platform: Services) -> None:
    """Cancel a template start still in progress (the executor itself is closed by the platform)."""
    st = platform.features.get(ServerlessState)
    if st is None:
        return
    for task in list(st.warming):
        task.cancel()
    await asyncio.gather(*st.warming, return_exceptions=True)


def snapshots(platform: Services) -> dict[str, dict[str, dict[str, Any]]]:
    """``{endpoint: {variant: pool snapshot}}`` of every live serverless variant."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for runtime in list(platform.endpoints.live.values()):
        for variant in runtime.all_variants():
            if isinstance(variant.pool, ServerlessPool):
                out.setdefault(runtime.name, {})[variant.name] = variant.pool.snapshot()
    return out


class ServerlessSampler:
    """Samples serverless variants each second for the metric store: ``ServerlessConcurrentExecutions``
    (requests in flight) and, for every cold start since the last look, ``ModelSetupTime``."""

    def __init__(self, platform: Services) -> None:
        self.platform = platform
        self._seen: dict[int, int] = {}

    def __call__(self, stats: InvocationStats) -> None:
        seen: dict[int, int] = {}
        for runtime in list(self.platform.endpoints.live.values()):
            for variant in runtime.variants.values():
                pool = variant.pool
                if not isinstance(pool, ServerlessPool):
                    continue
                dims = dims_of({"EndpointName": runtime.name, "VariantName": variant.name})
                stats.sample(
                    "ServerlessConcurrentExecutions", dims, sum(i.outstanding for i in pool.instances)
                )
                # every cold start since the last look (a burst starts several in one second)
                new = pool.stats.cold_starts - self._seen.get(id(pool), 0)
                for seconds in pool.stats.cold_start_seconds[-new:] if new > 0 else ():
                    stats.model_setup(runtime.name, variant.name, seconds)
                seen[id(pool)] = pool.stats.cold_starts
        self._seen = seen


def check_update(variant: VariantRuntime, update: dict[str, Any], index: int) -> ServerlessConfig:
    """The variant's ServerlessConfig after ``ServerlessUpdateConfig`` (ValidationException when invalid)."""
    current = variant.config.get("ServerlessConfig")
    if not current or not isinstance(variant.pool, ServerlessPool):
        raise ValidationException(
            f"ServerlessUpdateConfig was given for variant {variant.name}, which is not a serverless variant."
        )
    merged = {
        **current,
        **{k: update[k] for k in ("MaxConcurrency", "ProvisionedConcurrency") if k in update},
    }
    problems = validate_serverless_config(
        merged, f"desiredWeightsAndCapacities.{index}.member.serverlessUpdateConfig"
    )
    if problems:
        raise ValidationException(
            f"{len(problems)} validation error{'s' if len(problems) > 1 else ''} detected: "
            + "; ".join(problems)
        )
    return ServerlessConfig.from_request(merged)


def apply_update(variant: VariantRuntime, config: ServerlessConfig) -> dict[str, Any]:
    """Change MaxConcurrency / ProvisionedConcurrency of a live serverless variant in place; returns the
    variant config's changed members."""
    assert isinstance(variant.pool, ServerlessPool)  # check_update made sure
    variant.pool.update_config(config)
    changed = {"ServerlessConfig": config.to_response()}
    variant.config = {**variant.config, **changed}
    return changed


#: (snapshot key, Prometheus name, kind, help) of a serverless pool's numbers
_FAMILIES = (
    ("instances", "instances", "gauge", "Running model servers of a serverless variant."),
    (
        "in_flight",
        "in_flight_requests",
        "gauge",
        "Requests in flight on a serverless variant (SageMaker's ServerlessConcurrentExecutions).",
    ),
    ("max_concurrency", "max_concurrency", "gauge", "MaxConcurrency of a serverless variant."),
    ("invocations", "invocations_total", "counter", "Requests served by a serverless variant."),
    (
        "throttled",
        "throttled_total",
        "counter",
        "Requests refused with ThrottlingException (MaxConcurrency reached).",
    ),
    ("cold_starts", "cold_starts_total", "counter", "Cold starts of a serverless variant."),
    (
        "cold_start_failures",
        "cold_start_failures_total",
        "counter",
        "Model servers of a serverless variant that failed to start.",
    ),
    (
        "scaled_to_zero",
        "scaled_to_zero_total",
        "counter",
        "Times a serverless variant scaled to zero instances.",
    ),
    (
        "last_cold_start_seconds",
        "last_cold_start_seconds",
        "gauge",
        "Seconds from launch to a ready model server, last cold start.",
    ),
    (
        "last_first_answer_seconds",
        "last_first_answer_seconds",
        "gauge",
        "Seconds from a cold request's arrival to its answer, last cold start.",
    ),
)


def metrics(platform: Services) -> Metrics:
    """The serverless pools' counters and histograms (``Serverless`` in ``selfmaker status``)."""
    data = snapshots(platform)
    found = Metrics("Serverless", data)
    rows = [(ep, v, s) for ep, d in data.items() for v, s in d.items()]
    for key, name, kind, help_ in _FAMILIES:
        family(
            found.lines,
            f"selfmaker_serverless_{name}",
            kind,
            help_,
            [({"endpoint": ep, "variant": v}, s.get(key)) for ep, v, s in rows],
        )
    family(
        found.lines,
        "selfmaker_serverless_memory_size_bytes",
        "gauge",
        "MemorySizeInMB of a serverless variant (the memory limit of each model server), in bytes.",
        [({"endpoint": ep, "variant": v}, s["memory_mb"] * 1024 * 1024) for ep, v, s in rows],
    )
    pools = [
        ({"endpoint": runtime.name, "variant": variant.name}, variant.pool.stats)
        for runtime in list(platform.endpoints.live.values())
        for variant in runtime.all_variants()
        if isinstance(variant.pool, ServerlessPool)
    ]
    histogram(
        found.lines,
        "selfmaker_serverless_first_answer_seconds",
        "Seconds from the arrival of a request that found no running model server to its answer.",
        [(labels, stats.first_answer_histogram.value()) for labels, stats in pools],
    )
    return found

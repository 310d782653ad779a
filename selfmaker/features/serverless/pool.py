"""The instance pool of a serverless variant: none until a request comes, warm while used, zero when idle.

:class:`ServerlessPool` is an :class:`~selfmaker.endpoints.runtime.InstancePool` (the platform's router
calls ``acquire``/``release`` around every request); instances are launched with the variant context's
``launch()`` (executor start + ``/ping``) and retired with ``retire()`` (drain + stop).

* ``acquire`` first takes one of the variant's ``MaxConcurrency`` slots (:class:`SlotLimiter`, shared by
  every process that routes to the variant); with none left it raises ``ThrottlingException`` at once.
* It then picks the least-loaded ready instance with room (``instance_concurrency`` requests), else
  joins an instance that is starting, else starts one (a *cold start*, measured and logged) while the
  variant has fewer than ``max_instances``, else queues on the least-loaded instance.
* A reaper stops instances idle for ``idle_timeout`` seconds, down to the instances
  ``ProvisionedConcurrency`` keeps warm (zero without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfmaker.api.metrics import Histogram
from selfmaker.endpoints.runtime import Instance, InstancePool, VariantContext
from selfmaker.errors import ModelError, ThrottlingException
from selfmaker.features.serverless.limiter import SlotLimiter
from selfmaker.features.serverless.settings import ServerlessConfig, ServerlessSettings

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Start:
    """An instance being launched and the requests waiting for it."""

    future: asyncio.Future[Instance]
    launched: float
    cold: bool
    arrived: float | None = None
    waiters: int = 0


@dataclass
class PoolStats:
    """Counters of one serverless variant (``selfmaker status`` and ``/metrics``)."""

    invocations: int = 0
    throttled: int = 0
    cold_starts: int = 0
    cold_start_failures: int = 0
    scaled_to_zero: int = 0
    #: seconds from launch to a ready model server, per cold start (last 100)
    cold_start_seconds: list[float] = field(default_factory=list)
    #: seconds from the arrival of a request that found no instance to its answer (last 100)
    first_answer_seconds: list[float] = field(default_factory=list)
    #: the latter, every one counted (a ``/metrics`` histogram; cold starts are ModelSetupTime's)
    first_answer_histogram: Histogram = field(default_factory=Histogram)

    @staticmethod
    def add(series: list[float], value: float) -> None:
        series.append(value)
        del series[:-100]


class ServerlessPool(InstancePool):
    """Instances of one serverless variant, started on demand and stopped when idle."""

    def __init__(
        self,
        ctx: VariantContext,
        *,
        config: ServerlessConfig,
        settings: ServerlessSettings,
        slot_dir: Path,
        error_extra: dict[str, Any] | None = None,
        failure_detail: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(ctx)
        self.config = config
        self.settings = settings
        self.limiter = SlotLimiter(slot_dir, config.max_concurrency)
        self.stats = PoolStats()
        self.desired = config.warm_instances(settings)
        self._error_extra = dict(error_extra or {})
        self._failure_detail = failure_detail
        self._clock = clock
        self._starting: list[_Start] = []
        self._held: list[int] = []
        self._last_used: dict[Instance, float] = {}
        self._cold: dict[Instance, float] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def name(self) -> str:
        return str(self.ctx.variant.get("VariantName", ""))

    # -- lifecycle (InstancePool interface) ------------------------------------------------------
    async def start(self, count: int = 0) -> None:
        """Start the reaper and the instances ``ProvisionedConcurrency`` keeps warm; waits for them."""
        self._ensure_reaper()
        starts = [self._launch(cold=False) for _ in range(max(0, self.desired - self.size))]
        for start in starts:
            with contextlib.suppress(_ColdStartFailed):
                await asyncio.shield(start.future)

    async def scale_to(self, count: int) -> None:
        """Serverless capacity follows traffic: only the warm instances are (re)started here."""
        self.desired = self.config.warm_instances(self.settings)
        self._top_up()

    async def stop(self) -> None:
        """Stop the reaper, fail waiting requests, retire every instance, close the slot files."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for start in list(self._starting):
            if not start.future.done():
                start.future.set_exception(_ColdStartFailed("the endpoint is being stopped"))
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await super().stop()
        self.limiter.close()

    def update_config(self, config: ServerlessConfig) -> None:
        """Apply ``ServerlessUpdateConfig`` in place (MaxConcurrency, ProvisionedConcurrency)."""
        self.config = config
        self.limiter.resize(config.max_concurrency)
        self.desired = config.warm_instances(self.settings)
        self._top_up()

    # -- requests --------------------------------------------------------------------------------
    async def acquire(self) -> Instance:
        """A ready instance for one request: throttles at MaxConcurrency, cold-starts when none runs."""
        arrived = self._clock()
        self._ensure_reaper()
        slot = self.limiter.try_acquire()
        if slot is None:
            self.stats.throttled += 1
            raise ThrottlingException(
                f"The serverless variant {self.name} of endpoint {self.ctx.endpoint_name} is already serving "
                f"its MaxConcurrency of {self.config.max_concurrency} requests. "
                "Retry later or raise MaxConcurrency."
            )
        try:
            instance = await self._instance_for(arrived)
        except BaseException:
            self.limiter.release(slot)
            raise
        self._held.append(slot)
        instance.begin()
        self.stats.invocations += 1
        return instance

    def release(self, instance: Instance) -> None:
        instance.end()
        now = self._clock()
        self._last_used[instance] = now
        arrived = self._cold.pop(instance, None)
        if arrived is not None:
            seconds = now - arrived
            self.stats.add(self.stats.first_answer_seconds, seconds)
            self.stats.first_answer_histogram.observe(seconds)
            log.info(
                "serverless cold start endpoint=%s variant=%s instance=%s first_answer_seconds=%.3f",
                self.ctx.endpoint_name,
                self.name,
                instance.instance_id,
                seconds,
            )
        if self._held:
            self.limiter.release(self._held.pop())

    async def _instance_for(self, arrived: float) -> Instance:
        per_instance = max(1, self.settings.instance_concurrency)
        for _ in range(10):
            self._drop_dead()
            room = [i for i in self.instances if i.outstanding < per_instance]
            if room:
                return min(room, key=lambda i: i.outstanding)
            start = next((s for s in self._starting if s.waiters < per_instance), None)
            if start is None and self.size + len(self._starting) < max(1, self.settings.max_instances):
                start = self._launch(cold=True, arrived=arrived)
            if start is None:
                if self.instances:
                    return min(self.instances, key=lambda i: i.outstanding)
                start = min(self._starting, key=lambda s: s.waiters)
            start.waiters += 1
            try:
                instance = await asyncio.wait_for(
                    asyncio.shield(start.future), timeout=self.settings.cold_start_timeout
                )
            except asyncio.TimeoutError:
                raise self._model_error(
                    f"no model server became ready within {self.settings.cold_start_timeout:g} seconds"
                ) from None
            except _ColdStartFailed as exc:
                raise self._model_error(str(exc)) from None
            finally:
                start.waiters -= 1
            if instance in self.instances:
                return instance
        raise self._model_error("no model server stayed up long enough to take the request")

    def _model_error(self, reason: str) -> ModelError:
        message = (
            f'Received server error (0) from primary with message "The serverless variant {self.name} could '
            f'not start a model server: {reason}". See `selfmaker logs {self.ctx.endpoint_name}` for more '
            "information."
        )
        return ModelError(
            message, extra={**self._error_extra, "OriginalStatusCode": 0, "OriginalMessage": reason[:1024]}
        )

    # -- instances -------------------------------------------------------------------------------
    def _ensure_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            self._reaper = asyncio.get_running_loop().create_task(
                self._reap_loop(), name=f"serverless-reaper:{self.ctx.endpoint_name}/{self.name}"
            )

    def _launch(self, *, cold: bool, arrived: float | None = None) -> _Start:
        future: asyncio.Future[Instance] = asyncio.get_running_loop().create_future()
        # a failed start nobody waits for must not log "exception was never retrieved"
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        start = _Start(future=future, launched=self._clock(), cold=cold, arrived=arrived)
        self._starting.append(start)
        self._spawn(self._run_launch(start))
        return start

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_launch(self, start: _Start) -> None:
        try:
            instance = await self.ctx.launch()
        except asyncio.CancelledError:
            if start in self._starting:
                self._starting.remove(start)
            if not start.future.done():
                start.future.set_exception(_ColdStartFailed("the endpoint is being stopped"))
            raise
        except Exception as exc:  # noqa: BLE001 - every launch failure becomes the waiting requests' error
            if start in self._starting:
                self._starting.remove(start)
            self.stats.cold_start_failures += 1
            reason = str(exc) or type(exc).__name__
            detail = self._failure_detail() if self._failure_detail is not None else None
            if detail:
                reason = f"{reason} Reason: {detail}."
            log.error(
                "serverless endpoint=%s variant=%s: model server failed to start: %s",
                self.ctx.endpoint_name,
                self.name,
                reason,
            )
            if not start.future.done():
                start.future.set_exception(_ColdStartFailed(reason))
            return
        if start in self._starting:
            self._starting.remove(start)
        if self._closed or start.future.done():
            await self.ctx.retire(instance)
            return
        self.add(instance)
        now = self._clock()
        self._last_used[instance] = now
        seconds = now - start.launched
        if start.cold:
            self.stats.cold_starts += 1
            self.stats.add(self.stats.cold_start_seconds, seconds)
            if start.arrived is not None:
                self._cold[instance] = start.arrived
        log.info(
            "serverless %s endpoint=%s variant=%s instance=%s ready_seconds=%.3f",
            "cold start" if start.cold else "warm start",
            self.ctx.endpoint_name,
            self.name,
            instance.instance_id,
            seconds,
        )
        start.future.set_result(instance)

    def _drop_dead(self) -> None:
        for instance in list(self.instances):
            if not instance.handle.alive():
                log.warning(
                    "serverless endpoint=%s variant=%s: instance %s exited",
                    self.ctx.endpoint_name,
                    self.name,
                    instance.instance_id,
                )
                self._forget(instance)
                self._spawn(self.ctx.retire(instance))

    def _forget(self, instance: Instance) -> None:
        self.detach(instance)
        self._last_used.pop(instance, None)
        self._cold.pop(instance, None)

    def _top_up(self) -> None:
        if self._closed:
            return
        missing = self.desired - self.size - len(self._starting)
        for _ in range(max(0, missing)):
            self._launch(cold=False)

    def reap(self) -> int:
        """Retire instances idle for ``idle_timeout`` (keeping the warm ones); returns how many."""
        self._drop_dead()
        now = self._clock()
        # the most recently used instances are the ones kept warm
        by_recency = sorted(self.instances, key=lambda i: self._last_used.get(i, 0.0), reverse=True)
        victims = [
            i
            for i in by_recency[self.desired :]
            if i.outstanding == 0 and now - self._last_used.get(i, now) >= self.settings.idle_timeout
        ]
        for instance in victims:
            self._forget(instance)
            self._spawn(self.ctx.retire(instance))
        if victims and not self.instances and not self._starting:
            self.stats.scaled_to_zero += 1
            log.info(
                "serverless endpoint=%s variant=%s scaled to zero after %gs idle",
                self.ctx.endpoint_name,
                self.name,
                self.settings.idle_timeout,
            )
        self._top_up()
        return len(victims)

    async def _reap_loop(self) -> None:
        interval = min(1.0, max(0.05, self.settings.idle_timeout / 4))
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                self.reap()
            except Exception:  # noqa: BLE001 - the reaper must survive one bad round
                log.exception("serverless reaper of %s/%s failed", self.ctx.endpoint_name, self.name)

    # -- introspection ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Facts for ``selfmaker status`` and ``/metrics``."""
        cold = self.stats.cold_start_seconds
        first = self.stats.first_answer_seconds
        return {
            "instances": self.size,
            "starting": len(self._starting),
            "in_flight": sum(i.outstanding for i in self.instances),
            "max_concurrency": self.config.max_concurrency,
            "provisioned_concurrency": self.config.provisioned_concurrency,
            "memory_mb": self.config.memory_mb,
            "invocations": self.stats.invocations,
            "throttled": self.stats.throttled,
            "cold_starts": self.stats.cold_starts,
            "cold_start_failures": self.stats.cold_start_failures,
            "scaled_to_zero": self.stats.scaled_to_zero,
            "last_cold_start_seconds": cold[-1] if cold else None,
            "last_first_answer_seconds": first[-1] if first else None,
        }


class _ColdStartFailed(Exception):
    """A launch failed; the message is the reason given to the waiting requests."""

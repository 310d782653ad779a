"""The instances of one serverless variant: none until a request comes, warm while used, zero when idle.

:class:`ServerlessPool` decides *when* a model server runs; *how* one is started and stopped is given to
it as two coroutines (the platform's executor + readiness poll), so the pool is the same for forked
processes and containers.

* ``acquire`` first takes one of the variant's ``MaxConcurrency`` slots (:class:`SlotLimiter`, shared by
  every process of the platform); with none left it raises :class:`Throttled` at once.
* It then picks the least-loaded ready instance with room (``instance_concurrency``), else joins an
  instance that is starting, else starts one (a *cold start*, measured and logged) while the variant has
  fewer than ``max_instances``, else queues on the least-loaded instance.
* A reaper stops instances idle for ``idle_timeout`` seconds, down to the instances
  ``ProvisionedConcurrency`` keeps warm (zero without it), and replaces warm instances that died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from selfmaker.serverless.limiter import SlotLimiter
from selfmaker.serverless.settings import ServerlessConfig, ServerlessSettings

log = logging.getLogger(__name__)

H = TypeVar("H")


class Throttled(Exception):
    """``MaxConcurrency`` requests are already in flight on the variant."""


class ColdStartFailed(Exception):
    """No model server could be started for the request; the message says why."""


@dataclass(eq=False)
class _Member(Generic[H]):
    ready: asyncio.Future[H]
    launched: float
    handle: H | None = None
    load: int = 0
    last_used: float = 0.0
    #: arrival time of the request that triggered the cold start, until it is answered
    cold_request_at: float | None = None


@dataclass
class PoolStats:
    """Counters of one serverless variant (``selfmaker status`` and ``/metrics``)."""

    invocations: int = 0
    throttled: int = 0
    cold_starts: int = 0
    cold_start_failures: int = 0
    #: seconds from launch to a ready model server, per cold start (last 100)
    cold_start_seconds: list[float] = field(default_factory=list)
    #: seconds from the arrival of a request that found no instance to its answer (last 100)
    first_answer_seconds: list[float] = field(default_factory=list)
    scaled_to_zero: int = 0

    def _add(self, series: list[float], value: float) -> None:
        series.append(value)
        del series[:-100]


class ServerlessPool(Generic[H]):
    """Instances of one serverless variant, started on demand and stopped when idle."""

    def __init__(
        self,
        *,
        endpoint: str,
        variant: str,
        config: ServerlessConfig,
        settings: ServerlessSettings,
        start_instance: Callable[[], Awaitable[H]],
        stop_instance: Callable[[H], Awaitable[None]],
        is_alive: Callable[[H], bool],
        slot_dir: Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.variant = variant
        self.config = config
        self.settings = settings
        self._start_instance = start_instance
        self._stop_instance = stop_instance
        self._is_alive = is_alive
        self._clock = clock
        self.limiter = SlotLimiter(slot_dir, config.max_concurrency)
        self.stats = PoolStats()
        self._members: list[_Member[H]] = []
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the reaper and the instances ``ProvisionedConcurrency`` keeps warm (waits for them)."""
        self._reaper = asyncio.create_task(self._reap_loop(), name=f"serverless-reaper-{self.endpoint}-{self.variant}")
        warm = [self._launch(cold=False) for _ in range(self._warm_target())]
        for member in warm:
            try:
                await member.ready
            except ColdStartFailed as exc:
                log.warning("serverless %s/%s: a provisioned instance failed to start: %s", self.endpoint, self.variant, exc)

    async def close(self, grace: float = 10.0) -> None:
        """Stop the reaper and every instance."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for task in list(self._background):
            task.cancel()
        members, self._members = self._members, []
        for member in members:
            if member.handle is not None:
                await self._stop_instance(member.handle)
        self.limiter.close()

    def update(self, config: ServerlessConfig) -> None:
        """Apply ``ServerlessUpdateConfig`` in place (MaxConcurrency, ProvisionedConcurrency)."""
        self.config = config
        self.limiter.resize(config.max_concurrency)

    # -- requests --------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[H]:
        """A ready instance for one request; raises :class:`Throttled` or :class:`ColdStartFailed`."""
        arrived = self._clock()
        slot = self.limiter.try_acquire()
        if slot is None:
            self.stats.throttled += 1
            raise Throttled(f"the variant {self.variant} of endpoint {self.endpoint} is already serving "
                            f"MaxConcurrency={self.config.max_concurrency} requests")
        member: _Member[H] | None = None
        try:
            member = self._choose(arrived)
            member.load += 1
            try:
                handle = await asyncio.wait_for(asyncio.shield(member.ready), timeout=self.settings.cold_start_timeout)
            except asyncio.TimeoutError as exc:
                raise ColdStartFailed(f"no model server was ready within {self.settings.cold_start_timeout:.0f}s") from exc
            self.stats.invocations += 1
            yield handle
        finally:
            if member is not None:
                member.load -= 1
                member.last_used = self._clock()
                if member.cold_request_at is not None and member.ready.done() and not member.ready.cancelled() \
                        and member.ready.exception() is None:
                    seconds = member.last_used - member.cold_request_at
                    member.cold_request_at = None
                    self.stats._add(self.stats.first_answer_seconds, seconds)
                    log.info("serverless cold start endpoint=%s variant=%s first_answer_seconds=%.3f",
                             self.endpoint, self.variant, seconds)
            self.limiter.release(slot)

    def _choose(self, arrived: float) -> _Member[H]:
        self._drop_dead()
        ready = [m for m in self._members if m.ready.done() and not m.ready.cancelled() and m.ready.exception() is None]
        room = [m for m in ready if m.load < self.settings.instance_concurrency]
        if room:
            return min(room, key=lambda m: m.load)
        starting = [m for m in self._members if not m.ready.done()]
        with_room = [m for m in starting if m.load < self.settings.instance_concurrency]
        if with_room:
            return min(with_room, key=lambda m: m.load)
        if len(self._members) < self.settings.max_instances:
            member = self._launch(cold=True)
            member.cold_request_at = arrived
            return member
        candidates = ready or starting
        if not candidates:  # pragma: no cover - max_instances >= 1 and every member is ready or starting
            raise ColdStartFailed("no instance available")
        return min(candidates, key=lambda m: m.load)

    # -- instances -------------------------------------------------------------------------------
    def _launch(self, *, cold: bool) -> _Member[H]:
        loop = asyncio.get_running_loop()
        member: _Member[H] = _Member(ready=loop.create_future(), launched=self._clock())
        member.last_used = member.launched
        # a failed start with nobody waiting must not log "exception never retrieved"
        member.ready.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._members.append(member)
        task = asyncio.create_task(self._run_start(member, cold))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return member

    async def _run_start(self, member: _Member[H], cold: bool) -> None:
        try:
            handle = await self._start_instance()
        except asyncio.CancelledError:
            member.ready.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - any launch failure becomes the waiting requests' error
            if member in self._members:
                self._members.remove(member)
            self.stats.cold_start_failures += 1
            log.error("serverless %s/%s: model server failed to start: %s", self.endpoint, self.variant, exc)
            member.ready.set_exception(ColdStartFailed(str(exc) or type(exc).__name__))
            return
        if self._closed or member not in self._members:
            await self._stop_instance(handle)
            member.ready.cancel()
            return
        member.handle = handle
        seconds = self._clock() - member.launched
        member.last_used = self._clock()
        if cold:
            self.stats.cold_starts += 1
            self.stats._add(self.stats.cold_start_seconds, seconds)
        log.info("serverless %s endpoint=%s variant=%s ready_seconds=%.3f", "cold start" if cold else "warm start",
                 self.endpoint, self.variant, seconds)
        member.ready.set_result(handle)

    def _drop_dead(self) -> None:
        for member in list(self._members):
            if member.handle is not None and not self._is_alive(member.handle):
                log.warning("serverless %s/%s: an instance exited; it will be replaced on demand", self.endpoint, self.variant)
                self._members.remove(member)
                self._spawn_stop(member.handle)

    def _spawn_stop(self, handle: H) -> None:
        task = asyncio.create_task(self._stop_instance(handle))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _warm_target(self) -> int:
        return self.config.warm_instances(self.settings)

    def reap(self) -> int:
        """Stop instances idle for ``idle_timeout`` (keeping the warm ones); returns how many were stopped."""
        self._drop_dead()
        now = self._clock()
        stopped = 0
        keep = self._warm_target()
        # the most recently used instances are the ones kept warm
        ready = sorted((m for m in self._members if m.handle is not None), key=lambda m: m.last_used, reverse=True)
        for member in ready[keep:]:
            if member.load == 0 and now - member.last_used >= self.settings.idle_timeout:
                self._members.remove(member)
                assert member.handle is not None
                self._spawn_stop(member.handle)
                stopped += 1
        if stopped and not self._members:
            self.stats.scaled_to_zero += 1
            log.info("serverless endpoint=%s variant=%s scaled to zero after %.0fs idle", self.endpoint, self.variant,
                     self.settings.idle_timeout)
        missing = keep - len(self._members)
        for _ in range(max(0, missing)):
            self._launch(cold=False)
        return stopped

    async def _reap_loop(self) -> None:
        interval = min(1.0, max(0.05, self.settings.idle_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            try:
                self.reap()
            except Exception:  # noqa: BLE001 - the reaper must survive one bad round
                log.exception("serverless reaper of %s/%s failed", self.endpoint, self.variant)

    # -- introspection ---------------------------------------------------------------------------
    @property
    def handles(self) -> list[H]:
        """Ready instances."""
        return [m.handle for m in self._members if m.handle is not None]

    def snapshot(self) -> dict[str, Any]:
        """Facts for ``selfmaker status`` and ``/metrics``."""
        starting = sum(1 for m in self._members if m.handle is None)
        cold = self.stats.cold_start_seconds
        first = self.stats.first_answer_seconds
        return {
            "instances": len(self._members) - starting,
            "starting": starting,
            "in_flight": sum(m.load for m in self._members),
            "max_concurrency": self.config.max_concurrency,
            "provisioned_concurrency": self.config.provisioned_concurrency,
            "memory_mb": self.config.memory_mb,
            "invocations": self.stats.invocations,
            "throttled": self.stats.throttled,
            "cold_starts": self.stats.cold_starts,
            "cold_start_failures": self.stats.cold_start_failures,
            "last_cold_start_seconds": cold[-1] if cold else None,
            "last_first_answer_seconds": first[-1] if first else None,
            "scaled_to_zero": self.stats.scaled_to_zero,
        }

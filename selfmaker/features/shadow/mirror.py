"""Shadow variants (``ShadowProductionVariants``): copies of production requests, answers compared, dropped.

The router answers the caller from the production variant first; then it hands the request to
:meth:`ShadowMirror.mirror`, which only *schedules* the copy (an asyncio task) and returns at once. So a
slow, failing or absent shadow can neither delay nor fail the primary answer. Copies in flight are
bounded (``max_in_flight``); beyond that a copy is dropped and counted rather than queued without end.

Per shadow variant the mirror keeps: requests sent, errors (non-2xx answers, timeouts, connection
failures), latency (a histogram for ``/metrics``; p50/p99 over the last 1,000 for ``selfmaker status``),
comparisons and mismatches between the primary's and the shadow's answers (:func:`outputs_match`: JSON and
CSV numbers compared with a relative tolerance, anything else byte for byte), and copies dropped.

Sampling (:func:`shadow_fraction`): a shadow with the same weight as the production variant gets every
request; a smaller weight gets that share (``shadow weight / production weight``, at most 1).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from selfmaker.api.metrics import Histogram

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Answer:
    """What a variant answered: HTTP status, body and content type."""

    status: int
    body: bytes
    content_type: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def shadow_fraction(shadow_weight: float, production_weight: float) -> float:
    """Share of production requests copied to a shadow: ``shadow / production`` capped to [0, 1]."""
    if not (math.isfinite(shadow_weight) and math.isfinite(production_weight)) or shadow_weight <= 0:
        return 0.0
    if production_weight <= 0:
        return 1.0
    return min(1.0, shadow_weight / production_weight)


def _numbers_close(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_numbers_close(a[k], b[k], rel_tol, abs_tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            _numbers_close(x, y, rel_tol, abs_tol) for x, y in zip(a, b, strict=True)
        )
    return bool(a == b)


def _csv_cells(text: str) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for row in csv.reader(io.StringIO(text)):
        cells: list[Any] = []
        for cell in row:
            try:
                cells.append(float(cell))
            except ValueError:
                cells.append(cell.strip())
        if cells:
            rows.append(cells)
    return rows


def outputs_match(
    primary: bytes,
    shadow: bytes,
    content_type: str | None = None,
    *,
    rel_tol: float = 1e-5,
    abs_tol: float = 1e-6,
) -> bool:
    """Whether two model answers agree: same bytes, or the same JSON/CSV up to float tolerance."""
    if primary == shadow:
        return True
    media = (content_type or "").split(";", 1)[0].strip().lower()
    try:
        text_a, text_b = primary.decode("utf-8"), shadow.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if media.endswith("json") or media in ("", "application/jsonlines"):
        try:
            if media == "application/jsonlines":
                a = [json.loads(line) for line in text_a.splitlines() if line.strip()]
                b = [json.loads(line) for line in text_b.splitlines() if line.strip()]
            else:
                a, b = json.loads(text_a), json.loads(text_b)
            return _numbers_close(a, b, rel_tol, abs_tol)
        except ValueError:
            if media.endswith("json"):
                return False
    return _numbers_close(_csv_cells(text_a), _csv_cells(text_b), rel_tol, abs_tol)


@dataclass
class ShadowStats:
    """Counters of one shadow variant."""

    requests: int = 0
    errors: int = 0
    dropped: int = 0
    compared: int = 0
    mismatches: int = 0
    latency: Histogram = field(default_factory=Histogram)
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def observe(self, seconds: float) -> None:
        self.latency.observe(seconds)
        self.latencies.append(seconds)

    def quantile(self, q: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def snapshot(self) -> dict[str, Any]:
        """Plain numbers for ``selfmaker status`` / ``/metrics``."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "dropped": self.dropped,
            "compared": self.compared,
            "mismatches": self.mismatches,
            "latency_count": self.latency.count,
            "latency_sum_seconds": self.latency.sum,
            "latency_p50_seconds": self.quantile(0.5),
            "latency_p99_seconds": self.quantile(0.99),
        }


class ShadowMirror:
    """Fire-and-forget copies of answered requests to shadow variants, with per-shadow statistics.

    ``send`` (given per call) performs the copy and returns the shadow's :class:`Answer`; it should
    enforce its own timeout. One mirror serves one endpoint (or the whole platform).
    """

    def __init__(
        self, *, max_in_flight: int = 64, timeout: float = 60.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.max_in_flight = max_in_flight
        self.timeout = timeout
        self._rng = rng
        self.stats: dict[str, ShadowStats] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def stats_for(self, variant: str) -> ShadowStats:
        """The counters of ``variant`` (created on first use)."""
        stats = self.stats.get(variant)
        if stats is None:
            stats = self.stats[variant] = ShadowStats()
        return stats

    def mirror(
        self,
        variant: str,
        send: Callable[[], Awaitable[Answer]],
        primary: Answer | None,
        fraction: float = 1.0,
    ) -> bool:
        """Schedule one copy to ``variant`` (sampled with probability ``fraction``); never waits.

        ``primary`` is the production answer to compare with (None: no comparison). Returns whether a
        copy was scheduled.
        """
        stats = self.stats_for(variant)
        if fraction < 1.0 and self._rng() >= fraction:
            return False
        if len(self._tasks) >= self.max_in_flight:
            stats.dropped += 1
            return False
        task = asyncio.get_running_loop().create_task(self._copy(variant, send, primary, stats))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _copy(
        self, variant: str, send: Callable[[], Awaitable[Answer]], primary: Answer | None, stats: ShadowStats
    ) -> None:
        stats.requests += 1
        started = time.perf_counter()
        try:
            answer = await asyncio.wait_for(send(), timeout=self.timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever the shadow does, it is only counted
            stats.errors += 1
            stats.observe(time.perf_counter() - started)
            log.info("shadow variant %s failed: %s", variant, exc or type(exc).__name__)
            return
        stats.observe(time.perf_counter() - started)
        if not answer.ok:
            stats.errors += 1
            return
        if primary is not None and primary.ok:
            stats.compared += 1
            if not outputs_match(primary.body, answer.body, primary.content_type or answer.content_type):
                stats.mismatches += 1

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for the copies in flight (shutdown, tests)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    async def close(self) -> None:
        """Cancel the copies in flight."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """``{variant: counters}``."""
        return {name: stats.snapshot() for name, stats in self.stats.items()}

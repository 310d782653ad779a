"""The platform's memory of its figures: CloudWatch-style metric series, kept in ``<home>/metrics.db``.

A series is ``(namespace, metric name, dimensions)``; its data are :class:`Aggregate` s (sample count,
sum, minimum, maximum and, for latencies, the counts of fixed histogram buckets) at a timestamp:

* **live sources** (:class:`MetricSource`, e.g. :class:`selfmaker.endpoints.stats.InvocationStats`) keep the
  last minutes per second in memory; :meth:`MetricStore.flush` rolls every complete minute of them up into
  one row per series and minute (``resolution`` 60), batched, once a minute and at shutdown;
* **points** (:meth:`MetricStore.put`: a training job's metric values as its log prints them) are stored as
  they come (``resolution`` 1).

:meth:`MetricStore.statistics` answers what GetMetricStatistics asks (SampleCount, Sum, Average, Minimum,
Maximum and percentiles per period) from the rows and the live sources' unflushed data; periods under a
minute come from the live sources' per-second data (the last :data:`LIVE_SECONDS` seconds) and the points.
Rows older than the retention (``SELFMAKER_METRICS_RETENTION_DAYS``, 15 days by default as CloudWatch
keeps 1-minute data) are pruned at each flush.

Percentiles come from the histogram buckets (linear inside a bucket, clamped to the minimum and maximum),
or exactly from single-sample points. The file is a sibling of the state store (``state.db``): the minute
writes never wait on the control plane's lock, and ``selfmaker status`` reads both.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

#: the upper bounds (seconds, Prometheus ``le``) of the latency histograms; the last bucket is +Inf
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: seconds of per-second data the live sources keep (the ring)
LIVE_SECONDS = 600
#: the namespace of endpoint metrics and that of training job metrics
SAGEMAKER_NAMESPACE = "AWS/SageMaker"
TRAINING_NAMESPACE = "/aws/sagemaker/TrainingJobs"

#: dimensions as CloudWatch compares them: ``((name, value), ...)`` sorted by name
Dims = tuple[tuple[str, str], ...]


def dims_of(items: Iterable[tuple[str, str]] | dict[str, str]) -> Dims:
    """Dimensions in their canonical (sorted) form."""
    pairs = items.items() if isinstance(items, dict) else items
    return tuple(sorted((str(k), str(v)) for k, v in pairs))


@dataclass(slots=True)
class Aggregate:
    """Samples of one series over some time: count, sum, min, max and histogram bucket counts (or None
    when the series has no histogram)."""

    n: float = 0.0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    buckets: list[int] | None = None

    @classmethod
    def of(cls, value: float) -> Aggregate:
        """One sample."""
        return cls(1.0, value, value, value)

    def merge(self, other: Aggregate) -> None:
        """Add ``other``'s samples."""
        if other.n <= 0:
            return
        self.n += other.n
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        if other.buckets is not None:
            if self.buckets is None:
                self.buckets = list(other.buckets)
            else:
                for i, c in enumerate(other.buckets):
                    self.buckets[i] += c

    def copy(self) -> Aggregate:
        return Aggregate(
            self.n, self.total, self.low, self.high, None if self.buckets is None else list(self.buckets)
        )


@dataclass(slots=True)
class Datum:
    """An :class:`Aggregate` of one series at ``timestamp`` (epoch seconds; the start of its minute for
    rollups)."""

    namespace: str
    metric: str
    dims: Dims
    timestamp: int
    value: Aggregate


#: metric name -> (unit, histogram bounds in that unit or None)
UNITS: dict[str, tuple[str, tuple[float, ...] | None]] = {
    "Invocations": ("None", None),
    "InvocationsPerInstance": ("None", None),
    "Invocation4XXErrors": ("None", None),
    "Invocation5XXErrors": ("None", None),
    "ModelLatency": ("Microseconds", tuple(b * 1e6 for b in LATENCY_BUCKETS)),
    "OverheadLatency": ("Microseconds", tuple(b * 1e6 for b in LATENCY_BUCKETS)),
    "ModelSetupTime": ("Microseconds", None),
    "ApproximateBacklogSize": ("None", None),
    "ApproximateBacklogSizePerInstance": ("None", None),
    "ApproximateAgeOfOldestRequest": ("Seconds", None),
    "HasBacklogWithoutCapacity": ("None", None),
    "ServerlessConcurrentExecutions": ("Count", None),
}


class MetricSource(Protocol):
    """Per-second data kept in memory (the last :data:`LIVE_SECONDS` seconds), e.g. invocation statistics."""

    def seconds(
        self, start: int, end: int, metric: str | None = None, dims: Dims | None = None
    ) -> Iterable[Datum]:
        """Per-second datums with ``start <= timestamp < end`` (each timestamp at most once per series),
        only of ``metric`` and/or ``dims`` when given."""
        ...

    def active(self, since: int) -> Iterable[tuple[str, str, Dims]]:
        """The series with data since ``since`` (ListMetrics)."""
        ...


def percentile(value: Aggregate, q: float, bounds: Sequence[float] | None) -> float | None:
    """The ``q``-th percentile (0 < q <= 100) of ``value``'s samples: from its histogram (linear within
    the bucket, clamped to min/max), exact for one sample or all-equal samples; None when unknown."""
    if value.n <= 0:
        return None
    if value.n == 1 or value.low == value.high:
        return value.low
    if value.buckets is None or bounds is None:
        return None
    rank = q / 100.0 * sum(value.buckets)
    seen = 0.0
    for i, count in enumerate(value.buckets):
        if count and seen + count >= rank:
            lower = bounds[i - 1] if i > 0 else 0.0
            upper = bounds[i] if i < len(bounds) else value.high
            lower, upper = max(lower, value.low), min(upper, value.high)
            estimate = lower + (upper - lower) * ((rank - seen) / count)
            return min(max(estimate, value.low), value.high)
        seen += count
    return value.high


def parse_percentile(statistic: str) -> float | None:
    """``pNN`` / ``pNN.NN`` → NN; None when ``statistic`` is not a percentile CloudWatch accepts."""
    if not statistic.startswith("p") or len(statistic) < 2:
        return None
    text = statistic[1:]
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or (fraction and (not fraction.isdigit() or len(fraction) > 2)):
        return None
    value = float(text)
    return value if 0 <= value <= 100 else None


def statistic(value: Aggregate, name: str, bounds: Sequence[float] | None) -> float | None:
    """One CloudWatch statistic (``SampleCount``, ``Sum``, ``Average``, ``Minimum``, ``Maximum`` or
    ``pNN``) of ``value``; None when it cannot be told."""
    if value.n <= 0:
        return None
    if name == "SampleCount":
        return value.n
    if name == "Sum":
        return value.total
    if name == "Average":
        return value.total / value.n
    if name == "Minimum":
        return value.low
    if name == "Maximum":
        return value.high
    q = parse_percentile(name)
    return None if q is None else percentile(value, q, bounds)


def bucket_index(seconds: float) -> int:
    """The histogram bucket of a latency in seconds (Prometheus ``le``: the first bound ≥ it)."""
    return bisect.bisect_left(LATENCY_BUCKETS, seconds)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY, namespace TEXT NOT NULL, metric TEXT NOT NULL, dims TEXT NOT NULL,
    last INTEGER NOT NULL, UNIQUE (namespace, metric, dims)
);
CREATE TABLE IF NOT EXISTS points (
    series INTEGER NOT NULL, ts INTEGER NOT NULL, resolution INTEGER NOT NULL,
    n REAL NOT NULL, total REAL NOT NULL, low REAL NOT NULL, high REAL NOT NULL, buckets BLOB,
    PRIMARY KEY (series, resolution, ts)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS flushed (id INTEGER PRIMARY KEY CHECK (id = 0), until INTEGER NOT NULL);
"""


def _pack(buckets: list[int] | None) -> bytes | None:
    """Bucket counts as ``index:count`` pairs of the non-empty buckets (a minute of latencies fills few)."""
    if buckets is None:
        return None
    return ",".join(f"{i}:{c}" for i, c in enumerate(buckets) if c).encode()


def _unpack(blob: bytes | None) -> list[int] | None:
    if blob is None:
        return None
    out = [0] * (len(LATENCY_BUCKETS) + 1)
    for part in blob.decode().split(","):
        if part:
            i, _, c = part.partition(":")
            out[int(i)] = int(c)
    return out


def _num(value: float) -> float | int:
    """Whole numbers as integers: SQLite stores them in 1 to 4 bytes instead of 8."""
    value = float(value)
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


class MetricStore:
    """Metric series: live sources' per-second data in memory, minute rollups and points in SQLite."""

    def __init__(
        self, path: Path, retention_days: float = 15.0, clock: Callable[[], float] = time.time
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.retention_seconds = retention_days * 86400.0
        self.sources: list[MetricSource] = []
        self.clock = clock
        self._lock = threading.Lock()
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT until FROM flushed WHERE id=0").fetchone()
        #: live data before this minute (epoch seconds) is in the database; after a restart no later than the
        #: minute in progress (a shutdown flushes that minute whole: what comes after is merged into it)
        minute = int(self.clock()) // 60 * 60
        self.flushed_until = min(int(row[0]), minute) if row else minute
        self._series: dict[tuple[str, str, Dims], int] = {}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- writing -------------------------------------------------------------------------------

    def _series_id(self, namespace: str, metric: str, dims: Dims, ts: int) -> int:
        key = (namespace, metric, dims)
        found = self._series.get(key)
        text = orjson.dumps(dims).decode()
        if found is None:
            row = self._db.execute(
                "SELECT id FROM series WHERE namespace=? AND metric=? AND dims=?", (namespace, metric, text)
            ).fetchone()
            if row is None:
                cursor = self._db.execute(
                    "INSERT INTO series (namespace, metric, dims, last) VALUES (?, ?, ?, ?)",
                    (namespace, metric, text, ts),
                )
                found = int(cursor.lastrowid or 0)
            else:
                found = int(row[0])
            self._series[key] = found
        self._db.execute("UPDATE series SET last=max(last, ?) WHERE id=?", (ts, found))
        return found

    def _write(self, datums: Iterable[Datum], resolution: int) -> int:
        """Add ``datums`` to the rows (merged into a row already there); the count written."""
        written = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for d in datums:
                    v = d.value
                    if v.n <= 0:
                        continue
                    sid = self._series_id(d.namespace, d.metric, d.dims, d.timestamp)
                    old = self._db.execute(
                        "SELECT n, total, low, high, buckets FROM points"
                        " WHERE series=? AND resolution=? AND ts=?",
                        (sid, resolution, d.timestamp),
                    ).fetchone()
                    if old is not None:  # a minute flushed at shutdown and continued after a restart
                        merged = Aggregate(old[0], old[1], old[2], old[3], _unpack(old[4]))
                        merged.merge(v)
                        v = merged
                    self._db.execute(
                        "INSERT OR REPLACE INTO points (series, ts, resolution, n, total, low, high, buckets)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            sid,
                            d.timestamp,
                            resolution,
                            _num(v.n),
                            _num(v.total),
                            _num(v.low),
                            _num(v.high),
                            _pack(v.buckets),
                        ),  # fmt: skip
                    )
                    written += 1
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return written

    def put(self, datums: Iterable[Datum]) -> int:
        """Store points as they are (a training job's metric values): written at once, from any thread."""
        return self._write(datums, 1)

    def pending(self, until: int, metric: str | None = None, dims: Dims | None = None) -> list[Datum]:
        """The live sources' data of the minutes from :attr:`flushed_until` to ``until`` (exclusive),
        rolled up per minute, of every series or only of ``metric``/``dims`` (call on the thread that feeds
        the sources: the event loop)."""
        start = max(self.flushed_until, until - LIVE_SECONDS)
        rolled: dict[tuple[str, str, Dims, int], Datum] = {}
        for source in self.sources:
            for d in source.seconds(start, until, metric, dims):
                minute = d.timestamp // 60 * 60
                key = (d.namespace, d.metric, d.dims, minute)
                found = rolled.get(key)
                if found is None:
                    rolled[key] = Datum(d.namespace, d.metric, d.dims, minute, d.value.copy())
                else:
                    found.value.merge(d.value)
        return list(rolled.values())

    def write_rollups(self, datums: list[Datum], until: int) -> int:
        """Write rolled-up minutes (from :meth:`pending`) and advance :attr:`flushed_until` (any thread)."""
        written = self._write(datums, 60)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO flushed (id, until) VALUES (0, ?)", (until,))
        self.flushed_until = until
        return written

    def prune(self, now: float | None = None) -> int:
        """Drop rows older than the retention; the count dropped."""
        cutoff = int((self.clock() if now is None else now) - self.retention_seconds)
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM points WHERE series IN (SELECT id FROM series) AND ts < ?", (cutoff,)
            )
            self._db.execute("DELETE FROM series WHERE last < ?", (cutoff,))
            self._series.clear()
            return cursor.rowcount

    # ---- reading -------------------------------------------------------------------------------

    def rows(
        self, namespace: str, metric: str, dims: Dims, start: int, end: int, resolution: int | None = None
    ) -> list[Datum]:
        """Stored data of one series with ``start <= timestamp < end`` (of one resolution, or both)."""
        query = (
            "SELECT p.ts, p.n, p.total, p.low, p.high, p.buckets"
            " FROM points p JOIN series s ON s.id = p.series"
            " WHERE s.namespace=? AND s.metric=? AND s.dims=? AND p.ts >= ? AND p.ts < ?"
        )
        args: tuple[object, ...] = (namespace, metric, orjson.dumps(dims).decode(), start, end)
        if resolution is not None:
            query += " AND p.resolution=?"
            args += (resolution,)
        with self._lock:
            found = self._db.execute(query, args).fetchall()
        return [
            Datum(namespace, metric, dims, int(ts), Aggregate(n, total, low, high, _unpack(blob)))
            for ts, n, total, low, high, blob in found
        ]

    def stored_series(self, since: float) -> list[tuple[str, str, Dims]]:
        """Every stored series with data since ``since``."""
        with self._lock:
            found = self._db.execute(
                "SELECT namespace, metric, dims FROM series WHERE last >= ?", (int(since),)
            ).fetchall()
        return [(ns, m, tuple((str(k), str(v)) for k, v in orjson.loads(d))) for ns, m, d in found]

    def live_series(self, since: int) -> set[tuple[str, str, Dims]]:
        """The live sources' series with data since ``since`` (on the event loop)."""
        return {key for source in self.sources for key in source.active(since)}

    def live(self, start: int, end: int, metric: str | None = None, dims: Dims | None = None) -> list[Datum]:
        """The live sources' per-second data in ``[start, end)``, of every series or only of
        ``metric``/``dims`` (on the event loop)."""
        out: list[Datum] = []
        for source in self.sources:
            out.extend(source.seconds(start, end, metric, dims))
        return out

    def series(
        self,
        namespace: str,
        metric: str,
        dims: Dims,
        start: int,
        end: int,
        period: int,
        live: Iterable[Datum] = (),
    ) -> dict[int, Aggregate]:
        """``{period start: aggregate}`` of one series over ``[start, end)``: stored rows plus ``live``
        datums (from :meth:`pending` or :meth:`live`, taken on the event loop by the caller: the minutes
        from :attr:`flushed_until` on, which no row holds but the one a shutdown wrote for its last minute,
        continued by the live data after the restart)."""
        base = start - start % (60 if period >= 60 else period)
        out: dict[int, Aggregate] = {}

        def add(d: Datum) -> None:
            if d.timestamp < base or d.timestamp >= end:
                return
            slot = base + (d.timestamp - base) // period * period
            found = out.get(slot)
            if found is None:
                out[slot] = d.value.copy()
            else:
                found.merge(d.value)

        # sub-minute periods: only per-second data (points and the live ring), never minute rollups
        for d in self.rows(namespace, metric, dims, base, end, resolution=None if period >= 60 else 1):
            add(d)
        for d in live:
            if d.namespace == namespace and d.metric == metric and d.dims == dims:
                add(d)
        return out

    async def statistics(
        self,
        namespace: str,
        metric: str,
        dims: Dims,
        start: int,
        end: int,
        period: int,
        statistics: Sequence[str] = (),
        extended: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """GetMetricStatistics' ``Datapoints`` of one series over ``[start, end)`` (call on the event loop:
        the live part is taken there, the database is read in a thread): ``Timestamp`` (epoch seconds of
        the period's start), the ``statistics`` asked, ``ExtendedStatistics`` for the percentiles
        ``extended`` (``p99`` …) that can be told, and ``Unit``; oldest first, periods without data left
        out. Periods under 60 seconds come from per-second data only (the live ring and points)."""
        if period < 60:
            live = self.live(start - start % period, end, metric, dims)
        else:
            live = self.pending(int(self.clock()) // 60 * 60 + 60, metric, dims)
        found = await asyncio.to_thread(self.series, namespace, metric, dims, start, end, period, live)
        unit, bounds = UNITS.get(metric, ("None", None))
        points: list[dict[str, Any]] = []
        for timestamp in sorted(found):
            value = found[timestamp]
            point: dict[str, Any] = {"Timestamp": float(timestamp), "Unit": unit}
            for name in statistics:
                number = statistic(value, name, bounds)
                if number is not None:
                    point[name] = number
            told = {}
            for name in extended:
                number = statistic(value, name, bounds)
                if number is not None:
                    told[name] = number
            if told:
                point["ExtendedStatistics"] = told
            points.append(point)
        return points

    async def flush(self, *, partial: bool = False) -> int:
        """Write the live sources' complete minutes (with ``partial``, the current one too: at shutdown)
        to the database (taken on the event loop, written in a thread); the count of rows written."""
        now = int(self.clock())
        until = now // 60 * 60 + (60 if partial else 0)
        previous = self.flushed_until
        if until <= previous:
            return 0
        datums = self.pending(until)
        # from now on queries take these minutes from the rows, not from the live sources: while the write
        # runs they may miss them for a moment, never count them twice
        self.flushed_until = until
        try:
            return await asyncio.to_thread(self.write_rollups, datums, until)
        except BaseException:
            self.flushed_until = previous
            raise

"""The invocation recorder (1-second ring, cumulative counters) and the metric store (minute rollups in
SQLite, points, retention) on their own, with a clock the test moves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from selfmaker.endpoints.stats import CLIENT_ERROR, OK, SERVER_ERROR, InvocationStats
from selfmaker.metricstore import (
    LATENCY_BUCKETS,
    LIVE_SECONDS,
    SAGEMAKER_NAMESPACE,
    TRAINING_NAMESPACE,
    Aggregate,
    Datum,
    MetricStore,
    dims_of,
    parse_percentile,
    percentile,
    statistic,
)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


DIMS = dims_of({"EndpointName": "ep", "VariantName": "A"})


def test_recorder_counts_seconds_and_cumulative_figures() -> None:
    clock = Clock(1_000_020.0)
    stats = InvocationStats(clock)
    for i in range(10):
        stats.record("ep", "A", OK, 0.002 * (i + 1), 0.0001, instances=2)
    stats.record("ep", "A", CLIENT_ERROR, None, 0.0001)
    stats.record("ep", "A", SERVER_ERROR, 0.5, 0.0001)
    clock.now += 1
    stats.record("ep", "B", OK, 0.001, 0.0001)
    stats.record("ep", None, CLIENT_ERROR, None, 0.0001)  # refused before a variant was chosen

    a = next(c for c in stats.counters() if c.variant == "A")
    assert (a.invocations, a.errors_4xx, a.errors_5xx) == (12, 1, 1)
    assert a.model_latency.n == 11 and sum(a.model_latency.buckets) == 11
    assert a.overhead_latency.n == 12
    # cumulative histogram bucket of 0.5 s is the one bounded by 0.5
    assert a.model_latency.buckets[LATENCY_BUCKETS.index(0.5)] == 1

    recent = stats.recent("ep", 60)
    assert set(recent) == {"A", "B"}
    (point,) = recent["A"]
    assert (point.invocations, point.errors_4xx, point.errors_5xx) == (12, 1, 1)
    assert point.model_p50 is not None and 0.005 <= point.model_p50 <= 0.025
    assert point.model_p99 is not None and point.model_p99 <= 0.5

    by_metric: dict[tuple[str, tuple[tuple[str, str], ...]], Aggregate] = {}
    for d in stats.seconds(1_000_000, 1_000_100):
        by_metric[(d.metric, d.dims)] = d.value
    assert by_metric[("Invocations", DIMS)].total == 12
    assert by_metric[("Invocation4XXErrors", DIMS)].total == 1
    assert by_metric[("Invocation5XXErrors", DIMS)].total == 1
    assert by_metric[("Invocation5XXErrors", DIMS)].n == 12  # Average is the error rate
    assert by_metric[("ModelLatency", DIMS)].high == pytest.approx(500_000)  # µs
    assert by_metric[("InvocationsPerInstance", DIMS)].total == 6
    assert by_metric[("Invocation4XXErrors", dims_of({"EndpointName": "ep"}))].total == 1
    assert {(m, d) for _, m, d in stats.active(1_000_000)} >= {("ModelLatency", DIMS), ("Invocations", DIMS)}
    everything = list(stats.seconds(1_000_000, 1_000_100))
    only = list(stats.seconds(1_000_000, 1_000_100, "Invocation5XXErrors", DIMS))
    assert only == [d for d in everything if d.metric == "Invocation5XXErrors" and d.dims == DIMS] and only

    # the ring forgets what is older than LIVE_SECONDS
    clock.now += LIVE_SECONDS + 5
    assert list(stats.seconds(0, int(clock.now) + 1)) == []
    assert stats.recent("ep", 600) == {"A": [], "B": []}
    # a second's slot reused 10 minutes later: the cumulative figures keep what it held
    clock.now = 1_000_020.0 + LIVE_SECONDS
    stats.record("ep", "A", SERVER_ERROR, 0.02, 0.0001)
    a = next(c for c in stats.counters() if c.variant == "A")
    assert (a.invocations, a.errors_4xx, a.errors_5xx, a.model_latency.n) == (13, 1, 2, 12)
    # a deleted endpoint's figures go once the store has had time to take them; a live one's stay
    stats.sample("ApproximateBacklogSize", dims_of({"EndpointName": "gone"}), 3)
    stats.record("gone", "A", OK, 0.01, 0.001)
    stats.prune({"ep"})
    assert {c.endpoint for c in stats.counters()} == {"ep", "gone"}
    clock.now += LIVE_SECONDS + 61
    stats.prune({"ep"})
    assert {c.endpoint for c in stats.counters()} == {"ep"}
    assert list(stats.seconds(0, int(clock.now) + 1)) == []


def test_percentiles_and_statistics() -> None:
    assert parse_percentile("p99") == 99 and parse_percentile("p99.9") == 99.9
    assert parse_percentile("p101") is None and parse_percentile("p9x") is None
    assert parse_percentile("p99.999") is None
    agg = Aggregate(4, 10, 1, 4)
    assert statistic(agg, "Average", None) == 2.5
    assert statistic(agg, "SampleCount", None) == 4
    assert statistic(agg, "p50", None) is None  # no histogram, several values: unknown
    assert statistic(Aggregate.of(7.0), "p90", None) == 7.0
    bounds = (1.0, 2.0, 4.0)
    hist = Aggregate(100, 150, 0.5, 3.0, [50, 40, 10, 0])
    p50 = percentile(hist, 50, bounds)
    assert p50 is not None and 0.5 <= p50 <= 1.0
    p95 = percentile(hist, 95, bounds)
    assert p95 is not None and 2.0 <= p95 <= 3.0


def test_store_rolls_up_minutes_merges_live_data_and_prunes(tmp_path: Path) -> None:
    clock = Clock(1_700_000_000.0 // 60 * 60)
    stats = InvocationStats(clock)
    store = MetricStore(tmp_path / "metrics.db", retention_days=1, clock=clock)
    store.sources.append(stats)
    minute0 = int(clock.now)
    store.flushed_until = minute0
    for second in range(0, 120, 10):  # two minutes, 6 requests each
        clock.now = minute0 + second
        stats.record("ep", "A", OK, 0.01, 0.001)
    clock.now = minute0 + 125

    def sums(period: int) -> dict[int, float]:
        live = store.pending(int(clock.now) // 60 * 60 + 60)
        found = store.series(SAGEMAKER_NAMESPACE, "Invocations", DIMS, minute0, minute0 + 180, period, live)
        return {t: a.total for t, a in found.items()}

    assert sums(60) == {minute0: 6, minute0 + 60: 6}
    # flush the complete minutes; the same answer comes from the rows plus the live remainder
    until = int(clock.now) // 60 * 60
    assert store.write_rollups(store.pending(until), until) > 0
    assert store.flushed_until == minute0 + 120
    assert sums(60) == {minute0: 6, minute0 + 60: 6}
    assert sums(120) == {minute0: 12}
    # a 10-second period sees the per-second ring, never the minute rollups
    ten = store.series(
        SAGEMAKER_NAMESPACE, "Invocations", DIMS, minute0, minute0 + 60, 10, store.live(minute0, minute0 + 60)
    )
    assert sorted(ten) == list(range(minute0, minute0 + 60, 10)) and all(a.total == 1 for a in ten.values())
    assert (SAGEMAKER_NAMESPACE, "ModelLatency", DIMS) in store.stored_series(minute0)

    # points (a training job's values) as they come
    job = dims_of({"TrainingJobName": "job"})
    store.put(
        [
            Datum(TRAINING_NAMESPACE, "train:loss", job, minute0 + 5 * i, Aggregate.of(1.0 / (i + 1)))
            for i in range(3)
        ]
    )
    loss = store.series(TRAINING_NAMESPACE, "train:loss", job, minute0, minute0 + 60, 60)
    assert loss[minute0].n == 3 and loss[minute0].high == 1.0

    # a shutdown writes the minute in progress; after a restart in that minute, its row and the new
    # ring's data add up, and the next flush merges them into one row
    clock.now = minute0 + 130
    stats.record("ep", "A", OK, 0.01, 0.001)
    assert asyncio.run(store.flush(partial=True)) > 0 and store.flushed_until == minute0 + 180
    store.close()
    clock.now = minute0 + 150
    after = InvocationStats(clock)
    store = MetricStore(tmp_path / "metrics.db", retention_days=1, clock=clock)
    store.sources.append(after)
    assert store.flushed_until == minute0 + 120
    after.record("ep", "A", OK, 0.01, 0.001)
    assert sums(60) == {minute0: 6, minute0 + 60: 6, minute0 + 120: 2}
    clock.now = minute0 + 185
    assert asyncio.run(store.flush()) > 0 and store.flushed_until == minute0 + 180
    assert sums(60) == {minute0: 6, minute0 + 60: 6, minute0 + 120: 2}
    assert len(store.rows(SAGEMAKER_NAMESPACE, "Invocations", DIMS, minute0 + 120, minute0 + 180)) == 1

    # retention: a day later the rows are gone; a reopened store keeps what was flushed
    store.close()
    reopened = MetricStore(tmp_path / "metrics.db", retention_days=1, clock=clock)
    assert reopened.flushed_until == minute0 + 180
    assert reopened.rows(SAGEMAKER_NAMESPACE, "Invocations", DIMS, 0, 2**40)
    assert reopened.prune(now=minute0 + 2 * 86400) > 0
    assert reopened.rows(SAGEMAKER_NAMESPACE, "Invocations", DIMS, 0, 2**40) == []
    assert reopened.stored_series(0) == []
    reopened.close()

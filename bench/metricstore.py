"""The metric store's disk bound and the in-process cost of recording:

* **disk**: a week of synthetic minutes of ``--endpoints`` endpoints (one variant each, every minute busy:
  the rollups are per minute, so the request rate does not matter) written through ``MetricStore`` as the
  platform writes them, plus a day of a training job's values every 5 s; prints the database's size
  (goal: a week of 10 endpoints ≤ 100 MB);
* **in process**: the CPU per request of ``InvocationStats.record`` (the request path) and of
  ``InvocationStats.settle`` (the once-a-second task that puts the recorded requests in the ring).

The throughput cost on a live platform (recording vs ``SELFMAKER_ENDPOINT_METRICS=false``, goal ≤ 2 %) is
``python -m bench.router --recording``.

    .venv/bin/python -m bench.metricstore [--endpoints 10] [--days 7]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selfmaker.endpoints.stats import OK, InvocationStats  # noqa: E402
from selfmaker.metricstore import TRAINING_NAMESPACE, Aggregate, Datum, MetricStore, dims_of  # noqa: E402


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def disk(endpoints: int, days: float, work: Path) -> dict[str, Any]:
    """Fill ``days`` of minutes of ``endpoints`` busy endpoints (and a training job) into a new store."""
    start = time.time() // 60 * 60 - days * 86400
    clock = _Clock(start)
    stats = InvocationStats(clock)
    store = MetricStore(work / "metrics.db", retention_days=days + 1, clock=clock)
    store.sources.append(stats)
    store.flushed_until = int(start)
    rng = random.Random(7)
    minutes = int(days * 1440)
    began = time.perf_counter()
    for minute in range(minutes):
        base = start + minute * 60
        # a few requests per second-slot are enough: a minute's rollup has the same rows at any rate
        for second in range(0, 60, 6):
            clock.now = base + second
            for e in range(endpoints):
                for _ in range(3):
                    status = OK if rng.random() > 0.01 else 5
                    stats.record(f"endpoint-{e}", "AllTraffic", status, rng.lognormvariate(-5, 0.5), 2e-4, 2)
        clock.now = base + 60
        until = int(clock.now)
        store.write_rollups(store.pending(until), until)
    job = dims_of({"TrainingJobName": "a-training-job"})
    store.put(
        Datum(TRAINING_NAMESPACE, name, job, int(start) + 5 * i, Aggregate.of(1.0 / (i + 1)))
        for i in range(17280)
        for name in ("train:loss", "validation:loss")
    )
    elapsed = time.perf_counter() - began
    store.close()
    size = sum(p.stat().st_size for p in work.glob("metrics.db*"))
    return {"endpoints": endpoints, "days": days, "minutes": minutes, "bytes": size, "seconds": elapsed}


def record_cost(calls: int = 50_000) -> tuple[float, float]:
    """CPU seconds per request of ``InvocationStats.record`` (the request path) and of
    ``InvocationStats.settle`` (the once-a-second task), 20 variants, realistic latencies."""
    stats = InvocationStats()
    names = [(f"endpoint-{i % 10}", f"variant-{i % 2}") for i in range(20)]
    began = time.process_time()
    for i in range(calls):
        endpoint, variant = names[i % 20]
        stats.record(endpoint, variant, OK, 0.0012, 0.0002, 1)
    recorded = time.process_time()
    stats.settle()
    return (recorded - began) / calls, (time.process_time() - recorded) / calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=10, help="busy endpoints of the disk fill (10)")
    parser.add_argument("--days", type=float, default=7.0, help="days of minutes to fill (7)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="selfmaker-bench-metrics-") as tmp:
        work = Path(tmp)
        (work / "disk").mkdir()
        d = disk(args.endpoints, args.days, work / "disk")
        print(
            f"disk: {d['days']:g} days x {d['endpoints']} busy endpoints ({d['minutes']} minutes) + a day of "
            f"a training job's 2 metrics every 5 s: {d['bytes'] / 1e6:.1f} MB (goal <= 100 MB for 10 "
            f"endpoints and a week; filled in {d['seconds']:.0f} s)"
        )
        recorded, settled = record_cost()
        print(
            f"in process, per request: InvocationStats.record {recorded * 1e6:.2f} us of CPU (the request "
            f"path), InvocationStats.settle {settled * 1e6:.2f} us (the once-a-second task)"
        )
        print("throughput recording vs not: python -m bench.router --recording")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

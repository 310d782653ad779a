"""The metric store's two bounds, measured in one run:

* **disk**: a week of synthetic minutes of ``--endpoints`` endpoints (one variant each, every minute busy:
  the rollups are per minute, so the request rate does not matter) written through ``MetricStore`` as the
  platform writes them, plus a day of a training job's values every 5 s; prints the database's size
  (goal: a week of 10 endpoints ≤ 100 MB);
* **request path**: two ``selfmaker up`` with the same one-instance endpoint, one recording invocation
  metrics (the default) and one without (``SELFMAKER_ENDPOINT_METRICS=false``), driven alternately by the
  same closed-loop load at concurrency 8 (``bench.router``'s load generator); prints the throughput ratio
  recording ÷ not recording, median of ``--pairs`` interleaved pairs (goal ≥ 0.98), the platform
  process's CPU per request in each (what recording adds, steadier than throughput on a shared machine),
  and the in-process cost of one ``InvocationStats.record`` call.

    .venv/bin/python -m bench.metricstore [--endpoints 10] [--days 7] [--pairs 5] [--seconds 5] [--disk-only]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import free_port  # noqa: E402
from bench.router import build_model, load, stop, wait_ready  # noqa: E402
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


def record_cost(calls: int = 200_000) -> float:
    """CPU seconds per ``InvocationStats.record`` call (20 variants, realistic latencies)."""
    stats = InvocationStats()
    names = [(f"endpoint-{i % 10}", f"variant-{i % 2}") for i in range(20)]
    began = time.process_time()
    for i in range(calls):
        endpoint, variant = names[i % 20]
        stats.record(endpoint, variant, OK, 0.0012, 0.0002, 1)
    return (time.process_time() - began) / calls


def _platform(
    work: Path, name: str, archive: Path, metrics: bool, procs: list[subprocess.Popen[bytes]]
) -> str:
    import boto3

    port = free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        "SELFMAKER_ENDPOINT_METRICS": "true" if metrics else "false",
    }
    with open(work / f"{name}.log", "wb") as out:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "selfmaker", "up", "--home", str(work / name), "--port", str(port)]
                + ["--log-level", "WARNING"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=str(ROOT),
            )
        )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url + "/ping", procs[-1])
    sm = boto3.client(
        "sagemaker",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    sm.create_model(
        ModelName="bench", PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": archive.as_uri()}
    )
    sm.create_endpoint_config(
        EndpointConfigName="bench",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "bench",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName="bench", EndpointConfigName="bench")
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName="bench", WaiterConfig={"Delay": 0.25, "MaxAttempts": 240}
    )
    return f"{url}/endpoints/bench/invocations"


def _cpu(proc: subprocess.Popen[bytes]) -> float:
    """CPU seconds of the ``selfmaker up`` process itself (its model servers are other processes)."""
    import psutil

    times = psutil.Process(proc.pid).cpu_times()
    return float(times.user + times.system)


def request_path(pairs: int, seconds: int, work: Path) -> dict[str, Any]:
    """Throughput at concurrency 8 with recording ÷ without, interleaved pairs, median; and the platform
    process's CPU per request in each (what recording adds, less sensitive to the machine's other load)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        archive = build_model(work)
        payload = work / "row.csv"
        payload.write_text(",".join(f"{random.Random(i).gauss(0, 1):.4f}" for i in range(20)) + "\n")
        on = _platform(work, "recording", archive, True, procs)
        off = _platform(work, "not-recording", archive, False, procs)
        platform_of = {"on": procs[0], "off": procs[1]}
        for url in (on, off):  # warm-up
            load(url, payload, 2, 2)
        ratios, cpu_ratios, rows = [], [], []
        for pair in range(pairs):
            order = [("on", on), ("off", off)] if pair % 2 == 0 else [("off", off), ("on", on)]
            got, cpu = {}, {}
            for label, url in order:
                before = _cpu(platform_of[label])
                got[label] = load(url, payload, 8, seconds)
                cpu[label] = (_cpu(platform_of[label]) - before) / max(1, got[label]["requests"])
            ratios.append(got["on"]["rps"] / got["off"]["rps"])
            cpu_ratios.append(cpu["on"] / cpu["off"])
            errors = got["on"]["errors"] + got["off"]["errors"]
            rows.append((got["on"]["rps"], got["off"]["rps"], cpu["on"], cpu["off"], errors))
        return {
            "ratios": ratios,
            "median": statistics.median(ratios),
            "cpu_median": statistics.median(cpu_ratios),
            "rows": rows,
            "tool": got["on"]["tool"],
        }
    finally:
        for proc in procs:
            stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--endpoints", type=int, default=10, help="busy endpoints of the disk fill (10)")
    parser.add_argument("--days", type=float, default=7.0, help="days of minutes to fill (7)")
    parser.add_argument("--pairs", type=int, default=5, help="interleaved load pairs (5)")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per load measurement (5)")
    parser.add_argument("--disk-only", action="store_true", help="measure the disk bound only")
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
        cost = record_cost()
        print(f"InvocationStats.record: {cost * 1e6:.2f} us of CPU per call in process")
        if args.disk_only:
            return 0
        r = request_path(args.pairs, args.seconds, work)
        for on, off, cpu_on, cpu_off, errors in r["rows"]:
            print(
                f"  recording {on:8.0f} req/s {cpu_on * 1e6:6.0f} us CPU/request   not recording {off:8.0f} "
                f"req/s {cpu_off * 1e6:6.0f} us CPU/request   errors {errors}"
            )
        print(
            f"request path ({r['tool']}, concurrency 8, load average {os.getloadavg()[0]:.1f}): throughput "
            f"recording / not recording, median of {args.pairs} pairs: {r['median']:.3f} "
            f"(range {min(r['ratios']):.3f}-{max(r['ratios']):.3f}; goal >= 0.98); the platform process's "
            f"CPU per request, recording / not: median {r['cpu_median']:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

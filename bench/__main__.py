"""`python -m bench [NAME [ARGS...]]`: list the benchmarks, or run one of them.

Each benchmark is its own module (`python -m bench.<name> --help` for its options) and prints its
figures with a ratio against a baseline measured in the same run.
"""

from __future__ import annotations

import runpy
import sys

BENCHMARKS: dict[str, str] = {
    "serving": "model server vs the in-process limit, the /ping floor and the anchors (naive flask, MMS)",
    "router": "one model server called directly vs through `selfmaker up` (added latency, throughput ratio)",
    "training": "built-in XGBoost job vs plain xgboost.train in-process on the same CSV",
    "warm_pool": "training job start: a warm-pool hit (standby interpreter, cached input) vs a cold start",
    "recordio": "RecordIO-protobuf decode, 1,000 x 100 dense: protobuf package vs the old hand-written one",
    "batch": "batch transform rows/s vs a per-core in-process loop; peak memory at 1M vs 4M rows",
    "coldstart": "serverless cold start: template fork vs plain spawn (and a container); first call after up",
    "lambda_coldstart": "serverless on AWS Lambda: a cold sandbox's first ALB answer vs awslambdaric alone",
    "async_inference": "async accept-to-output vs real-time latency; backlog drain with 1 and 2 instances",
    "tuning": "a tuning job of 8 short built-in XGBoost jobs with MaxParallelTrainingJobs=2 vs 1 (wall time)",
    "slowclients": "a client's p99 under 500 idle + 50 slowloris connections / idle p99; RSS over 100k calls",
    "metricstore": "a week of 10 endpoints' minute rollups on disk (MB); throughput recording metrics / not",
    "aws_batch": (
        "a transform split over 2 AWS Batch array children (local processes) vs the local engine's rows/s"
    ),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m bench NAME [ARGS...]\n\nbenchmarks:")
        for name, what in BENCHMARKS.items():
            print(f"  {name.ljust(16)} {what}")
        return 0
    name = argv[0]
    if name not in BENCHMARKS:
        print(f"bench: unknown benchmark {name!r}; run `python -m bench` for the list", file=sys.stderr)
        return 2
    sys.argv = [f"bench.{name}", *argv[1:]]
    runpy.run_module(f"bench.{name}", run_name="__main__")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

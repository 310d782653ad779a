"""A hyperparameter tuning job of 8 short built-in XGBoost jobs with MaxParallelTrainingJobs=2 vs 1.

    .venv/bin/python -m bench.tuning [--jobs 8] [--rows 20000] [--rounds 60] [--json out.json]

One ``selfmaker up`` (its own process, 127.0.0.1, a temporary home) runs both tuning jobs, one after the
other, on the same generated CSV and the same seeded Random search over eta and max_depth; each training
job uses one xgboost thread (``nthread=1``), so two of them side by side can use this machine's 2 cores.
Measured: wall time from CreateHyperParameterTuningJob to Completed. Baseline: the same tuning job with
MaxParallelTrainingJobs=1, measured in the same run. The ratio parallel / sequential is the figure (goal
≤ 0.6 on 2 cores: each job also pays a fixed start-up — a new interpreter, xgboost import, data read —
which runs side by side too). A third run (``--no-warm`` skips it) is the baseline again with
``KeepAlivePeriodInSeconds`` in the ResourceConfig: each training job takes over the warm pool (standby
interpreter, cached input) the previous one kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import free_port, start, wait_ready  # noqa: E402

XGB_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
TIMEOUT = 1800.0


def client(url: str) -> Any:
    return boto3.client(
        "sagemaker",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 2, "mode": "standard"}),
    )


def generate(data: Path, rows: int, features: int = 10) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features))
    y = (x[:, 0] * x[:, 1] + np.sin(x[:, 2]) + rng.normal(scale=0.5, size=rows) > 0).astype(int)
    split = int(rows * 0.8)
    for channel, part in (("train", slice(0, split)), ("validation", slice(split, None))):
        (data / channel).mkdir(parents=True, exist_ok=True)
        np.savetxt(
            data / channel / "part.csv", np.column_stack([y[part], x[part]]), delimiter=",", fmt="%.5f"
        )


def run_tuning(
    sm: Any, name: str, data: Path, jobs: int, parallel: int, rounds: int, keep_alive: int = 0
) -> float:
    """Wall seconds of one tuning job, CreateHyperParameterTuningJob → Completed (``keep_alive``: its
    training jobs keep a warm pool that the next one takes over)."""
    resources: dict[str, Any] = {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}
    if keep_alive:
        resources["KeepAlivePeriodInSeconds"] = keep_alive
    started = time.monotonic()
    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name,
        HyperParameterTuningJobConfig={
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:auc"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": jobs, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": {
                "ContinuousParameterRanges": [{"Name": "eta", "MinValue": "0.05", "MaxValue": "0.5"}],
                "IntegerParameterRanges": [{"Name": "max_depth", "MinValue": "3", "MaxValue": "6"}],
            },
            "RandomSeed": 11,
        },
        TrainingJobDefinition={
            "AlgorithmSpecification": {"TrainingImage": XGB_IMAGE, "TrainingInputMode": "File"},
            "RoleArn": "arn:aws:iam::123456789012:role/bench",
            "StaticHyperParameters": {
                "objective": "binary:logistic",
                "num_round": str(rounds),
                "nthread": "1",
                "tree_method": "hist",
            },
            "InputDataConfig": [
                {
                    "ChannelName": ch,
                    "ContentType": "text/csv",
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": (data / ch).as_uri()}},
                }
                for ch in ("train", "validation")
            ],
            "OutputDataConfig": {"S3OutputPath": (data.parent / "out").as_uri()},
            "ResourceConfig": resources,
            "StoppingCondition": {"MaxRuntimeInSeconds": 600},
        },
    )
    deadline = started + TIMEOUT
    while time.monotonic() < deadline:
        desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if desc["HyperParameterTuningJobStatus"] != "InProgress":
            if desc["HyperParameterTuningJobStatus"] != "Completed":
                raise RuntimeError(
                    f"{name}: {desc['HyperParameterTuningJobStatus']} {desc.get('FailureReason')}"
                )
            if desc["TrainingJobStatusCounters"]["Completed"] != jobs:
                raise RuntimeError(f"{name}: {desc['TrainingJobStatusCounters']}")
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError(f"{name} did not end in {TIMEOUT:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=8, help="training jobs per tuning job (2..32)")
    parser.add_argument("--rows", type=int, default=20000, help="rows of the generated CSV (≤1M)")
    parser.add_argument("--rounds", type=int, default=60, help="xgboost rounds per training job (≤1000)")
    parser.add_argument(
        "--no-warm", action="store_true", help="skip the third run (one at a time, with warm pools)"
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args(argv)
    jobs = max(2, min(args.jobs, 32))
    rows = max(1000, min(args.rows, 1_000_000))
    rounds = max(1, min(args.rounds, 1000))

    work = Path(tempfile.mkdtemp(prefix="bench-tuning-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    platform = None
    try:
        generate(work / "data", rows)
        platform = start(
            "selfmaker",
            [sys.executable, "-m", "selfmaker", "up", "--home", str(work / "home"), "--port", str(port)],
            cwd=str(ROOT),
            log_dir=work,
        )
        wait_ready(platform, f"{url}/ping", 60)
        sm = client(url)
        sequential = run_tuning(sm, "bench-sequential", work / "data", jobs, 1, rounds)
        parallel = run_tuning(sm, "bench-parallel", work / "data", jobs, 2, rounds)
        warm = None if args.no_warm else run_tuning(sm, "bench-warm", work / "data", jobs, 1, rounds, 600)
        reused = 0
        if warm is not None:  # how many training jobs handed their warm pool on (SageMaker's Reused)
            summaries = sm.list_training_jobs_for_hyper_parameter_tuning_job(
                HyperParameterTuningJobName="bench-warm", MaxResults=100
            )["TrainingJobSummaries"]
            for summary in summaries:
                job = sm.describe_training_job(TrainingJobName=summary["TrainingJobName"])
                reused += (job.get("WarmPoolStatus") or {}).get("Status") == "Reused"
    finally:
        if platform is not None:
            platform.stop()
    ratio = parallel / sequential
    results = {
        "jobs": jobs,
        "rows": rows,
        "rounds": rounds,
        "sequential_s": round(sequential, 2),
        "parallel2_s": round(parallel, 2),
        "ratio": round(ratio, 3),
        "goal": 0.6,
        "sequential_warm_pools_s": round(warm, 2) if warm is not None else None,
        "warm_pools_reused": reused,
    }
    print(f"tuning job of {jobs} built-in XGBoost jobs ({rows} rows, {rounds} rounds, nthread=1)")
    print(f"  MaxParallelTrainingJobs=1 (baseline)  {sequential:8.1f} s")
    print(f"  MaxParallelTrainingJobs=2             {parallel:8.1f} s")
    print(f"  ratio parallel / sequential           {ratio:8.3f}   (goal ≤ 0.6)")
    if warm is not None:
        print(
            f"  one at a time with warm pools         {warm:8.1f} s   "
            f"({warm / sequential:.3f} of the baseline; {reused} of {jobs} jobs' pools reused)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

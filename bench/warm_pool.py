"""Training job start: a warm-pool hit vs a cold start, built-in XGBoost through `selfmaker up`.

    .venv/bin/python -m bench.warm_pool [--repeat 5] [--rows 2000]

Start time = CreateTrainingJob → the job's first boosting round in its log (``[0]#011train-…``): prepare the
/opt/ml tree, fetch the channel, start the host, import the runtime and xgboost, read the CSV, one round.
Cold: a job without a keep-alive (a fresh interpreter imports everything, the channel is copied from its
source). Warm: a job with ``KeepAlivePeriodInSeconds`` matching the pool the previous warm job left (its host
runs in the pool's standby interpreter, which imported everything ahead; the channel comes from the pool's
input cache). Cold and warm jobs alternate, ``--repeat`` times each; the ratio of the medians cold / warm is
printed (goal ≥ 2). Everything runs on 127.0.0.1, every wait is bounded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import start, wait_ready
from common.proc import free_port

ROOT = Path(__file__).resolve().parent.parent
XGBOOST = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
FIRST_ROUND = "[0]#011train-"


def request(name: str, data: Path, out: Path, keep_alive: int) -> dict[str, Any]:
    resources: dict[str, Any] = {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1}
    if keep_alive:
        resources["KeepAlivePeriodInSeconds"] = keep_alive
    return {
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/bench",
        "AlgorithmSpecification": {"TrainingImage": XGBOOST, "TrainingInputMode": "File"},
        "HyperParameters": {"num_round": "5", "objective": "binary:logistic", "max_depth": "3"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "ContentType": "text/csv",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": out.as_uri()},
        "ResourceConfig": resources,
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
    }


def run_job(sm: Any, home: Path, req: dict[str, Any], timeout: float = 300) -> float:
    """Create the job; seconds until its first round is logged. Waits for its end (and, with a keep-alive,
    for its pool to be Available) before returning."""
    name = req["TrainingJobName"]
    log = home / "logs" / "training-jobs" / f"{name}.log"
    started = time.perf_counter()
    sm.create_training_job(**req)
    deadline = time.monotonic() + timeout
    first: float | None = None
    while first is None:
        if log.is_file() and FIRST_ROUND in log.read_text(errors="replace"):
            first = time.perf_counter() - started
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: no first round within {timeout}s")
        time.sleep(0.005)
    keep = bool(req["ResourceConfig"].get("KeepAlivePeriodInSeconds"))
    while True:
        desc = sm.describe_training_job(TrainingJobName=name)
        if desc["TrainingJobStatus"] in ("Failed", "Stopped"):
            raise RuntimeError(f"{name}: {desc['TrainingJobStatus']}: {desc.get('FailureReason')}")
        pool = (desc.get("WarmPoolStatus") or {}).get("Status")
        if desc["TrainingJobStatus"] == "Completed" and (not keep or pool == "Available"):
            return first
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: not done within {timeout}s")
        time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.warm_pool", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="cold and warm jobs each (alternating)")
    parser.add_argument("--rows", type=int, default=2000, help="rows of the generated CSV")
    args = parser.parse_args(argv)

    import boto3
    from botocore.config import Config

    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        rng = np.random.default_rng(0)
        x = rng.normal(size=(args.rows, 8))
        y = (x[:, 0] + x[:, 1] > 0).astype(int)
        np.savetxt(data / "train.csv", np.column_stack([y, x]), delimiter=",", fmt="%.5f")
        home = work / "home"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start(
            "selfmaker-up",
            [sys.executable, "-m", "selfmaker", "up", "--home", str(home), "--port", str(port)],
            cwd=str(ROOT),
            log_dir=work,
        )
        try:
            wait_ready(proc, url + "/ping", timeout=60)
            sm = boto3.client(
                "sagemaker",
                endpoint_url=url,
                region_name="us-east-1",
                aws_access_key_id="bench",
                aws_secret_access_key="bench",
                config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
            )
            out = work / "out"
            # the first job with a keep-alive starts cold and leaves the pool the first warm job takes
            run_job(sm, home, request("seed", data, out, keep_alive=600))
            cold: list[float] = []
            warm: list[float] = []
            for i in range(args.repeat):
                cold.append(run_job(sm, home, request(f"cold-{i}", data, out, keep_alive=0)))
                warm.append(run_job(sm, home, request(f"warm-{i}", data, out, keep_alive=600)))
                print(f"  round {i + 1}: cold {cold[-1]:.3f} s, warm {warm[-1]:.3f} s", flush=True)
        finally:
            proc.stop()
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"cold start (no warm pool)     median {c:.3f} s  (min {min(cold):.3f})")
    print(f"warm-pool hit                 median {w:.3f} s  (min {min(warm):.3f})")
    print(f"ratio cold / warm: {c / w:.2f}x  (goal >= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

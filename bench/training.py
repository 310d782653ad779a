"""Built-in xgboost job vs plain ``xgboost.train`` in-process on the same generated CSV.

    .venv/bin/python -m bench.training [--rows 1000000] [--features 20] [--rounds 50] [--mode File]

Baseline (same process, xgboost already imported): read the CSV with pyarrow, build the DMatrix,
``xgboost.train`` with the same parameters. Job: ``TrainingJobRunner.run()`` on a CreateTrainingJob
request with a ``file://`` channel — prepare /opt/ml, fetch the channel, start ``python -m training``,
import, read, train, export ONNX, tar and "upload" model.tar.gz. The ratio job / baseline is the
overhead (goal ≤ 1.10). Both are measured in this run, alternately, ``--repeat`` times; the best of each
is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def generate(path: Path, rows: int, features: int, seed: int = 0) -> None:
    """A binary problem with a non-linear boundary, label first, no header."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=features)
    chunk = 200_000
    with open(path, "w") as f:
        for lo in range(0, rows, chunk):
            n = min(chunk, rows - lo)
            X = rng.normal(size=(n, features)).astype(np.float32)
            margin = X @ w + 0.5 * np.sin(3 * X[:, 0]) * X[:, 1] + rng.normal(scale=0.5, size=n)
            y = (margin > 0).astype(np.int8)
            block = np.column_stack([y, X])
            np.savetxt(f, block, delimiter=",", fmt=["%d"] + ["%.5f"] * features)


def params(rounds: int) -> dict[str, str]:
    return {
        "num_round": str(rounds),
        "objective": "binary:logistic",
        "max_depth": "6",
        "eta": "0.3",
        "tree_method": "hist",
        "eval_metric": "auc",
    }


def baseline(csv: Path, hps: dict[str, str]) -> tuple[float, float]:
    """In-process: pyarrow CSV → DMatrix → xgboost.train. Returns (total seconds, train-only seconds)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import xgboost as xgb

    t0 = time.perf_counter()
    table = pacsv.read_csv(
        str(csv),
        read_options=pacsv.ReadOptions(autogenerate_column_names=True, block_size=1 << 24),
        convert_options=pacsv.ConvertOptions(column_types={f"f{i}": pa.float32() for i in range(64)}),
    )
    arr = np.empty((table.num_rows, table.num_columns), dtype=np.float32)
    for i, col in enumerate(table.columns):
        arr[:, i] = col.to_numpy(zero_copy_only=False)
    dtrain = xgb.DMatrix(arr[:, 1:], label=arr[:, 0], missing=np.nan)
    t1 = time.perf_counter()
    p: dict[str, Any] = {k: v for k, v in hps.items() if k != "num_round"}
    p["nthread"] = os.cpu_count() or 1
    xgb.train(p, dtrain, num_boost_round=int(hps["num_round"]), evals=[(dtrain, "train")], verbose_eval=False)
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def job(csv_dir: Path, work: Path, hps: dict[str, str], mode: str, name: str) -> float:
    from training.runner import TrainingJobRunner

    req = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
            "TrainingInputMode": mode,
        },
        "HyperParameters": hps,
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "ContentType": "text/csv",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": csv_dir.as_uri()}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": (work / "out").as_uri()},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
    }
    t0 = time.perf_counter()
    state = TrainingJobRunner(req, work / name).run()
    elapsed = time.perf_counter() - t0
    if state.status != "Completed":
        raise SystemExit(f"job {name} {state.status}: {state.failure_reason}")
    shutil.rmtree(work / name, ignore_errors=True)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--mode", default="File", choices=["File", "FastFile", "Pipe"])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    import xgboost  # noqa: F401  # the baseline runs with xgboost already imported

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        data = root / "data"
        data.mkdir()
        t = time.perf_counter()
        generate(data / "train.csv", args.rows, args.features)
        size_mb = (data / "train.csv").stat().st_size / 1e6
        print(
            f"generated {args.rows} x {args.features} CSV ({size_mb:.0f} MB) in "
            f"{time.perf_counter() - t:.1f}s",
            flush=True,
        )
        hps = params(args.rounds)
        base, base_train, jobs = [], [], []
        for i in range(args.repeat):
            total, train_only = baseline(data / "train.csv", hps)
            base.append(total)
            base_train.append(train_only)
            print(f"baseline run {i}: {total:.2f}s (xgboost.train {train_only:.2f}s)", flush=True)
            jobs.append(job(data, root, hps, args.mode, f"bench-{i}"))
            print(f"job run {i} ({args.mode}): {jobs[-1]:.2f}s", flush=True)
        result = {
            "rows": args.rows,
            "features": args.features,
            "rounds": args.rounds,
            "mode": args.mode,
            "cpus": os.cpu_count(),
            "baseline_s": round(min(base), 2),
            "baseline_train_only_s": round(min(base_train), 2),
            "job_s": round(min(jobs), 2),
            "ratio_job_over_baseline": round(min(jobs) / min(base), 3),
        }
        print(
            f"xgboost built-in job {result['job_s']}s vs in-process read+train {result['baseline_s']}s "
            f"→ ratio {result['ratio_job_over_baseline']} (overhead "
            f"{100 * (result['ratio_job_over_baseline'] - 1):.1f}%)"
        )
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

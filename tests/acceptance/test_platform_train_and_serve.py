"""The whole product through plain boto3: train with the built-in xgboost, deploy, invoke, stop, list.

A real `selfmaker up` subprocess runs the training job (training runner → process → model.tar.gz under
file://), then serves the artifact on an endpoint.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]


import platform_helpers as helpers  # noqa: E402 - on sys.path via conftest.py

XGB_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
AUC = {
    "Name": "validation:auc",
    "Regex": r".*\[[0-9]+\].*#011validation-auc:([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?).*",
}
WAIT = {"Delay": 0.5, "MaxAttempts": 240}


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5, 0.0, 0.25]) > 0).astype(np.float32)
    return x, y


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.column_stack([y, x]), delimiter=",", fmt="%.6f")


def _job(name: str, data: Path, out: Path, hps: dict[str, Any]) -> dict[str, Any]:
    channels = [
        {
            "ChannelName": channel,
            "ContentType": "text/csv",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": (data / channel).as_uri(),
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
        }
        for channel in ("train", "validation")
    ]
    return {
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/selfmaker",
        "AlgorithmSpecification": {
            "TrainingImage": XGB_IMAGE,
            "TrainingInputMode": "File",
            "MetricDefinitions": [AUC],
        },
        "HyperParameters": {k: str(v) for k, v in hps.items()},
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": out.as_uri()},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


def test_train_with_builtin_xgboost_then_serve(platform: Any, tmp_path: Path) -> None:
    sm, smr = platform.sagemaker(), platform.runtime()
    x, y = _data(1200, 0)
    _write_csv(tmp_path / "data/train/part-0.csv", x[:900], y[:900])
    _write_csv(tmp_path / "data/validation/part-0.csv", x[900:], y[900:])
    name = f"xgb-{uuid.uuid4().hex[:6]}"
    request = _job(
        name,
        tmp_path / "data",
        tmp_path / "out",
        {"num_round": 25, "objective": "binary:logistic", "eval_metric": "auc", "max_depth": 3},
    )
    arn = sm.create_training_job(**request, Tags=[{"Key": "project", "Value": "demo"}])["TrainingJobArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}"
    with pytest.raises(ClientError) as info:
        sm.create_training_job(**request)
    assert info.value.response["Error"]["Code"] == "ResourceInUse"
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] in {"InProgress", "Completed"}

    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName=name, WaiterConfig=WAIT)
    desc = sm.describe_training_job(TrainingJobName=name)
    assert desc["TrainingJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["SecondaryStatus"] == "Completed"
    assert [t["Status"] for t in desc["SecondaryStatusTransitions"]][-1] == "Completed"
    artifact = desc["ModelArtifacts"]["S3ModelArtifacts"]
    assert artifact == (tmp_path / "out").as_uri() + f"/{name}/output/model.tar.gz"
    assert (tmp_path / "out" / name / "output" / "model.tar.gz").is_file()
    [metric] = desc["FinalMetricDataList"]
    assert metric["MetricName"] == "validation:auc" and metric["Value"] > 0.9
    assert desc["TrainingTimeInSeconds"] >= 0 and desc["TrainingEndTime"] >= desc["TrainingStartTime"]
    assert (
        desc["AlgorithmSpecification"]["TrainingImage"] == XGB_IMAGE
        and desc["ResourceConfig"]["InstanceCount"] == 1
    )
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "project", "Value": "demo"}]
    summaries = sm.list_training_jobs(StatusEquals="Completed", NameContains=name)["TrainingJobSummaries"]
    assert [s["TrainingJobName"] for s in summaries] == [name]
    # no job keeps a warm pool here: filtering on one matches none
    assert (
        sm.list_training_jobs(NameContains=name, WarmPoolStatusEquals="Available")["TrainingJobSummaries"]
        == []
    )
    with pytest.raises(ClientError) as info:  # a finished job cannot be stopped
        sm.stop_training_job(TrainingJobName=name)
    assert info.value.response["Error"]["Code"] == "ValidationException"

    logs = subprocess.run(
        [sys.executable, "-m", "selfmaker", "logs", name, "--home", str(platform.home)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
    )
    assert logs.returncode == 0 and "validation-auc" in logs.stdout

    # serve the trained artifact
    sm.create_model(
        ModelName=name,
        PrimaryContainer={"Image": XGB_IMAGE, "ModelDataUrl": artifact},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    helpers.deploy(sm, name, [helpers.variant("AllTraffic", name)])
    body = "\n".join(",".join(f"{v:.6f}" for v in row) for row in x[900:]).encode()
    resp = smr.invoke_endpoint(EndpointName=name, Body=body, ContentType="text/csv")
    scores = np.array([float(line) for line in resp["Body"].read().decode().split()])
    assert len(scores) == 300 and np.mean((scores >= 0.5) == (y[900:] == 1)) > 0.9
    status = subprocess.run(
        [sys.executable, "-m", "selfmaker", "status", "--home", str(platform.home)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(ROOT),
    )
    assert status.returncode == 0 and name in status.stdout and "InService" in status.stdout
    sm.delete_endpoint(EndpointName=name)
    sm.get_waiter("endpoint_deleted").wait(EndpointName=name, WaiterConfig=WAIT)


def test_stop_training_job(platform: Any, tmp_path: Path) -> None:
    sm = platform.sagemaker()
    x, y = _data(4000, 1)
    _write_csv(tmp_path / "data/train/part-0.csv", x, y)
    _write_csv(tmp_path / "data/validation/part-0.csv", x[:500], y[:500])
    name = f"long-{uuid.uuid4().hex[:6]}"
    sm.create_training_job(
        **_job(
            name,
            tmp_path / "data",
            tmp_path / "out",
            {"num_round": 200000, "objective": "binary:logistic", "eval_metric": "auc"},
        )
    )
    deadline = time.monotonic() + 120
    while sm.describe_training_job(TrainingJobName=name)["SecondaryStatus"] != "Training":
        assert time.monotonic() < deadline, "job never reached Training"
        time.sleep(0.2)
    sm.stop_training_job(TrainingJobName=name)
    assert sm.describe_training_job(TrainingJobName=name)["TrainingJobStatus"] in {"Stopping", "Stopped"}
    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName=name, WaiterConfig=WAIT)
    desc = sm.describe_training_job(TrainingJobName=name)
    assert desc["TrainingJobStatus"] == "Stopped"
    assert (
        sm.list_training_jobs(StatusEquals="Stopped", NameContains=name)["TrainingJobSummaries"][0][
            "TrainingJobName"
        ]
        == name
    )

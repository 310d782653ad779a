"""Restart recovery: a crashed (SIGKILLed) or stopped platform brings endpoints back (also those whose model
and endpoint config were deleted since) and fails running jobs."""

from __future__ import annotations

import datetime as dt
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from platform_helpers import (
    WAIT,
    PlatformProcess,
    build_classifier_tar,
    client,
    deploy,
    invoke_variant,
    make_model,
    variant,
)

# starts its own platform three times (a SIGKILL crash, a graceful stop) and runs a training job: about 40 s,
# as long as an acceptance module, so `make test-fast` leaves it out with them
pytestmark = pytest.mark.slow


def _pids(home: Path, endpoint: str) -> set[int]:
    from selfmaker.commands.status import collect

    return {i["Pid"] for i in collect(home)["instances"] if i["EndpointName"] == endpoint and i["Pid"]}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: set[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(_gone(p) for p in pids):
        assert time.monotonic() < deadline, f"processes {pids} still running"
        time.sleep(0.1)


def _long_job(tmp_path: Path, name: str) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 5))
    y = (x[:, 0] > 0).astype(float)
    (tmp_path / "data/train").mkdir(parents=True)
    np.savetxt(tmp_path / "data/train/d.csv", np.column_stack([y, x]), delimiter=",", fmt="%.5f")
    return {
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/selfmaker",
        "AlgorithmSpecification": {"TrainingImage": "sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"},
        "HyperParameters": {"num_round": "200000", "objective": "binary:logistic"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "ContentType": "text/csv",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": (tmp_path / "data/train").as_uri()}
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": (tmp_path / "out").as_uri()},
        "ResourceConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }


def test_crash_and_restart_restores_endpoints_and_fails_running_jobs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model_uri = build_classifier_tar(tmp_path / "model").as_uri()
    server = PlatformProcess(home).start()
    try:
        sm, smr = server.sagemaker(), server.runtime()
        make_model(sm, "m", model_uri)
        deploy(sm, "Survivor", [variant("A", "m", weight=3.0), variant("B", "m", weight=1.0)])
        # a pipeline model (Direct: either container answers alone): one model server per container
        sm.create_model(
            ModelName="pm",
            Containers=[
                {"Image": "selfmaker", "ModelDataUrl": model_uri, "ContainerHostname": name}
                for name in ("one", "two")
            ],
            InferenceExecutionConfig={"Mode": "Direct"},
            ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
        )
        deploy(sm, "Pipe", [variant("P", "pm")])
        sm.delete_model(ModelName="pm")
        sm.update_endpoint_weights_and_capacities(
            EndpointName="Survivor", DesiredWeightsAndCapacities=[{"VariantName": "A", "DesiredWeight": 0.0}]
        )
        sm.get_waiter("endpoint_in_service").wait(EndpointName="Survivor", WaiterConfig=WAIT)
        # as on SageMaker, the endpoint outlives its model and config: they were resolved at deployment
        sm.delete_model(ModelName="m")
        sm.delete_endpoint_config(EndpointConfigName="Survivor-cfg")
        job = f"job-{uuid.uuid4().hex[:6]}"
        sm.create_training_job(**_long_job(tmp_path, job))
        deadline = time.monotonic() + 120
        while sm.describe_training_job(TrainingJobName=job)["SecondaryStatus"] != "Training":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        old_pids = _pids(home, "Survivor")
        assert len(old_pids) == 2
        old_pipe = _pids(home, "Pipe")
        assert len(old_pipe) == 2  # both containers' servers are recorded, so both are reaped
        server.stop(signal.SIGKILL)  # crash: no chance to clean up

        server = PlatformProcess(home, port=server.port).start()
        sm, smr = server.sagemaker(), server.runtime()
        _wait_gone(old_pids | old_pipe)  # orphaned model servers of the crashed run are reaped
        sm.get_waiter("endpoint_in_service").wait(EndpointName="Survivor", WaiterConfig=WAIT)
        new_pids = _pids(home, "Survivor")
        assert len(new_pids) == 2 and not (new_pids & old_pids)
        # weights survive the restart: A has 0 and only answers when targeted
        assert {invoke_variant(smr, "Survivor") for _ in range(30)} == {"B"}
        assert invoke_variant(smr, "Survivor", TargetVariant="A") == "A"
        # the pipeline endpoint is back too, from the model documents kept with it
        sm.get_waiter("endpoint_in_service").wait(EndpointName="Pipe", WaiterConfig=WAIT)
        assert len(_pids(home, "Pipe") - old_pipe) == 2
        answer = smr.invoke_endpoint(
            EndpointName="Pipe", Body=b"1,2,3,4", ContentType="text/csv", TargetContainerHostname="two"
        )
        assert answer["InvokedProductionVariant"] == "P" and answer["Body"].read()
        desc = sm.describe_training_job(TrainingJobName=job)
        assert desc["TrainingJobStatus"] == "Failed"
        assert "restarted" in desc["FailureReason"]
        sm.get_waiter("training_job_completed_or_stopped")  # exists; a Failed job makes it raise
        assert sm.list_training_jobs(StatusEquals="InProgress")["TrainingJobSummaries"] == []

        # a graceful stop keeps the endpoint for the next start too, and its metrics and alarms: the minute
        # in progress is written at shutdown
        cloudwatch = client("cloudwatch", server.url)
        dims = [{"Name": "EndpointName", "Value": "Survivor"}, {"Name": "VariantName", "Value": "B"}]
        cloudwatch.put_metric_alarm(
            AlarmName="survivor-calls", Namespace="AWS/SageMaker", MetricName="Invocations", Dimensions=dims,
            Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1000,
            ComparisonOperator="GreaterThanThreshold",
        )  # fmt: skip
        assert server.stop() == 0
        _wait_gone(new_pids)
        server = PlatformProcess(home, port=server.port).start()
        sm, smr = server.sagemaker(), server.runtime()
        cloudwatch = client("cloudwatch", server.url)
        now = dt.datetime.now(dt.timezone.utc)
        calls = cloudwatch.get_metric_statistics(
            Namespace="AWS/SageMaker", MetricName="Invocations", Dimensions=dims, Period=3600,
            StartTime=now - dt.timedelta(hours=1), EndTime=now + dt.timedelta(minutes=1), Statistics=["Sum"],
        )["Datapoints"]  # fmt: skip
        assert sum(p["Sum"] for p in calls) == 30
        assert [a["AlarmName"] for a in cloudwatch.describe_alarms()["MetricAlarms"]] == ["survivor-calls"]
        sm.get_waiter("endpoint_in_service").wait(EndpointName="Survivor", WaiterConfig=WAIT)
        assert invoke_variant(smr, "Survivor") == "B"
        sm.delete_endpoint(EndpointName="Survivor")
        sm.get_waiter("endpoint_deleted").wait(EndpointName="Survivor", WaiterConfig=WAIT)
    finally:
        server.stop()

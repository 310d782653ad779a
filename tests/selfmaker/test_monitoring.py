"""Model Monitor against a running `selfmaker up` (boto3, moto's S3): a data-quality baseline as a processing
job of SageMaker's analyzer image, a schedule over an endpoint's captured data whose execution flags the
one drifted feature, and the schedule / job definition operations with their bad input."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError
from platform_helpers import WAIT, PlatformProcess, deploy, make_model, moto_env, running, variant
from test_describe_shapes import MODEL, missing_members

ROLE = "arn:aws:iam::123456789012:role/selfmaker"
ANALYZER = "156813124566.dkr.ecr.us-east-1.amazonaws.com/sagemaker-model-monitor-analyzer"
BUCKET = "monitoring-tests"
FEATURES = ["a", "b", "c", "d"]
HOURLY = "cron(0 * ? * * *)"


@pytest.fixture(scope="module")
def s3(moto_server: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def platform(
    moto_server: str, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlatformProcess]:
    """A platform on moto's S3 whose schedules run once as soon as they are created."""
    env = moto_env(moto_server, SELFMAKER_MONITORING_RUN_NOW="true")
    with running(tmp_path_factory.mktemp("monitoring-home"), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def sm(platform: PlatformProcess) -> Any:
    return platform.sagemaker()


@pytest.fixture(scope="module")
def endpoints(sm: Any, onnx_model_tar: str) -> dict[str, str]:
    """``captured``: an endpoint that captures every request's CSV input; ``plain``: one without capture."""
    make_model(sm, "monitored-model", onnx_model_tar)
    sm.create_endpoint_config(
        EndpointConfigName="monitored-cfg",
        ProductionVariants=[variant("AllTraffic", "monitored-model")],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": f"s3://{BUCKET}/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"]},
        },
    )
    sm.create_endpoint(EndpointName="monitored", EndpointConfigName="monitored-cfg")
    # only its record matters (a schedule on it is refused): no need to wait for its model server
    deploy(sm, "unmonitored", [variant("AllTraffic", "monitored-model")], wait=False)
    sm.get_waiter("endpoint_in_service").wait(EndpointName="monitored", WaiterConfig=WAIT)
    return {"captured": "monitored", "plain": "unmonitored"}


def _csv(rows: np.ndarray, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(FEATURES)
    writer.writerows([[f"{x:.4f}" for x in row] for row in rows])
    return out.getvalue()


def _json(s3: Any, key: str) -> Any:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def _definition(name: str, endpoint: str, baseline: str | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "JobDefinitionName": name,
        "DataQualityAppSpecification": {"ImageUri": ANALYZER},
        "DataQualityJobInput": {
            "EndpointInput": {"EndpointName": endpoint, "LocalPath": "/opt/ml/processing/input/endpoint"}
        },
        "DataQualityJobOutputConfig": {
            "MonitoringOutputs": [
                {
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/reports",
                        "LocalPath": "/opt/ml/processing/output",
                        "S3UploadMode": "EndOfJob",
                    }
                }
            ]
        },
        "JobResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}
        },
        "RoleArn": ROLE,
    }
    if baseline:
        request["DataQualityBaselineConfig"] = {
            "ConstraintsResource": {"S3Uri": f"{baseline}/constraints.json"},
            "StatisticsResource": {"S3Uri": f"{baseline}/statistics.json"},
        }
    return request


def _schedule(definition: str, cron: str = HOURLY) -> dict[str, Any]:
    return {
        "ScheduleConfig": {"ScheduleExpression": cron},
        "MonitoringJobDefinitionName": definition,
        "MonitoringType": "DataQuality",
    }


def _complete(op: str, answer: dict[str, Any]) -> None:
    """``answer`` carries every member botocore's model marks required in ``op``'s output, recursively."""
    answer = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
    assert not missing_members(MODEL.operation_model(op).output_shape, answer), (op, answer)


def _wait_execution(sm: Any, schedule: str, timeout: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = sm.list_monitoring_executions(MonitoringScheduleName=schedule)["MonitoringExecutionSummaries"]
        if items and items[0]["MonitoringExecutionStatus"] not in ("Pending", "InProgress", "Stopping"):
            return dict(items[0])
        time.sleep(0.5)
    raise AssertionError(f"the execution of {schedule} did not end within {timeout} s")


def test_baseline_then_an_hourly_schedule_flags_the_drifted_feature(
    sm: Any, s3: Any, platform: PlatformProcess, endpoints: dict[str, str]
) -> None:
    rng = np.random.default_rng(3)
    # 1. the baseline: suggest_baseline's processing job on SageMaker's analyzer image (no entrypoint)
    s3.put_object(Bucket=BUCKET, Key="baseline/data.csv", Body=_csv(rng.normal(size=(400, 4)), header=True))
    sm.create_processing_job(
        ProcessingJobName="baseline-job",
        RoleArn=ROLE,
        AppSpecification={"ImageUri": ANALYZER},
        Environment={
            "dataset_format": json.dumps({"csv": {"header": True, "output_columns_position": "START"}}),
            "dataset_source": "/opt/ml/processing/input/baseline_dataset_input",
            "output_path": "/opt/ml/processing/output",
            "publish_cloudwatch_metrics": "Disabled",
        },
        ProcessingInputs=[
            {
                "InputName": "baseline_dataset_input",
                "S3Input": {
                    "S3Uri": f"s3://{BUCKET}/baseline/data.csv",
                    "LocalPath": "/opt/ml/processing/input/baseline_dataset_input",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
        ],
        ProcessingOutputConfig={
            "Outputs": [
                {
                    "OutputName": "monitoring_output",
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/baseline/results",
                        "LocalPath": "/opt/ml/processing/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        ProcessingResources={
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}
        },
    )
    sm.get_waiter("processing_job_completed_or_stopped").wait(
        ProcessingJobName="baseline-job", WaiterConfig=WAIT
    )
    job = sm.describe_processing_job(ProcessingJobName="baseline-job")
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["ExitMessage"] == "Completed: Job completed successfully with no violations."
    statistics = _json(s3, "baseline/results/statistics.json")
    constraints = _json(s3, "baseline/results/constraints.json")
    assert statistics["version"] == 0.0 and statistics["dataset"] == {"item_count": 400}
    assert [f["name"] for f in statistics["features"]] == FEATURES
    numbers = statistics["features"][0]["numerical_statistics"]
    assert statistics["features"][0]["inferred_type"] == "Fractional"
    assert numbers["common"] == {"num_present": 400, "num_missing": 0}
    assert set(numbers) >= {"mean", "sum", "std_dev", "min", "max", "distribution"}
    kll = numbers["distribution"]["kll"]
    assert sum(b["count"] for b in kll["buckets"]) == pytest.approx(400)
    assert kll["sketch"]["parameters"] == {"c": 0.64, "k": 2048.0} and kll["sketch"]["data"]
    assert [(f["name"], f["inferred_type"], f["completeness"]) for f in constraints["features"]] == [
        (name, "Fractional", 1.0) for name in FEATURES
    ]
    assert constraints["features"][0]["num_constraints"] == {"is_non_negative": False}
    assert constraints["monitoring_config"]["distribution_constraints"]["comparison_threshold"] == 0.1

    # 2. traffic whose feature c is shifted by 3 standard deviations, captured as SageMaker captures it
    endpoint = endpoints["captured"]
    runtime = platform.runtime()
    for _ in range(10):
        rows = rng.normal(size=(20, 4))
        rows[:, 2] += 3.0
        runtime.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=_csv(rows, header=False))
    deadline = time.monotonic() + 30
    captured = 0
    while time.monotonic() < deadline and captured < 200:
        objects = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"capture/{endpoint}/").get("Contents", [])
        lines = [s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read().splitlines() for o in objects]
        captured = sum(
            len(rec["captureData"]["endpointInput"]["data"].splitlines())
            for part in lines
            for rec in map(json.loads, part)
        )
        time.sleep(0.3)
    assert captured == 200

    # 3. an hourly schedule on a job definition with that baseline; the platform runs it now
    baseline = f"s3://{BUCKET}/baseline/results"
    sm.create_data_quality_job_definition(**_definition("drift-def", endpoint, baseline))
    arn = sm.create_monitoring_schedule(
        MonitoringScheduleName="drift", MonitoringScheduleConfig=_schedule("drift-def")
    )
    assert arn["MonitoringScheduleArn"].endswith(":monitoring-schedule/drift")
    execution = _wait_execution(sm, "drift")
    assert execution["MonitoringExecutionStatus"] == "CompletedWithViolations", execution
    assert execution["EndpointName"] == endpoint and execution["MonitoringJobDefinitionName"] == "drift-def"
    assert execution["MonitoringType"] == "DataQuality"
    job_name = execution["ProcessingJobArn"].rsplit("/", 1)[-1]
    job = sm.describe_processing_job(ProcessingJobName=job_name)
    assert job["ProcessingJobStatus"] == "Completed"
    assert job["ExitMessage"] == "CompletedWithViolations: Job completed successfully with 1 violations."
    env = job["Environment"]
    assert json.loads(env["dataset_format"]) == {
        "sagemakerCaptureJson": {"captureIndexNames": ["endpointInput", "endpointOutput"]}
    }
    assert env["sagemaker_endpoint_name"] == endpoint and env["sagemaker_monitoring_schedule_name"] == "drift"
    when = execution["ScheduledTime"]
    prefix = f"reports/{endpoint}/drift/{when:%Y/%m/%d/%H}"
    assert job["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == f"s3://{BUCKET}/{prefix}"
    report = _json(s3, f"{prefix}/constraint_violations.json")
    assert [(v["feature_name"], v["constraint_check_type"]) for v in report["violations"]] == [
        ("c", "baseline_drift_check")
    ]
    assert "exceeds threshold: 0.1" in report["violations"][0]["description"]
    current = _json(s3, f"{prefix}/statistics.json")
    assert current["dataset"]["item_count"] == 200
    assert current["features"][2]["numerical_statistics"]["mean"] > 2.0

    schedule = sm.describe_monitoring_schedule(MonitoringScheduleName="drift")
    _complete("DescribeMonitoringSchedule", schedule)
    _complete("ListMonitoringExecutions", sm.list_monitoring_executions(MonitoringScheduleName="drift"))
    assert schedule["MonitoringScheduleStatus"] == "Scheduled" and schedule["EndpointName"] == endpoint
    last = schedule["LastMonitoringExecutionSummary"]
    assert last["MonitoringExecutionStatus"] == "CompletedWithViolations"
    assert last["ProcessingJobArn"] == execution["ProcessingJobArn"]
    assert sm.list_monitoring_executions(EndpointName=endpoint, StatusEquals="CompletedWithViolations")[
        "MonitoringExecutionSummaries"
    ]
    sm.delete_monitoring_schedule(MonitoringScheduleName="drift")
    sm.delete_data_quality_job_definition(JobDefinitionName="drift-def")


def _code(call: Any, **kwargs: Any) -> tuple[str, str, int]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    error = info.value.response["Error"]
    return error["Code"], error["Message"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]


def test_schedule_and_job_definition_operations_and_their_bad_input(
    sm: Any, endpoints: dict[str, str]
) -> None:
    endpoint = endpoints["captured"]
    arn = sm.create_data_quality_job_definition(
        **_definition("crud-def", endpoint), Tags=[{"Key": "k", "Value": "v"}]
    )
    definition = sm.describe_data_quality_job_definition(JobDefinitionName="crud-def")
    _complete("DescribeDataQualityJobDefinition", definition)
    assert definition["JobDefinitionArn"] == arn["JobDefinitionArn"]
    assert definition["DataQualityAppSpecification"]["ImageUri"] == ANALYZER
    assert definition["JobResources"]["ClusterConfig"]["InstanceCount"] == 1
    listed = sm.list_data_quality_job_definitions(EndpointName=endpoint)["JobDefinitionSummaries"]
    assert [d["MonitoringJobDefinitionName"] for d in listed] == ["crud-def"]
    assert listed[0]["EndpointName"] == endpoint

    sm.create_monitoring_schedule(
        MonitoringScheduleName="crud",
        MonitoringScheduleConfig=_schedule("crud-def"),
        Tags=[{"Key": "team", "Value": "ml"}],
    )
    schedule = sm.describe_monitoring_schedule(MonitoringScheduleName="crud")
    assert schedule["MonitoringScheduleStatus"] == "Scheduled"
    assert schedule["MonitoringType"] == "DataQuality"
    assert schedule["MonitoringScheduleConfig"]["ScheduleConfig"]["ScheduleExpression"] == HOURLY
    assert sm.list_tags(ResourceArn=schedule["MonitoringScheduleArn"])["Tags"] == [
        {"Key": "team", "Value": "ml"}
    ]
    _complete("ListMonitoringSchedules", sm.list_monitoring_schedules(EndpointName=endpoint))
    _complete("ListDataQualityJobDefinitions", sm.list_data_quality_job_definitions())
    summaries = sm.list_monitoring_schedules(EndpointName=endpoint)["MonitoringScheduleSummaries"]
    assert [s["MonitoringScheduleName"] for s in summaries] == ["crud"]
    assert summaries[0]["MonitoringJobDefinitionName"] == "crud-def"
    assert sm.list_monitoring_schedules(EndpointName=endpoints["plain"])["MonitoringScheduleSummaries"] == []

    sm.update_monitoring_schedule(
        MonitoringScheduleName="crud", MonitoringScheduleConfig=_schedule("crud-def", "cron(0 6 ? * * *)")
    )
    updated = sm.describe_monitoring_schedule(MonitoringScheduleName="crud")
    assert updated["MonitoringScheduleConfig"]["ScheduleConfig"]["ScheduleExpression"] == "cron(0 6 ? * * *)"
    sm.stop_monitoring_schedule(MonitoringScheduleName="crud")
    assert (
        sm.describe_monitoring_schedule(MonitoringScheduleName="crud")["MonitoringScheduleStatus"]
        == "Stopped"
    )
    assert (
        sm.list_monitoring_schedules(StatusEquals="Stopped")["MonitoringScheduleSummaries"][0][
            "MonitoringScheduleName"
        ]
        == "crud"
    )
    sm.start_monitoring_schedule(MonitoringScheduleName="crud")
    assert (
        sm.describe_monitoring_schedule(MonitoringScheduleName="crud")["MonitoringScheduleStatus"]
        == "Scheduled"
    )

    # a definition a schedule runs cannot go; the SDK's clean-up order (schedule, then definition) works
    code, message, _ = _code(sm.delete_data_quality_job_definition, JobDefinitionName="crud-def")
    assert code == "ResourceInUse" and "crud" in message
    sm.delete_monitoring_schedule(MonitoringScheduleName="crud")
    assert _code(sm.describe_monitoring_schedule, MonitoringScheduleName="crud")[0] == "ResourceNotFound"
    sm.delete_data_quality_job_definition(JobDefinitionName="crud-def")
    assert (
        _code(sm.describe_data_quality_job_definition, JobDefinitionName="crud-def")[0] == "ResourceNotFound"
    )

    # unknown names
    for call, kwargs in (
        (sm.describe_monitoring_schedule, {"MonitoringScheduleName": "nope"}),
        (sm.delete_monitoring_schedule, {"MonitoringScheduleName": "nope"}),
        (sm.start_monitoring_schedule, {"MonitoringScheduleName": "nope"}),
        (sm.stop_monitoring_schedule, {"MonitoringScheduleName": "nope"}),
        (sm.delete_data_quality_job_definition, {"JobDefinitionName": "nope"}),
        (sm.describe_model_quality_job_definition, {"JobDefinitionName": "nope"}),
        (sm.delete_model_bias_job_definition, {"JobDefinitionName": "nope"}),
        (sm.describe_model_explainability_job_definition, {"JobDefinitionName": "nope"}),
    ):
        code, message, status = _code(call, **kwargs)
        assert (code, status) == ("ResourceNotFound", 400) and "nope" in message
    code, _, _ = _code(
        sm.create_monitoring_schedule, MonitoringScheduleName="x", MonitoringScheduleConfig=_schedule("nope")
    )
    assert code == "ResourceNotFound"
    for list_call in (
        sm.list_model_quality_job_definitions,
        sm.list_model_bias_job_definitions,
        sm.list_model_explainability_job_definitions,
    ):
        assert list_call()["JobDefinitionSummaries"] == []

    # an endpoint without data capture, an unknown endpoint, bad cron expressions: ValidationException
    sm.create_data_quality_job_definition(**_definition("plain-def", endpoints["plain"]))
    code, message, status = _code(
        sm.create_monitoring_schedule,
        MonitoringScheduleName="plain",
        MonitoringScheduleConfig=_schedule("plain-def"),
    )
    assert (code, status) == ("ValidationException", 400)
    assert message.startswith("Data capture is not enabled for endpoint") and "unmonitored" in message
    code, message, _ = _code(sm.create_data_quality_job_definition, **_definition("ghost-def", "ghost"))
    assert code == "ValidationException" and "ghost" in message
    bad_path = _definition("path-def", endpoint)
    bad_path["DataQualityJobInput"]["EndpointInput"]["LocalPath"] = "/tmp/input"
    code, message, _ = _code(sm.create_data_quality_job_definition, **bad_path)
    assert code == "ValidationException" and "EndpointInput.LocalPath '/tmp/input' is invalid" in message
    sm.create_data_quality_job_definition(**_definition("cron-def", endpoint))
    for cron in ("cron(30 * ? * * *)", "cron(0 * * *)", "rate(1 hour)", "cron(0 25 ? * * *)", "daily"):
        code, message, status = _code(
            sm.create_monitoring_schedule,
            MonitoringScheduleName="bad-cron",
            MonitoringScheduleConfig=_schedule("cron-def", cron),
        )
        assert (code, status) == ("ValidationException", 400) and "ScheduleExpression" in message, cron
    code, _, _ = _code(
        sm.create_model_quality_job_definition,
        **{
            **{k: v for k, v in _definition("mq", endpoint).items() if k.startswith(("Job", "Role"))},
            "ModelQualityAppSpecification": {"ImageUri": ANALYZER, "ProblemType": "Regression"},
            "ModelQualityJobInput": {
                "EndpointInput": {"EndpointName": endpoint, "LocalPath": "/opt/ml/processing/input/endpoint"},
                "GroundTruthS3Input": {"S3Uri": f"s3://{BUCKET}/truth"},
            },
            "ModelQualityJobOutputConfig": _definition("mq", endpoint)["DataQualityJobOutputConfig"],
        },
    )
    assert code == "ValidationException"
    assert sm.list_monitoring_schedules(NameContains="bad-cron")["MonitoringScheduleSummaries"] == []
    for name in ("plain-def", "cron-def"):
        sm.delete_data_quality_job_definition(JobDefinitionName=name)

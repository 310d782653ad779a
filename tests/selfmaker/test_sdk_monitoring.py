"""The SageMaker Python SDK's Model Monitor (sagemaker<3, tests/sdkkit.py) against `selfmaker up`: an
endpoint with a DataCaptureConfig (made with boto3 while the SDK's interpreter starts),
``DefaultModelMonitor.suggest_baseline()`` on SageMaker's analyzer image (selfmaker's analyzer here), the
baseline's statistics and constraints read back by the SDK, an hourly schedule, and the SDK's clean-up path
(``predictor.list_monitors()`` → ``delete_monitoring_schedule()`` → ``delete_endpoint()``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from platform_helpers import PlatformProcess, make_model, variant

pytestmark = pytest.mark.slow


def test_sdk_default_model_monitor_baseline_schedule_and_clean_up(
    run_sdk: Callable[..., Any], sdk_platform: PlatformProcess, onnx_model_tar: str
) -> None:
    sm = sdk_platform.sagemaker()
    make_model(sm, "sdk-monitored-model", onnx_model_tar)
    sm.create_endpoint_config(
        EndpointConfigName="sdk-monitored-cfg",
        ProductionVariants=[variant("AllTraffic", "sdk-monitored-model")],
        DataCaptureConfig={
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": "s3://sdk-tests/monitor/capture",
            "CaptureOptions": [{"CaptureMode": "Input"}],
        },
    )
    sm.create_endpoint(EndpointName="sdk-monitored", EndpointConfigName="sdk-monitored-cfg")
    run = run_sdk(
        """
        import numpy as np
        from sagemaker.model_monitor import (
            CronExpressionGenerator, DatasetFormat, DefaultModelMonitor,
        )
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import CSVSerializer

        out = {}
        rng = np.random.default_rng(0)
        rows = "\\n".join(",".join(f"{x:.3f}" for x in row) for row in rng.normal(size=(60, 2)))
        rows = "x,y,label\\n" + "\\n".join(
            line + f",{i % 3}" for i, line in enumerate(rows.splitlines())
        ) + "\\n"
        baseline = session.upload_string_as_file_body(rows, BUCKET, "monitor/baseline/data.csv")
        monitor = DefaultModelMonitor(
            role=ROLE, instance_count=1, instance_type="ml.m5.large", sagemaker_session=session,
            max_runtime_in_seconds=1800,
        )
        monitor.suggest_baseline(
            baseline_dataset=baseline, dataset_format=DatasetFormat.csv(header=True),
            output_s3_uri=f"s3://{BUCKET}/monitor/baseline/results", wait=False, logs=False,
        )
        # the endpoint's model server and the baselining job start side by side
        session.wait_for_endpoint("sdk-monitored", poll=1)
        predictor = Predictor("sdk-monitored", sagemaker_session=session, serializer=CSVSerializer())
        out["prediction"] = predictor.predict([[0.1, 0.2, 0.3, 0.4]]).decode()
        monitor.latest_baselining_job.wait(logs=False)
        job = monitor.latest_baselining_job.describe()
        out["baseline_image"] = job["AppSpecification"]["ImageUri"]
        out["baseline_status"] = job["ProcessingJobStatus"]
        statistics = monitor.baseline_statistics().body_dict
        constraints = monitor.suggested_constraints().body_dict
        out["statistics"] = [(f["name"], f["inferred_type"]) for f in statistics["features"]]
        out["item_count"] = statistics["dataset"]["item_count"]
        out["constraints"] = [(f["name"], f["inferred_type"]) for f in constraints["features"]]
        out["label_domain"] = next(
            f.get("num_constraints") for f in constraints["features"] if f["name"] == "label"
        )

        monitor.create_monitoring_schedule(
            endpoint_input=predictor.endpoint_name,
            output_s3_uri=f"s3://{BUCKET}/monitor/reports",
            statistics=monitor.baseline_statistics(),
            constraints=monitor.suggested_constraints(),
            schedule_cron_expression=CronExpressionGenerator.hourly(),
            enable_cloudwatch_metrics=False,
        )
        schedule = monitor.describe_schedule()
        out["schedule"] = [
            schedule["MonitoringScheduleStatus"],
            schedule["MonitoringScheduleConfig"]["ScheduleConfig"]["ScheduleExpression"],
            schedule["EndpointName"],
        ]
        out["executions"] = len(monitor.list_executions())

        # the SDK's clean-up path: every monitor of the endpoint, then the endpoint
        monitors = predictor.list_monitors()
        out["monitors"] = [type(m).__name__ for m in monitors]
        for m in monitors:
            m.delete_monitoring_schedule()
        predictor.delete_endpoint()
        sm = session.sagemaker_client
        out["left"] = [
            len(sm.list_monitoring_schedules(EndpointName="sdk-monitored")["MonitoringScheduleSummaries"]),
            len(sm.list_data_quality_job_definitions(EndpointName="sdk-monitored")["JobDefinitionSummaries"]),
        ]
        # DeleteEndpoint returns at once; the endpoint is gone or on its way
        endpoints = sm.list_endpoints(NameContains="sdk-monitored")["Endpoints"]
        out["endpoints"] = [e["EndpointStatus"] for e in endpoints]
        result(out)
        """
    )
    out = run.result
    assert out["prediction"]
    assert out["baseline_image"].endswith("/sagemaker-model-monitor-analyzer")
    assert out["baseline_status"] == "Completed"
    assert out["statistics"] == [["x", "Fractional"], ["y", "Fractional"], ["label", "Integral"]]
    assert out["item_count"] == 60
    assert out["constraints"] == out["statistics"]
    assert out["label_domain"] == {"is_non_negative": True}
    assert out["schedule"] == ["Scheduled", "cron(0 * ? * * *)", "sdk-monitored"]
    assert out["executions"] == 0
    assert out["monitors"] == ["DefaultModelMonitor"]
    assert out["left"] == [0, 0]
    assert out["endpoints"] in ([], ["Deleting"])

"""CloudWatch's metrics and alarms API on a real `selfmaker up`, with boto3's ``cloudwatch`` client (its
default protocol, smithy-rpc-v2-cbor) and the runtime's invocations counted per variant; alarms evaluated
every second; a blue/green deployment that names an alarm rolls back when it goes to ALARM."""

from __future__ import annotations

import datetime as dt
import io
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import platform_helpers as helpers
import pytest
import requests
from botocore.exceptions import ClientError

#: a model whose every answer is a 500 (the model server's error for an exception in predict_fn)
FAILING_MODEL = """
def model_fn(model_dir):
    return "failing"

def predict_fn(data, model):
    raise RuntimeError("this model always fails")
"""
BAD_ROW = b"1.0,2.0"  # two features where the model takes four: the model server answers 400


def _failing_tar(dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(FAILING_MODEL.encode())
        tar.addfile(info, io.BytesIO(FAILING_MODEL.encode()))
    return archive.as_uri()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.PlatformProcess]:
    env = {"SELFMAKER_ALARM_EVALUATION_INTERVAL": "1"}
    with helpers.running(tmp_path_factory.mktemp("cw-home"), env) as server:
        yield server


@pytest.fixture(scope="module")
def clients(platform: helpers.PlatformProcess) -> tuple[Any, Any, Any]:
    return platform.sagemaker(), platform.runtime(), helpers.client("cloudwatch", platform.url)


@pytest.fixture(scope="module")
def models(clients: tuple[Any, Any, Any], tmp_path_factory: pytest.TempPathFactory) -> None:
    sm = clients[0]
    root = tmp_path_factory.mktemp("cw-models")
    helpers.make_model(sm, "cw-good", helpers.build_classifier_tar(root / "good").as_uri())
    helpers.make_model(sm, "cw-failing", _failing_tar(root / "failing"))


def _code(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] < 500
    return str(caught.value.response["Error"]["Code"])


def _wait_state(cw: Any, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        (alarm,) = cw.describe_alarms(AlarmNames=[name])["MetricAlarms"]
        if alarm["StateValue"] == state:
            return dict(alarm)
        assert time.monotonic() < deadline, (
            f"alarm {name} stayed {alarm['StateValue']}: {alarm['StateReason']}"
        )
        time.sleep(0.2)


def test_invocation_metrics_statistics_data_list_alarms_and_bad_input(
    platform: helpers.PlatformProcess, clients: tuple[Any, Any, Any], models: None
) -> None:
    sm, smr, cw = clients
    helpers.deploy(
        sm, "cw-ep", [helpers.variant("Good", "cw-good"), helpers.variant("Failing", "cw-failing")]
    )
    began = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    good, bad_input, failing = 7, 3, 4
    for _ in range(good):
        assert helpers.invoke_variant(smr, "cw-ep", TargetVariant="Good") == "Good"
    for _ in range(bad_input):
        with pytest.raises(ClientError) as caught:
            smr.invoke_endpoint(
                EndpointName="cw-ep", Body=BAD_ROW, ContentType="text/csv", TargetVariant="Good"
            )
        assert caught.value.response["OriginalStatusCode"] == 400
    for _ in range(failing):
        with pytest.raises(ClientError) as caught:
            smr.invoke_endpoint(
                EndpointName="cw-ep", Body=helpers.ROW, ContentType="text/csv", TargetVariant="Failing"
            )
        assert caught.value.response["OriginalStatusCode"] == 500
    end = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)

    def stat(metric: str, variant: str, statistic: str = "Sum", **extra: Any) -> list[dict[str, Any]]:
        return list(
            cw.get_metric_statistics(
                Namespace="AWS/SageMaker",
                MetricName=metric,
                Dimensions=[
                    {"Name": "EndpointName", "Value": "cw-ep"},
                    {"Name": "VariantName", "Value": variant},
                ],
                StartTime=began,
                EndTime=end,
                Period=3600,
                **(extra or {"Statistics": [statistic]}),
            )["Datapoints"]
        )

    def total(metric: str, variant: str) -> float:
        return sum(p["Sum"] for p in stat(metric, variant))

    # Invocations per variant equal the calls made; the model's 400s are 4XX, its 500s 5XX
    assert total("Invocations", "Good") == good + bad_input
    assert total("Invocations", "Failing") == failing
    assert total("Invocation4XXErrors", "Good") == bad_input
    assert total("Invocation5XXErrors", "Good") == 0
    assert total("Invocation5XXErrors", "Failing") == failing
    (latency,) = stat(
        "ModelLatency", "Good", Statistics=["SampleCount", "Average", "Maximum"], Unit="Microseconds"
    )
    assert latency["SampleCount"] == good + bad_input and 0 < latency["Average"] <= latency["Maximum"]
    assert latency["Unit"] == "Microseconds" and isinstance(latency["Timestamp"], dt.datetime)
    (p99,) = stat("ModelLatency", "Good", ExtendedStatistics=["p50", "p99"])
    assert 0 < p99["ExtendedStatistics"]["p50"] <= p99["ExtendedStatistics"]["p99"] <= latency["Maximum"]
    assert total("OverheadLatency", "Good") > 0

    # GetMetricData: two MetricStats and math over them (the error rate of the endpoint, in percent)
    def query(qid: str, variant: str, metric: str) -> dict[str, Any]:
        dims = [{"Name": "EndpointName", "Value": "cw-ep"}, {"Name": "VariantName", "Value": variant}]
        return {
            "Id": qid,
            "MetricStat": {
                "Metric": {"Namespace": "AWS/SageMaker", "MetricName": metric, "Dimensions": dims},
                "Period": 3600,
                "Stat": "Sum",
            },
            "ReturnData": False,
        }

    data = cw.get_metric_data(
        MetricDataQueries=[
            query("good", "Good", "Invocations"),
            query("failing", "Failing", "Invocations"),
            query("errors", "Failing", "Invocation5XXErrors"),
            {"Id": "total", "Expression": "SUM([good, failing])", "Label": "all"},
            {"Id": "rate", "Expression": "100 * errors / (good + failing)"},
        ],
        StartTime=began,
        EndTime=end,
    )["MetricDataResults"]
    results = {r["Id"]: r for r in data}
    assert set(results) == {"total", "rate"} and results["total"]["Label"] == "all"
    assert sum(results["total"]["Values"]) == good + bad_input + failing
    assert results["rate"]["Values"] == [pytest.approx(100 * failing / (good + bad_input + failing))]
    assert results["rate"]["StatusCode"] == "Complete"

    listed = cw.list_metrics(
        Namespace="AWS/SageMaker", Dimensions=[{"Name": "EndpointName", "Value": "cw-ep"}]
    )
    names = {(m["MetricName"], tuple(d["Value"] for d in m["Dimensions"])) for m in listed["Metrics"]}
    assert {("Invocations", ("cw-ep", "Good")), ("ModelLatency", ("cw-ep", "Failing"))} <= names
    assert all(m["Namespace"] == "AWS/SageMaker" for m in listed["Metrics"])

    # alarms: the failing variant's 5XX alarm goes to ALARM, the good variant's stays OK
    def put_alarm(name: str, variant: str) -> None:
        cw.put_metric_alarm(
            AlarmName=name,
            Namespace="AWS/SageMaker",
            MetricName="Invocation5XXErrors",
            Dimensions=[
                {"Name": "EndpointName", "Value": "cw-ep"},
                {"Name": "VariantName", "Value": variant},
            ],
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=2,
            DatapointsToAlarm=1,
            Threshold=0,
            ComparisonOperator="GreaterThanThreshold",
            TreatMissingData="notBreaching",
        )

    put_alarm("cw-failing-5xx", "Failing")
    put_alarm("cw-good-5xx", "Good")
    created = cw.describe_alarms(AlarmNamePrefix="cw-")["MetricAlarms"]
    assert [a["AlarmName"] for a in created] == ["cw-failing-5xx", "cw-good-5xx"]
    assert created[0]["AlarmArn"].endswith(":alarm:cw-failing-5xx") and created[0]["Threshold"] == 0
    alarm = _wait_state(cw, "cw-failing-5xx", "ALARM")
    assert "greater than the threshold" in alarm["StateReason"]
    _wait_state(cw, "cw-good-5xx", "OK")
    assert [a["AlarmName"] for a in cw.describe_alarms(StateValue="ALARM")["MetricAlarms"]] == [
        "cw-failing-5xx"
    ]
    # SetAlarmState holds until the next evaluation, which brings the computed state back
    cw.set_alarm_state(AlarmName="cw-good-5xx", StateValue="ALARM", StateReason="testing the rollback path")
    _wait_state(cw, "cw-good-5xx", "OK")

    # bad input: CloudWatch's own codes, never a 500
    dims = [{"Name": "EndpointName", "Value": "cw-ep"}, {"Name": "VariantName", "Value": "Good"}]
    base = {
        "Namespace": "AWS/SageMaker",
        "MetricName": "Invocations",
        "Dimensions": dims,
        "StartTime": began,
        "EndTime": end,
        "Period": 60,
        "Statistics": ["Sum"],
    }
    gms = cw.get_metric_statistics
    assert _code(gms, **{**base, "Namespace": "AWS/Nothing"}) == "InvalidParameterValue"
    assert _code(gms, **{**base, "MetricName": "CPUUtilization"}) == "InvalidParameterValue"
    assert (
        _code(gms, **{**base, "Dimensions": [{"Name": "InstanceId", "Value": "i-1"}]})
        == "InvalidParameterValue"
    )
    assert _code(gms, **{**base, "Period": 90}) == "InvalidParameterValue"
    assert _code(gms, **{**base, "StartTime": end, "EndTime": began}) == "InvalidParameterValue"
    assert _code(gms, **{**base, "StartTime": end - dt.timedelta(days=2)}) == "InvalidParameterCombination"
    assert _code(gms, **{**base, "ExtendedStatistics": ["p99"]}) == "InvalidParameterCombination"
    percentile_only = {k: v for k, v in base.items() if k != "Statistics"}
    assert _code(gms, **percentile_only, ExtendedStatistics=["p101"]) == "InvalidParameterValue"
    bad_data = cw.get_metric_data
    too_many = {**query("q", "Good", "Invocations"), "ReturnData": True}
    too_many["MetricStat"] = {**too_many["MetricStat"], "Period": 1}
    assert _code(
        bad_data, MetricDataQueries=[too_many], StartTime=began - dt.timedelta(days=2), EndTime=end
    ) == ("LimitExceeded")
    assert _code(
        bad_data, MetricDataQueries=[{"Id": "e", "Expression": "nothing * 2"}], StartTime=began, EndTime=end
    ) == ("InvalidParameterValue")
    assert (
        _code(cw.set_alarm_state, AlarmName="cw-none", StateValue="OK", StateReason="x") == "ResourceNotFound"
    )
    assert _code(cw.delete_alarms, AlarmNames=["cw-good-5xx", "cw-none"]) == "ResourceNotFound"
    put = {
        "AlarmName": "cw-bad",
        "Namespace": "AWS/SageMaker",
        "MetricName": "Invocations",
        "Period": 60,
        "EvaluationPeriods": 1,
        "Threshold": 1,
        "ComparisonOperator": "GreaterThanThreshold",
    }
    assert _code(cw.put_metric_alarm, **put) == "InvalidParameterCombination"  # no statistic
    assert _code(cw.put_metric_alarm, **put, Statistic="Sum", DatapointsToAlarm=2) == "InvalidParameterValue"

    # the JSON 1.0 protocol of the same model answers the same
    def json10(operation: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(
            platform.url + "/",
            json=body,
            headers={
                "X-Amz-Target": f"GraniteServiceVersion20100801.{operation}",
                "Content-Type": "application/x-amz-json-1.0",
            },
            timeout=30,
        )

    listed_json = json10("ListMetrics", {"Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors"})
    assert listed_json.status_code == 200
    assert {m["Dimensions"][-1]["Value"] for m in listed_json.json()["Metrics"]} >= {"Good", "Failing"}
    refused = json10(
        "GetMetricStatistics", {**base, "StartTime": began.timestamp(), "EndTime": 1, "Period": 60}
    )
    assert refused.status_code == 400 and refused.json()["__type"] == "InvalidParameterValue"
    cw.delete_alarms(AlarmNames=["cw-good-5xx"])
    assert [a["AlarmName"] for a in cw.describe_alarms(AlarmNamePrefix="cw-")["MetricAlarms"]] == [
        "cw-failing-5xx"
    ]


def test_blue_green_deployment_naming_an_alarm_rolls_back(
    clients: tuple[Any, Any, Any], models: None
) -> None:
    sm, smr, cw = clients
    helpers.deploy(sm, "cw-gr", [helpers.variant("AllTraffic", "cw-good")])
    sm.create_endpoint_config(
        EndpointConfigName="cw-gr-failing", ProductionVariants=[helpers.variant("AllTraffic", "cw-failing")]
    )
    cw.put_metric_alarm(
        AlarmName="cw-gr-5xx",
        Namespace="AWS/SageMaker",
        MetricName="Invocation5XXErrors",
        Dimensions=[
            {"Name": "EndpointName", "Value": "cw-gr"},
            {"Name": "VariantName", "Value": "AllTraffic"},
        ],
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=0,
        ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching",
    )
    _wait_state(cw, "cw-gr-5xx", "OK")
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def traffic() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline and answered[0] < 5000:
            try:
                helpers.invoke_variant(smr, "cw-gr")
                answered[0] += 1
            except ClientError as exc:
                failures.append(str(exc))
            time.sleep(0.02)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        sm.update_endpoint(
            EndpointName="cw-gr",
            EndpointConfigName="cw-gr-failing",
            DeploymentConfig={
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "CANARY",
                        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50},
                        "WaitIntervalInSeconds": 120,
                    },
                    "MaximumExecutionTimeoutInSeconds": 600,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "cw-gr-5xx"}]},
            },
        )
        deadline = time.monotonic() + 90
        while True:
            described = sm.describe_endpoint(EndpointName="cw-gr")
            if described["EndpointStatus"] == "InService" and described.get("FailureReason"):
                break
            assert time.monotonic() < deadline, f"no rollback: {described['EndpointStatus']}"
            time.sleep(0.25)
    finally:
        stop.set()
        worker.join(30)
    assert described["EndpointConfigName"] == "cw-gr-cfg"
    assert "cw-gr-5xx" in described["FailureReason"] and "ALARM" in described["FailureReason"]
    assert _wait_state(cw, "cw-gr-5xx", "ALARM", timeout=5)["StateValue"] == "ALARM"
    assert failures == [] and answered[0] > 0
    assert helpers.invoke_variant(smr, "cw-gr") == "AllTraffic"

"""The CloudWatch Logs API of `selfmaker up` (Logs_20140328.* on the SageMaker port) with real boto3 clients
that find the platform through ``AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`` alone (botocore's name for the logs
client's endpoint: the service id "CloudWatch Logs"): job logs per host, endpoint instance logs,
tokens, paging over 10,000 lines, and CloudWatch's own error codes for bad input."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from platform_helpers import WAIT, PlatformProcess, deploy, make_model, variant

ROLE = "arn:aws:iam::123456789012:role/selfmaker"
TRAINING = "/aws/sagemaker/TrainingJobs"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def logs(platform_server: PlatformProcess, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A logs client created with no endpoint_url: the environment points it at the platform."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", platform_server.url)
    client = boto3.client("logs", region_name="us-east-1", config=Config(retries={"max_attempts": 1}))
    assert client.meta.endpoint_url == platform_server.url  # never anywhere but 127.0.0.1
    return client


def _script_job(sm: Any, tmp_path: Path, name: str, script: str, instances: int = 1) -> dict[str, Any]:
    """Run a script-mode training job printing what ``script`` prints; its description once it ended."""
    code = tmp_path / name / "code"
    code.mkdir(parents=True)
    (code / "train.py").write_text(script)
    sm.create_training_job(
        TrainingJobName=name,
        RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": "selfmaker", "TrainingInputMode": "File"},
        HyperParameters={"sagemaker_program": "train.py", "sagemaker_submit_directory": code.as_uri()},
        OutputDataConfig={"S3OutputPath": (tmp_path / name / "out").as_uri()},
        ResourceConfig={"InstanceCount": instances, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 300},
    )
    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName=name, WaiterConfig=WAIT)
    desc = sm.describe_training_job(TrainingJobName=name)
    assert desc["TrainingJobStatus"] == "Completed", desc.get("FailureReason")
    return desc


def _code(info: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    error = info.value.response["Error"]
    return error["Code"], error["Message"], info.value.response["ResponseMetadata"]["HTTPStatusCode"]


def _all_forward(logs: Any, group: str, stream: str, limit: int) -> Iterator[dict[str, Any]]:
    """GetLogEvents from the head until the forward token comes back unchanged."""
    token = None
    for _ in range(10_000):  # bounded: a token that never settles fails the test
        kwargs = {"nextToken": token} if token else {}
        page = logs.get_log_events(
            logGroupName=group, logStreamName=stream, startFromHead=True, limit=limit, **kwargs
        )
        yield from page["events"]
        if page["nextForwardToken"] == token:
            return
        token = page["nextForwardToken"]
    raise AssertionError("the forward token never settled")


MULTI_HOST = """
import os, sys
host = os.environ["SM_CURRENT_HOST"]
for i in range(300):
    print(f"line {i} from {host}", flush=True)
print(f"warning from {host}", file=sys.stderr, flush=True)
"""


def test_training_job_logs_are_streams_per_host(sm: Any, logs: Any, tmp_path: Path) -> None:
    """A 2-host job has SageMaker's two streams ``<job>/algo-N-<epoch>``; each holds its host's lines
    (stdout and stderr, without the host marker), oldest first, with times in the job's run."""
    job = _name("logs-hosts")
    desc = _script_job(sm, tmp_path, job, MULTI_HOST, instances=2)
    epoch = int(desc["CreationTime"].timestamp())
    streams = logs.describe_log_streams(
        logGroupName=TRAINING, logStreamNamePrefix=job + "/", orderBy="LogStreamName"
    )
    assert "nextToken" not in streams  # the SDK loops while it is present
    names = [s["logStreamName"] for s in streams["logStreams"]]
    assert names == [f"{job}/algo-1-{epoch}", f"{job}/algo-2-{epoch}"]
    begin = int(desc["CreationTime"].timestamp() * 1000) - 1000
    end = int(desc["TrainingEndTime"].timestamp() * 1000) + 1000
    for number, stream in enumerate(names, start=1):
        events = list(_all_forward(logs, TRAINING, stream, limit=100))
        messages = [e["message"] for e in events]
        host = f"algo-{number}"
        lines = [m for m in messages if m.startswith("line ")]
        assert lines == [f"line {i} from {host}" for i in range(300)]
        assert f"warning from {host}" in messages
        assert not any("algo-" in m and host not in m for m in messages), "another host's line"
        assert not any(m.startswith("[algo-") for m in messages)
        stamps = [e["timestamp"] for e in events]
        assert stamps == sorted(stamps) and begin <= stamps[0] and stamps[-1] <= end
        described = next(s for s in streams["logStreams"] if s["logStreamName"] == stream)
        assert (described["firstEventTimestamp"], described["lastEventTimestamp"]) == (stamps[0], stamps[-1])

    # FilterLogEvents: both streams interleaved by time, a term pattern, a stream prefix
    both = logs.filter_log_events(logGroupName=TRAINING, logStreamNamePrefix=job + "/")
    assert "nextToken" not in both
    assert {s["logStreamName"] for s in both["searchedLogStreams"]} == set(names)
    stamps = [e["timestamp"] for e in both["events"]]
    assert stamps == sorted(stamps) and len(both["events"]) >= 602
    assert len({e["eventId"] for e in both["events"]}) == len(both["events"])
    only = logs.filter_log_events(
        logGroupName=TRAINING, logStreamNames=[names[1]], filterPattern='"from algo-2" -warning'
    )
    assert [e["message"] for e in only["events"]] == [f"line {i} from algo-2" for i in range(300)]
    either = logs.filter_log_events(
        logGroupName=TRAINING, logStreamNamePrefix=job + "/", filterPattern="?warning ?nothing-such"
    )
    assert sorted(e["message"] for e in either["events"]) == ["warning from algo-1", "warning from algo-2"]
    regex = logs.filter_log_events(
        logGroupName=TRAINING, logStreamNamePrefix=job + "/", filterPattern="%^line 29[0-9] from algo-1$%"
    )
    assert [e["message"] for e in regex["events"]] == [f"line {i} from algo-1" for i in range(290, 300)]

    # the groups: the training group is there and points at its ARN
    groups = logs.describe_log_groups(logGroupNamePrefix="/aws/sagemaker/Training")["logGroups"]
    assert [g["logGroupName"] for g in groups] == [TRAINING]
    assert groups[0]["arn"] == f"arn:aws:logs:us-east-1:123456789012:log-group:{TRAINING}:*"


def test_get_log_events_tokens_page_both_ways_and_settle(sm: Any, logs: Any, tmp_path: Path) -> None:
    """From the tail backwards and from the head forwards, pages join without gaps or repeats; at the end
    the forward token comes back unchanged (the SDK's tail loop), also with a time window."""
    job = _name("logs-tokens")
    desc = _script_job(sm, tmp_path, job, "for i in range(250):\n    print(f'n={i}', flush=True)\n")
    stream = f"{job}/algo-1-{int(desc['CreationTime'].timestamp())}"
    tail = logs.get_log_events(logGroupName=TRAINING, logStreamName=stream, limit=40)
    assert [e["message"] for e in tail["events"]][-1] == "n=249" and len(tail["events"]) == 40
    backwards: list[str] = [e["message"] for e in tail["events"]]
    token = tail["nextBackwardToken"]
    for _ in range(100):
        page = logs.get_log_events(logGroupName=TRAINING, logStreamName=stream, nextToken=token, limit=40)
        if not page["events"]:
            assert page["nextBackwardToken"] == token  # the head: the same token again
            break
        backwards = [e["message"] for e in page["events"]] + backwards
        token = page["nextBackwardToken"]
    counted = [m for m in backwards if m.startswith("n=")]
    assert counted == [f"n={i}" for i in range(250)]

    forwards = [e["message"] for e in _all_forward(logs, TRAINING, stream, limit=33)]
    assert forwards == backwards
    # the tail page's forward token is the end: nothing new, the same token
    again = logs.get_log_events(
        logGroupName=TRAINING, logStreamName=stream, nextToken=tail["nextForwardToken"]
    )
    assert again["events"] == [] and again["nextForwardToken"] == tail["nextForwardToken"]
    # a time window: startTime inclusive, endTime exclusive
    events = list(_all_forward(logs, TRAINING, stream, limit=1000))
    middle = events[len(events) // 2]["timestamp"]
    later = logs.get_log_events(
        logGroupName=TRAINING, logStreamName=stream, startFromHead=True, startTime=middle
    )["events"]
    assert later and all(e["timestamp"] >= middle for e in later)
    assert later == [e for e in events if e["timestamp"] >= middle]
    earlier = logs.get_log_events(
        logGroupName=TRAINING, logStreamName=stream, startFromHead=True, endTime=middle
    )["events"]
    assert earlier == [e for e in events if e["timestamp"] < middle]


TEN_THOUSAND = "for i in range(10000):\n    print(f'{i:05d} of 10000', flush=True)\n"


def test_ten_thousand_lines_page_exactly_once_in_order(sm: Any, logs: Any, tmp_path: Path) -> None:
    """`aws logs tail`-style reading: boto3's FilterLogEvents paginator (pages of 700) and GetLogEvents'
    forward tokens (pages of 777) each return every one of 10,000 lines exactly once, in order."""
    job = _name("logs-10k")
    _script_job(sm, tmp_path, job, TEN_THOUSAND)
    pages = logs.get_paginator("filter_log_events").paginate(
        logGroupName=TRAINING, logStreamNamePrefix=job + "/", PaginationConfig={"PageSize": 700}
    )
    events = [e for page in pages for e in page["events"]]
    lines = [e["message"] for e in events if e["message"].endswith(" of 10000")]
    assert lines == [f"{i:05d} of 10000" for i in range(10000)]
    assert len({e["eventId"] for e in events}) == len(events)
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)

    stream = events[0]["logStreamName"]
    forward = [e["message"] for e in _all_forward(logs, TRAINING, stream, limit=777)]
    assert [m for m in forward if m.endswith(" of 10000")] == lines
    # `aws logs tail --since`: FilterLogEvents from a time on returns that time's events and later ones
    since = events[5000]["timestamp"]
    tail = logs.get_paginator("filter_log_events").paginate(
        logGroupName=TRAINING, logStreamNames=[stream], startTime=since, PaginationConfig={"PageSize": 1000}
    )
    later = [e for page in tail for e in page["events"]]
    assert later == [e for e in events if e["timestamp"] >= since]


def test_endpoint_instances_are_streams(
    sm: Any, smr: Any, logs: Any, onnx_model_tar: str, platform_server: PlatformProcess
) -> None:
    """``/aws/sagemaker/Endpoints/<endpoint>`` holds one ``<variant>/<instance>`` stream per model
    server: its start line and the model server's own lines, each with its own time."""
    model, endpoint = _name("m"), _name("logs-ep")
    make_model(sm, model, onnx_model_tar)
    before = int(time.time() * 1000)
    deploy(sm, endpoint, [variant("AllTraffic", model, count=2)])
    try:
        smr.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body="0.1,0.2,0.3,0.4")
        group = f"/aws/sagemaker/Endpoints/{endpoint}"
        streams = logs.describe_log_streams(logGroupName=group)["logStreams"]
        assert len(streams) == 2
        instances = {p.stem for p in (platform_server.home / "logs" / "endpoints" / endpoint).glob("*.log")}
        assert {s["logStreamName"] for s in streams} == {f"AllTraffic/{i}" for i in instances}
        newest = logs.describe_log_streams(logGroupName=group, orderBy="LastEventTime", descending=True)
        last = [s["lastEventTimestamp"] for s in newest["logStreams"]]
        assert last == sorted(last, reverse=True)
        for described in streams:
            instance = described["logStreamName"].split("/", 1)[1]
            events = logs.get_log_events(
                logGroupName=group, logStreamName=described["logStreamName"], startFromHead=True
            )["events"]
            assert events[0]["message"] == f"starting instance {instance} of variant AllTraffic"
            assert any(e["message"].startswith('{"ts":') for e in events[1:]), "the model server's lines"
            assert all(before - 1000 <= e["timestamp"] <= time.time() * 1000 + 1000 for e in events)
        listed = logs.describe_log_groups(logGroupNamePattern=endpoint.upper())["logGroups"]
        assert [g["logGroupName"] for g in listed] == [group]
        # pages of one: the paginators join them, and the last page has no nextToken
        paged = logs.get_paginator("describe_log_streams").paginate(
            logGroupName=group, PaginationConfig={"PageSize": 1}
        )
        pages = [[s["logStreamName"] for s in page["logStreams"]] for page in paged]
        assert pages == [[s["logStreamName"]] for s in streams]
    finally:
        sm.delete_endpoint(EndpointName=endpoint)
        sm.get_waiter("endpoint_deleted").wait(EndpointName=endpoint, WaiterConfig=WAIT)


def test_bad_input_gets_cloudwatch_error_codes(
    sm: Any, logs: Any, tmp_path: Path, platform_server: PlatformProcess
) -> None:
    """Unknown groups and streams, bad tokens, conflicting or out-of-range members: CloudWatch Logs' own
    codes and messages (400), never a 500."""
    job = _name("logs-bad")
    desc = _script_job(sm, tmp_path, job, "print('only line', flush=True)\n")
    stream = f"{job}/algo-1-{int(desc['CreationTime'].timestamp())}"
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        (
            "describe_log_streams",
            {"logGroupName": "/aws/sagemaker/Nothing"},
            "ResourceNotFoundException",
            "The specified log group does not exist.",
        ),
        (
            "describe_log_streams",
            {"logGroupName": "/aws/sagemaker/Endpoints/no-such-endpoint"},
            "ResourceNotFoundException",
            "The specified log group does not exist.",
        ),
        (
            "describe_log_streams",
            {"logGroupName": "/aws/sagemaker/Endpoints/.."},  # never the logs directory itself
            "ResourceNotFoundException",
            "The specified log group does not exist.",
        ),
        (
            "get_log_events",
            {"logGroupName": TRAINING, "logStreamName": f"{job}/algo-2-1"},
            "ResourceNotFoundException",
            "The specified log stream does not exist.",
        ),
        (
            "get_log_events",
            {"logGroupName": TRAINING, "logStreamName": "../../etc/algo-1-1"},
            "ResourceNotFoundException",
            "The specified log stream does not exist.",
        ),
        (
            "get_log_events",
            {"logGroupName": TRAINING, "logStreamName": stream, "nextToken": "f/garbage"},
            "InvalidParameterException",
            "The specified nextToken is invalid.",
        ),
        (
            "filter_log_events",
            {"logGroupName": TRAINING, "logStreamNames": [f"{job}/algo-1-2"]},
            "ResourceNotFoundException",
            "The specified log stream does not exist.",
        ),
        (
            "filter_log_events",
            {"logGroupName": TRAINING, "nextToken": "bm90IGEgdG9rZW4"},
            "InvalidParameterException",
            "The specified nextToken is invalid.",
        ),
        (
            "filter_log_events",
            {"logGroupName": TRAINING, "filterPattern": '{ $.level = "ERROR" }'},
            "InvalidParameterException",
            "JSON and space-delimited patterns are not supported",
        ),
        (
            "filter_log_events",
            {"logGroupName": TRAINING, "filterPattern": '"unclosed'},
            "InvalidParameterException",
            "Invalid character(s) in term",
        ),
        (
            "filter_log_events",
            {"logGroupName": TRAINING, "logStreamNames": [stream], "logStreamNamePrefix": job},
            "InvalidParameterException",
            "mutually exclusive",
        ),
        (
            "describe_log_streams",
            {"logGroupName": TRAINING, "logStreamNamePrefix": job, "orderBy": "LastEventTime"},
            "InvalidParameterException",
            "Cannot order by LastEventTime with a logStreamNamePrefix.",
        ),
        (
            "describe_log_streams",
            {"logGroupName": TRAINING, "logGroupIdentifier": TRAINING},
            "InvalidParameterException",
            "mutually exclusive",
        ),
        (
            "describe_log_streams",
            {},
            "InvalidParameterException",
            "Either logGroupName or logGroupIdentifier must be specified.",
        ),
        (
            "describe_log_groups",
            {"logGroupNamePrefix": "/aws", "logGroupNamePattern": "x"},
            "InvalidParameterException",
            "mutually exclusive",
        ),
        (
            "describe_log_streams",
            {"logGroupName": TRAINING, "nextToken": "x" * 40},
            "InvalidParameterException",
            "The specified nextToken is invalid.",
        ),
    ]
    for method, kwargs, code, fragment in cases:
        with pytest.raises(ClientError) as info:
            getattr(logs, method)(**kwargs)
        got = _code(info)
        assert (got[0], got[2]) == (code, 400) and fragment in got[1], (method, kwargs, got)

    # a token of one stream is no token of another
    other = _name("logs-bad2")
    desc2 = _script_job(sm, tmp_path, other, "print('another', flush=True)\n")
    stream2 = f"{other}/algo-1-{int(desc2['CreationTime'].timestamp())}"
    token = logs.get_log_events(logGroupName=TRAINING, logStreamName=stream, startFromHead=True)
    with pytest.raises(ClientError) as info:
        logs.get_log_events(logGroupName=TRAINING, logStreamName=stream2, nextToken=token["nextForwardToken"])
    assert _code(info)[:2] == ("InvalidParameterException", "The specified nextToken is invalid.")
    # the ARN form of the group is the group
    arn = f"arn:aws:logs:us-east-1:123456789012:log-group:{TRAINING}"  # logGroupArn: no ":*"
    by_arn = logs.get_log_events(logGroupIdentifier=arn, logStreamName=stream, startFromHead=True)
    assert [e["message"] for e in by_arn["events"]][-1] == "only line"

    # what botocore checks on the client is checked on the server too (Coral wording), for raw callers
    unchecked = boto3.client(
        "logs",
        region_name="us-east-1",
        config=Config(parameter_validation=False, retries={"max_attempts": 1}),
    )
    assert unchecked.meta.endpoint_url == platform_server.url
    with pytest.raises(ClientError) as info:
        unchecked.describe_log_streams(logGroupName=TRAINING, limit=51)
    assert _code(info) == (
        "InvalidParameterException",
        "1 validation error detected: Value '51' at 'limit' failed to satisfy constraint: Member must have "
        "value less than or equal to 50",
        400,
    )
    with pytest.raises(ClientError) as info:
        unchecked.get_log_events(logGroupName=TRAINING)
    assert _code(info)[0] == "InvalidParameterException" and "logStreamName" in _code(info)[1]
    # an operation the platform does not serve, and a body that is no JSON object
    for target, body, code in (
        ("Logs_20140328.PutLogEvents", b"{}", "UnknownOperationException"),
        ("Logs_20140328.DescribeLogGroups", b"[1]", "InvalidParameterException"),
        ("Logs_20140328.DescribeLogGroups", b"{not json", "InvalidParameterException"),
    ):
        request = urllib.request.Request(
            platform_server.url + "/",
            data=body,
            headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"},
        )
        with pytest.raises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(request, timeout=30)
        assert http.value.code == 400 and json.loads(http.value.read())["__type"] == code


def test_environment_points_unchanged_boto3_code_at_the_platform(
    platform_server: PlatformProcess, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``AWS_ENDPOINT_URL_SAGEMAKER``, ``_SAGEMAKER_RUNTIME`` and ``_CLOUDWATCH_LOGS`` send clients made
    with no endpoint_url to `selfmaker up`; ``AWS_ENDPOINT_URL_S3`` keeps S3 elsewhere (moto here).
    ``AWS_ENDPOINT_URL_LOGS`` is no name botocore reads: the logs client would not come here."""
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_LOGS", platform_server.url)
    monkeypatch.delenv("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", raising=False)
    assert boto3.client("logs", region_name="us-east-1").meta.endpoint_url != platform_server.url
    for name in ("SAGEMAKER", "SAGEMAKER_RUNTIME", "CLOUDWATCH_LOGS"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{name}", platform_server.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    config = Config(retries={"max_attempts": 1})
    clients = {
        service: boto3.client(service, region_name="us-east-1", config=config)
        for service in ("sagemaker", "sagemaker-runtime", "logs", "s3")
    }
    for service, client in clients.items():
        expected = moto_server if service == "s3" else platform_server.url
        assert client.meta.endpoint_url == expected  # checked before any request is sent
    name = _name("env-check")
    assert clients["sagemaker"].list_models(NameContains=name)["Models"] == []
    with pytest.raises(ClientError) as info:
        clients["sagemaker-runtime"].invoke_endpoint(EndpointName=name, Body=b"1", ContentType="text/csv")
    assert _code(info)[0] == "ValidationError" and name in _code(info)[1]  # the platform's answer
    groups = clients["logs"].describe_log_groups(logGroupNamePrefix="/aws/sagemaker/")["logGroups"]
    assert all(g["logGroupName"].startswith("/aws/sagemaker/") for g in groups)
    clients["s3"].create_bucket(Bucket=name)
    moto = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    assert name in [b["Name"] for b in moto.list_buckets()["Buckets"]]

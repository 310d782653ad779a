"""Asynchronous inference through the whole product: boto3 → `selfmaker up` → queue → workers → model
servers → moto S3 + SNS (an SQS queue subscribed to the topics receives the notifications)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ClientError
from testkit import wait_until

ROOT = Path(__file__).resolve().parents[2]


import platform_helpers as helpers  # noqa: E402 - on sys.path via conftest.py


@dataclass
class Aws:
    url: str
    s3: Any
    sns: Any
    sqs: Any
    bucket: str
    success_topic: str
    error_topic: str
    inbox_url: str

    def put(self, key: str, body: bytes) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.bucket}/{key}"

    def get(self, uri: str) -> bytes:
        bucket, key = uri[5:].split("/", 1)
        return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def drain_inbox(self, expected: int, timeout: float = 60.0, settle: float = 1.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        quiet: float | None = None
        while time.monotonic() < deadline:
            msgs = self.sqs.receive_message(QueueUrl=self.inbox_url, MaxNumberOfMessages=10).get(
                "Messages", []
            )
            for m in msgs:
                envelope = json.loads(m["Body"])
                got.append({"TopicArn": envelope["TopicArn"], **json.loads(envelope["Message"])})
            if msgs:
                self.sqs.delete_message_batch(
                    QueueUrl=self.inbox_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
                )
                quiet = None
            elif len(got) >= expected:
                quiet = quiet or time.monotonic()
                if time.monotonic() - quiet >= settle:
                    break
            else:
                time.sleep(0.05)
        return got


class Inbox:
    """Drains the subscribed SQS queue in the background (moto's SQS slows down as a queue grows)."""

    def __init__(self, aws: Aws) -> None:
        self.aws = aws
        self.notes: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Inbox:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        sqs, url = self.aws.sqs, self.aws.inbox_url
        while not self._stop.is_set():
            msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            for m in msgs:
                envelope = json.loads(m["Body"])
                self.notes.append({"TopicArn": envelope["TopicArn"], **json.loads(envelope["Message"])})
            if msgs:
                sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
                )


def new_aws(url: str) -> Aws:
    s3 = boto3.client("s3", endpoint_url=url)
    sns = boto3.client("sns", endpoint_url=url)
    sqs = boto3.client("sqs", endpoint_url=url)
    tag = uuid.uuid4().hex[:10]
    s3.create_bucket(Bucket=f"acc-{tag}")
    ok = sns.create_topic(Name=f"ok-{tag}")["TopicArn"]
    err = sns.create_topic(Name=f"err-{tag}")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"inbox-{tag}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for topic in (ok, err):
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)
    return Aws(url, s3, sns, sqs, f"acc-{tag}", ok, err, inbox)


@pytest.fixture(scope="module")
def model_tar(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(helpers.build_classifier_tar(tmp_path_factory.mktemp("async-model")).as_uri())


@pytest.fixture(scope="module")
def platform(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """`selfmaker up` with S3/SNS pointed at moto, a short lease and a 1 s scale-to-zero delay."""
    env = helpers.moto_env(
        moto_server, SELFMAKER_ASYNC_SCALE_IN_AFTER="1", SELFMAKER_ASYNC_VISIBILITY_TIMEOUT="10"
    )
    with helpers.running(tmp_path_factory.mktemp("async-home"), env) as server:
        try:
            yield server
        finally:
            server.stop()  # before the leftovers are looked for (running() stops it again: a no-op)
            _kill_leftovers(server.home)


def _processes_under(home: Path) -> list[int]:
    """PIDs of model servers / workers whose command line or cwd mentions ``home`` (for cleanup)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(home) in cmdline or cwd.startswith(str(home)):
            pids.append(int(entry.name))
    return pids


def _kill_leftovers(home: Path) -> None:
    for pid in _processes_under(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def async_config(aws: Aws, **extra: Any) -> dict[str, Any]:
    return {
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
        "OutputConfig": {
            "S3OutputPath": f"s3://{aws.bucket}/out",
            "S3FailurePath": f"s3://{aws.bucket}/failed",
            "NotificationConfig": {"SuccessTopic": aws.success_topic, "ErrorTopic": aws.error_topic, **extra},
        },
    }


def deploy_async(
    platform: Any,
    name: str,
    model_tar: str,
    aws: Aws,
    *,
    count: int = 1,
    variant_extra: dict[str, Any] | None = None,
    **notification: Any,
) -> None:
    sm = platform.sagemaker()
    helpers.make_model(sm, f"{name}-model", model_tar)
    variant = {**helpers.variant("AllTraffic", f"{name}-model", count=count), **(variant_extra or {})}
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-cfg",
        ProductionVariants=[variant],
        AsyncInferenceConfig=async_config(aws, **notification),
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=helpers.WAIT)


ROWS = b"0.5,1.0,-0.2,0.3\n-1.5,-0.3,0.1,0.0\n"


def test_async_end_to_end(platform: Any, moto_server: str, model_tar: str) -> None:
    aws = new_aws(moto_server)
    deploy_async(
        platform, "async-e2e", model_tar, aws, IncludeInferenceResponseIn=["SUCCESS_NOTIFICATION_TOPIC"]
    )
    smr = platform.runtime()
    src = aws.put("in/rows.csv", ROWS)
    resp = smr.invoke_endpoint_async(
        EndpointName="async-e2e",
        InputLocation=src,
        ContentType="text/csv",
        Accept="text/csv",
        InferenceId="first-request",
        CustomAttributes="trace=1",
    )
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert resp["InferenceId"] == "first-request"
    assert resp["OutputLocation"] == f"s3://{aws.bucket}/out/first-request.out"
    assert resp["FailureLocation"] == f"s3://{aws.bucket}/failed/first-request-error.out"
    # failures: a missing input object, and input the model rejects
    missing = f"s3://{aws.bucket}/in/nope.csv"
    bad = smr.invoke_endpoint_async(EndpointName="async-e2e", InputLocation=missing, ContentType="text/csv")
    garbage = smr.invoke_endpoint_async(
        EndpointName="async-e2e", InputLocation=aws.put("in/garbage.csv", b"a,b\n"), ContentType="text/csv"
    )
    wait_until(lambda: len(aws.keys("out/")) + len(aws.keys("failed/")) == 3, what="three results")

    # the same model, synchronously, on a real-time endpoint: identical bytes
    sm = platform.sagemaker()
    sm.create_endpoint_config(
        EndpointConfigName="async-e2e-rt-cfg",
        ProductionVariants=[helpers.variant("AllTraffic", "async-e2e-model")],
    )
    sm.create_endpoint(EndpointName="async-e2e-rt", EndpointConfigName="async-e2e-rt-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="async-e2e-rt", WaiterConfig=helpers.WAIT)
    sync = smr.invoke_endpoint(
        EndpointName="async-e2e-rt", Body=ROWS, ContentType="text/csv", Accept="text/csv"
    )
    assert aws.get(resp["OutputLocation"]) == sync["Body"].read()

    assert missing in aws.get(bad["FailureLocation"]).decode()
    assert aws.keys("failed/") == sorted(
        [bad["FailureLocation"].split("/", 3)[3], garbage["FailureLocation"].split("/", 3)[3]]
    )
    notes = {n["inferenceId"]: n for n in aws.drain_inbox(3)}
    assert len(notes) == 3
    ok = notes["first-request"]
    assert ok["TopicArn"] == aws.success_topic and ok["invocationStatus"] == "Completed"
    assert ok["requestParameters"]["endpointName"] == "async-e2e"
    assert ok["requestParameters"]["inputLocation"] == src
    assert ok["responseParameters"]["outputLocation"] == resp["OutputLocation"]
    assert ok["responseBody"]["content"].encode() == aws.get(resp["OutputLocation"])
    failed = notes[bad["InferenceId"]]
    assert failed["TopicArn"] == aws.error_topic and failed["invocationStatus"] == "Failed"
    assert missing in failed["failureReason"]
    assert "error (4" in notes[garbage["InferenceId"]]["failureReason"]

    # an async endpoint refuses synchronous invocations; a real-time one refuses async ones
    with pytest.raises(ClientError) as err:
        smr.invoke_endpoint(EndpointName="async-e2e", Body=ROWS, ContentType="text/csv")
    assert err.value.response["Error"]["Code"] == "ValidationError"
    with pytest.raises(ClientError) as err:
        smr.invoke_endpoint_async(EndpointName="async-e2e-rt", InputLocation=src)
    assert err.value.response["Error"]["Code"] == "ValidationError"

    # its backlog is a CloudWatch metric of the endpoint, sampled each second
    cloudwatch = helpers.client("cloudwatch", platform.url)
    dims = [{"Name": "EndpointName", "Value": "async-e2e"}]
    wait_until(
        lambda: cloudwatch.list_metrics(MetricName="ApproximateBacklogSize", Dimensions=dims)["Metrics"],
        what="the backlog metric",
    )
    now = time.time()
    backlog = cloudwatch.get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName="ApproximateBacklogSize", Dimensions=dims, Period=60,
        StartTime=now - 600, EndTime=now + 60, Statistics=["SampleCount", "Maximum"],
    )["Datapoints"]  # fmt: skip
    assert backlog and all(p["SampleCount"] >= 1 and 0 <= p["Maximum"] <= 3 for p in backlog)


def test_async_request_validation(platform: Any, moto_server: str, model_tar: str) -> None:
    aws = new_aws(moto_server)
    deploy_async(platform, "async-val", model_tar, aws)
    url = f"{platform.url}/endpoints/async-val/async-invocations"
    cases = [
        {"X-Amzn-SageMaker-InputLocation": "s3://b/k", "X-Amzn-SageMaker-RequestTTLSeconds": "30"},
        {"X-Amzn-SageMaker-InputLocation": "s3://b/k", "X-Amzn-SageMaker-InvocationTimeoutSeconds": "3601"},
        {"X-Amzn-SageMaker-InputLocation": "s3://b/k", "X-Amzn-SageMaker-InvocationTimeoutSeconds": "soon"},
        {"X-Amzn-SageMaker-InputLocation": "https://example.com/x"},
        {"X-Amzn-SageMaker-InputLocation": "s3://b/k", "X-Amzn-SageMaker-Inference-Id": "../../etc"},
        {},
    ]
    for headers in cases:
        resp = requests.post(url, headers=headers, timeout=10)
        assert resp.status_code == 400, (headers, resp.text)
        assert resp.headers["x-amzn-ErrorType"].startswith("ValidationError")
    resp = requests.post(
        f"{platform.url}/endpoints/no-such-endpoint/async-invocations",
        headers={"X-Amzn-SageMaker-InputLocation": "s3://b/k"},
        timeout=10,
    )
    assert resp.status_code == 400
    sm = platform.sagemaker()
    with pytest.raises(ClientError, match="S3OutputPath"):
        sm.create_endpoint_config(
            EndpointConfigName="async-val-bad",
            ProductionVariants=[helpers.variant("AllTraffic", "async-val-model")],
            AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": "https://example.com/x"}},
        )
    # the same InferenceId twice: one request, same answer (a client retry is harmless)
    src = aws.put("in/x.csv", ROWS)
    smr = platform.runtime()
    first = smr.invoke_endpoint_async(
        EndpointName="async-val", InputLocation=src, InferenceId="dup", ContentType="text/csv"
    )
    second = smr.invoke_endpoint_async(
        EndpointName="async-val", InputLocation=src, InferenceId="dup", ContentType="text/csv"
    )
    assert first["OutputLocation"] == second["OutputLocation"]
    wait_until(lambda: aws.keys("out/") == ["out/dup.out"], what="the output")
    assert len(aws.drain_inbox(1)) == 1


def test_scale_to_zero_and_back(platform: Any, moto_server: str, model_tar: str) -> None:
    aws = new_aws(moto_server)
    deploy_async(
        platform,
        "async-zero",
        model_tar,
        aws,
        variant_extra={
            "ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 1}
        },
    )
    sm = platform.sagemaker()

    def instances() -> int:
        desc = sm.describe_endpoint(EndpointName="async-zero")
        return int(desc["ProductionVariants"][0]["CurrentInstanceCount"])

    wait_until(lambda: instances() == 0, timeout=60, what="scale to zero")
    status = subprocess.run(
        [sys.executable, "-m", "selfmaker", "status", "--home", str(platform.home), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (entry,) = [e for e in json.loads(status.stdout)["endpoints"] if e["EndpointName"] == "async-zero"]
    assert entry["AsyncBacklog"] == 0
    metrics = requests.get(f"{platform.url}/metrics", timeout=10).text
    assert 'selfmaker_async_backlog_size{endpoint="async-zero"} 0' in metrics
    assert 'selfmaker_async_has_backlog_without_capacity{endpoint="async-zero"} 0' in metrics
    src = aws.put("in/z.csv", ROWS)
    resp = platform.runtime().invoke_endpoint_async(
        EndpointName="async-zero", InputLocation=src, ContentType="text/csv"
    )
    out_key = resp["OutputLocation"].split("/", 3)[3]
    wait_until(lambda: out_key in aws.keys("out/"), timeout=90, what="the output after a cold start")
    assert instances() in (0, 1)
    (note,) = aws.drain_inbox(1)
    assert note["invocationStatus"] == "Completed"


def _instances(sm: Any, name: str) -> int:
    return int(sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["CurrentInstanceCount"])


def _gone(sm: Any, name: str) -> bool:
    try:
        sm.describe_endpoint(EndpointName=name)
    except ClientError as exc:
        return exc.response["Error"]["Code"] == "ValidationException"
    return False


def test_delete_endpoint_drops_its_queue(platform: Any, moto_server: str, model_tar: str) -> None:
    """Requests still queued when an endpoint is deleted are dropped with it (as on SageMaker): an
    endpoint created again under the same name neither processes them nor knows their InferenceIds."""
    from selfmaker.features.async_inference.supervisor import backlog_by_endpoint

    aws = new_aws(moto_server)
    zero = {"ManagedInstanceScaling": {"Status": "ENABLED", "MinInstanceCount": 0, "MaxInstanceCount": 1}}
    deploy_async(platform, "async-del", model_tar, aws, variant_extra=zero)
    sm, smr = platform.sagemaker(), platform.runtime()
    wait_until(lambda: _instances(sm, "async-del") == 0, timeout=60, what="scale to zero")
    # queued while no model server runs; deleted before the cold start can serve them
    for inference_id in ("stale-1", "stale-2"):
        smr.invoke_endpoint_async(
            EndpointName="async-del", Body=ROWS, ContentType="text/csv", InferenceId=inference_id
        )
    inputs = platform.home / "async" / "inputs" / "async-del"
    assert sorted(p.name for p in inputs.iterdir()) == ["stale-1.in", "stale-2.in"]
    sm.delete_endpoint(EndpointName="async-del")
    wait_until(lambda: _gone(sm, "async-del"), timeout=60, what="the endpoint to be deleted")
    assert "async-del" not in backlog_by_endpoint(platform.home)
    assert not inputs.exists()

    sm.create_endpoint(EndpointName="async-del", EndpointConfigName="async-del-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="async-del", WaiterConfig=helpers.WAIT)
    one_row = ROWS.split(b"\n")[0] + b"\n"
    fresh = smr.invoke_endpoint_async(
        EndpointName="async-del",
        InputLocation=aws.put("in/fresh.csv", one_row),
        ContentType="text/csv",
        Accept="text/csv",
        InferenceId="stale-1",
    )
    out_key = fresh["OutputLocation"].split("/", 3)[3]
    wait_until(lambda: out_key in aws.keys("out/"), timeout=90, what="the new request's output")
    assert aws.get(fresh["OutputLocation"]).count(b"\n") <= 1  # the one-row request, not the stale two rows
    assert aws.keys("out/") == [out_key]  # stale-2 (queued first) was never processed
    assert aws.keys("failed/") == []


def test_update_endpoint_keeps_the_endpoint_type(platform: Any, moto_server: str, model_tar: str) -> None:
    """As on SageMaker, UpdateEndpoint cannot turn an async endpoint into a real-time one (its queue would
    be stranded) or back; the refused call changes nothing. A same-type update is taken, and
    DescribeEndpoint then echoes the new config's AsyncInferenceConfig."""
    aws = new_aws(moto_server)
    deploy_async(platform, "async-upd", model_tar, aws)
    sm, smr = platform.sagemaker(), platform.runtime()
    sm.create_endpoint_config(
        EndpointConfigName="async-upd-rt",
        ProductionVariants=[helpers.variant("AllTraffic", "async-upd-model")],
    )
    with pytest.raises(ClientError) as refused:
        sm.update_endpoint(EndpointName="async-upd", EndpointConfigName="async-upd-rt")
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "AsyncInferenceConfig parameter cannot be removed" in refused.value.response["Error"]["Message"]
    described = sm.describe_endpoint(EndpointName="async-upd")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "async-upd-cfg"

    # a real-time endpoint cannot become asynchronous either
    sm.create_endpoint(EndpointName="rt-upd", EndpointConfigName="async-upd-rt")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="rt-upd", WaiterConfig=helpers.WAIT)
    with pytest.raises(ClientError) as refused:
        sm.update_endpoint(EndpointName="rt-upd", EndpointConfigName="async-upd-cfg")
    assert "AsyncInferenceConfig parameter cannot be added" in refused.value.response["Error"]["Message"]
    assert "AsyncInferenceConfig" not in sm.describe_endpoint(EndpointName="rt-upd")

    # async to async is an ordinary blue/green update; the echo follows the config in service
    sm.create_endpoint_config(
        EndpointConfigName="async-upd-cfg2",
        ProductionVariants=[helpers.variant("AllTraffic", "async-upd-model")],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": f"s3://{aws.bucket}/out2"}},
    )
    sm.update_endpoint(EndpointName="async-upd", EndpointConfigName="async-upd-cfg2")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="async-upd", WaiterConfig=helpers.WAIT)
    described = sm.describe_endpoint(EndpointName="async-upd")
    assert described["EndpointConfigName"] == "async-upd-cfg2"
    assert described["AsyncInferenceConfig"]["OutputConfig"] == {"S3OutputPath": f"s3://{aws.bucket}/out2"}
    answer = smr.invoke_endpoint_async(
        EndpointName="async-upd", InputLocation=aws.put("in/upd.csv", ROWS), ContentType="text/csv"
    )
    assert answer["OutputLocation"].startswith(f"s3://{aws.bucket}/out2/")
    out_key = answer["OutputLocation"].split("/", 3)[3]
    wait_until(lambda: out_key in aws.keys("out2/"), timeout=90, what="the output under the new path")
    for name in ("async-upd", "rt-upd"):
        sm.delete_endpoint(EndpointName=name)


def test_finished_requests_are_pruned_and_deleted_endpoints_queues_dropped_at_start(
    moto_server: str, model_tar: str, tmp_path: Path
) -> None:
    """SELFMAKER_ASYNC_RETENTION: finished requests and their inline bodies are forgotten after it; a
    queue whose endpoint no longer exists (deleted while the platform was down) is dropped at start."""
    from serving.asyncq import AsyncRequest, SqliteQueue

    aws = new_aws(moto_server)
    env = helpers.moto_env(moto_server, SELFMAKER_ASYNC_RETENTION="1")
    home = tmp_path / "home"
    server = helpers.PlatformProcess(home, env=env)
    server.start()
    queue_db = home / "async" / "queue.db"
    try:
        deploy_async(server, "async-prune", model_tar, aws)
        done = server.runtime().invoke_endpoint_async(
            EndpointName="async-prune", Body=ROWS, ContentType="text/csv"
        )
        stored = home / "async" / "inputs" / "async-prune" / f"{done['InferenceId']}.in"
        assert stored.exists()
        out_key = done["OutputLocation"].split("/", 3)[3]
        wait_until(lambda: out_key in aws.keys("out/"), timeout=60, what="the output")
        wait_until(lambda: not stored.exists(), timeout=30, what="the inline body to be pruned")
        assert SqliteQueue.queue_names(queue_db) == []
    finally:
        server.stop()
    ghost = SqliteQueue(queue_db, "ghost-endpoint")
    ghost.put(AsyncRequest("orphan", "ghost-endpoint", "s3://b/k", "s3://b/o", "s3://b/f"))
    ghost.close()
    assert SqliteQueue.queue_names(queue_db) == ["ghost-endpoint"]
    server.start()
    try:
        wait_until(lambda: SqliteQueue.queue_names(queue_db) == [], timeout=30, what="the orphan queue to go")
    finally:
        server.stop()
        _kill_leftovers(home)


@pytest.fixture
def moto_process(tmp_path: Path) -> Iterator[str]:
    """moto in its own process (not sharing the test's interpreter lock): this test is moto-bound."""
    port = helpers.find_free_port()
    with open(tmp_path / "moto.log", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        helpers.wait_http(f"http://127.0.0.1:{port}/moto-api/", timeout=60, alive=lambda: proc.poll() is None)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_kill9_platform_during_backlog(moto_process: str, model_tar: str, tmp_path: Path) -> None:
    """500 accepted requests; the platform is SIGKILLed mid-backlog and restarted: 500 outputs, none
    missing or duplicated, and exactly 500 notifications."""
    moto_server = moto_process
    aws = new_aws(moto_server)
    env = helpers.moto_env(moto_server, SELFMAKER_ASYNC_VISIBILITY_TIMEOUT="10")
    home = tmp_path / "home"
    server = helpers.PlatformProcess(home, env=env)
    server.start()
    total = 500
    src = tmp_path / "rows.csv"  # a local input: moto's time goes to outputs and notifications
    src.write_bytes(ROWS)
    try:
        deploy_async(server, "async-kill", model_tar, aws, count=2)
        smr = server.runtime()

        def submit(i: int) -> str:
            resp = smr.invoke_endpoint_async(
                EndpointName="async-kill",
                InputLocation=src.as_uri(),
                ContentType="text/csv",
                InferenceId=f"req-{i:04d}",
            )
            return str(resp["InferenceId"])

        with Inbox(aws) as inbox:
            with ThreadPoolExecutor(4) as pool:
                accepted = list(pool.map(submit, range(total)))
            assert len(set(accepted)) == total
            wait_until(lambda: len(inbox.notes) >= 50, what="some progress before the kill")
            assert server.proc is not None
            os.kill(
                server.proc.pid, signal.SIGKILL
            )  # the platform only; its workers notice and stop gracefully
            server.proc.wait(10)
            server.proc = None
            at_kill = len(inbox.notes)
            assert at_kill < total, "the backlog drained before the kill; nothing was tested"

            def workers_left() -> list[int]:
                return [p for p in _processes_under(home) if b"serving.asyncq" in _cmdline(p)]

            wait_until(lambda: not workers_left(), timeout=60, what="orphaned workers to finish")
            _kill_leftovers(home)  # model servers of the dead platform
            server.start()
            wait_until(
                lambda: len(inbox.notes) >= total, timeout=150, what="all notifications after the restart"
            )
            # a late duplicate could come only from a request still queued or in flight, or a notification
            # not yet read: wait until the queue has nothing unfinished and the inbox is empty
            wait_until(
                lambda: settled(aws, home, "async-kill"), timeout=60, what="the queue and the inbox to settle"
            )
        ids = [n["inferenceId"] for n in inbox.notes]
        assert len(ids) == total, f"{len(ids)} notifications for {total} requests ({len(set(ids))} distinct)"
        assert set(ids) == set(accepted)
        assert all(n["invocationStatus"] == "Completed" for n in inbox.notes)
        assert aws.keys("out/") == sorted(f"out/{i}.out" for i in accepted)
        assert aws.keys("failed/") == []
    finally:
        server.stop()
        _kill_leftovers(home)


def settled(aws: Aws, home: Path, endpoint: str) -> bool:
    """Nothing of ``endpoint`` is left in the platform's queue (waiting or in flight) and no notification
    is left in the inbox queue (the Inbox thread deletes each one after keeping it)."""
    from serving.asyncq import SqliteQueue

    queue = SqliteQueue(home / "async" / "queue.db", endpoint)
    try:
        if queue.backlog():
            return False
    finally:
        queue.close()
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=aws.inbox_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values()) == 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.slow
def test_sqs_backend_platform(moto_server: str, model_tar: str, tmp_path: Path) -> None:
    """The same product with SELFMAKER_ASYNC_BACKEND=sqs: queues in (moto's) SQS, state under an S3 prefix."""
    aws = new_aws(moto_server)
    env = helpers.moto_env(
        moto_server,
        SELFMAKER_ASYNC_BACKEND="sqs",
        SELFMAKER_ASYNC_SQS_QUEUE_PREFIX=f"sm-{uuid.uuid4().hex[:8]}-",
        SELFMAKER_ASYNC_STATE=f"s3://{aws.bucket}/async-state",
    )
    server = helpers.PlatformProcess(tmp_path / "home", env=env)
    server.start()
    try:
        deploy_async(server, "async-sqs", model_tar, aws)
        smr = server.runtime()
        src = aws.put("in/rows.csv", ROWS)
        ok = smr.invoke_endpoint_async(EndpointName="async-sqs", InputLocation=src, ContentType="text/csv")
        bad = smr.invoke_endpoint_async(
            EndpointName="async-sqs", InputLocation=f"s3://{aws.bucket}/in/missing.csv"
        )
        queues = aws.sqs.list_queues(QueueNamePrefix=env["SELFMAKER_ASYNC_SQS_QUEUE_PREFIX"]).get(
            "QueueUrls", []
        )
        assert len(queues) == 1 and queues[0].endswith("async-sqs")
        notes = {n["inferenceId"]: n for n in aws.drain_inbox(2)}
        assert notes[ok["InferenceId"]]["invocationStatus"] == "Completed"
        assert notes[bad["InferenceId"]]["invocationStatus"] == "Failed"
        assert aws.get(ok["OutputLocation"]).strip()
        assert "missing.csv" in aws.get(bad["FailureLocation"]).decode()
        assert aws.keys("async-state/async-sqs/"), "per-request state lives under the S3 prefix"
        sm = server.sagemaker()
        sm.delete_endpoint(EndpointName="async-sqs")
        wait_until(lambda: _gone(sm, "async-sqs"), timeout=60, what="the endpoint to be deleted")
        assert aws.keys("async-state/async-sqs/") == []  # a new endpoint of this name starts afresh
    finally:
        server.stop()
        _kill_leftovers(tmp_path / "home")


def test_payload_limit_is_the_model_servers(
    platform: Any, moto_server: str, model_tar: str, tmp_path: Path
) -> None:
    """The container decides the largest input (SAGEMAKER_MAX_PAYLOAD_IN_MB in the model's Environment, as on
    SageMaker): below it the streamed input is answered, above it the 413 becomes a failure object. (Kept at
    1 MB so the test stays fast; the worker streams inputs of any size, see tests/serving.)"""
    aws = new_aws(moto_server)
    sm = platform.sagemaker()
    sm.create_model(
        ModelName="async-big-model",
        PrimaryContainer={
            "Image": "selfmaker",
            "ModelDataUrl": model_tar,
            "Environment": {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1"},
        },
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    sm.create_endpoint_config(
        EndpointConfigName="async-big-cfg",
        ProductionVariants=[helpers.variant("AllTraffic", "async-big-model")],
        AsyncInferenceConfig=async_config(aws),
    )
    sm.create_endpoint(EndpointName="async-big", EndpointConfigName="async-big-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="async-big", WaiterConfig=helpers.WAIT)
    row = b"0.5,1.0,-0.2,0.3\n"
    fits = tmp_path / "fits.csv"
    fits.write_bytes(row * (512 * 1024 // len(row)))  # 0.5 MiB
    too_big = tmp_path / "too-big.csv"
    too_big.write_bytes(row * (2 * 1024 * 1024 // len(row)))  # 2 MiB
    smr = platform.runtime()
    ok = smr.invoke_endpoint_async(
        EndpointName="async-big", InputLocation=fits.as_uri(), ContentType="text/csv", Accept="text/csv"
    )
    bad = smr.invoke_endpoint_async(
        EndpointName="async-big", InputLocation=too_big.as_uri(), ContentType="text/csv"
    )
    notes = {n["inferenceId"]: n for n in aws.drain_inbox(2, timeout=120)}
    assert notes[ok["InferenceId"]]["invocationStatus"] == "Completed"
    lines = aws.get(ok["OutputLocation"]).splitlines()
    assert len(lines) == fits.stat().st_size // len(row)
    assert notes[bad["InferenceId"]]["invocationStatus"] == "Failed"
    assert "(413)" in notes[bad["InferenceId"]]["failureReason"]

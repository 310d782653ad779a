"""Async endpoints as `pulumi up` deploys them, run for real against moto (S3, SQS, SNS).

What AWS would run is run here: the front Lambda's zip (the files the AsyncEndpoint component ships),
unpacked and called through a local ALB shim (HTTP → the ALB's Lambda event → handler → HTTP); boto3's
``invoke_endpoint_async`` pointed at that shim; the image's async worker (``python -m serving.asyncq`` with
the SQS backend and an S3 state prefix) draining the endpoint's queue into a real model server. The queue
is made as the component makes it (dead-letter queue, redrive count from :mod:`infra.async_scaling`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import platform_helpers as helpers
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError
from testkit import find_free_port, wait_http

from infra import async_scaling
from infra.components.endpoints.async_endpoint import FRONT_HANDLER, front_sources

ROOT = Path(__file__).resolve().parents[2]
ENDPOINT = "churn-async"
N_REQUESTS = 100

pytestmark = pytest.mark.slow


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Stack:
    """The AWS side of one async endpoint, on moto."""

    url: str
    s3: Any
    sqs: Any
    data_bucket: str
    outputs_bucket: str
    queue_url: str
    dlq_url: str
    success_topic: str
    error_topic: str
    inbox_url: str

    def put(self, key: str, body: bytes) -> str:
        self.s3.put_object(Bucket=self.data_bucket, Key=key, Body=body)
        return f"s3://{self.data_bucket}/{key}"

    def get(self, uri: str) -> bytes | None:
        bucket, key = uri[5:].split("/", 1)
        try:
            return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        except ClientError:
            return None

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.outputs_bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def drain(self, url: str, into: list[dict[str, Any]]) -> None:
        msgs = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        for m in msgs:
            envelope = json.loads(m["Body"])
            into.append({"TopicArn": envelope["TopicArn"], **json.loads(envelope["Message"])})
        if msgs:
            self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)],
            )


def make_stack(url: str) -> Stack:
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=url, region_name="us-east-1")
    sns = boto3.client("sns", endpoint_url=url, region_name="us-east-1")
    tag = uuid.uuid4().hex[:8]
    data, outputs = f"data-{tag}", f"outputs-{tag}"
    for bucket in (data, outputs):
        s3.create_bucket(Bucket=bucket)
    dlq = sqs.create_queue(QueueName=f"{ENDPOINT}-dlq-{tag}")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue = sqs.create_queue(
        QueueName=f"{ENDPOINT}-queue-{tag}",
        Attributes={
            "SqsManagedSseEnabled": "true",
            "VisibilityTimeout": "60",
            "RedrivePolicy": json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": async_scaling.max_receive_count()}
            ),
        },
    )["QueueUrl"]
    ok = sns.create_topic(Name=f"{ENDPOINT}-ok-{tag}")["TopicArn"]
    err = sns.create_topic(Name=f"{ENDPOINT}-err-{tag}")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"inbox-{tag}")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    for topic in (ok, err):
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn)
    return Stack(url, s3, sqs, data, outputs, queue, dlq, ok, err, inbox)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Deployment:
    stack: Stack
    front_url: str
    model_url: str
    worker: subprocess.Popen[bytes]
    worker_log: Path

    def runtime(self) -> Any:
        return boto3.client(
            "sagemaker-runtime",
            endpoint_url=self.front_url,
            region_name="us-east-1",
            config=Config(retries={"mode": "standard", "max_attempts": 1}),
        )


@pytest.fixture(scope="module")
def deployment(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    stack = make_stack(moto_server)
    base = tmp_path_factory.mktemp("async-aws")
    aws_env = helpers.moto_env(moto_server)
    started: list[subprocess.Popen[bytes]] = []
    try:
        # the model server, from the model.tar.gz a worker instance would unpack
        model_dir = base / "model"
        model_dir.mkdir()
        with tarfile.open(helpers.build_classifier_tar(base / "tar")) as tar:
            tar.extractall(model_dir, filter="data")
        model_port = find_free_port()
        model_log = base / "model.log"
        with open(model_log, "wb") as out:
            model = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serving",
                    "--model-dir",
                    str(model_dir),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(model_port),
                ],
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT), "SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(model)
        model_url = f"http://127.0.0.1:{model_port}"
        wait_http(f"{model_url}/ping", timeout=90, alive=lambda: model.poll() is None)

        # the front: the component's zip, unpacked, alone on PYTHONPATH, behind the ALB shim
        zip_dir = base / "front"
        for target, source in front_sources().items():
            path = zip_dir / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"" if source is None else source.read_bytes())
        front_port = find_free_port()
        front_env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            **aws_env,
            "PYTHONPATH": str(zip_dir),
            "AWS_REGION": "us-east-1",
            "SELFMAKER_ENDPOINT_NAME": ENDPOINT,
            "SELFMAKER_QUEUE_URL": stack.queue_url,
            "SELFMAKER_OUTPUT_PATH": f"s3://{stack.outputs_bucket}/async/{ENDPOINT}/output/",
            "SELFMAKER_FAILURE_PATH": f"s3://{stack.outputs_bucket}/async/{ENDPOINT}/failures/",
            "SELFMAKER_SUCCESS_TOPIC": stack.success_topic,
            "SELFMAKER_ERROR_TOPIC": stack.error_topic,
            "SELFMAKER_INPUT_LOCATIONS": f"s3://{stack.data_bucket}/async/{ENDPOINT}/",
        }
        front_log = base / "front.log"
        with open(front_log, "wb") as out:
            front = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).with_name("alb_shim.py")),
                    "--port",
                    str(front_port),
                    "--handler",
                    FRONT_HANDLER,
                ],
                cwd=base,
                env=front_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(front)
        front_url = f"http://127.0.0.1:{front_port}"
        wait_http(f"{front_url}/__shim/modules", timeout=30, alive=lambda: front.poll() is None)
        assert f"handler from {zip_dir}" in front_log.read_text()  # the zip's code, not the repository's

        # the worker, as the instance's user data starts it
        worker_log = base / "worker.log"
        with open(worker_log, "wb") as out:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "serving.asyncq",
                    "--queue",
                    f"sqs:{stack.queue_url}",
                    "--state",
                    f"s3://{stack.outputs_bucket}/async/{ENDPOINT}/state/",
                    "--name",
                    ENDPOINT,
                    "--model-url",
                    model_url,
                    "--concurrency",
                    "4",
                    "--visibility-timeout",
                    "60",
                ],
                cwd=ROOT,
                env={**os.environ, **aws_env, "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(worker)
        yield Deployment(stack, front_url, model_url, worker, worker_log)
    finally:
        for proc in reversed(started):
            _stop(proc)


def rows(i: int) -> bytes:
    """1-3 rows of 4 features, different per request."""
    lines = [
        ",".join(f"{((i * 7 + r * 3 + c) % 11 - 5) / 3:.3f}" for c in range(4)) for r in range(1 + i % 3)
    ]
    return ("\n".join(lines) + "\n").encode()


def test_100_requests_give_100_real_time_answers_and_100_notifications(deployment: Deployment) -> None:
    stack = deployment.stack
    smr = deployment.runtime()
    accepted: dict[str, dict[str, Any]] = {}
    expected: dict[str, bytes] = {}
    for i in range(N_REQUESTS):
        body = rows(i)
        location = stack.put(f"async/{ENDPOINT}/in/{i}.csv", body)
        resp = smr.invoke_endpoint_async(
            EndpointName=ENDPOINT,
            InputLocation=location,
            ContentType="text/csv",
            Accept="application/json",
            InferenceId=f"req-{i}",
        )
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 202
        assert resp["InferenceId"] == f"req-{i}"
        assert resp["OutputLocation"] == f"s3://{stack.outputs_bucket}/async/{ENDPOINT}/output/req-{i}.out"
        assert (
            resp["FailureLocation"]
            == f"s3://{stack.outputs_bucket}/async/{ENDPOINT}/failures/req-{i}-error.out"
        )
        accepted[f"req-{i}"] = resp
        real_time = requests.post(
            f"{deployment.model_url}/invocations",
            data=body,
            timeout=30,
            headers={"Content-Type": "text/csv", "Accept": "application/json"},
        )
        assert real_time.status_code == 200, real_time.text
        expected[f"req-{i}"] = real_time.content

    # a missing input is accepted (as SageMaker does) and ends as a failure object naming it
    missing = f"s3://{stack.data_bucket}/async/{ENDPOINT}/in/never-uploaded.csv"
    lost = smr.invoke_endpoint_async(EndpointName=ENDPOINT, InputLocation=missing, ContentType="text/csv")
    assert lost["InferenceId"]  # generated

    outputs_prefix = f"async/{ENDPOINT}/output/"
    wait_until(
        lambda: len(stack.keys(outputs_prefix)) >= N_REQUESTS,
        240,
        f"{N_REQUESTS} outputs (worker log: {deployment.worker_log})",
    )
    for inference_id, resp in accepted.items():
        assert stack.get(resp["OutputLocation"]) == expected[inference_id], inference_id
    assert len(stack.keys(outputs_prefix)) == N_REQUESTS

    wait_until(lambda: stack.get(lost["FailureLocation"]) is not None, 120, "the failure object")
    failure = (stack.get(lost["FailureLocation"]) or b"").decode()
    assert missing in failure
    assert stack.keys(f"async/{ENDPOINT}/failures/") == [lost["FailureLocation"].split("/", 3)[3]]

    notes: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while len(notes) < N_REQUESTS + 1 and time.monotonic() < deadline:
        stack.drain(stack.inbox_url, notes)
    for _ in range(3):  # nothing more arrives: one notification per request
        stack.drain(stack.inbox_url, notes)
    completed = [n for n in notes if n["invocationStatus"] == "Completed"]
    failed = [n for n in notes if n["invocationStatus"] == "Failed"]
    assert sorted(n["inferenceId"] for n in completed) == sorted(accepted)
    assert all(n["TopicArn"] == stack.success_topic for n in completed)
    assert all(n["requestParameters"]["endpointName"] == ENDPOINT for n in completed)
    assert (
        completed[0]["responseParameters"]["outputLocation"]
        == accepted[completed[0]["inferenceId"]]["OutputLocation"]
    )
    assert [(n["inferenceId"], n["TopicArn"]) for n in failed] == [(lost["InferenceId"], stack.error_topic)]
    assert missing in failed[0]["failureReason"]

    # nothing was dead-lettered; the queue is drained
    dlq = stack.sqs.get_queue_attributes(
        QueueUrl=stack.dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert dlq["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert deployment.worker.poll() is None


def _raw(
    deployment: Deployment,
    headers: dict[str, str],
    body: bytes = b"",
    path: str = f"/endpoints/{ENDPOINT}/async-invocations",
) -> requests.Response:
    return requests.post(f"{deployment.front_url}{path}", headers=headers, data=body, timeout=30)


def test_bad_requests_get_sagemaker_error_shapes(deployment: Deployment) -> None:
    stack = deployment.stack
    good = stack.put(f"async/{ENDPOINT}/in/ok.csv", rows(1))
    before = stack.sqs.get_queue_attributes(
        QueueUrl=stack.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    loc = {"X-Amzn-SageMaker-InputLocation": good}
    cases: list[tuple[dict[str, str], bytes, str]] = [
        ({}, b"", "inputLocation"),  # no input at all
        ({**loc, "X-Amzn-SageMaker-RequestTTLSeconds": "30"}, b"", "requestTTLSeconds"),
        ({**loc, "X-Amzn-SageMaker-RequestTTLSeconds": "21601"}, b"", "requestTTLSeconds"),
        ({**loc, "X-Amzn-SageMaker-InvocationTimeoutSeconds": "soon"}, b"", "invocationTimeoutSeconds"),
        ({**loc, "X-Amzn-SageMaker-InvocationTimeoutSeconds": "0"}, b"", "invocationTimeoutSeconds"),
        ({**loc, "X-Amzn-SageMaker-Inference-Id": "../../etc"}, b"", "inferenceId"),
        ({**loc, "X-Amzn-SageMaker-Inference-Id": "x" * 65}, b"", "inferenceId"),
        ({**loc, "X-Amzn-SageMaker-Custom-Attributes": "a" * 1025}, b"", "customAttributes"),
        ({**loc, "X-Amzn-SageMaker-Filename": "a.b.c"}, b"", "filename"),
        ({"X-Amzn-SageMaker-InputLocation": "https://example.com/x"}, b"", "s3://"),
        ({"X-Amzn-SageMaker-InputLocation": f"s3://{stack.data_bucket}"}, b"", "s3://"),
        (
            {"X-Amzn-SageMaker-InputLocation": f"s3://{stack.data_bucket}/elsewhere/x.csv"},
            b"",
            "not readable",
        ),
        (
            {"X-Amzn-SageMaker-InputLocation": f"s3://{stack.outputs_bucket}/async/{ENDPOINT}/x"},
            b"",
            "not readable",
        ),
        ({**loc, "Content-Type": "text/csv"}, b"1,2,3,4\n", "mutually exclusive"),
        ({"Content-Type": "text/csv"}, b"1,2,3,4\n", "InputLocation"),  # inline bodies: upload to S3
        (
            {"Content-Type": "application/octet-stream"},
            bytes(range(256)) * 600,
            "larger than 128000",
        ),  # 153,600
    ]
    for headers, body, needle in cases:
        resp = _raw(deployment, headers, body)
        assert resp.status_code == 400, (headers.keys(), resp.status_code, resp.text)
        assert resp.headers["x-amzn-ErrorType"] == "ValidationError"
        assert resp.headers["Content-Type"] == "application/json"
        message = resp.json()["message"]
        assert needle in message, (needle, message)
        assert "Traceback" not in resp.text

    # the same refusals through boto3: a ValidationError ClientError with the message
    smr = deployment.runtime()
    with pytest.raises(ClientError) as err:
        smr.invoke_endpoint_async(
            EndpointName=ENDPOINT, InputLocation=f"s3://{stack.data_bucket}/elsewhere/x.csv"
        )
    assert err.value.response["Error"]["Code"] == "ValidationError"
    assert "not readable" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        smr.invoke_endpoint_async(
            EndpointName=ENDPOINT, InputLocation=good, RequestTTLSeconds=60, InvocationTimeoutSeconds=3601
        )
    assert err.value.response["Error"]["Code"] == "ValidationError"
    # another endpoint's name on this endpoint's route, and a wrong method, are refused too
    resp = _raw(deployment, loc, path="/endpoints/someone-else/async-invocations")
    assert resp.status_code == 400 and resp.headers["x-amzn-ErrorType"] == "ValidationError"
    resp = requests.get(f"{deployment.front_url}/endpoints/{ENDPOINT}/async-invocations", timeout=10)
    assert resp.status_code == 404 and resp.headers["x-amzn-ErrorType"] == "UnknownOperationException"

    # nothing was queued by any refused request
    after = stack.sqs.get_queue_attributes(
        QueueUrl=stack.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )
    assert after["Attributes"] == before["Attributes"]


def test_the_same_inference_id_twice_gives_one_result_and_one_notification(deployment: Deployment) -> None:
    """SQS has no lookup by id, so a repeated InferenceId is queued twice; the worker makes it one result."""
    stack = deployment.stack
    smr = deployment.runtime()
    location = stack.put(f"async/{ENDPOINT}/in/dup.csv", rows(5))
    answers = [
        smr.invoke_endpoint_async(
            EndpointName=ENDPOINT, InputLocation=location, ContentType="text/csv", InferenceId="same-id-twice"
        )
        for _ in range(2)
    ]
    assert answers[0]["OutputLocation"] == answers[1]["OutputLocation"]
    wait_until(lambda: stack.get(answers[0]["OutputLocation"]) is not None, 120, "the output")

    def settled() -> bool:
        attrs = stack.sqs.get_queue_attributes(
            QueueUrl=stack.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return attrs == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}

    wait_until(settled, 120, "both deliveries acked")
    notes: list[dict[str, Any]] = []
    for _ in range(3):
        stack.drain(stack.inbox_url, notes)
    assert [n["inferenceId"] for n in notes if n["inferenceId"] == "same-id-twice"] == ["same-id-twice"]
    assert stack.keys(f"async/{ENDPOINT}/output/same-id-twice") == [
        f"async/{ENDPOINT}/output/same-id-twice.out"
    ]


def test_an_s3_https_url_is_an_input_location_too(deployment: Deployment) -> None:
    """botocore's InputLocation pattern allows S3 https:// URLs; the worker gets the s3:// URI."""
    stack = deployment.stack
    body = rows(7)
    stack.put(f"async/{ENDPOINT}/in/https.csv", body)
    url = f"https://{stack.data_bucket}.s3.us-east-1.amazonaws.com/async/{ENDPOINT}/in/https.csv"
    resp = deployment.runtime().invoke_endpoint_async(
        EndpointName=ENDPOINT,
        InputLocation=url,
        ContentType="text/csv",
        Accept="application/json",
        InferenceId="by-https-url",
    )
    wait_until(lambda: stack.get(resp["OutputLocation"]) is not None, 120, "the output")
    real_time = requests.post(
        f"{deployment.model_url}/invocations",
        data=body,
        timeout=30,
        headers={"Content-Type": "text/csv", "Accept": "application/json"},
    )
    assert stack.get(resp["OutputLocation"]) == real_time.content


def test_front_zip_runs_on_the_standard_library_and_boto3_alone(deployment: Deployment) -> None:
    modules = set(requests.get(f"{deployment.front_url}/__shim/modules", timeout=10).json())
    # after the other tests of the module too: nothing the Lambda runtime lacks was ever imported
    assert {"serving", "boto3"} <= modules
    assert not modules & {"pydantic", "pydantic_settings", "numpy", "onnxruntime", "selfmaker", "infra"}

"""The async worker end to end: moto S3 + SNS (subscribed SQS queue), a real HTTP inference container.

The container is a small BYOC-style server speaking the SageMaker container contract (``/ping``,
``/invocations``): it hashes the streamed body, and fails, stalls or rejects on request, so every
worker path is exercised against real sockets.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from testkit import find_free_port, wait_until

from serving.asyncq import (
    AsyncRequest,
    AsyncWorker,
    QueueBackend,
    S3StateStore,
    SqliteQueue,
    SqsQueue,
    WorkerSettings,
    result_locations,
)
from serving.asyncq.notify import SnsPublisher
from serving.asyncq.objects import ObjectStore

ROOT = Path(__file__).resolve().parents[2]


def _ping(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# --------------------------------------------------------------------------- the inference container


class _Container(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/ping" else 404, b"", "text/plain")

    def _read_body(self) -> Iterator[bytes]:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length", "0"))
        while remaining:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def do_POST(self) -> None:
        digest = hashlib.sha256()
        size = 0
        head = b""
        for chunk in self._read_body():
            if len(head) < 64:
                head += chunk[: 64 - len(head)]
            digest.update(chunk)
            size += len(chunk)
        attrs = self.headers.get("X-Amzn-SageMaker-Custom-Attributes", "")
        for part in attrs.split(","):
            if part.startswith("sleep="):
                time.sleep(float(part.split("=", 1)[1]))
        if head.startswith(b"ERROR"):
            return self._answer(500, b'{"error": "model exploded"}', "application/json")
        if head.startswith(b"BAD"):
            return self._answer(400, b"cannot parse input", "text/plain")
        body = json.dumps(
            {
                "sha256": digest.hexdigest(),
                "bytes": size,
                "content_type": self.headers.get("Content-Type"),
                "accept": self.headers.get("Accept"),
                "custom_attributes": attrs,
                "inference_id": self.headers.get("X-Amzn-SageMaker-Inference-Id"),
            }
        ).encode()
        self._answer(200, body, "application/json")

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Container:
    url: str
    server: ThreadingHTTPServer


def start_container(port: int = 0) -> Container:
    server = ThreadingHTTPServer(("127.0.0.1", port), _Container)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    wait_until(lambda: _ping(url), timeout=10, what="container /ping")
    return Container(url, server)


@pytest.fixture
def container() -> Iterator[Container]:
    c = start_container()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()


# --------------------------------------------------------------------------- AWS (moto)


@dataclass
class Aws:
    url: str
    s3: Any
    sns: Any
    sqs: Any
    bucket: str
    success_topic: str
    error_topic: str
    inbox_url: str  # SQS queue subscribed to both topics

    def put_input(self, key: str, body: bytes) -> str:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        return f"s3://{self.bucket}/{key}"

    def get(self, uri: str) -> bytes:
        bucket, key = uri[5:].split("/", 1)
        return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def notifications(
        self, expected: int, timeout: float = 30.0, settle: float = 0.5
    ) -> list[dict[str, Any]]:
        """Drain the inbox until ``expected`` messages arrived and nothing more comes for ``settle`` s."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            resp = self.sqs.receive_message(
                QueueUrl=self.inbox_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            msgs = resp.get("Messages", [])
            for m in msgs:
                envelope = json.loads(m["Body"])
                got.append({"TopicArn": envelope["TopicArn"], **json.loads(envelope["Message"])})
                self.sqs.delete_message(QueueUrl=self.inbox_url, ReceiptHandle=m["ReceiptHandle"])
            if msgs:
                quiet_since = None
            elif len(got) >= expected:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    break
            else:
                time.sleep(0.05)
        return got


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Aws:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    sns = boto3.client("sns", endpoint_url=moto_server)
    sqs = boto3.client("sqs", endpoint_url=moto_server)
    tag = uuid.uuid4().hex[:10]
    bucket = f"async-{tag}"
    s3.create_bucket(Bucket=bucket)
    ok = sns.create_topic(Name=f"ok-{tag}")["TopicArn"]
    err = sns.create_topic(Name=f"err-{tag}")["TopicArn"]
    inbox = sqs.create_queue(QueueName=f"inbox-{tag}")["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    for topic in (ok, err):
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=inbox_arn)
    return Aws(moto_server, s3, sns, sqs, bucket, ok, err, inbox)


@pytest.fixture(params=["sqlite", "sqs"])
def queue(request: pytest.FixtureRequest, tmp_path: Path, aws: Aws) -> Iterator[QueueBackend]:
    if request.param == "sqlite":
        q: QueueBackend = SqliteQueue(tmp_path / "queue.db", "ep", poll_interval=0.01)
    else:
        url = aws.sqs.create_queue(QueueName=f"work-{uuid.uuid4().hex[:10]}")["QueueUrl"]
        q = SqsQueue(url, S3StateStore(f"s3://{aws.bucket}/.state", client=aws.s3), client=aws.sqs, name="ep")
    try:
        yield q
    finally:
        q.close()


def make_request(aws: Aws, input_location: str, inference_id: str | None = None, **kw: Any) -> AsyncRequest:
    inference_id = inference_id or uuid.uuid4().hex
    out, fail = result_locations(f"s3://{aws.bucket}/out", f"s3://{aws.bucket}/failed", inference_id)
    kw.setdefault("content_type", "text/csv")
    kw.setdefault("success_topic", aws.success_topic)
    kw.setdefault("error_topic", aws.error_topic)
    return AsyncRequest(inference_id, "ep", input_location, out, fail, **kw)


def run_worker(queue: QueueBackend, url: str | Callable[[], str], aws: Aws, **settings: Any) -> AsyncWorker:
    settings.setdefault("wait_seconds", 0.05)
    worker = AsyncWorker(
        queue,
        url,
        settings=WorkerSettings(**settings),
        objects=ObjectStore(aws.s3),
        publisher=SnsPublisher(aws.sns),
    )
    worker.start()
    return worker


def drain(queue: QueueBackend, url: str, aws: Aws, what: str = "backlog drained") -> None:
    """Run a worker on ``queue`` until its backlog is empty, then stop it."""
    worker = run_worker(queue, url, aws)
    try:
        wait_until(lambda: queue.backlog() == 0, what=what)
    finally:
        worker.stop()


# --------------------------------------------------------------------------- tests


def test_success_writes_output_and_notifies_once(queue: QueueBackend, aws: Aws, container: Container) -> None:
    payload = b"1,2,3\n4,5,6\n"
    req = make_request(
        aws,
        aws.put_input("in/a.csv", payload),
        accept="application/json",
        custom_attributes="trace=42",
    )
    assert queue.put(req)
    drain(queue, container.url, aws)
    result = json.loads(aws.get(req.output_location))
    assert result["sha256"] == hashlib.sha256(payload).hexdigest()
    assert result["content_type"] == "text/csv"
    assert result["accept"] == "application/json"
    assert result["custom_attributes"] == "trace=42"
    assert result["inference_id"] == req.inference_id
    assert aws.keys("failed/") == []
    (note,) = aws.notifications(1)
    assert note["TopicArn"] == aws.success_topic
    assert note["invocationStatus"] == "Completed"
    assert note["inferenceId"] == req.inference_id
    assert note["eventSource"] == "aws:sagemaker" and note["eventName"] == "InferenceResult"
    assert note["eventVersion"] == "1.0" and note["awsRegion"] == "us-east-1"
    assert note["requestParameters"] == {
        "contentType": "text/csv",
        "accept": "application/json",
        "customAttributes": "trace=42",
        "endpointName": "ep",
        "inputLocation": req.input_location,
    }
    assert note["responseParameters"] == {
        "contentType": "application/json",
        "outputLocation": req.output_location,
    }
    assert note["receivedTime"].endswith("Z") and note["eventTime"] >= note["receivedTime"]
    assert "failureReason" not in note and "responseBody" not in note


def test_model_error_writes_failure_object(queue: QueueBackend, aws: Aws, container: Container) -> None:
    req = make_request(aws, aws.put_input("in/err.csv", b"ERROR please"))
    queue.put(req)
    drain(queue, container.url, aws)
    assert aws.get(req.failure_location) == b'{"error": "model exploded"}'
    assert aws.keys("out/") == []
    (note,) = aws.notifications(1)
    assert note["TopicArn"] == aws.error_topic
    assert note["invocationStatus"] == "Failed"
    assert note["responseParameters"]["failureLocation"] == req.failure_location
    assert "Received server error (500) from model" in note["failureReason"]
    assert "model exploded" in note["failureReason"]


def test_bad_input_location_failure_names_it(queue: QueueBackend, aws: Aws, container: Container) -> None:
    missing = f"s3://{aws.bucket}/in/does-not-exist.csv"
    no_file = "file:///nonexistent/dir/input.csv"
    reqs = [make_request(aws, missing), make_request(aws, no_file)]
    for r in reqs:
        queue.put(r)
    drain(queue, container.url, aws)
    assert missing in aws.get(reqs[0].failure_location).decode()
    assert "NoSuchKey" in aws.get(reqs[0].failure_location).decode()
    assert no_file in aws.get(reqs[1].failure_location).decode()
    notes = {n["inferenceId"]: n for n in aws.notifications(2)}
    assert len(notes) == 2
    assert missing in notes[reqs[0].inference_id]["failureReason"]
    assert no_file in notes[reqs[1].inference_id]["failureReason"]


def test_expired_request_fails_with_ttl_reason(queue: QueueBackend, aws: Aws, container: Container) -> None:
    # Accepted 2 minutes ago with a 60 s TTL: expired before any worker saw it.
    old = make_request(
        aws, aws.put_input("in/old.csv", b"1"), request_ttl_seconds=60, received_time=time.time() - 120
    )
    fresh = make_request(aws, aws.put_input("in/fresh.csv", b"2"), request_ttl_seconds=60)
    queue.put(old)
    queue.put(fresh)
    drain(queue, container.url, aws)
    assert "RequestTTLSeconds=60" in aws.get(old.failure_location).decode()
    assert json.loads(aws.get(fresh.output_location))["bytes"] == 1
    statuses = {n["inferenceId"]: n["invocationStatus"] for n in aws.notifications(2)}
    assert statuses == {old.inference_id: "Failed", fresh.inference_id: "Completed"}


def test_invocation_timeout_is_a_failure(queue: QueueBackend, aws: Aws, container: Container) -> None:
    req = make_request(
        aws, aws.put_input("in/slow.csv", b"1"), custom_attributes="sleep=3", invocation_timeout_seconds=1
    )
    queue.put(req)
    drain(queue, container.url, aws)
    assert "timed out" in aws.get(req.failure_location).decode()
    (note,) = aws.notifications(1)
    assert note["invocationStatus"] == "Failed"
    assert "InvocationTimeoutSeconds=1" in note["failureReason"]


def test_include_inference_response_in(tmp_path: Path, aws: Aws, container: Container) -> None:
    queue = SqliteQueue(tmp_path / "q.db", "ep")
    ok = make_request(
        aws, aws.put_input("in/ok.csv", b"x"), include_response_in=("SUCCESS_NOTIFICATION_TOPIC",)
    )
    bad = make_request(
        aws, aws.put_input("in/bad.csv", b"BAD"), include_response_in=("SUCCESS_NOTIFICATION_TOPIC",)
    )
    queue.put(ok)
    queue.put(bad)
    try:
        drain(queue, container.url, aws)
    finally:
        queue.close()
    notes = {n["inferenceId"]: n for n in aws.notifications(2)}
    body = notes[ok.inference_id]["responseBody"]
    assert body["encoding"] == "TEXT"
    assert json.loads(body["content"])["sha256"] == hashlib.sha256(b"x").hexdigest()
    assert "responseBody" not in notes[bad.inference_id]  # only SUCCESS_NOTIFICATION_TOPIC asked for it
    assert "Received client error (400)" in notes[bad.inference_id]["failureReason"]


def test_no_topics_no_notifications(tmp_path: Path, aws: Aws, container: Container) -> None:
    queue = SqliteQueue(tmp_path / "q.db", "ep")
    req = make_request(aws, aws.put_input("in/n.csv", b"n"), success_topic=None, error_topic=None)
    queue.put(req)
    try:
        drain(queue, container.url, aws)
    finally:
        queue.close()
    assert json.loads(aws.get(req.output_location))["bytes"] == 1
    assert aws.notifications(0, timeout=1.5, settle=1.0) == []


def test_unreachable_model_server_is_retried_not_failed(tmp_path: Path, aws: Aws) -> None:
    port = find_free_port()
    queue = SqliteQueue(tmp_path / "q.db", "ep")
    req = make_request(aws, aws.put_input("in/r.csv", b"r"))
    queue.put(req)
    worker = run_worker(queue, f"http://127.0.0.1:{port}", aws, retry_delay=0.05)
    container: Container | None = None
    try:
        wait_until(
            lambda: (
                queue.state.get("ep", req.inference_id, "outcome") is None and _deliveries(queue, req) >= 2
            ),
            what="a retried delivery",
        )
        assert aws.keys("failed/") == [] and aws.keys("out/") == []
        container = start_container(port)
        wait_until(lambda: queue.backlog() == 0, what="backlog drained")
    finally:
        worker.stop()
        if container is not None:
            container.server.shutdown()
            container.server.server_close()
        queue.close()
    assert json.loads(aws.get(req.output_location))["bytes"] == 1
    assert len(aws.notifications(1)) == 1


def _deliveries(queue: SqliteQueue, req: AsyncRequest) -> int:
    conn = queue._db.connection()  # test-only peek at the delivery counter
    row = conn.execute(
        "SELECT receive_count FROM async_queue WHERE inference_id=?", (req.inference_id,)
    ).fetchone()
    return int(row[0])


def _processing_threads(queue: SqliteQueue) -> list[threading.Thread]:
    """Live processing threads of the workers on ``queue`` (named ``asyncq-<queue>-<n>`` by AsyncWorker)."""
    prefix = f"asyncq-{queue.name}-"
    return [
        t for t in threading.enumerate() if t.name.startswith(prefix) and not t.name.endswith("-heartbeat")
    ]


def test_graceful_stop_hands_back_in_flight_request(tmp_path: Path, aws: Aws, container: Container) -> None:
    queue = SqliteQueue(tmp_path / "q.db", "ep")
    req = make_request(aws, aws.put_input("in/g.csv", b"g"), custom_attributes="sleep=1.5")
    queue.put(req)
    first = run_worker(queue, container.url, aws, visibility_timeout=600)
    wait_until(lambda: _deliveries(queue, req) == 1, what="first delivery")
    first.stop(grace=0.1)
    # Handed back at once (not after the 600 s lease): a second worker finishes it.
    second = run_worker(queue, container.url, aws, visibility_timeout=600)
    try:
        wait_until(lambda: queue.backlog() == 0, timeout=20, what="backlog drained by the second worker")
    finally:
        second.stop()
    # the first worker's abandoned invocation returns once the container answers it; when its thread
    # has ended, whatever it would have written or notified is there to see
    wait_until(
        lambda: not _processing_threads(queue), timeout=20, what="the first worker's invocation to return"
    )
    assert aws.keys("out/") == [f"out/{req.inference_id}.out"]
    assert len(aws.notifications(1)) == 1
    queue.close()


def worker_cmd(db: Path, model_url: str, *options: str) -> list[str]:
    """``python -m serving.asyncq`` on the SQLite queue ``db`` (endpoint ``ep``) in front of ``model_url``."""
    return [
        sys.executable,
        "-m",
        "serving.asyncq",
        "--queue",
        f"sqlite:{db}",
        "--name",
        "ep",
        "--model-url",
        model_url,
        *options,
        "--log-level",
        "WARNING",
    ]


def worker_env(aws: Aws) -> dict[str, str]:
    return {**os.environ, "AWS_ENDPOINT_URL": aws.url, "PYTHONPATH": str(ROOT)}


def test_sigkilled_workers_lose_nothing(tmp_path: Path, aws: Aws, container: Container) -> None:
    """Worker processes killed with SIGKILL mid-backlog (twice): every request ends with exactly one
    object and at least one notification; a repeat is possible only for a kill between SNS Publish
    and the mark."""
    db = tmp_path / "q.db"
    queue = SqliteQueue(db, "ep")
    reqs = [
        make_request(aws, aws.put_input(f"in/k{i}.csv", f"{i}".encode()), inference_id=f"k{i:03d}")
        for i in range(30)
    ]
    for i, r in enumerate(reqs):
        if i % 10 == 3:
            r = make_request(aws, aws.put_input(f"in/k{i}.csv", b"ERROR"), inference_id=f"k{i:03d}")
            reqs[i] = r
        queue.put(r)
    env = worker_env(aws)
    cmd = worker_cmd(db, container.url, "--concurrency", "3", "--visibility-timeout", "2")
    kills = 0
    for _ in range(2):
        before = queue.backlog()
        proc = subprocess.Popen(cmd, env=env)
        try:
            wait_until(lambda b=before: queue.backlog() <= b - 5 or queue.backlog() == 0, what="progress")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
    proc = subprocess.Popen(cmd, env=env)
    try:
        wait_until(lambda: queue.backlog() == 0, timeout=60, what="backlog drained after kills")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    queue.close()
    outs = aws.keys("out/")
    fails = aws.keys("failed/")
    assert len(outs) + len(fails) == 30
    assert {k.split("/")[1].split(".")[0] for k in outs} | {
        k.split("/")[1].split("-error")[0] for k in fails
    } == {r.inference_id for r in reqs}
    assert len(fails) == 3
    notes = aws.notifications(30)
    ids = [n["inferenceId"] for n in notes]
    assert set(ids) == {r.inference_id for r in reqs}
    assert len(ids) - len(set(ids)) <= kills * 3  # at most one repeat per in-flight request per kill


def test_large_input_is_streamed(tmp_path: Path, aws: Aws, container: Container) -> None:
    """A 256 MiB file:// input reaches the container intact while the worker stays far below its size."""
    size = 256 * 1024 * 1024
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    block = os.urandom(1 << 20)
    with src.open("wb") as f:
        for _ in range(size >> 20):
            f.write(block)
            digest.update(block)
    db = tmp_path / "q.db"
    queue = SqliteQueue(db, "ep")
    out_dir = tmp_path / "out"
    inference_id = "big"
    out, fail = result_locations(f"file://{out_dir}", None, inference_id)
    queue.put(
        AsyncRequest(inference_id, "ep", f"file://{src}", out, fail, content_type="application/octet-stream")
    )
    proc = subprocess.Popen(worker_cmd(db, container.url), env=worker_env(aws))
    try:
        wait_until(lambda: queue.backlog() == 0, timeout=120, what="big request done")
        peak_kib = _peak_rss_kib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        queue.close()
    result = json.loads((out_dir / "big.out").read_text())
    assert result == {**result, "bytes": size, "sha256": digest.hexdigest()}
    assert peak_kib * 1024 < size / 2, f"worker peak RSS {peak_kib} KiB for a {size >> 20} MiB input"


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


def test_redelivery_adopts_a_result_written_before_a_crash(
    tmp_path: Path, aws: Aws, container: Container
) -> None:
    """An attempt that died after writing the output but before recording it: the next delivery adopts the
    object (no second model call, no failure object) and still notifies once."""
    queue = SqliteQueue(tmp_path / "q.db", "ep", poll_interval=0.01)
    req = make_request(aws, aws.put_input("in/c.csv", b"c"))
    queue.put(req)
    (first,) = queue.receive(1, visibility_timeout=0.2)  # the attempt that "dies": its lease just expires
    earlier = b'{"written": "by the attempt that died"}'
    bucket, key = req.output_location[5:].split("/", 1)
    aws.s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=earlier,
        ContentType="application/json",
        Metadata={"inference-id": req.inference_id, "event-time": "1700000000.25"},
    )
    drain(queue, container.url, aws)
    assert first.receive_count == 1 and _deliveries(queue, req) == 2
    queue.close()
    assert aws.get(req.output_location) == earlier  # the model was not called again
    assert aws.keys("failed/") == []
    (note,) = aws.notifications(1)
    assert note["invocationStatus"] == "Completed"
    assert note["eventTime"] == "2023-11-14T22:13:20.250Z"  # the recorded event time of the first attempt
    assert note["responseParameters"]["contentType"] == "application/json"


def test_recorded_and_notified_request_is_only_acked(tmp_path: Path, aws: Aws, container: Container) -> None:
    """A delivery after the notification was marked (the worker died before the ack): nothing is redone."""
    queue = SqliteQueue(tmp_path / "q.db", "ep", poll_interval=0.01)
    req = make_request(aws, aws.put_input("in/d.csv", b"d"))
    queue.put(req)
    drain(queue, container.url, aws, "first processing")
    assert len(aws.notifications(1)) == 1
    # the same message again, as if the ack had been lost: state says done and notified
    with queue._db.transaction() as conn:  # test-only: undo the ack
        conn.execute(
            "UPDATE async_queue SET done_at=NULL, visible_at=0 WHERE inference_id=?", (req.inference_id,)
        )
    aws.s3.delete_object(
        Bucket=aws.bucket, Key=req.input_location.split("/", 3)[3]
    )  # a re-run would now fail
    try:
        drain(queue, container.url, aws, "second delivery acked")
    finally:
        queue.close()
    assert aws.keys("failed/") == []
    assert json.loads(aws.get(req.output_location))["bytes"] == 1
    assert aws.notifications(0, timeout=1.5, settle=1.0) == []

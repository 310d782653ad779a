"""Queue backends: SQLite (WAL file) and SQS (moto), same lease semantics."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from serving.asyncq import (
    AsyncRequest,
    QueueBackend,
    S3StateStore,
    SqliteQueue,
    SqsQueue,
    open_queue,
    result_locations,
)


def make_request(i: int | str, endpoint: str = "ep") -> AsyncRequest:
    inference_id = f"req-{i}"
    out, fail = result_locations("s3://out/prefix", "s3://out/failures", inference_id)
    return AsyncRequest(inference_id, endpoint, f"s3://in/{i}.csv", out, fail)


@pytest.fixture(params=["sqlite", "sqs"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueBackend]:
    if request.param == "sqlite":
        q: QueueBackend = SqliteQueue(tmp_path / "queue.db", "ep", poll_interval=0.01)
    else:
        url = request.getfixturevalue("moto_server")
        sqs = boto3.client("sqs", endpoint_url=url)
        s3 = boto3.client("s3", endpoint_url=url)
        name = f"q-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=name)
        queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
        q = SqsQueue(queue_url, S3StateStore(f"s3://{name}/state", client=s3), client=sqs, name="ep")
    try:
        yield q
    finally:
        q.close()


def test_receive_hides_ack_deletes(queue: QueueBackend) -> None:
    for i in range(3):
        assert queue.put(make_request(i))
    assert queue.backlog() == 3
    leases = []
    while len(leases) < 3:
        got = queue.receive(3, visibility_timeout=30)
        assert got, "messages vanished"
        leases += got
    assert sorted(lease.request.inference_id for lease in leases) == ["req-0", "req-1", "req-2"]
    assert all(lease.receive_count == 1 for lease in leases)
    assert queue.receive(3, visibility_timeout=30) == []  # all leased
    assert queue.backlog() == 3  # in flight still counts
    for lease in leases:
        assert queue.ack(lease)
    assert queue.backlog() == 0
    assert queue.receive(3, visibility_timeout=30) == []


def test_expired_lease_is_redelivered(queue: QueueBackend) -> None:
    queue.put(make_request("x"))
    first = queue.receive(1, visibility_timeout=1)
    assert len(first) == 1
    again = queue.receive(1, visibility_timeout=30, wait_seconds=4)
    deadline = time.monotonic() + 10
    while not again and time.monotonic() < deadline:
        again = queue.receive(1, visibility_timeout=30, wait_seconds=1)
    assert len(again) == 1
    assert again[0].request == first[0].request
    assert again[0].receive_count == 2
    assert queue.ack(again[0])
    assert queue.backlog() == 0


def test_release_makes_visible_and_extend_keeps_hidden(queue: QueueBackend) -> None:
    queue.put(make_request("r"))
    (lease,) = queue.receive(1, visibility_timeout=30)
    assert queue.extend(lease, 30)
    assert queue.receive(1, visibility_timeout=30) == []
    assert queue.release(lease)
    got = queue.receive(1, visibility_timeout=30, wait_seconds=2)
    assert [g.request.inference_id for g in got] == ["req-r"]
    assert got[0].receive_count == 2


def test_state_store_roundtrip(queue: QueueBackend) -> None:
    assert queue.state.get("ep", "a", "notified") is None
    queue.state.put("ep", "a", "notified", "1")
    queue.state.put("ep", "a", "notified", "2")
    assert queue.state.get("ep", "a", "notified") == "2"
    assert queue.state.get("ep", "b", "notified") is None


def test_sqlite_put_is_idempotent_per_inference_id(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.db", "ep")
    other = SqliteQueue(tmp_path / "q.db", "other-ep")
    try:
        first = make_request(1)
        assert q.put(first)
        assert not q.put(make_request(1))
        assert other.put(make_request(1, endpoint="other-ep"))  # queues are separate
        assert q.backlog() == 1 and other.backlog() == 1
        stored = q.get_request("req-1")
        assert stored == first  # the first accept wins
    finally:
        q.close()
        other.close()


def test_sqlite_stale_lease_cannot_ack(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.db", "ep")
    try:
        q.put(make_request(1))
        (old,) = q.receive(1, visibility_timeout=0.05)
        new: list = []
        deadline = time.monotonic() + 5
        while not new and time.monotonic() < deadline:
            new = q.receive(1, visibility_timeout=30, wait_seconds=0.2)
        assert new and new[0].receive_count == 2
        assert not q.ack(old)
        assert not q.extend(old, 30)
        assert q.ack(new[0])
    finally:
        q.close()


def test_sqlite_concurrent_consumers_lease_each_message_once(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    producer = SqliteQueue(path, "ep")
    for i in range(200):
        producer.put(make_request(i))
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        q = SqliteQueue(path, "ep")  # own connection set, like another process
        try:
            while True:
                got = q.receive(5, visibility_timeout=60)
                if not got:
                    return
                for lease in got:
                    with lock:
                        seen.append(lease.request.inference_id)
                    assert q.ack(lease)
        finally:
            q.close()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seen) == sorted(f"req-{i}" for i in range(200))
    assert producer.backlog() == 0
    producer.close()


def test_sqlite_prune_forgets_finished_only(tmp_path: Path) -> None:
    q = SqliteQueue(tmp_path / "q.db", "ep")
    try:
        q.put(make_request(1))
        q.put(make_request(2))
        (lease,) = q.receive(1, visibility_timeout=30)
        q.state.put("ep", lease.request.inference_id, "notified", "x")
        q.ack(lease)
        assert [r.inference_id for r in q.prune(older_than_seconds=0)] == [lease.request.inference_id]
        assert q.state.get("ep", lease.request.inference_id, "notified") is None
        assert q.backlog() == 1
    finally:
        q.close()


def test_open_queue_specs(tmp_path: Path) -> None:
    q = open_queue(f"sqlite:{tmp_path / 'x.db'}", "ep")
    assert isinstance(q, SqliteQueue)
    q.close()
    with pytest.raises(ValueError, match="state store"):
        open_queue("sqs:http://127.0.0.1:1/123/q", "ep")
    with pytest.raises(ValueError, match="unknown queue spec"):
        open_queue("redis://x", "ep")


def test_request_json_roundtrip_and_locations() -> None:
    req = AsyncRequest(
        "id-1",
        "ep",
        "s3://b/in",
        "s3://b/o/id-1.out",
        "s3://b/f/id-1-error.out",
        content_type="text/csv",
        include_response_in=("SUCCESS_NOTIFICATION_TOPIC",),
        request_ttl_seconds=60,
    )
    assert AsyncRequest.from_json(req.to_json()) == req
    assert result_locations("s3://b/out/", None, "abc") == ("s3://b/out/abc.out", "s3://b/out/abc-error.out")
    assert result_locations("s3://b/out", "s3://b/f", "abc", extension="x/y", filename="name.csv") == (
        "s3://b/out/x/y/name.out",
        "s3://b/f/x/y/name-error.out",
    )
    assert req.expired(req.received_time + 61)
    assert not req.expired(req.received_time + 59)


def test_purge_drops_messages_and_state(queue: QueueBackend) -> None:
    for i in range(3):
        queue.put(make_request(i))
    (lease,) = queue.receive(1, visibility_timeout=30)
    queue.state.put("ep", lease.request.inference_id, "notified", "x")
    queue.purge()
    assert queue.backlog() == 0
    assert queue.receive(10, visibility_timeout=1, wait_seconds=0) == []
    assert queue.state.get("ep", lease.request.inference_id, "notified") is None
    if isinstance(queue, SqliteQueue):  # (SQS may still accept a stale receipt handle)
        assert not queue.ack(lease)
    queue.put(make_request("after"))  # the queue stays usable
    (fresh,) = queue.receive(1, visibility_timeout=30, wait_seconds=1)
    assert fresh.request.inference_id == "req-after"


def test_sqlite_purge_and_queue_names_are_per_queue(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    assert SqliteQueue.queue_names(path) == []
    a, b = SqliteQueue(path, "a"), SqliteQueue(path, "b")
    try:
        a.put(make_request(1, "a"))
        b.put(make_request(1, "b"))
        b.state.put("b", "req-1", "notified", "x")
        a.state.put("a", "req-1", "notified", "x")
        assert SqliteQueue.queue_names(path) == ["a", "b"]
        a.purge()
        assert SqliteQueue.queue_names(path) == ["b"]
        assert (a.backlog(), b.backlog()) == (0, 1)
        assert a.state.get("a", "req-1", "notified") is None
        assert b.state.get("b", "req-1", "notified") == "x"
    finally:
        a.close()
        b.close()

"""Queue backends (lease / visibility-timeout, at-least-once) and durable state stores.

Both queues behave like SQS: :meth:`QueueBackend.receive` hides a message for a visibility timeout
and hands out a lease; :meth:`QueueBackend.ack` deletes it; a lease that is neither acked nor
extended in time makes the message visible again, so a worker killed at any moment loses nothing
(the message is processed again — the worker makes that harmless, see :mod:`serving.asyncq.worker`).

The :class:`StateStore` keeps per-request facts that must survive a crash: the recorded outcome and the
"notified" mark that de-duplicates SNS notifications by InferenceId.
"""

from __future__ import annotations

import abc
import logging
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import ClientError

from common import s3, uris
from serving.asyncq.request import AsyncRequest, fifo_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """A received message: the request plus what is needed to ack / extend / release it."""

    request: AsyncRequest
    handle: str
    receive_count: int


class QueueBackend(abc.ABC):
    """One endpoint's request queue (at-least-once delivery with leases)."""

    name: str
    #: durable per-request facts (outcome, notified mark) that travel with this queue
    state: StateStore

    @abc.abstractmethod
    def put(self, request: AsyncRequest) -> bool:
        """Store ``request`` durably; return only once it is durable. False if the InferenceId was
        already queued on this queue (the call is then a no-op)."""

    @abc.abstractmethod
    def receive(self, max_messages: int, visibility_timeout: float, wait_seconds: float = 0.0) -> list[Lease]:
        """Lease up to ``max_messages`` visible messages for ``visibility_timeout`` seconds."""

    @abc.abstractmethod
    def ack(self, lease: Lease) -> bool:
        """Delete the message; False if the lease was lost (the message went to someone else)."""

    @abc.abstractmethod
    def extend(self, lease: Lease, visibility_timeout: float) -> bool:
        """Keep the message hidden for ``visibility_timeout`` more seconds; False if the lease was lost."""

    @abc.abstractmethod
    def release(self, lease: Lease, delay: float = 0.0) -> bool:
        """Make the message visible again after ``delay`` seconds (retry later)."""

    @abc.abstractmethod
    def backlog(self) -> int:
        """Messages not yet acked (waiting or in flight) — SageMaker's ApproximateBacklogSize."""

    @abc.abstractmethod
    def purge(self) -> None:
        """Drop every message of this queue and its per-request state (the endpoint was deleted: a
        new endpoint of the same name must neither process its requests nor see its InferenceIds)."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release resources (connections)."""


class StateStore(Protocol):
    """Durable key/value facts per (queue, InferenceId)."""

    def get(self, queue: str, inference_id: str, key: str) -> str | None:
        """The stored value, or None."""

    def put(self, queue: str, inference_id: str, key: str, value: str) -> None:
        """Store durably (replace); returns once durable."""

    def forget_queue(self, queue: str) -> None:
        """Delete every fact stored for ``queue``."""


# --------------------------------------------------------------------------- SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS async_queue (
    queue TEXT NOT NULL,
    inference_id TEXT NOT NULL,
    body TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    lease_token TEXT,
    receive_count INTEGER NOT NULL DEFAULT 0,
    done_at REAL,
    PRIMARY KEY (queue, inference_id)
);
CREATE INDEX IF NOT EXISTS async_queue_ready ON async_queue (queue, done_at, visible_at, enqueued_at);
CREATE TABLE IF NOT EXISTS async_state (
    queue TEXT NOT NULL,
    inference_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (queue, inference_id, key)
);
"""


class _SqliteDb:
    """A WAL database file shared by processes; one connection per thread."""

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", busy_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # executescript manages its own transaction; every statement is IF NOT EXISTS.
        self.connection().executescript(_SCHEMA)

    def connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            self._local.conn = conn
            self._local.sync = self._synchronous
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction. ``durable``: fsync the WAL at commit (synchronous=FULL), so it survives power
        loss; otherwise (NORMAL) a commit survives the death of any process but maybe not of the OS."""
        conn = self.connection()
        wanted = "FULL" if durable else self._synchronous
        if self._local.sync != wanted:
            conn.execute(f"PRAGMA synchronous={wanted}")
            self._local.sync = wanted
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


class SqliteStateStore:
    """:class:`StateStore` in the queue's SQLite file."""

    def __init__(self, db: _SqliteDb | str | Path) -> None:
        self._db = db if isinstance(db, _SqliteDb) else _SqliteDb(db)

    def get(self, queue: str, inference_id: str, key: str) -> str | None:
        row = (
            self._db.connection()
            .execute(
                "SELECT value FROM async_state WHERE queue=? AND inference_id=? AND key=?",
                (queue, inference_id, key),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def put(self, queue: str, inference_id: str, key: str, value: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO async_state (queue, inference_id, key, value, updated_at) "
                "VALUES (?,?,?,?,?)",
                (queue, inference_id, key, value, time.time()),
            )

    def forget_queue(self, queue: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM async_state WHERE queue=?", (queue,))

    def close(self) -> None:
        self._db.close()


class SqliteQueue(QueueBackend):
    """Local queue: a table in a WAL SQLite file (``<home>/async/queue.db``), shared by all endpoints.

    Many processes may use the same file (the platform enqueues, worker processes lease); every state
    change is one ``BEGIN IMMEDIATE`` transaction.
    """

    def __init__(
        self, path: str | Path, name: str, *, poll_interval: float = 0.02, synchronous: str = "NORMAL"
    ) -> None:
        self.name = name
        self._db = _SqliteDb(path, synchronous=synchronous)
        self.state = SqliteStateStore(self._db)
        self._poll_interval = poll_interval

    def put(self, request: AsyncRequest) -> bool:
        now = time.time()
        # The one fsynced commit: an accepted request survives power loss, not just a crash.
        with self._db.transaction(durable=True) as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO async_queue (queue, inference_id, body, enqueued_at, visible_at) "
                "VALUES (?,?,?,?,?)",
                (self.name, request.inference_id, request.to_json(), now, now),
            )
            return cur.rowcount == 1

    @staticmethod
    def queue_names(path: str | Path) -> list[str]:
        """Names of the queues with any request (finished or not) in the file at ``path``."""
        if not Path(path).exists():
            return []
        db = _SqliteDb(path)
        try:
            rows = db.connection().execute("SELECT DISTINCT queue FROM async_queue").fetchall()
        finally:
            db.close()
        return sorted(str(row[0]) for row in rows)

    def get_request(self, inference_id: str) -> AsyncRequest | None:
        """The stored request with this InferenceId (used to answer a repeated accept idempotently)."""
        row = (
            self._db.connection()
            .execute(
                "SELECT body FROM async_queue WHERE queue=? AND inference_id=?", (self.name, inference_id)
            )
            .fetchone()
        )
        return None if row is None else AsyncRequest.from_json(row[0])

    def _receive_once(self, max_messages: int, visibility_timeout: float) -> list[Lease]:
        now = time.time()
        # Look before taking the write lock: idle workers poll often and must not serialise everyone.
        visible = (
            self._db.connection()
            .execute(
                "SELECT 1 FROM async_queue WHERE queue=? AND done_at IS NULL AND visible_at<=? LIMIT 1",
                (self.name, now),
            )
            .fetchone()
        )
        if visible is None:
            return []
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT inference_id, body, receive_count FROM async_queue "
                "WHERE queue=? AND done_at IS NULL AND visible_at<=? ORDER BY enqueued_at LIMIT ?",
                (self.name, now, max_messages),
            ).fetchall()
            leases = []
            for inference_id, body, count in rows:
                token = uuid.uuid4().hex
                conn.execute(
                    "UPDATE async_queue SET visible_at=?, lease_token=?, receive_count=? "
                    "WHERE queue=? AND inference_id=?",
                    (now + visibility_timeout, token, count + 1, self.name, inference_id),
                )
                leases.append(Lease(AsyncRequest.from_json(body), f"{inference_id}\n{token}", count + 1))
        return leases

    def receive(self, max_messages: int, visibility_timeout: float, wait_seconds: float = 0.0) -> list[Lease]:
        deadline = time.monotonic() + wait_seconds
        while True:
            leases = self._receive_once(max_messages, visibility_timeout)
            if leases or time.monotonic() >= deadline:
                return leases
            time.sleep(min(self._poll_interval, max(0.0, deadline - time.monotonic())))

    def _update_leased(self, lease: Lease, sql: str, args: tuple[Any, ...]) -> bool:
        inference_id, token = lease.handle.split("\n", 1)
        with self._db.transaction() as conn:
            cur = conn.execute(
                f"UPDATE async_queue SET {sql} "
                "WHERE queue=? AND inference_id=? AND lease_token=? AND done_at IS NULL",
                (*args, self.name, inference_id, token),
            )
            return cur.rowcount == 1

    def ack(self, lease: Lease) -> bool:
        return self._update_leased(lease, "done_at=?, lease_token=NULL", (time.time(),))

    def extend(self, lease: Lease, visibility_timeout: float) -> bool:
        return self._update_leased(lease, "visible_at=?", (time.time() + visibility_timeout,))

    def release(self, lease: Lease, delay: float = 0.0) -> bool:
        return self._update_leased(lease, "visible_at=?, lease_token=NULL", (time.time() + delay,))

    def backlog(self) -> int:
        row = (
            self._db.connection()
            .execute("SELECT COUNT(*) FROM async_queue WHERE queue=? AND done_at IS NULL", (self.name,))
            .fetchone()
        )
        return int(row[0])

    def oldest_age(self) -> float:
        """Seconds the oldest unfinished request has waited (ApproximateAgeOfOldestRequest); 0 when empty."""
        row = (
            self._db.connection()
            .execute(
                "SELECT MIN(enqueued_at) FROM async_queue WHERE queue=? AND done_at IS NULL", (self.name,)
            )
            .fetchone()
        )
        return 0.0 if row[0] is None else max(0.0, time.time() - float(row[0]))

    def prune(self, older_than_seconds: float) -> list[AsyncRequest]:
        """Forget finished requests (and their state) finished more than this long ago; returns them
        (so the caller can delete inputs it stored for them)."""
        cutoff = time.time() - older_than_seconds
        finished = "FROM async_queue WHERE queue=? AND done_at IS NOT NULL AND done_at<?"
        with self._db.transaction() as conn:
            rows = conn.execute(f"SELECT body {finished}", (self.name, cutoff)).fetchall()
            conn.execute(
                f"DELETE FROM async_state WHERE queue=? AND inference_id IN (SELECT inference_id {finished})",
                (self.name, self.name, cutoff),
            )
            conn.execute(f"DELETE {finished}", (self.name, cutoff))
        return [AsyncRequest.from_json(body) for (body,) in rows]

    def purge(self) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM async_queue WHERE queue=?", (self.name,))
            conn.execute("DELETE FROM async_state WHERE queue=?", (self.name,))

    def close(self) -> None:
        self._db.close()


# --------------------------------------------------------------------------- SQS


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class SqsQueue(QueueBackend):
    """An SQS queue (what AWS deployments use). FIFO queues (``.fifo``) also de-duplicate accepts by
    InferenceId.

    The per-request state lives in a separate :class:`StateStore` (S3 prefix or SQLite file).
    """

    def __init__(
        self, queue_url: str, state: StateStore, *, client: Any = None, name: str | None = None
    ) -> None:
        import boto3

        self.queue_url = queue_url
        self.name = name or queue_url.rstrip("/").rsplit("/", 1)[-1]
        self.state = state
        self._client = client or boto3.client("sqs")
        self._fifo = queue_url.endswith(".fifo")

    def put(self, request: AsyncRequest) -> bool:
        kwargs: dict[str, Any] = {"QueueUrl": self.queue_url, "MessageBody": request.to_json()}
        if self._fifo:
            group, dedup = fifo_ids(request.endpoint_name, request.inference_id)
            kwargs.update(MessageGroupId=group, MessageDeduplicationId=dedup)
        self._client.send_message(**kwargs)
        return True

    def receive(self, max_messages: int, visibility_timeout: float, wait_seconds: float = 0.0) -> list[Lease]:
        resp = self._client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=max(1, min(10, max_messages)),
            VisibilityTimeout=max(0, int(round(visibility_timeout))),
            WaitTimeSeconds=max(0, min(20, math.ceil(wait_seconds))),  # long poll, never a busy loop
            MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        leases = []
        for msg in resp.get("Messages", []):
            count = int(msg.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            try:
                request = AsyncRequest.from_json(msg["Body"])
            except (ValueError, TypeError, KeyError):
                # A foreign message can never be processed; dropping it beats redelivering it forever.
                log.error("dropping malformed message %s from %s", msg.get("MessageId"), self.queue_url)
                self._client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=msg["ReceiptHandle"])
                continue
            leases.append(Lease(request, msg["ReceiptHandle"], count))
        return leases

    def _visibility(self, lease: Lease, seconds: float) -> bool:
        try:
            self._client.change_message_visibility(
                QueueUrl=self.queue_url,
                ReceiptHandle=lease.handle,
                VisibilityTimeout=max(0, int(round(seconds))),
            )
        except ClientError:  # the lease is gone (expired, or deleted by another worker)
            return False
        return True

    def ack(self, lease: Lease) -> bool:
        try:
            self._client.delete_message(QueueUrl=self.queue_url, ReceiptHandle=lease.handle)
        except ClientError:
            return False
        return True

    def extend(self, lease: Lease, visibility_timeout: float) -> bool:
        return self._visibility(lease, visibility_timeout)

    def release(self, lease: Lease, delay: float = 0.0) -> bool:
        return self._visibility(lease, delay)

    def backlog(self) -> int:
        attrs = self._client.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ],
        )["Attributes"]
        return sum(int(v) for v in attrs.values())

    def purge(self) -> None:
        """SQS ``PurgeQueue`` (AWS: takes up to 60 s, at most once per 60 s per queue), then the state."""
        try:
            self._client.purge_queue(QueueUrl=self.queue_url)
        except ClientError as exc:
            if _error_code(exc) not in {
                "AWS.SimpleQueueService.PurgeQueueInProgress",
                "PurgeQueueInProgress",
            }:
                raise
            log.warning("%s: a purge is already in progress", self.queue_url)
        self.state.forget_queue(self.name)


class S3StateStore:
    """:class:`StateStore` as small objects under an ``s3://bucket/prefix`` (no database needed in AWS)."""

    def __init__(self, prefix: str, *, client: Any = None) -> None:
        try:
            self._bucket, key = uris.split_s3(prefix)
        except uris.UriError:
            raise ValueError(f"state prefix must be s3://bucket/prefix, got {prefix!r}") from None
        self._prefix = key.strip("/")
        self._client = client or s3.client()

    def _key(self, queue: str, inference_id: str, key: str) -> str:
        return "/".join(p for p in (self._prefix, queue, inference_id, key) if p)

    def get(self, queue: str, inference_id: str, key: str) -> str | None:
        try:
            obj = self._client.get_object(Bucket=self._bucket, Key=self._key(queue, inference_id, key))
        except ClientError as exc:
            if _error_code(exc) in {"NoSuchKey", "404"}:
                return None
            raise
        return str(obj["Body"].read().decode("utf-8"))

    def put(self, queue: str, inference_id: str, key: str, value: str) -> None:
        self._client.put_object(
            Bucket=self._bucket, Key=self._key(queue, inference_id, key), Body=value.encode("utf-8")
        )

    def forget_queue(self, queue: str) -> None:
        prefix = self._key(queue, "", "") + "/"
        for page in self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=prefix
        ):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": keys, "Quiet": True})


def open_queue(spec: str, name: str, *, state: str | None = None) -> QueueBackend:
    """Open a queue from a spec: ``sqlite:<path>`` or ``sqs:<queue url>`` (then ``state`` is
    ``s3://bucket/prefix`` or ``sqlite:<path>``)."""
    kind, _, rest = spec.partition(":")
    if kind == "sqlite" and rest:
        return SqliteQueue(rest, name)
    if kind == "sqs" and rest:
        if not state:
            raise ValueError("an SQS queue needs a state store (s3://bucket/prefix or sqlite:<path>)")
        store: StateStore
        if state.startswith("sqlite:"):
            store = SqliteStateStore(state.partition(":")[2])
        else:
            store = S3StateStore(state)
        return SqsQueue(rest, store, name=name)
    raise ValueError(f"unknown queue spec {spec!r} (expected sqlite:<path> or sqs:<queue url>)")

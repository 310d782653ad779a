"""Asynchronous inference: a durable request queue, the worker that drains it, S3 output, SNS notifications.

The pieces, each in its own module:

- :mod:`serving.asyncq.request` — :class:`AsyncRequest`, the immutable message a queue carries (everything a
  worker needs, snapshotted from the endpoint config when the request was accepted), and the naming of the
  output / failure objects;
- :mod:`serving.asyncq.backends` — :class:`QueueBackend` (lease / visibility-timeout semantics, at-least-once)
  with :class:`SqliteQueue` (local default, WAL) and :class:`SqsQueue` (AWS), plus the durable
  :class:`StateStore` used for idempotency and notification de-duplication;
- :mod:`serving.asyncq.objects` — streaming reads and atomic, idempotent writes of ``s3://`` and ``file://``
  objects;
- :mod:`serving.asyncq.notify` — SageMaker's notification message shape and the SNS publisher;
- :mod:`serving.asyncq.worker` — :class:`AsyncWorker`, identical for every backend.

``python -m serving.asyncq --queue URL --model-url URL`` runs one worker process (one per model-server
instance).
"""

from __future__ import annotations

from serving.asyncq.backends import (
    Lease,
    QueueBackend,
    S3StateStore,
    SqliteQueue,
    SqliteStateStore,
    SqsQueue,
    StateStore,
    open_queue,
)
from serving.asyncq.request import AsyncRequest, Outcome, result_locations
from serving.asyncq.worker import AsyncWorker, WorkerSettings

__all__ = [
    "AsyncRequest",
    "AsyncWorker",
    "Lease",
    "Outcome",
    "QueueBackend",
    "S3StateStore",
    "SqliteQueue",
    "SqliteStateStore",
    "SqsQueue",
    "StateStore",
    "WorkerSettings",
    "open_queue",
    "result_locations",
]

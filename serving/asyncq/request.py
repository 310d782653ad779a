"""The queued request and its outcome, as plain JSON-serialisable dataclasses.

A request carries everything the worker needs (input, output and failure locations, SNS topics,
timeouts), snapshotted from the endpoint config at accept time, so a worker never has to look
anything up and the locations returned by the 202 are the ones written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

#: SageMaker's limits and defaults for InvokeEndpointAsync.
DEFAULT_TTL_SECONDS = 21600
MAX_TTL_SECONDS = 21600
DEFAULT_INVOCATION_TIMEOUT_SECONDS = 900
MAX_INVOCATION_TIMEOUT_SECONDS = 3600
SUCCESS_TOPIC = "SUCCESS_NOTIFICATION_TOPIC"
ERROR_TOPIC = "ERROR_NOTIFICATION_TOPIC"


def iso_millis(epoch: float) -> str:
    """``2022-01-25T22:46:00.608Z`` — the timestamp format of SageMaker's notifications."""
    moment = datetime.fromtimestamp(epoch, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p)])


def result_locations(
    output_path: str,
    failure_path: str | None,
    inference_id: str,
    *,
    extension: str | None = None,
    filename: str | None = None,
) -> tuple[str, str]:
    """``(output_location, failure_location)`` of one request.

    Output: ``<S3OutputPath>[/<S3OutputPathExtension>]/<name>.out``; failure:
    ``<S3FailurePath or S3OutputPath>[/<ext>]/<name>-error.out``; ``name`` is ``Filename`` without its
    extension when given, else the InferenceId.
    """
    name = filename.rsplit(".", 1)[0] if filename else inference_id
    output = _join(output_path, extension or "", f"{name}.out")
    failure = _join(failure_path or output_path, extension or "", f"{name}-error.out")
    return output, failure


def fifo_ids(endpoint_name: str, inference_id: str) -> tuple[str, str]:
    """``(MessageGroupId, MessageDeduplicationId)`` of a request on a FIFO queue: one InferenceId of an
    endpoint is queued once within SQS's de-duplication window, whoever sends it."""
    digest = hashlib.sha256(f"{endpoint_name}\n{inference_id}".encode()).hexdigest()
    return digest[:64], digest[:128]


@dataclass(frozen=True)
class AsyncRequest:
    """One accepted InvokeEndpointAsync request (the queue message)."""

    inference_id: str
    endpoint_name: str
    input_location: str
    output_location: str
    failure_location: str
    received_time: float = field(default_factory=time.time)
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    request_ttl_seconds: int = DEFAULT_TTL_SECONDS
    invocation_timeout_seconds: int = DEFAULT_INVOCATION_TIMEOUT_SECONDS
    success_topic: str | None = None
    error_topic: str | None = None
    include_response_in: tuple[str, ...] = ()
    region: str = "us-east-1"
    variant_name: str | None = None

    def expired(self, now: float) -> bool:
        """True once the request waited longer than RequestTTLSeconds."""
        return now > self.received_time + self.request_ttl_seconds

    def to_json(self) -> str:
        """The message body."""
        data = dataclasses.asdict(self)
        data["include_response_in"] = list(self.include_response_in)
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> AsyncRequest:
        """Parse a message body; unknown keys (from a newer writer) are ignored."""
        data: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["include_response_in"] = tuple(kwargs.get("include_response_in") or ())
        return cls(**kwargs)


@dataclass(frozen=True)
class Outcome:
    """How a request ended; recorded durably before its notification is published.

    ``event_time`` is fixed when the outcome is first recorded, so a notification published again
    after a crash is byte-for-byte the same message.
    """

    status: str  # "Completed" | "Failed"
    location: str
    content_type: str
    event_time: float
    failure_reason: str | None = None

    @property
    def succeeded(self) -> bool:
        """True for a Completed request."""
        return self.status == "Completed"

    def to_json(self) -> str:
        """Serialised form for a state store."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Outcome:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))

"""Data capture (``DataCaptureConfig``): sampled requests and responses as SageMaker capture files.

Layout and record shape are SageMaker's, so Model Monitor style readers work unchanged::

    <DestinationS3Uri>/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/<MM-SS-mmm>-<uuid>.jsonl

    {"captureData": {"endpointInput":  {"observedContentType": "text/csv", "mode": "INPUT",
                                        "data": "1,2,3", "encoding": "CSV"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "{...}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceId": "<InferenceId if given>",
                       "inferenceTime": "2026-11-23T09:00:00Z"},
     "eventVersion": "0"}

* ``CaptureOptions``: ``Input`` / ``Output`` / ``InputAndOutput`` choose which halves are written.
* ``CaptureContentTypeHeader``: a body whose content type is listed in ``CsvContentTypes`` is written as
  text with encoding ``CSV``, in ``JsonContentTypes`` as ``JSON``; anything else (and everything when the
  header is absent, as in SageMaker) as ``BASE64``.
* ``InitialSamplingPercentage``: each request is captured with that probability.

The request path only builds the record and puts it on a bounded queue (:meth:`CaptureWriter.submit`
never blocks; a full queue drops the record and counts it). A background thread writes one object per
(variant, hour) batch every ``flush_interval`` seconds to ``file://`` or ``s3://`` destinations.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from common import s3, uris

log = logging.getLogger(__name__)

CAPTURE_MODES = ("Input", "Output", "InputAndOutput")


@dataclass(frozen=True)
class CapturePolicy:
    """A parsed ``DataCaptureConfig``."""

    destination: str
    sampling_percentage: int
    capture_input: bool
    capture_output: bool
    enabled: bool = True
    csv_content_types: tuple[str, ...] = ()
    json_content_types: tuple[str, ...] = ()
    kms_key_id: str | None = None

    @classmethod
    def from_request(cls, config: dict[str, Any]) -> CapturePolicy:
        """Parse the botocore ``DataCaptureConfig`` shape (see :func:`validate_data_capture_config`)."""
        modes = {opt.get("CaptureMode") for opt in config.get("CaptureOptions", [])}
        header = config.get("CaptureContentTypeHeader") or {}
        return cls(
            destination=str(config["DestinationS3Uri"]).rstrip("/"),
            sampling_percentage=int(config["InitialSamplingPercentage"]),
            capture_input=bool(modes & {"Input", "InputAndOutput"}),
            capture_output=bool(modes & {"Output", "InputAndOutput"}),
            enabled=bool(config.get("EnableCapture", True)),
            csv_content_types=tuple(_media_type(t) for t in header.get("CsvContentTypes", [])),
            json_content_types=tuple(_media_type(t) for t in header.get("JsonContentTypes", [])),
            kms_key_id=config.get("KmsKeyId") or None,
        )

    def sampled(self, draw: float | None = None) -> bool:
        """Whether to capture one request; ``draw`` is a uniform number in [0, 1) (random when None)."""
        if not self.enabled or self.sampling_percentage <= 0:
            return False
        if self.sampling_percentage >= 100:
            return True
        return (random.random() if draw is None else draw) * 100.0 < self.sampling_percentage

    def encoding_for(self, content_type: str | None) -> str:
        """``CSV``, ``JSON`` or ``BASE64`` for a body of ``content_type``."""
        media = _media_type(content_type or "")
        if media and media in self.csv_content_types:
            return "CSV"
        if media and media in self.json_content_types:
            return "JSON"
        return "BASE64"

    def describe(self) -> dict[str, Any]:
        """DescribeEndpoint's ``DataCaptureConfigSummary``."""
        return {
            "EnableCapture": self.enabled,
            "CaptureStatus": "Started" if self.enabled else "Stopped",
            "CurrentSamplingPercentage": self.sampling_percentage,
            "DestinationS3Uri": self.destination,
            "KmsKeyId": self.kms_key_id or "",
        }


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def validate_data_capture_config(config: Any, member: str = "DataCaptureConfig") -> list[str]:
    """Problems with a ``DataCaptureConfig`` (empty when valid); messages name the member.

    Destinations may be ``s3://bucket/prefix`` (any S3, ``AWS_ENDPOINT_URL`` honoured) or
    ``file:///absolute/path`` (local runs).
    """
    if not isinstance(config, dict):
        return [f"{member} must be a structure"]
    problems: list[str] = []
    pct = config.get("InitialSamplingPercentage")
    if not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
        problems.append(
            f"Value '{pct}' at '{member}.initialSamplingPercentage' failed to satisfy constraint: "
            "Member must have value between 0 and 100"
        )
    uri = config.get("DestinationS3Uri")
    if not isinstance(uri, str) or len(uri) > 512:
        problems.append(
            f"Value at '{member}.destinationS3Uri' failed to satisfy constraint: "
            "Member must have length less than or equal to 512"
        )
    else:
        if uri.startswith(("s3://", "https://")):
            try:
                uris.split_s3_location(uri)
            except uris.UriError:
                problems.append(f"{member}.DestinationS3Uri {uri!r} names no bucket")
        elif uris.is_file(uri):
            if not _absolute_file_uri(uri):
                problems.append(f"{member}.DestinationS3Uri {uri!r} must be an absolute file:// path")
        else:
            problems.append(
                f"Value '{uri}' at '{member}.destinationS3Uri' failed to satisfy constraint: "
                "Member must satisfy regular expression pattern: (https|s3|file)://([^/])/?(.*)"
            )
    options = config.get("CaptureOptions")
    if not isinstance(options, list) or not 1 <= len(options) <= 32:
        problems.append(f"{member}.CaptureOptions must list 1 to 32 options")
    else:
        for i, option in enumerate(options, 1):
            mode = option.get("CaptureMode") if isinstance(option, dict) else None
            if mode not in CAPTURE_MODES:
                problems.append(
                    f"Value '{mode}' at '{member}.captureOptions.{i}.member.captureMode' failed to satisfy "
                    f"constraint: Member must satisfy enum value set: [{', '.join(CAPTURE_MODES)}]"
                )
    header = config.get("CaptureContentTypeHeader")
    if header is not None:
        if not isinstance(header, dict):
            problems.append(f"{member}.CaptureContentTypeHeader must be a structure")
        else:
            for key in ("CsvContentTypes", "JsonContentTypes"):
                types = header.get(key)
                if types is None:
                    continue
                if (
                    not isinstance(types, list)
                    or not 1 <= len(types) <= 10
                    or not all(isinstance(t, str) and 1 <= len(t) <= 256 for t in types)
                ):
                    problems.append(
                        f"{member}.CaptureContentTypeHeader.{key} must list 1 to 10 content types"
                    )
    enable = config.get("EnableCapture")
    if enable is not None and not isinstance(enable, bool):
        problems.append(f"{member}.EnableCapture must be a boolean")
    return problems


def _payload(body: bytes, content_type: str | None, mode: str, policy: CapturePolicy) -> dict[str, Any]:
    encoding = policy.encoding_for(content_type)
    data: str
    if encoding != "BASE64":
        try:
            data = body.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "BASE64"
    if encoding == "BASE64":
        data = base64.b64encode(body).decode("ascii")
    return {"observedContentType": content_type or "", "mode": mode, "data": data, "encoding": encoding}


def capture_record(
    policy: CapturePolicy,
    *,
    input_body: bytes,
    input_content_type: str | None,
    output_body: bytes | None,
    output_content_type: str | None,
    inference_time: datetime,
    event_id: str | None = None,
    inference_id: str | None = None,
) -> dict[str, Any]:
    """One capture line (a dict) for a request and its answer, as SageMaker writes it."""
    data: dict[str, Any] = {}
    if policy.capture_input:
        data["endpointInput"] = _payload(input_body, input_content_type, "INPUT", policy)
    if policy.capture_output and output_body is not None:
        data["endpointOutput"] = _payload(output_body, output_content_type, "OUTPUT", policy)
    metadata: dict[str, Any] = {"eventId": event_id or str(uuid.uuid4())}
    if inference_id:
        metadata["inferenceId"] = inference_id
    metadata["inferenceTime"] = inference_time.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"captureData": data, "eventMetadata": metadata, "eventVersion": "0"}


def capture_key(endpoint: str, variant: str, when: datetime, unique: str | None = None) -> str:
    """The object key under the destination for a batch whose first record is at ``when``."""
    when = when.astimezone(timezone.utc)
    name = f"{when:%M-%S}-{when.microsecond // 1000:03d}-{unique or uuid.uuid4()}.jsonl"
    return f"{endpoint}/{variant}/{when:%Y/%m/%d/%H}/{name}"


@dataclass
class CaptureStats:
    """Counters of the writer (``/metrics``)."""

    submitted: int = 0
    written: int = 0
    dropped: int = 0
    failed: int = 0
    objects: int = 0


@dataclass
class _Item:
    destination: str
    kms_key_id: str | None
    endpoint: str
    variant: str
    when: datetime
    record: dict[str, Any] | Callable[[], dict[str, Any]]

    def line(self) -> bytes:
        record = self.record() if callable(self.record) else self.record
        return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class CaptureWriter:
    """Batches capture lines in memory and writes them from a background thread.

    ``s3_client_factory`` builds the boto3 S3 client on first use (default :func:`common.s3.client`, which
    honours ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``).
    """

    def __init__(
        self,
        *,
        flush_interval: float = 1.0,
        max_batch: int = 1000,
        max_queue: int = 10000,
        s3_client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.flush_interval = flush_interval
        self.max_batch = max_batch
        self.stats = CaptureStats()
        self._queue: queue.Queue[_Item | None] = queue.Queue(maxsize=max_queue)
        self._s3_factory = s3_client_factory
        self._s3: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0

    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
                self._thread.start()

    def submit(
        self,
        policy: CapturePolicy,
        endpoint: str,
        variant: str,
        record: dict[str, Any] | Callable[[], dict[str, Any]],
        when: datetime | None = None,
    ) -> bool:
        """Queue one record (or a function that builds it, run on the writer thread); never blocks.

        Returns False when the record was dropped because the queue is full.
        """
        item = _Item(
            policy.destination,
            policy.kms_key_id,
            endpoint,
            variant,
            when or datetime.now(timezone.utc),
            record,
        )
        with self._lock:
            self._pending += 1
            self.stats.submitted += 1
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            with self._lock:
                self._pending -= 1
                self.stats.submitted -= 1
                self.stats.dropped += 1
                self._idle.notify_all()
            return False
        if self._thread is None:
            self.start()
        return True

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the thread."""
        thread = self._thread
        if thread is None:
            return
        self.flush(timeout)
        self._queue.put(None)
        thread.join(timeout)
        self._thread = None

    # -- background thread -----------------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=self.flush_interval)
            except queue.Empty:
                continue
            if first is None:
                break
            items = [first]
            deadline = time.monotonic() + self.flush_interval
            while len(items) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = (
                        self._queue.get(timeout=max(0.0, remaining))
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            self._write_all(items)

    def _write_all(self, items: list[_Item]) -> None:
        groups: dict[tuple[str, str, str, str], list[_Item]] = {}
        for item in items:
            hour = item.when.astimezone(timezone.utc).strftime("%Y%m%d%H")
            groups.setdefault((item.destination, item.endpoint, item.variant, hour), []).append(item)
        for (destination, endpoint, variant, _), group in groups.items():
            key = capture_key(endpoint, variant, group[0].when)
            try:
                body = b"".join(item.line() for item in group)
                self._put(destination, key, body, group[0].kms_key_id)
                self.stats.written += len(group)
                self.stats.objects += 1
            except Exception:  # noqa: BLE001 - a failed write loses that batch, never the platform
                self.stats.failed += len(group)
                log.exception(
                    "data capture: could not write %d records to %s/%s", len(group), destination, key
                )
            finally:
                with self._lock:
                    self._pending -= len(group)
                    self._idle.notify_all()

    def _put(self, destination: str, key: str, body: bytes, kms_key_id: str | None) -> None:
        if uris.is_file(destination):
            path = uris.file_path(destination) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(body)
            os.replace(tmp, path)
            return
        if destination.startswith(("s3://", "https://")):
            bucket, prefix = uris.split_s3_location(destination)
            prefix = prefix.strip("/")
            if self._s3 is None:
                self._s3 = self._s3_factory() if self._s3_factory is not None else s3.client()
            extra: dict[str, Any] = {}
            if kms_key_id:
                extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": kms_key_id}
            self._s3.put_object(
                Bucket=bucket,
                Key=f"{prefix}/{key}" if prefix else key,
                Body=body,
                ContentType="application/jsonlines",
                **extra,
            )
            return
        raise ValueError(f"unsupported capture destination {destination!r}")


def _absolute_file_uri(uri: str) -> bool:
    try:
        return uris.file_path(uri).is_absolute()
    except uris.UriError:
        return False

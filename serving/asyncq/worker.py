"""The async worker: lease a request, stream its input to the model server, store the result, notify.

The same code runs on every backend (:class:`~serving.asyncq.backends.QueueBackend`). Processing one
lease is a sequence of steps each of which is either idempotent or guarded by durable state, so a
worker killed at any point (SIGKILL included) can simply be run again on the redelivered message:

1. **Outcome known?** The state store has the recorded outcome → go to 4. On a redelivery without one,
   HEAD the output and failure objects: one exists → that is the outcome (the previous attempt died
   between writing it and recording it).
2. **Decide.** Expired (RequestTTLSeconds) → failure. Else read the input (streamed) and POST it to
   ``/invocations`` (streamed), honouring InvocationTimeoutSeconds; 2xx → output, non-2xx or timeout →
   failure. The model server being unreachable is *not* an outcome: the lease is released and retried.
3. **Write, then record.** The object is written atomically (same key again = replace), then the
   outcome is recorded in the state store.
4. **Notify once.** If the state store has no "notified" mark: publish to SNS, then write the mark.
5. **Ack.**

The only window for a repeated notification is a SIGKILL of *this* process between SNS accepting the
Publish and the mark being committed (step 4); see docs/async.md. A graceful stop (SIGTERM, or the
parent dying when ``exit_with_parent``) lets steps 3–5 finish and hands unfinished invocations back
to the queue at once.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import IO
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common.http import DeadlineConnection, invocation_headers
from serving.asyncq.backends import Lease, QueueBackend
from serving.asyncq.notify import SnsPublisher, build_message, dedup_id, embeds_response, topic_for
from serving.asyncq.objects import InputStream, ObjectError, ObjectStore
from serving.asyncq.request import AsyncRequest, Outcome, iso_millis

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: Model error bodies kept for the failure object / message (the rest is dropped).
_MAX_ERROR_BODY = 1 << 20
_SPOOL_IN_MEMORY = 8 << 20


class WorkerSettings(BaseSettings):
    """Tunables of one worker process (env ``SELFMAKER_ASYNC_*``)."""

    model_config = SettingsConfigDict(env_prefix="SELFMAKER_ASYNC_", extra="ignore")

    concurrency: int = Field(1, ge=1, le=1000, description="MaxConcurrentInvocationsPerInstance")
    visibility_timeout: float = Field(
        60.0, gt=0, description="lease length; extended while a request is worked on"
    )
    wait_seconds: float = Field(0.5, ge=0, description="receive long-poll")
    max_attempts: int = Field(
        10, ge=1, description="deliveries before an infrastructure error becomes a failure"
    )
    retry_delay: float = Field(1.0, ge=0, description="base back-off before a retried delivery")
    stop_grace: float = Field(
        60.0, ge=0, description="seconds a graceful stop waits for results being stored"
    )
    connect_timeout: float = Field(10.0, gt=0)


class _Retry(Exception):
    """Not an outcome: give the message back to the queue and try again later."""


class _Abort(Exception):
    """The lease was lost or the worker is stopping: leave the message to its next holder."""


@dataclass
class _Job:
    lease: Lease
    phase: str = "deciding"  # deciding -> storing (write / record / notify / ack)
    abandoned: bool = False
    lost: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: set when the job is over (done, retried or handed back): a twin delivery waits for it
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Decision:
    outcome: Outcome
    body: IO[bytes]
    object_content_type: str


class _CountingReader:
    """File-like over the input that tags read errors (so they are retried, not blamed on the model)."""

    def __init__(self, stream: InputStream) -> None:
        self._stream = stream
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except (OSError, BotoCoreError, ValueError) as exc:
            self.error = exc
            raise


def _status_kind(status: int) -> str:
    return "client" if 400 <= status < 500 else "server"


def _snippet(body: bytes, limit: int = 1000) -> str:
    return body[:limit].decode("utf-8", "replace").replace("\r", " ").replace("\n", " ").strip()


class AsyncWorker:
    """Drains one queue into one model server with ``settings.concurrency`` parallel invocations."""

    def __init__(
        self,
        queue: QueueBackend,
        model_url: str | Callable[[], str],
        *,
        settings: WorkerSettings | None = None,
        objects: ObjectStore | None = None,
        publisher: SnsPublisher | None = None,
    ) -> None:
        self.queue = queue
        self.settings = settings or WorkerSettings()
        self._model_url = model_url
        self.objects = objects or ObjectStore()
        self.publisher = publisher or SnsPublisher()
        self._stop = threading.Event()
        self._heartbeat_stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._jobs: dict[int, _Job] = {}
        self._jobs_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.processed = 0
        self.failed = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the processing threads and the lease heartbeat."""
        for i in range(self.settings.concurrency):
            t = threading.Thread(target=self._loop, name=f"asyncq-{self.queue.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        hb = threading.Thread(target=self._heartbeat, name=f"asyncq-{self.queue.name}-heartbeat", daemon=True)
        hb.start()
        self._heartbeat_thread = hb

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def stop(self, grace: float | None = None) -> None:
        """Graceful stop: take nothing new, hand back requests still being decided, let results being
        stored finish (up to ``grace`` seconds), then return."""
        self._stop.set()
        with self._jobs_lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            with job.lock:
                if job.phase == "deciding":
                    job.abandoned = True
            if job.abandoned and self.queue.release(job.lease):
                log.info("handed %s back to the queue", job.lease.request.inference_id)
        deadline = time.monotonic() + (self.settings.stop_grace if grace is None else grace)
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        # Leases of results still being stored stay extended until here.
        self._heartbeat_stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(timeout=5)

    def run_until(self, stop: threading.Event) -> None:
        """Run until ``stop`` is set, then stop gracefully."""
        self.start()
        stop.wait()
        self.stop()

    # ------------------------------------------------------------------ loops

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                leases = self.queue.receive(1, self.settings.visibility_timeout, self.settings.wait_seconds)
            except Exception:  # a transient backend error must not kill the worker thread
                log.exception("receive from %s failed", self.queue.name)
                self._stop.wait(self.settings.retry_delay)
                continue
            for lease in leases:
                self.handle(lease)

    def _heartbeat(self) -> None:
        period = max(0.05, min(self.settings.visibility_timeout / 3.0, 10.0))
        while not self._heartbeat_stop.wait(period):
            with self._jobs_lock:
                jobs = [job for job in self._jobs.values() if not job.abandoned]
            for job in jobs:
                try:
                    if not self.queue.extend(job.lease, self.settings.visibility_timeout):
                        job.lost = True
                except Exception:
                    log.exception("extending the lease of %s failed", job.lease.request.inference_id)

    # ------------------------------------------------------------------ one request

    def handle(self, lease: Lease) -> None:
        """Process one leased request to completion, or give it back to the queue."""
        job = _Job(lease)
        key = id(job)
        request = lease.request
        with self._jobs_lock:
            first = next(
                (j for j in self._jobs.values() if j.lease.request.inference_id == request.inference_id), None
            )
            self._jobs[key] = job
        if first is not None:
            # The same InferenceId delivered twice at once (an SQS standard queue, a client that sent it
            # again): this delivery waits, its lease kept by the heartbeat, until the first one is done,
            # then finds its recorded outcome and notified mark instead of invoking and notifying again.
            log.info(
                "%s is being processed already; delivery %d waits for it",
                request.inference_id,
                lease.receive_count,
            )
            first.done.wait()
            if job.abandoned:  # a graceful stop handed it back meanwhile
                with self._jobs_lock:
                    self._jobs.pop(key, None)
                job.done.set()
                return
        try:
            self._process(job)
        except _Abort as exc:
            log.info("left %s to its next delivery: %s", request.inference_id, exc)
        except _Retry as exc:
            delay = min(60.0, self.settings.retry_delay * (2 ** max(0, lease.receive_count - 1)))
            log.warning(
                "retrying %s in %.1fs (delivery %d): %s",
                request.inference_id,
                delay,
                lease.receive_count,
                exc,
            )
            if not job.abandoned:
                self.queue.release(lease, delay)
        except Exception:
            delay = min(60.0, self.settings.retry_delay * (2 ** max(0, lease.receive_count - 1)))
            log.exception("processing %s failed; retrying in %.1fs", request.inference_id, delay)
            if not job.abandoned:
                self.queue.release(lease, delay)
        finally:
            with self._jobs_lock:
                self._jobs.pop(key, None)
            job.done.set()

    def _process(self, job: _Job) -> None:
        lease = job.lease
        request = lease.request
        began = time.perf_counter()
        marks: dict[str, float] = {}
        outcome = self._known_outcome(lease)
        body: bytes | None = None
        if outcome is None:
            try:
                decision = self._decide(job)
                marks["decide"] = time.perf_counter()
            except _Retry as exc:
                if lease.receive_count < self.settings.max_attempts:
                    raise
                decision = self._failure(
                    request, f"InternalFailure: gave up after {lease.receive_count} attempts: {exc}"
                )
            try:
                self._enter_storing(job)
                event_meta = {
                    "inference-id": request.inference_id,
                    "event-time": repr(decision.outcome.event_time),
                }
                if decision.outcome.failure_reason:
                    event_meta["failure-reason"] = decision.outcome.failure_reason
                decision.body.seek(0)
                self.objects.write(
                    decision.outcome.location,
                    decision.body,
                    content_type=decision.object_content_type,
                    metadata=event_meta,
                )
                marks["write"] = time.perf_counter()
                outcome = decision.outcome
                self.queue.state.put(self.queue.name, request.inference_id, "outcome", outcome.to_json())
                marks["record"] = time.perf_counter()
                if embeds_response(request, outcome):
                    decision.body.seek(0)
                    body = decision.body.read(128 * 1024 + 1)
            finally:
                decision.body.close()
            if outcome.succeeded:
                self.processed += 1
            else:
                self.failed += 1
        else:
            self._enter_storing(job)
        self._notify(job, outcome, body)
        marks["notify"] = time.perf_counter()
        acked = self.queue.ack(lease)
        if log.isEnabledFor(logging.DEBUG):
            steps, last = [], began
            for step, at in marks.items():
                steps.append(f"{step} {1000 * (at - last):.1f}")
                last = at
            log.debug(
                "%s %s in %.1f ms (%s, ack %.1f)",
                request.inference_id,
                outcome.status,
                1000 * (time.perf_counter() - began),
                ", ".join(steps),
                1000 * (time.perf_counter() - last),
            )
        if not acked:
            log.info(
                "ack of %s lost its lease (another worker finishes it idempotently)", request.inference_id
            )

    def _enter_storing(self, job: _Job) -> None:
        with job.lock:
            if job.abandoned:
                raise _Abort("worker stopping")
            if job.lost or not self.queue.extend(job.lease, self.settings.visibility_timeout):
                raise _Abort("lease lost")
            job.phase = "storing"

    def _known_outcome(self, lease: Lease) -> Outcome | None:
        request = lease.request
        recorded = self.queue.state.get(self.queue.name, request.inference_id, "outcome")
        if recorded is not None:
            return Outcome.from_json(recorded)
        if lease.receive_count <= 1:
            return None
        # A redelivery: an earlier attempt may have died after writing the object but before recording it.
        for location, status in (
            (request.output_location, "Completed"),
            (request.failure_location, "Failed"),
        ):
            info = self.objects.head(location)
            if info is None:
                continue
            meta = info.metadata
            try:
                event_time = float(meta.get("event-time", ""))
            except ValueError:
                event_time = time.time()
            reason = meta.get("failure-reason") or (
                None if status == "Completed" else "ClientError: see the failure object"
            )
            outcome = Outcome(
                status, location, info.content_type or "application/octet-stream", event_time, reason
            )
            self.queue.state.put(self.queue.name, request.inference_id, "outcome", outcome.to_json())
            return outcome
        return None

    # ------------------------------------------------------------------ deciding

    def _failure(
        self, request: AsyncRequest, reason: str, body: bytes | None = None, content_type: str | None = None
    ) -> _Decision:
        spool: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - closed by _process
        spool.write(body if body is not None else reason.encode("utf-8"))
        ctype = content_type if body is not None and content_type else "text/plain; charset=utf-8"
        outcome = Outcome("Failed", request.failure_location, ctype, time.time(), reason)
        return _Decision(outcome, spool, ctype)

    def _decide(self, job: _Job) -> _Decision:
        request = job.lease.request
        now = time.time()
        if request.expired(now):
            return self._failure(
                request,
                f"ClientError: Request expired: received at {iso_millis(request.received_time)}, "
                "not processed within "
                f"RequestTTLSeconds={request.request_ttl_seconds}.",
            )
        try:
            stream = self.objects.open(request.input_location)
        except ObjectError as exc:
            if exc.transient:
                raise _Retry(str(exc)) from exc
            return self._failure(request, f"ClientError: {exc}")
        with stream:
            return self._invoke(job, request, stream)

    def _invoke(self, job: _Job, request: AsyncRequest, stream: InputStream) -> _Decision:
        url = self._model_url() if callable(self._model_url) else self._model_url
        parsed = urlparse(url)
        timeout = float(request.invocation_timeout_seconds)
        conn = DeadlineConnection(
            parsed.hostname or "127.0.0.1",
            parsed.port or 80,
            connect_timeout=self.settings.connect_timeout,
            deadline=timeout,
            blocksize=_CHUNK,
        )
        headers = invocation_headers(
            request.content_type,
            request.accept,
            custom_attributes=request.custom_attributes,
            inference_id=request.inference_id,
        )
        if stream.length is not None:
            headers["Content-Length"] = str(stream.length)
        reader = _CountingReader(stream)
        path = (parsed.path.rstrip("/") or "") + "/invocations"
        try:
            response: http.client.HTTPResponse | None = None
            try:
                # after connecting, only the deadline bounds the call (InvocationTimeoutSeconds)
                conn.connect()
            except OSError as exc:
                raise _Retry(f"model server {url} unreachable: {exc}") from exc
            try:
                conn.request("POST", path, body=reader, headers=headers, encode_chunked=stream.length is None)
            except (OSError, http.client.HTTPException, BotoCoreError, ValueError) as exc:
                if reader.error is not None:
                    raise _Retry(f"reading input {request.input_location} failed: {reader.error}") from exc
                if conn.timed_out:
                    return self._timeout(request)
                # The server may have answered early (e.g. 413) and closed: read that answer if there is one.
                try:
                    response = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    raise _Retry(f"model server {url} dropped the request: {exc}") from exc
            try:
                if response is None:
                    response = conn.getresponse()
                status = response.status
                ctype = response.getheader("Content-Type") or request.accept or "application/octet-stream"
                if 200 <= status < 300:
                    spool: IO[bytes] = SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115
                    try:
                        while chunk := response.read(_CHUNK):
                            spool.write(chunk)
                    except BaseException:
                        spool.close()
                        raise
                    outcome = Outcome("Completed", request.output_location, ctype, time.time())
                    return _Decision(outcome, spool, ctype)
                body = response.read(_MAX_ERROR_BODY)
            except (OSError, http.client.HTTPException) as exc:
                if conn.timed_out:
                    return self._timeout(request)
                raise _Retry(f"model server {url} failed mid-response: {exc}") from exc
            reason = (
                f"ClientError: Received {_status_kind(status)} error ({status}) from model with message "
                f'"{_snippet(body)}". See the endpoint logs for more information.'
            )
            return self._failure(request, reason, body, ctype)
        finally:
            conn.finish()

    def _timeout(self, request: AsyncRequest) -> _Decision:
        return self._failure(
            request,
            'ClientError: Received server error (0) from model with message "Your invocation timed out while '
            "waiting for a response from container primary "
            f'(InvocationTimeoutSeconds={request.invocation_timeout_seconds})."',
        )

    # ------------------------------------------------------------------ notifying

    def _notify(self, job: _Job, outcome: Outcome, body: bytes | None) -> None:
        request = job.lease.request
        topic = topic_for(request, outcome)
        if topic is None:
            return
        state = self.queue.state
        if state.get(self.queue.name, request.inference_id, "notified") is not None:
            return
        if body is None and embeds_response(request, outcome):
            try:
                body = self.objects.read_bytes(outcome.location, 128 * 1024 + 1)
            except ObjectError:
                body = None
        message = build_message(request, outcome, body)
        try:
            message_id = self.publisher.publish(
                topic, message, deduplication_id=dedup_id(request, outcome), group_id=request.endpoint_name
            )
        except (ClientError, BotoCoreError) as exc:
            if job.lease.receive_count >= self.settings.max_attempts:
                log.error(
                    "giving up notifying %s on %s after %d deliveries: %s",
                    request.inference_id,
                    topic,
                    job.lease.receive_count,
                    exc,
                )
                state.put(self.queue.name, request.inference_id, "notified", json.dumps({"error": str(exc)}))
                return
            raise _Retry(f"publishing to {topic} failed: {exc}") from exc
        # The window between SNS accepting the message and this commit is the only place a SIGKILL can
        # cause a second notification (see module docstring).
        state.put(
            self.queue.name,
            request.inference_id,
            "notified",
            json.dumps({"topic": topic, "message_id": message_id}),
        )

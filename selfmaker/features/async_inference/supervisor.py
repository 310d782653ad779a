"""Asynchronous inference on the platform: AsyncInferenceConfig, InvokeEndpointAsync, workers, scale to zero.

* ``CreateEndpointConfig`` with ``AsyncInferenceConfig`` is checked here (:func:`check_config`).
* ``POST /endpoints/{name}/async-invocations`` (:func:`invoke_async`) validates the request, computes the
  output / failure locations, writes the request to the endpoint's durable queue
  (:mod:`serving.asyncq`; SQLite in ``<home>/async/queue.db`` by default, SQS optionally) and only then
  answers 202.
* :class:`AsyncSupervisor` runs one worker process (``python -m serving.asyncq``) per model-server instance
  of every async endpoint, with ``MaxConcurrentInvocationsPerInstance`` parallel invocations; variants with
  ``ManagedInstanceScaling`` ``MinInstanceCount: 0`` stop their model servers after an empty backlog for
  ``SELFMAKER_ASYNC_SCALE_IN_AFTER`` seconds and start one when a request arrives.
* Backlog per endpoint: :meth:`AsyncSupervisor.metrics` (``/metrics``) and :func:`backlog_by_endpoint`
  (``selfmaker status``, read from the queue file without a running platform).

Worker processes watch their stdin: when the platform dies (even by SIGKILL) they stop gracefully —
unfinished invocations go back to the queue at once, results being stored and notified finish — which is
what makes a platform kill produce neither a lost nor a repeated notification (docs/async.md).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import signal
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import boto3
from aiohttp import web
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from common import uris
from common.childenv import aws_credentials, child_environment
from selfmaker.api.common import read_limited
from selfmaker.api.metrics import family
from selfmaker.api.validation import check_invoke_request
from selfmaker.errors import ValidationError, ValidationException
from serving.asyncq import QueueBackend, SqliteQueue, invoke
from serving.asyncq.backends import open_queue
from serving.asyncq.request import ERROR_TOPIC, SUCCESS_TOPIC

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime, Instance, InvocationRecord, VariantRuntime
    from selfmaker.services import Services

log = logging.getLogger(__name__)

#: inline InvokeEndpointAsync Body limit (newer API versions)
MAX_INLINE_BODY = invoke.MAX_INLINE_BODY


class AsyncInferenceSettings(BaseSettings):
    """Settings of the async-inference extension (environment ``SELFMAKER_ASYNC_*``)."""

    model_config = SettingsConfigDict(env_prefix="SELFMAKER_ASYNC_", extra="ignore")

    backend: Literal["sqlite", "sqs"] = "sqlite"
    #: SQS: queues are ``<prefix><endpoint name>``, created on first use
    sqs_queue_prefix: str = "selfmaker-async-"
    #: SQS: where per-request state lives (``s3://bucket/prefix``, or ``sqlite:<path>``)
    state: str | None = None
    #: seconds a leased request stays hidden from other workers (extended while it is worked on)
    visibility_timeout: float = Field(60.0, gt=0)
    #: seconds of empty backlog after which a variant with MinInstanceCount 0 stops its model servers
    scale_in_after: float = Field(300.0, ge=0)
    #: seconds between two passes of the supervisor
    interval: float = Field(0.25, gt=0)
    #: seconds a stopping worker may spend finishing results being stored
    stop_grace: float = Field(15.0, ge=0)
    #: seconds a finished request stays in the SQLite queue (a repeated InferenceId within this time is
    #: answered from the record instead of queued again) with its stored inline Body; pruned after
    retention: float = Field(86400.0, gt=0)


# --------------------------------------------------------------------------- config


def _uri_ok(uri: str) -> bool:
    try:
        (uris.split_s3 if uris.is_s3(uri) else uris.file_path)(uri)
    except uris.UriError:
        return False
    return True


def check_config(platform: Services, params: dict[str, Any]) -> list[str]:
    """Validate ``AsyncInferenceConfig`` of a CreateEndpointConfig request; claim the feature."""
    config = params.get("AsyncInferenceConfig")
    if not config:
        return []
    output = config.get("OutputConfig") or {}
    if not output.get("S3OutputPath"):
        raise ValidationException(
            "1 validation error detected: Value null at 'asyncInferenceConfig.outputConfig."
            "s3OutputPath' failed to satisfy constraint: Member must not be null"
        )
    for key in ("S3OutputPath", "S3FailurePath"):
        value = output.get(key)
        if value is not None and not _uri_ok(value):
            raise ValidationException(
                f"AsyncInferenceConfig.OutputConfig.{key} must be an s3:// or file:// URI, got '{value}'."
            )
    notification = output.get("NotificationConfig") or {}
    for key in ("SuccessTopic", "ErrorTopic"):
        topic = notification.get(key)
        if topic and not invoke.topic_ok(topic):
            raise ValidationException(
                f"AsyncInferenceConfig.OutputConfig.NotificationConfig.{key} '{topic}' is not "
                "an SNS topic ARN."
            )
    for value in notification.get("IncludeInferenceResponseIn") or []:
        if not invoke.include_ok(value):
            raise ValidationException(
                f"IncludeInferenceResponseIn value '{value}' must be one of {SUCCESS_TOPIC}, {ERROR_TOPIC}."
            )
    for variant in params.get("ProductionVariants") or []:
        if variant.get("ServerlessConfig"):
            raise ValidationException(
                f"Variant '{variant.get('VariantName')}': AsyncInferenceConfig cannot be used "
                "with a serverless variant."
            )
    if params.get("ShadowProductionVariants"):
        raise ValidationException("AsyncInferenceConfig cannot be combined with ShadowProductionVariants.")
    return ["AsyncInferenceConfig"]


def _concurrency(config: dict[str, Any], platform: Services) -> int:
    value = (config.get("ClientConfig") or {}).get("MaxConcurrentInvocationsPerInstance")
    if value:
        return int(value)
    # "SageMaker chooses an optimal value": one per model-server worker process.
    return max(1, int(platform.settings.model_server_workers))


def _min_max(variant: dict[str, Any]) -> tuple[int, int]:
    managed = variant.get("ManagedInstanceScaling") or {}
    initial = int(variant.get("InitialInstanceCount") or 1)
    if managed.get("Status") != "ENABLED":
        return initial, initial
    low = int(managed.get("MinInstanceCount", initial))
    high = int(managed.get("MaxInstanceCount", max(initial, low, 1)))
    return low, max(high, 1)


# --------------------------------------------------------------------------- state per endpoint


@dataclass
class AsyncEndpoint:
    """The async side of one live endpoint deployment."""

    name: str
    config: dict[str, Any]
    concurrency: int
    idle_since: float | None = None
    backlog: int = 0
    oldest_age: float = 0.0
    scaling: set[str] = field(default_factory=set)


@dataclass
class WorkerProcess:
    """One ``python -m serving.asyncq`` process bound to one model-server instance."""

    instance_id: str
    endpoint: str
    url: str
    process: asyncio.subprocess.Process

    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, grace: float) -> None:
        """SIGTERM (graceful: hands back unfinished requests), SIGKILL after ``grace`` seconds."""
        if self.process.returncode is not None:
            return
        try:
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), timeout=grace)
        except ProcessLookupError:
            return
        except asyncio.TimeoutError:
            log.warning("async worker %s did not stop in %ss; killing it", self.instance_id, grace)
            self.process.kill()
            await self.process.wait()


class AsyncSupervisor:
    """Queues, worker processes and scale-to-zero of every async endpoint of one platform."""

    def __init__(self, platform: Services, settings: AsyncInferenceSettings) -> None:
        self.platform = platform
        self.settings = settings
        self.dir = platform.settings.home / "async"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.queue_path = self.dir / "queue.db"
        self._queues: dict[str, QueueBackend] = {}
        self.workers: dict[str, WorkerProcess] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._next_prune = 0.0

    # ---- queues -------------------------------------------------------------------------------

    def queue_spec(self, endpoint: str) -> list[str]:
        """``--queue``/``--state`` arguments of a worker of ``endpoint``."""
        if self.settings.backend == "sqlite":
            return ["--queue", f"sqlite:{self.queue_path}"]
        queue = self.queue(endpoint)
        url = getattr(queue, "queue_url", "")
        state = self.settings.state or f"sqlite:{self.dir / 'state.db'}"
        return ["--queue", f"sqs:{url}", "--state", state]

    def queue(self, endpoint: str) -> QueueBackend:
        """The queue of ``endpoint`` (opened, and for SQS created, on first use)."""
        queue = self._queues.get(endpoint)
        if queue is None:
            if self.settings.backend == "sqlite":
                queue = SqliteQueue(self.queue_path, endpoint)
            else:
                client = boto3.client("sqs", region_name=self.platform.settings.region)
                url = client.create_queue(QueueName=f"{self.settings.sqs_queue_prefix}{endpoint}"[:80])[
                    "QueueUrl"
                ]
                state = self.settings.state or f"sqlite:{self.dir / 'state.db'}"
                queue = open_queue(f"sqs:{url}", endpoint, state=state)
            self._queues[endpoint] = queue
        return queue

    def forget(self, endpoint: str) -> None:
        """DeleteEndpoint: drop the endpoint's queued and finished requests, their state and the inline
        bodies stored for them, so that a new endpoint of the same name starts empty."""
        queue = self._queues.pop(endpoint, None)
        if (
            queue is None
            and self.settings.backend == "sqlite"
            and endpoint in SqliteQueue.queue_names(self.queue_path)
        ):
            queue = SqliteQueue(self.queue_path, endpoint)
        shutil.rmtree(self.dir / "inputs" / endpoint, ignore_errors=True)
        if queue is None:  # not an async endpoint (or never opened: SQS queues are opened while live)
            return
        try:
            dropped = queue.backlog()
            queue.purge()
        finally:
            queue.close()
        log.info("endpoint %s deleted: %d unfinished async request(s) dropped", endpoint, dropped)

    def forget_orphans(self) -> None:
        """Queues (SQLite) of endpoints that no longer exist — deleted while the platform was down."""
        if self.settings.backend != "sqlite":
            return
        existing = {record.name for record in self.platform.store.list("endpoint")}
        for name in SqliteQueue.queue_names(self.queue_path):
            if name not in existing:
                self.forget(name)

    def prune(self) -> None:
        """Forget finished requests older than the retention, and the inline bodies stored for them."""
        if self.settings.backend != "sqlite":
            return
        inputs = (self.dir / "inputs").resolve()
        for name in SqliteQueue.queue_names(self.queue_path):
            queue = self.queue(name)
            assert isinstance(queue, SqliteQueue)
            for request in queue.prune(self.settings.retention):
                try:
                    path = uris.file_path(request.input_location)
                except uris.UriError:
                    continue  # an s3:// input is the caller's, never ours to delete
                if path.parent.parent == inputs:  # an inline Body we stored
                    path.unlink(missing_ok=True)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the supervision loop (after dropping the queues of endpoints deleted meanwhile)."""
        self.forget_orphans()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="async-supervisor")

    def wake(self) -> None:
        """Run a supervision pass now (a request arrived)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop every worker gracefully (before the platform stops the model servers)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        workers, self.workers = list(self.workers.values()), {}
        await asyncio.gather(*(w.stop(self.settings.stop_grace) for w in workers), return_exceptions=True)
        for queue in self._queues.values():
            queue.close()
        self._queues.clear()

    async def _loop(self) -> None:
        while not self._closing:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.reconcile()
                if time.monotonic() >= self._next_prune:  # at most once a minute (or per retention)
                    self._next_prune = time.monotonic() + min(60.0, self.settings.retention)
                    await asyncio.to_thread(self.prune)
            except Exception:  # noqa: BLE001 - logged; the next pass tries again
                log.exception("async supervision pass failed")

    # ---- reconciliation -----------------------------------------------------------------------

    def _async_runtimes(self) -> list[tuple[EndpointRuntime, AsyncEndpoint]]:
        found = []
        for runtime in list(self.platform.endpoints.live.values()):
            state = runtime.state.get(AsyncEndpoint)
            if isinstance(state, AsyncEndpoint):
                found.append((runtime, state))
        return found

    async def reconcile(self) -> None:
        """One pass: refresh backlogs, match workers to instances, scale variants to/from zero."""
        wanted: dict[str, tuple[AsyncEndpoint, Instance]] = {}
        now = time.monotonic()
        for runtime, state in self._async_runtimes():
            queue = self.queue(state.name)
            state.backlog = await asyncio.to_thread(queue.backlog)
            if isinstance(queue, SqliteQueue):
                state.oldest_age = await asyncio.to_thread(queue.oldest_age)
            if state.backlog:
                state.idle_since = None
            elif state.idle_since is None:
                state.idle_since = now
            for variant in runtime.variants.values():
                for instance in variant.pool.instances:
                    wanted[instance.instance_id] = (state, instance)
                self._scale(runtime, state, variant, now)
        for instance_id, worker in list(self.workers.items()):
            if instance_id not in wanted or not worker.alive():
                self.workers.pop(instance_id, None)
                if worker.alive():
                    self._spawn(worker.stop(self.settings.stop_grace))
                else:
                    log.warning("async worker of %s exited with %s", instance_id, worker.process.returncode)
        for instance_id, (state, instance) in wanted.items():
            if instance_id not in self.workers and instance.handle.alive() and not instance.draining:
                self.workers[instance_id] = await self._start_worker(state, instance)

    def _scale(
        self, runtime: EndpointRuntime, state: AsyncEndpoint, variant: VariantRuntime, now: float
    ) -> None:
        low, high = _min_max(variant.config)
        managed = (variant.config.get("ManagedInstanceScaling") or {}).get("Status") == "ENABLED"
        pool = variant.pool
        if variant.name in state.scaling:
            return
        target: int | None = None
        if state.backlog and pool.size == 0:
            target = max(1, low)  # HasBacklogWithoutCapacity: start capacity
        elif (
            managed
            and pool.size > low
            and not state.backlog
            and state.idle_since is not None
            and now - state.idle_since >= self.settings.scale_in_after
        ):
            target = low  # idle: back to the minimum (zero with MinInstanceCount 0)
        elif managed and state.backlog and high > pool.size:
            # target tracking on ApproximateBacklogSizePerInstance (goal: one round of invocations each)
            need = math.ceil(state.backlog / max(1, state.concurrency * 4))
            if need > pool.size:
                target = min(high, need)
        if target is None or target == pool.size:
            return
        state.scaling.add(variant.name)
        log.info(
            "async endpoint %s variant %s: scaling %d -> %d (backlog %d)",
            state.name,
            variant.name,
            pool.size,
            target,
            state.backlog,
        )
        self._spawn(self._scale_to(runtime, state, variant, target))

    async def _scale_to(
        self, runtime: EndpointRuntime, state: AsyncEndpoint, variant: VariantRuntime, target: int
    ) -> None:
        try:
            if target < variant.pool.size:
                # workers first: their in-flight work goes back to the queue before the servers stop
                doomed = [
                    self.workers.pop(i.instance_id)
                    for i in variant.pool.instances
                    if i.instance_id in self.workers
                ]
                await asyncio.gather(
                    *(w.stop(self.settings.stop_grace) for w in doomed), return_exceptions=True
                )
            await variant.pool.scale_to(target)
            variant.pool.desired = target
            self._record_counts(runtime)
        except Exception:  # noqa: BLE001 - logged; the next pass retries
            log.exception("scaling %s/%s to %d failed", state.name, variant.name, target)
        finally:
            state.scaling.discard(variant.name)
            state.idle_since = None if target else state.idle_since
            self.wake()

    def _record_counts(self, runtime: EndpointRuntime) -> None:
        record = self.platform.store.get("endpoint", runtime.name)
        if record is None:
            return
        variants = []
        for summary in record.doc.get("ProductionVariants") or []:
            live = runtime.variants.get(summary.get("VariantName", ""))
            if live is not None:
                summary = {
                    **summary,
                    "CurrentInstanceCount": live.pool.size,
                    "DesiredInstanceCount": live.pool.desired,
                }
            variants.append(summary)
        self.platform.store.update(
            "endpoint", runtime.name, merge={"ProductionVariants": variants}, touch=False
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _start_worker(self, state: AsyncEndpoint, instance: Instance) -> WorkerProcess:
        python = self.platform.settings.python or sys.executable
        cmd = [
            python,
            "-m",
            "serving.asyncq",
            *self.queue_spec(state.name),
            "--name",
            state.name,
            "--model-url",
            instance.url,
            "--concurrency",
            str(state.concurrency),
            "--visibility-timeout",
            str(self.settings.visibility_timeout),
            "--exit-with-parent",
        ]
        log_path = (
            self.platform.settings.logs_dir / "endpoints" / state.name / f"{instance.instance_id}-async.log"
        )
        log_path.parent.mkdir(parents=True, exist_ok=True)
        # the worker reads requests and writes answers in S3 itself: the platform's credentials go along
        env = child_environment(aws_credentials())
        env.setdefault("AWS_DEFAULT_REGION", self.platform.settings.region)
        with open(log_path, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
            )
        log.info(
            "async worker for %s started (pid %s, concurrency %d)",
            instance.instance_id,
            process.pid,
            state.concurrency,
        )
        return WorkerProcess(instance.instance_id, state.name, instance.url, process)

    # ---- observability ------------------------------------------------------------------------

    def metrics(self) -> list[str]:
        """Prometheus lines: backlog, age of the oldest request, capacity, per endpoint."""
        runtimes = self._async_runtimes()
        lines: list[str] = []
        family(
            lines,
            "selfmaker_async_backlog_size",
            "gauge",
            "Requests accepted and not yet finished (ApproximateBacklogSize).",
            [({"endpoint": state.name}, state.backlog) for _, state in runtimes],
        )
        family(
            lines,
            "selfmaker_async_oldest_request_age_seconds",
            "gauge",
            "Age of the oldest unfinished request.",
            [({"endpoint": state.name}, round(state.oldest_age, 3)) for _, state in runtimes],
        )
        family(
            lines,
            "selfmaker_async_has_backlog_without_capacity",
            "gauge",
            "1 when requests wait and no instance runs.",
            [
                (
                    {"endpoint": state.name},
                    1 if state.backlog and not sum(v.pool.size for v in runtime.variants.values()) else 0,
                )
                for runtime, state in runtimes
            ],
        )
        return lines


# --------------------------------------------------------------------------- hooks


def supervisor(platform: Services) -> AsyncSupervisor:
    """The extension's state (created at start-up)."""
    found = platform.features.get(AsyncSupervisor)
    if found is None:
        raise ValidationError("Asynchronous inference is not running on this platform.")
    return found


async def start(platform: Services) -> None:
    """Lifecycle start-up: read settings once, start the supervisor."""
    sup = AsyncSupervisor(platform, AsyncInferenceSettings())
    platform.features.put(sup)
    sup.start()


async def forget(platform: Services, endpoint: str) -> None:
    """Endpoint-deleted hook: drop the endpoint's async queue (no-op for endpoints without one)."""
    sup = platform.features.get(AsyncSupervisor)
    if sup is not None:
        await asyncio.to_thread(sup.forget, endpoint)


async def stop(platform: Services) -> None:
    """Lifecycle shutdown: stop the workers gracefully."""
    sup = platform.features.pop(AsyncSupervisor)
    if sup is not None:
        await sup.stop()


def attach(platform: Services, runtime: EndpointRuntime, config: dict[str, Any]) -> None:
    """Endpoint hook: mark a deployment of an async endpoint config; refuse synchronous invocations on it."""
    async_config = config.get("AsyncInferenceConfig")
    if not async_config:
        return
    runtime.state.put(AsyncEndpoint(runtime.name, async_config, _concurrency(async_config, platform)))

    def refuse_sync(record: InvocationRecord) -> None:
        raise ValidationError(
            f"Endpoint {runtime.name} is an asynchronous endpoint; use InvokeEndpointAsync "
            "(POST /endpoints/{name}/async-invocations)."
        )

    runtime.pre_invoke.append(refuse_sync)
    sup = platform.features.get(AsyncSupervisor)
    if sup is not None:
        sup.wake()


# --------------------------------------------------------------------------- InvokeEndpointAsync


async def invoke_async(platform: Services, request: web.Request) -> web.Response:
    """InvokeEndpointAsync: durable enqueue, then 202 ``{"InferenceId"}`` + Output/FailureLocation headers.

    The request checks are :mod:`serving.asyncq.invoke`'s, shared with the AWS front Lambda.
    """
    sup = supervisor(platform)
    name = request.match_info["name"]
    check_invoke_request(name, request.headers, "InvokeEndpointAsync")  # botocore's model, as InvokeEndpoint
    runtime = platform.endpoints.runtime_for(name)
    state = runtime.state.get(AsyncEndpoint)
    if state is None:
        raise ValidationError(
            f"Endpoint {runtime.name} is not configured for asynchronous inference "
            "(its endpoint config has no AsyncInferenceConfig)."
        )
    try:
        params = invoke.parse_headers(request.headers, schemes=("s3", "file", "https"))
        body = await read_limited(
            request,
            MAX_INLINE_BODY,
            lambda: ValidationError(
                f"Body is larger than {MAX_INLINE_BODY} bytes; upload it and pass InputLocation."
            ),
        )
        invoke.check_payload(params, len(body))
    except invoke.InvokeError as exc:
        raise ValidationError(exc.message) from None

    queue = sup.queue(state.name)
    input_location = params.input_location
    if body:
        input_location = await asyncio.to_thread(
            _store_inline, sup.dir, state.name, params.inference_id, body
        )
    req = invoke.build_request(
        params,
        runtime.name,
        invoke.OutputSpec.from_config(state.config.get("OutputConfig") or {}),
        input_location=input_location,
        region=platform.settings.region,
    )
    fresh = await asyncio.to_thread(queue.put, req)
    if not fresh and isinstance(queue, SqliteQueue):
        # The same InferenceId again (a client retry): the same answer, nothing queued twice.
        existing = await asyncio.to_thread(queue.get_request, params.inference_id)
        if existing is not None:
            req = existing
    sup.wake()
    return web.json_response(
        {"InferenceId": req.inference_id}, status=202, headers=invoke.accepted_headers(req)
    )


def _store_inline(root: Path, endpoint: str, inference_id: str, body: bytes) -> str:
    """Keep an inline Body as a file (fsynced before the request is queued); returns its file:// URI."""
    folder = root / "inputs" / endpoint
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{inference_id}.in"
    tmp = folder / f".{inference_id}.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "wb") as out:
        out.write(body)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return path.resolve().as_uri()


# --------------------------------------------------------------------------- offline status


def backlog_by_endpoint(home: Path) -> dict[str, int]:
    """Unfinished async requests per endpoint, read from ``<home>/async/queue.db`` (no platform needed)."""
    path = home / "async" / "queue.db"
    if not path.exists():
        return {}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute("SELECT queue, SUM(done_at IS NULL) FROM async_queue GROUP BY queue").fetchall()
    except sqlite3.OperationalError:
        return {}
    finally:
        conn.close()
    return {str(q): int(n) for q, n in rows}


def endpoint_backlog(backlogs: dict[str, int], name: str, doc: dict[str, Any]) -> int | None:
    """The backlog of endpoint ``name`` for ``selfmaker status``: None unless it is an async endpoint."""
    if name in backlogs:
        return backlogs[name]
    config = doc.get("_Config") or {}
    return 0 if config.get("AsyncInferenceConfig") else None

"""The batch transform engine (contracts §4): one CreateTransformJob request on Dask.

``run_transform(request, model_dir=...)`` lists the input objects, cuts them into parts, transforms the
parts on the Dask workers (a LocalCluster sized to the machine, or an existing scheduler), and assembles
each object's ``.out`` atomically once all its parts are done. Finished parts and objects are recorded
under the state location so a re-run with ``resume=True`` skips them; a stop request cancels the parts,
lets running assemblies finish, and leaves only complete ``.out`` objects in the output prefix.
"""

from __future__ import annotations

import enum
import logging
import queue
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from batch import storage
from batch.errors import BatchError, InputError, RecordError, StoppedError
from batch.invoke import PIPELINE_PREFIX
from batch.plan import FilePlan, JobPlan, done_uri, list_inputs, load_progress, make_plan, plan_uri
from batch.records import GunzipStream, count_lines_before
from batch.request import TransformSpec, parse_request
from batch.settings import BatchSettings
from batch.transform import PartSpec
from batch.worker import ModelPlugin, assemble, part_record_uri, part_uri, run_part, signal_stop, worker_info

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """A snapshot of a running job (passed to ``on_progress``)."""

    records: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    parts_done: int = 0
    parts_total: int = 0
    files_done: int = 0
    files_total: int = 0
    elapsed: float = 0.0
    bytes_skipped: int = 0

    @property
    def rate_bytes(self) -> float:
        """Input bytes per second processed by this run."""
        return (self.bytes_done - self.bytes_skipped) / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def rate_records(self) -> float:
        """Records per second processed by this run."""
        return self.records / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None until there is a rate)."""
        rate = self.rate_bytes
        if rate <= 0:
            return None
        return max(0.0, (self.bytes_total - self.bytes_done) / rate)


@dataclass
class TransformResult:
    """How a job ended: ``status`` is ``Completed``, ``Failed`` or ``Stopped``."""

    status: str
    failure_reason: str | None = None
    records: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    files_total: int = 0
    files_done: int = 0
    files_failed: int = 0
    parts_total: int = 0
    parts_done: int = 0
    parts_skipped: int = 0
    elapsed: float = 0.0
    #: seconds until the model was ready on every worker (cluster start, model load / server start)
    startup_seconds: float = 0.0
    #: seconds spent stopping model servers and the cluster at the end
    teardown_seconds: float = 0.0
    mode: str = ""
    outputs: list[str] = field(default_factory=list)


def run_transform(
    request: dict[str, Any],
    *,
    model_dir: str,
    scheduler: str | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    stop_event: threading.Event | None = None,
    state_dir: str | None = None,
    resume: bool = False,
    settings: BatchSettings | None = None,
    client: Any = None,
    model_environment: dict[str, str] | None = None,
) -> TransformResult:
    """Run one CreateTransformJob ``request`` and return how it ended.

    ``model_dir``: the unpacked model directory, a model archive path / ``file://`` / ``s3://`` URI, or
    the ``http://`` URL of a ready model server. ``scheduler``: a Dask scheduler address (default
    ``settings.scheduler``, else a LocalCluster); ``client``: an existing ``distributed.Client`` instead.
    ``state_dir``: where finished parts are recorded (a path or URI shared by the workers; default a
    temporary directory); ``resume=True`` skips what a previous run with the same state recorded.
    ``stop_event``: set it to stop the job (StopTransformJob). An invalid request raises
    :class:`~batch.errors.TransformRequestError`; everything else ends in the returned result.
    ``model_environment``: the model's container Environment (the job's Environment wins over it).
    """
    spec = parse_request(request)
    settings = settings or BatchSettings()
    if settings.s3_endpoint_url:
        storage.configure_s3(settings.s3_endpoint_url)
    job = _Job(
        spec,
        model_dir,
        settings,
        scheduler or settings.scheduler,
        client,
        on_progress,
        stop_event or threading.Event(),
        state_dir,
        resume,
    )
    job.model_env = dict(model_environment or {})
    return job.run()


def model_environment(spec: TransformSpec, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the job's model servers (one worker each, one ORT thread per Dask worker).

    ``base`` is the model's own container Environment; the job's values win over it.
    """
    env = dict(base or {})
    env.update(spec.container_environment())
    env.setdefault("SAGEMAKER_MODEL_SERVER_WORKERS", "1")
    env.setdefault("SELFMAKER_ORT_THREADS", "1")
    env.setdefault("SELFMAKER_ACCESS_LOG", "false")
    env.setdefault("SELFMAKER_LOG_LEVEL", "WARNING")
    env.setdefault("SELFMAKER_INSTALL_REQUIREMENTS", "true")
    if spec.max_payload_mb == 0:
        env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = "1024"
    return env


def _with_s3_endpoint(env: dict[str, str], endpoint: str | None) -> dict[str, str]:
    if endpoint:
        env.setdefault("AWS_ENDPOINT_URL_S3", endpoint)
    return env


def line_of(spec: TransformSpec, uri: str, offset: int) -> int:
    """The 1-based line of the record at byte ``offset`` of the (decompressed) object."""
    raw = storage.open_range(uri)
    stream: Any = GunzipStream(raw, uri) if spec.compression == "Gzip" else raw
    try:
        return count_lines_before(stream.read, offset) + 1
    finally:
        stream.close()


class _Job:
    """One transform job: connect to the cluster, start the model on its workers, plan, execute, tear down."""

    def __init__(
        self,
        spec: TransformSpec,
        model: str,
        settings: BatchSettings,
        scheduler: str | None,
        client: Any,
        on_progress: Callable[[Progress], None] | None,
        stop_event: threading.Event,
        state_dir: str | None,
        resume: bool,
    ) -> None:
        self.spec = spec
        self.model = str(model)
        self.settings = settings
        self.scheduler = scheduler
        self.client = client
        self.on_progress = on_progress
        self.stop_event = stop_event
        self.state_dir = state_dir
        self.resume = resume
        self.token = uuid.uuid4().hex[:10]
        self.model_env: dict[str, str] = {}
        self.plugin_name = f"selfmaker-transform-{spec.job_name}-{self.token}"
        self.topic = f"{self.plugin_name}-progress"
        self.progress = Progress()
        self.result = TransformResult(status="InProgress")
        self._lock = threading.Lock()
        self._last_emit = 0.0
        self._started = time.monotonic()
        self._registered = False  # the model plugin is on the workers: unregister it at the end

    # -- progress -------------------------------------------------------------------------------------

    def _emit(self, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_emit < 0.2:
                return
            self._last_emit = now
            self.progress.elapsed = now - self._started
            snapshot = Progress(**vars(self.progress))
        try:
            self.on_progress(snapshot)
        except Exception:  # noqa: BLE001 - a broken progress callback must not fail the job
            log.exception("progress callback failed")

    def _on_event(self, event: Any) -> None:
        _, message = event if isinstance(event, tuple) else (None, event)
        if not isinstance(message, dict):
            return
        with self._lock:
            self.progress.records += int(message.get("records", 0))
            self.progress.bytes_done += int(message.get("bytes", 0))
        self._emit()

    # -- cluster --------------------------------------------------------------------------------------

    def _connect(self) -> tuple[Any, Any]:
        from distributed import Client, LocalCluster

        if self.client is not None:
            return self.client, None
        if self.scheduler:
            return Client(self.scheduler, timeout="30s"), None
        cluster = LocalCluster(
            n_workers=self.settings.effective_workers(),
            threads_per_worker=1,
            processes=True,
            dashboard_address="127.0.0.1:0",
            silence_logs=logging.WARNING,
        )
        return Client(cluster), cluster

    # -- the run --------------------------------------------------------------------------------------

    def run(self) -> TransformResult:
        """Start, plan, execute and tear down; every ending (Completed, Failed, Stopped) is a result."""
        tmp: tempfile.TemporaryDirectory[str] | None = None
        client = cluster = None
        try:
            if self.stop_event.is_set():
                raise StoppedError("stopped")
            infos = list_inputs(self.spec)
            if self.state_dir:
                state = storage.to_uri(self.state_dir)
            else:
                tmp = tempfile.TemporaryDirectory(prefix="selfmaker-transform-")
                state = storage.to_uri(tmp.name)
            try:
                client, cluster = self._connect()
                log.info("cluster ready after %.1f s", time.monotonic() - self._started)
            except (OSError, RuntimeError, TimeoutError, ValueError) as exc:
                raise BatchError(f"cannot reach the Dask cluster: {exc}") from None
            self._start_model(client)
            workers = max(1, len(client.scheduler_info().get("workers", {})))
            plan = make_plan(
                self.spec, infos, part_bytes=int(self.settings.part_mb * 1024 * 1024), workers=workers
            )
            plan = self._load_state(state, plan)
            self._execute(client, plan, state)
        except StoppedError:
            self.result.status = "Stopped"
        except RecordError as exc:
            self.result.status = "Failed"
            self.result.failure_reason = exc.reason()
        except BatchError as exc:
            self.result.status = "Failed"
            self.result.failure_reason = str(exc)[:1024]
        finally:
            teardown = time.monotonic()
            self._teardown(client, cluster)
            if tmp is not None:
                tmp.cleanup()
            self.result.teardown_seconds = time.monotonic() - teardown
        self.result.elapsed = time.monotonic() - self._started
        self.result.records = max(self.result.records, 0)
        self._emit(force=True)
        return self.result

    def _start_model(self, client: Any) -> None:
        """Register the model plugin (each worker starts its model server), then adopt the model's
        execution parameters into the spec."""
        env = _with_s3_endpoint(model_environment(self.spec, self.model_env), self.settings.s3_endpoint_url)
        plugin = ModelPlugin(
            self.plugin_name,
            self.model,
            mode=self._mode(),
            env=env,
            timeout=self.spec.timeout_s,
            retries=self.spec.max_retries,
            python=self.settings.python,
            startup_timeout=self.settings.startup_timeout,
            s3_endpoint=self.settings.s3_endpoint_url,
        )
        try:
            client.register_plugin(plugin, name=self.plugin_name)
        except BatchError:
            raise
        except Exception as exc:  # noqa: BLE001 - plugin setup errors come back re-raised by distributed
            raise BatchError(f"the model could not be started on the workers: {exc}") from None
        self._registered = True
        self.result.startup_seconds = time.monotonic() - self._started
        log.info("model ready on the workers after %.1f s", self.result.startup_seconds)
        info = next(iter(client.run(worker_info, self.plugin_name).values()))
        self.result.mode = info["mode"]
        self.spec = self.spec.with_execution_parameters(info["execution_parameters"]).resolved()

    def _teardown(self, client: Any, cluster: Any) -> None:
        """Unsubscribe, stop the model servers (unregister the plugin), close what this job opened."""
        if client is not None:
            try:
                client.unsubscribe_topic(self.topic)
            except Exception:  # noqa: BLE001 - never subscribed
                pass
            if self._registered:
                try:
                    client.unregister_worker_plugin(self.plugin_name)
                except Exception:  # noqa: BLE001 - workers already gone
                    log.warning("could not unregister %s", self.plugin_name, exc_info=True)
            if client is not self.client:
                client.close()
        if cluster is not None:
            cluster.close()

    def _mode(self) -> str:
        if self.model.startswith(("http://", "https://", PIPELINE_PREFIX)):
            return "url"
        return self.settings.mode

    def _load_state(self, state: str, plan: JobPlan) -> JobPlan:
        stored = plan_uri(state)
        if self.resume and storage.exists(stored):
            previous = JobPlan.from_json(storage.read_bytes(stored))
            if previous.fingerprint == plan.fingerprint:
                return previous
            log.warning("state at %s belongs to another request or input; starting afresh", state)
        for sub in ("parts", "done"):
            storage.delete_prefix(storage.join_uri(state, sub))
        storage.put_bytes(stored, plan.to_json())
        return plan

    def _execute(self, client: Any, plan: JobPlan, state: str) -> None:
        _Execution(self, client, plan, state).run()

    def _add_counts(self, counts: dict[str, Any], from_result: bool = False) -> None:
        self.result.records += int(counts.get("records", 0))
        self.result.bytes_in += int(counts.get("bytes_in", 0))
        self.result.bytes_out += int(counts.get("bytes_out", 0))
        if not from_result:
            with self._lock:
                self.progress.records += int(counts.get("records", 0))

    def _file_counts(self, state: str, fplan: FilePlan) -> dict[str, int]:
        totals = {"records": 0, "bytes_in": 0, "bytes_out": 0}
        for part in fplan.parts:
            try:
                counts = orjson.loads(storage.read_bytes(part_record_uri(state, part)))
            except (InputError, orjson.JSONDecodeError):
                continue
            for key in totals:
                totals[key] += int(counts.get(key, 0))
        return totals


class _Phase(enum.Enum):
    """Where an execution is. RUNNING: parts run and each file is assembled once its parts are done.
    STOPPING (a stop request, or a task that failed for good): the parts are cancelled and signalled, no
    assembly starts, and the assemblies already running get ``stop_grace`` seconds to finish."""

    RUNNING = "running"
    STOPPING = "stopping"


class _Task(NamedTuple):
    """A submitted future: a part of a file (``part_index`` >= 0) or the file's assembly (-1)."""

    kind: str  # "part" or "assemble"
    file_index: int
    part_index: int
    future: Any


class _Execution:
    """Runs one plan's parts and assemblies on the cluster, driven by the futures' completion events.

    Each event is one of: a part that finished (its file is assembled when it was the file's last part),
    an assembly that finished (the file is recorded done), a part's record error (the file fails and its
    other parts are cancelled; the failed file with the lowest index gives the job's failure reason), or
    any other error (fatal: the first one stops the job). :meth:`run` ends when every submitted task has
    reported, or when a stop's grace period is over, and then raises or marks the job Completed.
    """

    def __init__(self, job: _Job, client: Any, plan: JobPlan, state: str) -> None:
        self.job = job
        self.client = client
        self.plan = plan
        self.state = state
        self.phase = _Phase.RUNNING
        self.stop_deadline: float | None = None
        self.events: queue.Queue[Any] = queue.Queue()
        self.tasks: dict[str, _Task] = {}
        self.reported: set[str] = set()
        self.remaining: dict[int, set[int]] = {}  # file index -> indices of its parts still to run
        self.failed_files: set[int] = set()
        self.record_errors: list[tuple[int, RecordError]] = []
        self.fatal: BaseException | None = None

    def run(self) -> None:
        """Skip what a previous run recorded, submit the rest, handle events until done, then conclude."""
        job = self.job
        self._skip_recorded()
        self.client.subscribe_topic(job.topic, job._on_event)
        for file_index, parts in self.remaining.items():
            if not parts:  # every part recorded by a previous run: only the assembly is left
                self._submit_assembly(file_index)
        for part in self.plan.parts:
            if part.part_index in self.remaining.get(part.file_index, ()):
                self._submit_part(part)
        job._emit(force=True)
        while len(self.reported) < len(self.tasks):
            if job.stop_event.is_set():
                self._begin_stop()
            if self._grace_over():
                log.warning("assemblies still running after %.0f s; leaving them", job.settings.stop_grace)
                break
            try:
                future = self.events.get(timeout=0.1)
            except queue.Empty:
                job._emit()
                continue
            self._on_done(future)
        self._conclude()

    # -- submitting -----------------------------------------------------------------------------------

    def _skip_recorded(self) -> None:
        """Count the files and parts a previous run finished (``resume``); the rest go in ``remaining``."""
        job = self.job
        result, progress = job.result, job.progress
        done_files, done_parts = load_progress(self.state) if job.resume else ({}, {})
        result.files_total = progress.files_total = len(self.plan.files)
        result.parts_total = progress.parts_total = len(self.plan.parts)
        progress.bytes_total = sum(f.info.size for f in self.plan.files)
        for fplan in self.plan.files:
            if fplan.index in done_files:
                self._count_done_file(fplan, done_files[fplan.index])
                continue
            self.remaining[fplan.index] = set()
            for part in fplan.parts:
                part_counts = done_parts.get((part.file_index, part.part_index))
                if part_counts is None:
                    self.remaining[fplan.index].add(part.part_index)
                else:
                    self._count_done_part(part, part_counts)

    def _count_done_file(self, fplan: FilePlan, counts: dict[str, Any]) -> None:
        """A file a previous run assembled: its parts, records and bytes count as done, its output is
        listed."""
        result, progress = self.job.result, self.job.progress
        result.files_done += 1
        result.parts_skipped += len(fplan.parts)
        result.parts_done += len(fplan.parts)
        result.records += int(counts.get("records", 0))
        result.bytes_in += int(counts.get("bytes_in", 0))
        result.bytes_out += int(counts.get("bytes_out", 0))
        progress.bytes_done += fplan.info.size
        progress.bytes_skipped += fplan.info.size
        progress.files_done += 1
        progress.parts_done += len(fplan.parts)
        result.outputs.append(fplan.out_uri)

    def _count_done_part(self, part: PartSpec, counts: dict[str, Any]) -> None:
        """A part a previous run finished (its file is not assembled yet)."""
        result, progress = self.job.result, self.job.progress
        result.parts_skipped += 1
        result.parts_done += 1
        progress.parts_done += 1
        self.job._add_counts(counts)
        progress.bytes_done += part.size
        progress.bytes_skipped += part.size

    def _track(self, future: Any, kind: str, file_index: int, part_index: int) -> None:
        self.tasks[future.key] = _Task(kind, file_index, part_index, future)
        future.add_done_callback(self.events.put)

    def _submit_part(self, part: PartSpec) -> None:
        job = self.job
        future = self.client.submit(
            run_part,
            job.spec,
            part,
            job.plugin_name,
            self.state,
            job.topic,
            key=f"part-{job.token}-{part.file_index}-{part.part_index}",
            pure=False,
            priority=-part.file_index,
        )
        self._track(future, "part", part.file_index, part.part_index)

    def _submit_assembly(self, file_index: int) -> None:
        fplan = self.plan.files[file_index]
        storage_parts = [part_uri(self.state, p) for p in fplan.parts]
        storage.cleanup_tmp(fplan.out_uri)
        future = self.client.submit(
            assemble,
            storage_parts,
            fplan.out_uri,
            key=f"assemble-{self.job.token}-{file_index}",
            pure=False,
            priority=10,
        )
        self._track(future, "assemble", file_index, -1)

    # -- events ---------------------------------------------------------------------------------------

    def _on_done(self, future: Any) -> None:
        self.reported.add(future.key)
        task = self.tasks[future.key]
        if future.status == "cancelled":
            return
        if future.status == "finished":
            if task.kind == "part":
                self._part_finished(task, future.result())
            else:
                self._assembly_finished(task.file_index)
            self.job._emit()
            return
        exc = future.exception()
        if isinstance(exc, StoppedError):
            return
        if isinstance(exc, RecordError) and task.kind == "part":
            self._file_failed(task.file_index, exc)
        elif self.fatal is None:
            self.fatal = exc
            self._begin_stop()

    def _part_finished(self, task: _Task, counts: dict[str, Any]) -> None:
        result, progress = self.job.result, self.job.progress
        result.parts_done += 1
        progress.parts_done += 1
        self.job._add_counts(counts, from_result=True)
        parts = self.remaining[task.file_index]
        parts.discard(task.part_index)
        if not parts and task.file_index not in self.failed_files and self.phase is _Phase.RUNNING:
            self._submit_assembly(task.file_index)

    def _assembly_finished(self, file_index: int) -> None:
        fplan = self.plan.files[file_index]
        counts = self.job._file_counts(self.state, fplan)
        storage.put_bytes(done_uri(self.state, file_index), orjson.dumps(counts))
        storage.delete_prefix(storage.join_uri(self.state, f"parts/{file_index:06d}"))
        self.job.result.files_done += 1
        self.job.progress.files_done += 1
        self.job.result.outputs.append(fplan.out_uri)

    def _file_failed(self, file_index: int, exc: RecordError) -> None:
        if file_index in self.failed_files:
            return
        self.failed_files.add(file_index)
        self.job.result.files_failed += 1
        self.record_errors.append((file_index, exc))
        self._cancel_parts(file_index)

    # -- stopping -------------------------------------------------------------------------------------

    def _cancel_parts(self, file_index: int | None = None) -> None:
        for task in self.tasks.values():
            if task.kind == "part" and file_index in (None, task.file_index) and not task.future.done():
                task.future.cancel()

    def _begin_stop(self) -> None:
        """RUNNING -> STOPPING: tell the workers' model servers to stop and cancel every part."""
        if self.phase is _Phase.STOPPING:
            return
        self.phase = _Phase.STOPPING
        try:
            self.client.run(signal_stop, self.job.plugin_name)
        except Exception:  # noqa: BLE001 - a worker that is gone has nothing to stop
            log.warning("could not signal every worker", exc_info=True)
        self._cancel_parts()

    def _grace_over(self) -> bool:
        """True once a stop has waited ``stop_grace`` seconds (the clock starts at the first check)."""
        if self.phase is not _Phase.STOPPING:
            return False
        if self.stop_deadline is None:
            self.stop_deadline = time.monotonic() + self.job.settings.stop_grace
            return False
        return time.monotonic() > self.stop_deadline

    # -- the end --------------------------------------------------------------------------------------

    def _conclude(self) -> None:
        """Raise what ended the job (a fatal error, the first failed file's record error, a stop), or
        mark it Completed."""
        if self.fatal is not None:
            if isinstance(self.fatal, BatchError):
                raise self.fatal
            log.error("transform task failed", exc_info=self.fatal)
            raise BatchError(f"internal error: {type(self.fatal).__name__}: {self.fatal}")
        if self.record_errors:
            _, error = min(self.record_errors, key=lambda item: item[0])
            if self.job.spec.split_type == "Line":
                try:
                    error.line = line_of(self.job.spec, error.source, error.offset)
                except InputError:
                    pass
            raise error
        if self.phase is _Phase.STOPPING or self.job.stop_event.is_set():
            raise StoppedError("stopped")
        self.job.result.status = "Completed"


__all__ = ["PartSpec", "Progress", "TransformResult", "run_transform"]

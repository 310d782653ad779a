"""Transform jobs: CreateTransformJob requests run by the batch engine in threads.

Jobs run with the batch engine (:func:`batch.engine.run_transform`, contracts §4) in threads, on a Dask
LocalCluster per job or on the scheduler named by ``SELFMAKER_BATCH_SCHEDULER``. The model's data is
unpacked once per job under ``<home>/work/transform-jobs/<name>/model``; selfmaker's own images (and the
built-ins) run as model servers on the workers, other images are started once through the platform's
executor and the workers POST to that instance. Finished parts are recorded under
``<home>/work/transform-jobs/<name>/state``: a job that was running when the platform stopped is resumed,
not restarted, when the platform starts again (our extension; SageMaker has no such state).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.errors import BatchError
from batch.invoke import pipeline_source
from batch.request import parse_request
from batch.settings import BatchSettings
from common.http import SyncPool
from selfmaker.arns import make_arn
from selfmaker.errors import ResourceInUse, ValidationException
from selfmaker.executors import Executors, InstanceSpec, executor_kind_for_image
from selfmaker.logfiles import job_log_path, stamp
from selfmaker.modeldata import ModelDataError, execution_mode, fetch_model_data, model_containers
from selfmaker.state import Record

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

log = logging.getLogger(__name__)

KIND = "transform-job"
RUNNING = ("InProgress", "Stopping")


class TransformJobs:
    """Runs transform jobs in threads and keeps their records current."""

    def __init__(self, settings: PlatformSettings, store: StateStore, executors: Executors) -> None:
        self.store = store
        self.settings = settings
        self.executors = executors
        self.batch_settings = BatchSettings()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._closing = False

    def work_dir(self, name: str) -> Path:
        return self.settings.work_dir / "transform-jobs" / name

    def log_path(self, name: str) -> Path:
        return job_log_path(self.settings.logs_dir, KIND, name)

    def create(self, params: dict[str, Any]) -> str:
        """Record a validated CreateTransformJob request (InProgress), tag it and start it; its ARN.
        ResourceInUse when the name is taken."""
        name = params["TransformJobName"]
        arn = make_arn(self.settings.region, self.settings.account_id, KIND, name)
        now = time.time()
        request = {k: v for k, v in params.items() if k != "Tags"}
        doc = dict(request)
        doc.update(
            TransformJobArn=arn,
            TransformJobStatus="InProgress",
            CreationTime=now,
            TransformStartTime=now,
            _Request=request,
        )
        record = Record(
            kind=KIND, name=name, arn=arn, status="InProgress", created=now, modified=now, doc=doc
        )
        if not self.store.insert(record):
            raise ResourceInUse(
                "Job name must be unique within an AWS account and region, and a job with this "
                f"name already exists ({arn})"
            )
        if params.get("Tags"):
            self.store.add_tags(arn, params["Tags"])
        self.start(name, request)
        return arn

    def start(self, name: str, request: dict[str, Any], *, resume: bool = False) -> None:
        """Run the job (its record exists, InProgress) in a new thread."""
        stop = threading.Event()
        self._stops[name.lower()] = stop
        thread = threading.Thread(
            target=self._run, args=(name, request, stop, resume), name=f"transform:{name}", daemon=True
        )
        self._threads[name.lower()] = thread
        thread.start()

    def stop(self, name: str) -> None:
        """StopTransformJob: InProgress → Stopping → Stopped."""
        record = self.store.get(KIND, name)
        assert record is not None
        if record.status not in RUNNING:
            raise ValidationException(
                f"The request was rejected because the transform job is in status {record.status}."
            )
        if record.status == "InProgress":
            self.store.update(KIND, name, status="Stopping", merge={"TransformJobStatus": "Stopping"})
        event = self._stops.get(name.lower())
        if event is not None:
            event.set()

    # -- one job ------------------------------------------------------------------------------------------

    def _model(self, name: str, request: dict[str, Any], work: Path) -> tuple[str, dict[str, str], Any]:
        """``(model dir or URL, container environment, instance handle to stop or None)``."""
        record = self.store.get("model", request["ModelName"])
        if record is None:
            arn = make_arn(self.settings.region, self.settings.account_id, "model", request["ModelName"])
            raise _JobError(f'Could not find model "{arn}".')
        doc = record.doc
        containers = model_containers(doc)
        if len(containers) > 1:
            if execution_mode(doc) == "Direct":
                raise _JobError(
                    f"Model {request['ModelName']} is configured for direct invocation "
                    "(InferenceExecutionConfig.Mode Direct): a transform job needs a Serial inference "
                    "pipeline."
                )
            return self._start_pipeline(name, request, containers, work)
        container = containers[0][1]
        model_dir = fetch_model_data(
            container, work / "model", max_unpacked_bytes=self.settings.max_unpacked_bytes
        )
        env = dict(container.get("Environment") or {})
        image = container.get("Image") or ""
        if executor_kind_for_image(image, self.settings.process_images) == "process":
            return str(model_dir), env, None
        return self._start_container(name, request, container, model_dir, env, work)

    def _start_pipeline(
        self, name: str, request: dict[str, Any], containers: list[tuple[str, dict[str, Any]]], work: Path
    ) -> tuple[str, dict[str, str], Any]:
        """Every container of a Serial pipeline as a model server (each with its own model directory);
        the workers chain them (:class:`batch.invoke.ChainInvoker`)."""
        handles: list[Any] = []
        stages: list[tuple[str, str]] = []
        try:
            for hostname, container in containers:
                model_dir = fetch_model_data(
                    container,
                    work / "containers" / hostname,
                    max_unpacked_bytes=self.settings.max_unpacked_bytes,
                )
                env = dict(container.get("Environment") or {})
                url, _, handle = self._start_container(
                    name, request, container, model_dir, env, work / "containers" / hostname, hostname
                )
                handles.append(handle)
                stages.append((hostname, url))
        except BaseException:
            self._stop_handle(handles)
            raise
        return pipeline_source(stages), {}, handles

    def _start_container(
        self,
        name: str,
        request: dict[str, Any],
        container: dict[str, Any],
        model_dir: Path,
        env: dict[str, str],
        work: Path,
        hostname: str | None = None,
    ) -> tuple[str, dict[str, str], Any]:
        # batch.engine brings dask and pyarrow in: imported when a job runs, not when the platform starts
        from batch.engine import model_environment

        if self.loop is None:
            raise _JobError("the platform is not running")
        spec = InstanceSpec(
            instance_id=f"{name}-transform" + (f"-{hostname}" if hostname else ""),
            endpoint_name=name,
            variant_name="transform",
            model_name=request["ModelName"],
            image=container.get("Image") or "",
            model_dir=model_dir,
            environment=model_environment(parse_request(request), env),
            work_dir=work,
            log_path=self.log_path(name),
            startup_timeout=self.settings.startup_timeout,
            container=container,
        )
        executor = self.executors.for_image(spec.image)
        handle = asyncio.run_coroutine_threadsafe(executor.start(spec), self.loop).result()
        deadline = time.monotonic() + self.settings.startup_timeout
        probe = SyncPool.for_url(handle.url, timeout=2.0)
        try:
            while time.monotonic() < deadline:
                if not handle.alive():
                    break
                try:
                    if probe.request("GET", "/ping")[0] == 200:
                        return handle.url, env, handle
                except (OSError, http.client.HTTPException):
                    pass
                time.sleep(0.2)
        finally:
            probe.close()
        self._stop_handle(handle)
        which = f"container {hostname}" if hostname else "model container"
        raise _JobError(f"the {which} of {request['ModelName']} did not pass the ping health check")

    def _stop_handle(self, handle: Any) -> None:
        if isinstance(handle, list):  # a pipeline's model servers
            for one in handle:
                self._stop_handle(one)
            return
        if handle is not None and self.loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(handle.stop(self.settings.stop_grace), self.loop).result(
                    timeout=120
                )
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.exception("could not stop the model container of a transform job")

    def _run(self, name: str, request: dict[str, Any], stop: threading.Event, resume: bool) -> None:
        from batch.engine import run_transform  # dask and pyarrow: only once a job runs

        work = self.work_dir(name)
        work.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        handle = None
        fields: dict[str, Any]
        with open(log_path, "a", encoding="utf-8") as log_file:
            last = [0.0]

            def on_progress(p: Any) -> None:
                now = time.monotonic()
                if now - last[0] >= 5:
                    last[0] = now
                    log_file.write(
                        stamp(
                            f"records={p.records} bytes={p.bytes_done}/{p.bytes_total} "
                            f"parts={p.parts_done}/{p.parts_total} files={p.files_done}/{p.files_total}"
                        )
                    )
                    log_file.flush()

            try:
                model, env, handle = self._model(name, request, work)
                if stop.is_set():
                    fields = {"TransformJobStatus": "Stopped"}
                else:
                    log_file.write(stamp(f"running with the model at {model} (resume={resume})"))
                    log_file.flush()
                    result = run_transform(
                        request,
                        model_dir=model,
                        stop_event=stop,
                        state_dir=str(work / "state"),
                        resume=resume,
                        settings=self.batch_settings,
                        on_progress=on_progress,
                        model_environment=env,
                    )
                    fields = {"TransformJobStatus": result.status, "FailureReason": result.failure_reason}
                    log_file.write(
                        stamp(
                            f"{result.status}: {result.records} records, {result.files_done}/"
                            f"{result.files_total} objects, {result.parts_skipped} parts resumed, "
                            f"{result.elapsed:.1f} s"
                            + (f"; {result.failure_reason}" if result.failure_reason else "")
                        )
                    )
            except _JobError as exc:
                fields = {"TransformJobStatus": "Failed", "FailureReason": str(exc)}
            except Exception as exc:  # noqa: BLE001 - the job fails, the platform goes on
                if isinstance(exc, (ModelDataError, BatchError)):
                    fields = {"TransformJobStatus": "Failed", "FailureReason": str(exc)[:1024]}
                else:
                    log.exception("transform job %s crashed", name)
                    fields = {
                        "TransformJobStatus": "Failed",
                        "FailureReason": "internal error while running the job",
                    }
            finally:
                self._stop_handle(handle)
                self._stops.pop(name.lower(), None)
        if self._closing and fields.get("TransformJobStatus") == "Stopped":
            log.info("transform job %s paused by the platform shutdown; it resumes on the next start", name)
            return
        fields = {k: v for k, v in fields.items() if v is not None}
        fields["TransformEndTime"] = time.time()
        self.store.update(KIND, name, status=fields["TransformJobStatus"], merge=fields)
        log.info("transform job %s ended: %s", name, fields["TransformJobStatus"])

    # -- platform lifecycle ---------------------------------------------------------------------------------

    def start_up(self, loop: asyncio.AbstractEventLoop) -> None:
        """Remember the platform's loop (containers are started on it) and resume interrupted jobs."""
        self.loop = loop
        self.recover()

    def recover(self) -> None:
        """Resume the jobs a previous run left InProgress; finish the ones that were being stopped."""
        for record in self.store.list(KIND):
            if record.status == "Stopping":
                self.store.update(
                    KIND,
                    record.name,
                    status="Stopped",
                    merge={"TransformJobStatus": "Stopped", "TransformEndTime": time.time()},
                )
            elif record.status == "InProgress":
                log.warning(
                    "transform job %s was running when the platform stopped; resuming it", record.name
                )
                self.start(record.name, dict(record.doc.get("_Request") or {}), resume=True)

    async def shutdown(self) -> None:
        """Pause running jobs (they resume on the next start) and wait for their threads (bounded)."""
        self._closing = True
        for event in list(self._stops.values()):
            event.set()
        deadline = time.monotonic() + 60
        for thread in list(self._threads.values()):
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))


class _JobError(Exception):
    """A user-facing reason the job cannot run."""

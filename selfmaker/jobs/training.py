"""Training jobs: CreateTrainingJob requests run by ``training.runner.TrainingJobRunner`` in threads.

The runner owns the job's execution and the Describe members it reports (``describe_fields()``); this
module owns the record (status, times, transitions), the log file and platform restarts: a job that was
running when the platform stopped or crashed is marked Failed with a reason on the next start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfmaker.arns import make_arn
from selfmaker.errors import ResourceInUse, ValidationException
from selfmaker.jobs.builtin_metrics import builtin_metric_definitions
from selfmaker.jobs.warm_pools import WarmPools, keep_alive_of
from selfmaker.logfiles import job_log_path, stamp
from selfmaker.metricstore import TRAINING_NAMESPACE, Aggregate, Datum, dims_of
from selfmaker.state import Record
from selfmaker.state import now as state_now

if TYPE_CHECKING:
    from selfmaker.metricstore import MetricStore
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore
    from training.warm import WarmStart

log = logging.getLogger(__name__)

RUNNING = ("InProgress", "Stopping")
RESTART_REASON = "The selfmaker platform restarted while the training job was running."
SHUTDOWN_REASON = "The selfmaker platform was stopped while the training job was running."


def _jsonable(value: Any) -> Any:
    """``value`` with datetimes as epoch seconds (the store and the wire use epoch floats)."""
    if isinstance(value, dt.datetime):
        return value.timestamp()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def model_artifacts_uri(request: dict[str, Any]) -> str:
    """``<S3OutputPath>/<job>/output/model.tar.gz``."""
    output = request["OutputDataConfig"]["S3OutputPath"].rstrip("/")
    return f"{output}/{request['TrainingJobName']}/output/model.tar.gz"


class MetricPublisher:
    """A training job's metric values into the metric store (namespace ``/aws/sagemaker/TrainingJobs``,
    dimension ``TrainingJobName``), with the time the job logged each: the MetricDefinitions matches the
    runner collects, and the lines of a built-in algorithm's own metrics that no MetricDefinition names
    (SageMaker publishes those too). Written at most once a second while the job runs, and at its end."""

    def __init__(self, metrics: MetricStore, job: str, request: dict[str, Any]) -> None:
        self.metrics = metrics
        self.dims = dims_of({"TrainingJobName": job})
        algo = request.get("AlgorithmSpecification") or {}
        given = {d.get("Name") for d in algo.get("MetricDefinitions") or []}
        image = algo.get("TrainingImage") or algo.get("AlgorithmName") or ""
        self.builtin = [
            (d["Name"], re.compile(d["Regex"]))
            for d in builtin_metric_definitions(image)
            if d["Name"] not in given
        ]
        self._stored = 0
        self._pending: list[Datum] = []
        self._lock = threading.Lock()
        self._flushed = 0.0

    def line(self, text: str) -> None:
        """One log line of the job (log reader threads): a built-in metric's value in it is kept."""
        if not self.builtin or ("#011" not in text and "#quality_metric" not in text):
            return
        at = int(time.time())
        for name, pattern in self.builtin:
            found = pattern.search(text)
            if found is None:
                continue
            try:
                value = float(found.group(1))
            except (IndexError, ValueError):
                continue
            with self._lock:
                self._pending.append(Datum(TRAINING_NAMESPACE, name, self.dims, at, Aggregate.of(value)))
        if time.monotonic() - self._flushed >= 1.0:
            self.flush()

    def state(self, state: Any) -> None:
        """The runner's state: its MetricDefinitions matches since the last call are kept."""
        points = list(getattr(state, "metrics", None) or [])[self._stored :]
        self._stored += len(points)
        datums = []
        for p in points:
            at = p["Timestamp"]
            at = at.timestamp() if isinstance(at, dt.datetime) else float(at)
            datums.append(
                Datum(
                    TRAINING_NAMESPACE, p["MetricName"], self.dims, int(at), Aggregate.of(float(p["Value"]))
                )
            )
        with self._lock:
            self._pending.extend(datums)
        if time.monotonic() - self._flushed >= 1.0:
            self.flush()

    def flush(self) -> None:
        """Write what is kept."""
        with self._lock:
            pending, self._pending = self._pending, []
            self._flushed = time.monotonic()
        if pending:
            self.metrics.put(pending)


class TrainingManager:
    """Runs training jobs in threads and keeps their records current."""

    def __init__(
        self, settings: PlatformSettings, store: StateStore, metrics: MetricStore | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        #: where every metric value a job logs goes (namespace /aws/sagemaker/TrainingJobs), if anywhere
        self.metrics = metrics
        self._runners: dict[str, Any] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._closing = False
        self.warm_pools = WarmPools(settings, store)

    def log_path(self, name: str) -> Path:
        return job_log_path(self.settings.logs_dir, "training-job", name)

    def create(self, params: dict[str, Any], *, tuning_job_arn: str | None = None) -> str:
        """Record a validated CreateTrainingJob request (InProgress), tag it and start it; its ARN.
        ResourceInUse when the name is taken. ``tuning_job_arn``: the hyperparameter tuning job that
        launched it (Describe's ``TuningJobArn``)."""
        name = params["TrainingJobName"]
        arn = make_arn(self.settings.region, self.settings.account_id, "training-job", name)
        now = state_now()
        doc = {k: v for k, v in params.items() if k != "Tags"}
        doc.setdefault("StoppingCondition", {"MaxRuntimeInSeconds": 86400})
        doc.update(
            TrainingJobArn=arn,
            TrainingJobStatus="InProgress",
            SecondaryStatus="Starting",
            CreationTime=now,
            ModelArtifacts={"S3ModelArtifacts": model_artifacts_uri(params)},
            SecondaryStatusTransitions=[
                {
                    "Status": "Starting",
                    "StartTime": now,
                    "StatusMessage": "Preparing the instances for training",
                }
            ],
            EnableManagedSpotTraining=bool(params.get("EnableManagedSpotTraining", False)),
        )
        if tuning_job_arn is not None:
            doc["TuningJobArn"] = tuning_job_arn
        record = Record(
            kind="training-job", name=name, arn=arn, status="InProgress", created=now, modified=now, doc=doc
        )
        if not self.store.insert(record):
            raise ResourceInUse(
                "Training job names must be unique within an AWS account and region, and a "
                f"training job with this name already exists ({arn})"
            )
        if params.get("Tags"):
            self.store.add_tags(arn, params["Tags"])
        self.start(name, dict(params))
        return arn

    def start(self, name: str, request: dict[str, Any]) -> None:
        """Run the job (its record exists, InProgress) in a new thread."""
        thread = threading.Thread(
            target=self._run, args=(name, request), name=f"training:{name}", daemon=True
        )
        self._threads[name.lower()] = thread
        thread.start()

    def _merge(self, name: str, fields: dict[str, Any]) -> None:
        fields = {k: v for k, v in fields.items() if v is not None}
        status = fields.get("TrainingJobStatus")
        record = self.store.get("training-job", name)
        if record is None:
            return
        if record.status == "Stopping" and status == "InProgress":
            status = "Stopping"  # the runner reports InProgress until the process is down
            fields["TrainingJobStatus"] = status
        self.store.update("training-job", name, status=status, merge=fields)

    @staticmethod
    def _fields(state: Any) -> dict[str, Any]:
        if state is None:
            return {}
        if isinstance(state, dict):
            return _jsonable(dict(state))
        describe = getattr(state, "describe_fields", None)
        return _jsonable(dict(describe())) if callable(describe) else {}

    def _run(self, name: str, request: dict[str, Any]) -> None:
        work_dir = self.settings.work_dir / "training-jobs" / name
        log_path = self.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        publisher = MetricPublisher(self.metrics, name, request) if self.metrics is not None else None
        with open(log_path, "a", encoding="utf-8") as log_file:

            def on_log(*args: str) -> None:  # (host, line) per the runner; (line) tolerated
                # time-stamped: the CloudWatch Logs view gives each line that time (selfmaker.logfiles)
                log_file.write(stamp(args[-1], host=args[0] if len(args) > 1 else None))
                log_file.flush()
                if publisher is not None:
                    publisher.line(args[-1])

            def on_update(state: Any) -> None:
                try:
                    self._merge(name, self._fields(state))
                    if publisher is not None:
                        publisher.state(state)
                except Exception:  # noqa: BLE001 - a bad update must not kill the job
                    log.exception("could not record an update of training job %s", name)

            try:  # the training extra may be absent: the job fails with the reason, the platform goes on
                from training.runner import TrainingJobRunner
            except ImportError as exc:
                self._finish(
                    name,
                    {
                        "TrainingJobStatus": "Failed",
                        "SecondaryStatus": "Failed",
                        "FailureReason": f"The training runtime is not available: {exc}",
                    },
                )
                return
            warm: WarmStart | None = None
            if keep_alive_of(request) > 0:
                warm, reused = self.warm_pools.start_job(name, request)
                if reused is not None:
                    on_log("selfmaker", f"Reusing the warm pool of training job {reused}")
            try:
                runner = TrainingJobRunner(
                    request,
                    work_dir,
                    on_update=on_update,
                    on_log=on_log,
                    job_arn=make_arn(self.settings.region, self.settings.account_id, "training-job", name),
                    stop_grace_seconds=self.settings.training_stop_grace,
                    spot_interrupt_after=self.settings.spot_interrupt_after,
                    warm=warm,
                )
                self._runners[name.lower()] = runner
                record = self.store.get("training-job", name)
                if record is not None and record.status == "Stopping":
                    runner.stop()
                state = runner.run()
                fields = self._fields(state)
                try:
                    if publisher is not None:
                        publisher.state(state)
                        publisher.flush()
                except Exception:  # noqa: BLE001 - the job's outcome matters more than its curves
                    log.exception("could not store the metrics of training job %s", name)
            except Exception:  # noqa: BLE001 - the job fails, the platform goes on
                log.exception("training job %s crashed", name)
                fields = {
                    "TrainingJobStatus": "Failed",
                    "SecondaryStatus": "Failed",
                    "FailureReason": "internal error while running the training job",
                }
            finally:
                self._runners.pop(name.lower(), None)
        if self._closing and fields.get("TrainingJobStatus") in (None, "Stopped", "InProgress", "Stopping"):
            fields.update(TrainingJobStatus="Failed", SecondaryStatus="Failed", FailureReason=SHUTDOWN_REASON)
        self._finish(name, fields)
        if warm is not None:
            try:
                self.warm_pools.end_job(
                    name, request, warm, completed=fields.get("TrainingJobStatus") == "Completed"
                )
            except Exception:  # noqa: BLE001 - the job has ended; a pool that cannot be kept is released
                log.exception("could not keep the warm pool of training job %s", name)

    def _finish(self, name: str, fields: dict[str, Any]) -> None:
        now = time.time()
        fields.setdefault("TrainingEndTime", now)
        if fields.get("TrainingJobStatus") not in ("Completed", "Failed", "Stopped"):
            fields["TrainingJobStatus"] = "Failed"
            fields.setdefault("FailureReason", "The training job ended without a final status.")
        self._merge(name, fields)
        log.info("training job %s ended: %s", name, fields.get("TrainingJobStatus"))

    def update(self, name: str, params: dict[str, Any]) -> None:
        """UpdateTrainingJob (validated by the operation): the keep-alive of the job's warm pool and the
        profiler settings, recorded in the job's document."""
        record = self.store.get("training-job", name)
        assert record is not None
        merge: dict[str, Any] = {}
        for member in ("ProfilerConfig", "ProfilerRuleConfigurations", "RemoteDebugConfig"):
            if member in params:
                merge[member] = params[member]
        keep: int | None = None
        if params.get("ResourceConfig"):
            keep = int(params["ResourceConfig"]["KeepAlivePeriodInSeconds"])
            merge["ResourceConfig"] = {
                **(record.doc.get("ResourceConfig") or {}),
                "KeepAlivePeriodInSeconds": keep,
            }
        self.store.update("training-job", name, merge=merge)
        if keep is not None:
            self.warm_pools.update_keep_alive(name, keep)

    def stop(self, name: str) -> None:
        """StopTrainingJob: InProgress → Stopping → Stopped."""
        record = self.store.get("training-job", name)
        assert record is not None
        if record.status not in RUNNING:
            raise ValidationException(
                f"The request was rejected because the training job is in status {record.status}."
            )
        if record.status == "InProgress":
            self.store.update(
                "training-job", name, status="Stopping", merge={"TrainingJobStatus": "Stopping"}
            )
        runner = self._runners.get(name.lower())
        if runner is not None:
            runner.stop()

    def recover(self) -> None:
        """Mark jobs a previous run left running as Failed (their processes are gone) and its warm pools
        Terminated."""
        self.warm_pools.recover()
        now = time.time()
        for record in self.store.list("training-job"):
            pool = record.doc.get("WarmPoolStatus") or {}
            if pool.get("Status") in ("Available", "InUse"):  # its standby processes are gone
                self.store.update(
                    "training-job",
                    record.name,
                    merge={
                        "WarmPoolStatus": {"Status": "Terminated", "ResourceRetainedBillableTimeInSeconds": 0}
                    },
                )
            if record.status in RUNNING:
                transitions = list(record.doc.get("SecondaryStatusTransitions") or [])
                if transitions and "EndTime" not in transitions[-1]:
                    transitions[-1] = {**transitions[-1], "EndTime": now}
                transitions.append(
                    {"Status": "Failed", "StartTime": now, "EndTime": now, "StatusMessage": RESTART_REASON}
                )
                self.store.update(
                    "training-job",
                    record.name,
                    status="Failed",
                    merge={
                        "TrainingJobStatus": "Failed",
                        "SecondaryStatus": "Failed",
                        "FailureReason": RESTART_REASON,
                        "TrainingEndTime": now,
                        "SecondaryStatusTransitions": transitions,
                    },
                )
                log.warning(
                    "training job %s was running when the platform stopped; marked Failed", record.name
                )

    async def shutdown(self) -> None:
        """Stop running jobs and wait for their threads (bounded)."""
        self._closing = True
        for runner in list(self._runners.values()):
            try:
                runner.stop()
            except Exception:  # noqa: BLE001
                log.exception("could not stop a training job")
        deadline = time.monotonic() + 30
        for thread in list(self._threads.values()):
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
        await asyncio.to_thread(self.warm_pools.close)

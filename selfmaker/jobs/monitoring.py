"""Model Monitor: data-quality job definitions, monitoring schedules and their executions.

A schedule (kind ``monitoring-schedule``) watches one endpoint that captures data
(``DataCaptureConfig``); its job is a data-quality job definition (kind ``data-quality-job-definition``,
``MonitoringJobDefinitionName``) or an inline ``MonitoringJobDefinition``. At each tick of its cron
expression (:func:`parse_schedule`: the hourly, daily and every-N-hours forms SageMaker allows, through
croniter) it starts one execution at time T over the records captured in ``[T - 1 h, T)``: a processing job
(selfmaker/jobs/processing.py) with the definition's image (SageMaker's model-monitor analyzer image runs
selfmaker's analyzer, training/monitoring/), the environment SageMaker's analyzer reads
(``dataset_format`` sagemakerCaptureJson, ``dataset_source``, ``output_path``, ``start_time``/``end_time``,
``baseline_constraints``/``baseline_statistics`` …), the hour's capture files as a manifest input, the
baseline files as inputs, and ``<S3Uri>/<endpoint>/<schedule>/<yyyy>/<mm>/<dd>/<hh>`` as output. A
``NOW`` schedule runs once, at once, over ``DataAnalysisStartTime``..``DataAnalysisEndTime``.

Executions (kind ``monitoring-execution``) keep the schedule, the scheduled time and the processing job;
their status is read off the job when asked (``InProgress`` … ``Completed``, ``CompletedWithViolations``
when the analyzer's ExitMessage says so, ``Failed`` with its reason), so a restart needs no rule of its own
beyond the processing jobs' (a job running at a restart is Failed). Schedules survive restarts; ticks that
passed while the platform was down are not run (as a SageMaker schedule skips what it missed).

``SELFMAKER_MONITORING_RUN_NOW`` (tests, demos): a schedule also runs one execution as soon as it is created
or started, over the hour before, instead of waiting for its first tick. See docs/monitoring.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from croniter import croniter

from selfmaker.arns import make_arn
from selfmaker.errors import ResourceInUse, ResourceNotFound, ValidationException
from selfmaker.jobs.processing import KIND as PROCESSING_KIND
from selfmaker.jobs.processing import local_path
from selfmaker.state import Record
from selfmaker.state import now as state_now
from training.storage import Storage, StorageError

if TYPE_CHECKING:
    from selfmaker.jobs.processing import ProcessingJobs
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

log = logging.getLogger(__name__)

SCHEDULE = "monitoring-schedule"
DEFINITION = "data-quality-job-definition"
EXECUTION = "monitoring-execution"
#: the monitoring types SageMaker has; only DataQuality runs here
MONITORING_TYPES = ("DataQuality", "ModelQuality", "ModelBias", "ModelExplainability")
#: what the analyzer reads captured data as (SageMaker's value)
CAPTURE_FORMAT = {"sagemakerCaptureJson": {"captureIndexNames": ["endpointInput", "endpointOutput"]}}
BASELINE_CONSTRAINTS_PATH = "/opt/ml/processing/baseline/constraints"
BASELINE_STATISTICS_PATH = "/opt/ml/processing/baseline/stats"
#: SageMaker's limit (and default) of a monitoring job's MaxRuntimeInSeconds
DEFAULT_MAX_RUNTIME = 3600
WINDOW = timedelta(hours=1)
#: the longest analysis window of a NOW schedule, in hours (its capture folders are listed one by one)
MAX_WINDOW_HOURS = 24 * 7
_HOUR = r"(?:[01]?\d|2[0-3])"
_CRON = re.compile(
    rf"^cron\(\s*0\s+(?P<hour>\*|{_HOUR}|{_HOUR}/(?:[1-9]|1\d|2[0-4]))\s+[?*]\s+\*\s+[?*]\s+\*\s*\)$"
)
_OFFSET = re.compile(r"^-PT(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?$")


@dataclass(frozen=True)
class Schedule:
    """A parsed ScheduleExpression: a cron (croniter's five fields) or a one-time ``NOW``."""

    expression: str
    cron: str | None

    def latest_tick(self, after: float, now: float) -> float | None:
        """The latest tick in ``(after, now]`` (None when there is none, or for NOW)."""
        if self.cron is None:
            return None
        tick = float(croniter(self.cron, datetime.fromtimestamp(now, timezone.utc)).get_prev(float))
        if abs(tick - now) < 1e-6:
            tick = now
        return tick if tick > after else None


def parse_schedule(expression: str) -> Schedule:
    """A ScheduleExpression as SageMaker allows them for Model Monitor, or a ValidationException."""
    text = expression.strip()
    if text == "NOW":
        return Schedule(text, None)
    match = _CRON.match(text)
    if match is None:
        raise ValidationException(
            f"Invalid ScheduleExpression {expression!r}: Model Monitor supports cron(0 * ? * * *) (hourly), "
            "cron(0 H ? * * *) (daily at hour H), cron(0 H/N ? * * *) (every N hours from hour H) and NOW."
        )
    return Schedule(text, f"0 {match.group('hour')} * * *")


def parse_offset(value: str | None, member: str, default: timedelta) -> timedelta:
    """``-PT1H``-style offset (hours and minutes before now) of a NOW schedule's analysis window."""
    if not value:
        return default
    match = _OFFSET.match(value.strip())
    if match is None:
        raise ValidationException(f"{member} {value!r} is not an ISO 8601 offset such as -PT1H or -PT30M.")
    return timedelta(hours=int(match.group("h") or 0), minutes=int(match.group("m") or 0))


def _iso(when: datetime) -> str:
    """UTC, with milliseconds: a window that ends now must hold the records captured in this second
    (capture times have whole seconds)."""
    utc = when.astimezone(timezone.utc)
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class JobSpec:
    """The parts of a monitoring job, from a data-quality job definition or an inline definition."""

    definition_name: str | None
    image: str
    entrypoint: list[str]
    arguments: list[str]
    environment: dict[str, str]
    endpoint: str
    local_path: str
    constraints_uri: str | None
    statistics_uri: str | None
    output_uri: str
    output_local_path: str
    cluster: dict[str, Any]
    max_runtime: int
    role: str


def _outputs(config: dict[str, Any], member: str) -> tuple[str, str]:
    outputs = config.get("MonitoringOutputs") or []
    if len(outputs) != 1:
        raise ValidationException(f"{member}.MonitoringOutputs must hold exactly one output.")
    s3 = outputs[0]["S3Output"]
    local_path(s3["LocalPath"], f"{member}.MonitoringOutputs[0].S3Output")  # a processing job's rule
    return str(s3["S3Uri"]).rstrip("/"), str(s3["LocalPath"])


def definition_spec(doc: dict[str, Any], name: str | None = None) -> JobSpec:
    """A JobSpec of a CreateDataQualityJobDefinition request (or stored definition); a baseline named by
    ``BaseliningJobName`` alone is found when the job runs (:meth:`MonitoringManager.baseline_uris`)."""
    app = doc["DataQualityAppSpecification"]
    job_input = doc["DataQualityJobInput"]
    if job_input.get("BatchTransformInput") is not None:
        raise ValidationException(
            "DataQualityJobInput.BatchTransformInput is not supported by selfmaker: monitor an endpoint "
            "(EndpointInput)."
        )
    endpoint_input = job_input.get("EndpointInput")
    if endpoint_input is None:
        raise ValidationException("DataQualityJobInput.EndpointInput is required.")
    local_path(endpoint_input["LocalPath"], "DataQualityJobInput.EndpointInput")
    for member in ("RecordPreprocessorSourceUri", "PostAnalyticsProcessorSourceUri"):
        if app.get(member):
            raise ValidationException(
                f"DataQualityAppSpecification.{member} is not supported by selfmaker's analyzer."
            )
    baseline = doc.get("DataQualityBaselineConfig") or {}
    uri, local = _outputs(doc["DataQualityJobOutputConfig"], "DataQualityJobOutputConfig")
    return JobSpec(
        definition_name=name or doc.get("JobDefinitionName"),
        image=str(app["ImageUri"]),
        entrypoint=[str(a) for a in app.get("ContainerEntrypoint") or []],
        arguments=[str(a) for a in app.get("ContainerArguments") or []],
        environment={str(k): str(v) for k, v in (app.get("Environment") or {}).items()},
        endpoint=str(endpoint_input["EndpointName"]),
        local_path=str(endpoint_input["LocalPath"]),
        constraints_uri=(baseline.get("ConstraintsResource") or {}).get("S3Uri"),
        statistics_uri=(baseline.get("StatisticsResource") or {}).get("S3Uri"),
        output_uri=uri,
        output_local_path=local,
        cluster=dict(doc["JobResources"]["ClusterConfig"]),
        max_runtime=int(
            (doc.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME
        ),
        role=str(doc["RoleArn"]),
    )


def inline_spec(definition: dict[str, Any]) -> JobSpec:
    """A JobSpec of a schedule's inline ``MonitoringJobDefinition``."""
    inputs = definition.get("MonitoringInputs") or []
    if len(inputs) != 1 or inputs[0].get("EndpointInput") is None:
        raise ValidationException(
            "MonitoringScheduleConfig.MonitoringJobDefinition.MonitoringInputs must hold one EndpointInput "
            "(BatchTransformInput is not supported by selfmaker)."
        )
    endpoint_input = inputs[0]["EndpointInput"]
    local_path(endpoint_input["LocalPath"], "MonitoringJobDefinition.MonitoringInputs[0].EndpointInput")
    app = definition["MonitoringAppSpecification"]
    for member in ("RecordPreprocessorSourceUri", "PostAnalyticsProcessorSourceUri"):
        if app.get(member):
            raise ValidationException(
                f"MonitoringAppSpecification.{member} is not supported by selfmaker's analyzer."
            )
    baseline = definition.get("BaselineConfig") or {}
    uri, local = _outputs(
        definition["MonitoringOutputConfig"], "MonitoringJobDefinition.MonitoringOutputConfig"
    )
    return JobSpec(
        definition_name=None,
        image=str(app["ImageUri"]),
        entrypoint=[str(a) for a in app.get("ContainerEntrypoint") or []],
        arguments=[str(a) for a in app.get("ContainerArguments") or []],
        environment={str(k): str(v) for k, v in (definition.get("Environment") or {}).items()},
        endpoint=str(endpoint_input["EndpointName"]),
        local_path=str(endpoint_input["LocalPath"]),
        constraints_uri=(baseline.get("ConstraintsResource") or {}).get("S3Uri"),
        statistics_uri=(baseline.get("StatisticsResource") or {}).get("S3Uri"),
        output_uri=uri,
        output_local_path=local,
        cluster=dict(definition["MonitoringResources"]["ClusterConfig"]),
        max_runtime=int(
            (definition.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME
        ),
        role=str(definition["RoleArn"]),
    )


def execution_status(record: Record, job: Record | None) -> tuple[str, str | None]:
    """(MonitoringExecutionStatus, FailureReason) of an execution, read off its processing job."""
    if record.doc.get("FailureReason") and job is None:
        return "Failed", str(record.doc["FailureReason"])
    if job is None:
        return "Pending", None
    status = job.status or "InProgress"
    if status == "Completed":
        message = str(job.doc.get("ExitMessage") or "")
        return (
            "CompletedWithViolations" if message.startswith("CompletedWithViolations") else "Completed"
        ), None
    if status == "Failed":
        return "Failed", job.doc.get("FailureReason")
    return status, None


class MonitoringManager:
    """Owns schedules, job definitions and executions; starts executions as processing jobs."""

    def __init__(
        self,
        settings: PlatformSettings,
        store: StateStore,
        processing: ProcessingJobs,
        storage: Storage | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.processing = processing
        self.storage = storage or Storage()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def arn(self, kind: str, name: str) -> str:
        """The ARN of a schedule or job definition."""
        return make_arn(self.settings.region, self.settings.account_id, kind, name)

    # -- checks ---------------------------------------------------------------------------------
    def capture_destination(self, endpoint: str) -> str:
        """The DestinationS3Uri of ``endpoint``'s data capture, or the ValidationException SageMaker gives
        an endpoint it cannot monitor."""
        record = self.store.get("endpoint", endpoint)
        if record is None:
            raise ValidationException(
                f"Endpoint {self.arn('endpoint', endpoint)} does not exist or is not valid."
            )
        capture = (record.doc.get("_Config") or {}).get("DataCaptureConfig") or {}
        if not capture or not capture.get("EnableCapture", True):
            raise ValidationException(
                f"Data capture is not enabled for endpoint {self.arn('endpoint', endpoint)}: "
                "a monitoring schedule needs an endpoint config with DataCaptureConfig (EnableCapture true)."
            )
        return str(capture["DestinationS3Uri"]).rstrip("/")

    def job_spec(self, config: dict[str, Any]) -> JobSpec:
        """The JobSpec of a MonitoringScheduleConfig (its job definition must exist)."""
        kind = config.get("MonitoringType") or "DataQuality"
        name = str(config.get("MonitoringJobDefinitionName") or "")
        inline = config.get("MonitoringJobDefinition")
        if bool(name) == (inline is not None):
            raise ValidationException(
                "MonitoringScheduleConfig needs exactly one of MonitoringJobDefinitionName and "
                "MonitoringJobDefinition."
            )
        if kind != "DataQuality":
            raise ValidationException(
                f"MonitoringType {kind} is not supported by selfmaker: only DataQuality monitoring runs here."
            )
        if inline is not None:
            return inline_spec(inline)
        record = self.store.get(DEFINITION, name)
        if record is None:
            raise ResourceNotFound(f"Job definition {self.arn(DEFINITION, name)} does not exist.")
        return definition_spec(record.doc, record.name)

    def check_schedule(self, config: dict[str, Any]) -> tuple[JobSpec, Schedule]:
        """What CreateMonitoringSchedule / UpdateMonitoringSchedule check before anything is stored."""
        schedule_config = config.get("ScheduleConfig")
        if not schedule_config:
            raise ValidationException(
                "MonitoringScheduleConfig.ScheduleConfig is required to monitor an endpoint."
            )
        schedule = parse_schedule(str(schedule_config["ScheduleExpression"]))
        if schedule.cron is None:
            parse_offset(schedule_config.get("DataAnalysisStartTime"), "DataAnalysisStartTime", WINDOW)
            parse_offset(schedule_config.get("DataAnalysisEndTime"), "DataAnalysisEndTime", timedelta())
        spec = self.job_spec(config)
        self.capture_destination(spec.endpoint)
        return spec, schedule

    # -- schedules ------------------------------------------------------------------------------
    def create(self, name: str, config: dict[str, Any], tags: list[dict[str, str]] | None) -> str:
        """Record a checked schedule (Scheduled) and run it at once when due; its ARN."""
        spec, schedule = self.check_schedule(config)
        now = state_now()
        arn = self.arn(SCHEDULE, name)
        doc = {
            "MonitoringScheduleName": name,
            "MonitoringScheduleArn": arn,
            "MonitoringScheduleConfig": {"MonitoringType": "DataQuality", **config},
            "MonitoringType": "DataQuality",
            "EndpointName": spec.endpoint,
            "_LastTick": now,
        }
        record = Record(
            kind=SCHEDULE, name=name, arn=arn, status="Scheduled", created=now, modified=now, doc=doc
        )
        if not self.store.insert(record):
            raise ResourceInUse(f"Monitoring schedule {arn} already exists.")
        if tags:
            self.store.add_tags(arn, tags)
        if schedule.cron is None or self.settings.monitoring_run_now:
            self._run_at_once(name, schedule, config.get("ScheduleConfig") or {})
        return arn

    def update(self, name: str, config: dict[str, Any]) -> str:
        """UpdateMonitoringSchedule: a new config (checked as at creation); the next tick uses it, and a
        schedule updated to NOW runs at once."""
        record = self.find(name)
        spec, schedule = self.check_schedule(config)
        self.store.update(
            SCHEDULE,
            record.name,
            merge={
                "MonitoringScheduleConfig": {"MonitoringType": "DataQuality", **config},
                "EndpointName": spec.endpoint,
            },
        )
        if schedule.cron is None and record.status == "Scheduled":
            self._run_at_once(record.name, schedule, config.get("ScheduleConfig") or {})
        return record.arn

    def find(self, name: str) -> Record:
        """A schedule, or ResourceNotFound."""
        record = self.store.get(SCHEDULE, name)
        if record is None:
            raise ResourceNotFound(f"Monitoring Schedule {self.arn(SCHEDULE, name)} does not exist.")
        return record

    def start(self, name: str) -> None:
        """StartMonitoringSchedule: Stopped → Scheduled (ticks from now on)."""
        record = self.find(name)
        if record.status == "Scheduled":
            return
        self.store.update(SCHEDULE, record.name, status="Scheduled", merge={"_LastTick": time.time()})
        if self.settings.monitoring_run_now:
            config = record.doc.get("MonitoringScheduleConfig") or {}
            schedule = parse_schedule(str((config.get("ScheduleConfig") or {}).get("ScheduleExpression")))
            self._run_at_once(record.name, schedule, config.get("ScheduleConfig") or {})

    def stop(self, name: str) -> None:
        """StopMonitoringSchedule: no more executions until it is started again."""
        record = self.find(name)
        self.store.update(SCHEDULE, record.name, status="Stopped")

    def delete(self, name: str) -> None:
        """DeleteMonitoringSchedule (its executions' processing jobs stay, as on SageMaker)."""
        record = self.find(name)
        with self._lock:
            self.store.delete(SCHEDULE, record.name)
        for execution in self.executions(schedule=record.name):
            self.store.delete(EXECUTION, execution.name)

    def schedules_using(self, definition: str) -> list[str]:
        """Names of the schedules that run job definition ``definition``."""
        return [
            r.name
            for r in self.store.list(SCHEDULE)
            if str(
                (r.doc.get("MonitoringScheduleConfig") or {}).get("MonitoringJobDefinitionName") or ""
            ).lower()
            == definition.lower()
        ]

    # -- executions -----------------------------------------------------------------------------
    def executions(self, schedule: str | None = None) -> list[Record]:
        """Execution records (of one schedule)."""
        records = self.store.list(EXECUTION)
        if schedule is not None:
            records = [
                r for r in records if str(r.doc.get("MonitoringScheduleName", "")).lower() == schedule.lower()
            ]
        return records

    def execution_summary(self, record: Record) -> dict[str, Any]:
        """A MonitoringExecutionSummary."""
        job_name = record.doc.get("ProcessingJobName")
        job = self.store.get(PROCESSING_KIND, job_name) if job_name else None
        status, reason = execution_status(record, job)
        return {
            "MonitoringScheduleName": record.doc.get("MonitoringScheduleName"),
            "ScheduledTime": record.doc.get("ScheduledTime"),
            "CreationTime": record.created,
            "LastModifiedTime": max(record.modified, job.modified) if job else record.modified,
            "MonitoringExecutionStatus": status,
            "ProcessingJobArn": job.arn if job else None,
            "EndpointName": record.doc.get("EndpointName"),
            "FailureReason": reason,
            "MonitoringJobDefinitionName": record.doc.get("MonitoringJobDefinitionName"),
            "MonitoringType": "DataQuality",
        }

    def last_execution(self, schedule: str) -> dict[str, Any] | None:
        """The summary of a schedule's latest execution (DescribeMonitoringSchedule)."""
        records = self.executions(schedule)
        if not records:
            return None
        return self.execution_summary(
            max(records, key=lambda r: (r.doc.get("ScheduledTime") or 0, r.created))
        )

    def _run_at_once(self, name: str, schedule: Schedule, schedule_config: dict[str, Any]) -> None:
        now = datetime.now(timezone.utc)
        if schedule.cron is None:
            start = now - parse_offset(
                schedule_config.get("DataAnalysisStartTime"), "DataAnalysisStartTime", WINDOW
            )
            end = now - parse_offset(
                schedule_config.get("DataAnalysisEndTime"), "DataAnalysisEndTime", timedelta()
            )
        else:
            start, end = now - WINDOW, now
        self.run(name, now, start, end)

    def run(self, name: str, scheduled: datetime, start: datetime, end: datetime) -> str | None:
        """Start one execution of schedule ``name`` at ``scheduled`` over captures in ``[start, end)``;
        the processing job's name (None when it could not start: the execution is Failed)."""
        record = self.find(name)
        config = record.doc.get("MonitoringScheduleConfig") or {}
        stamp = scheduled.strftime("%Y%m%d%H%M%S")
        digest = hashlib.sha1(f"{record.name}/{scheduled.timestamp()}".encode()).hexdigest()[:8]
        job_name = f"model-monitoring-{stamp}-{digest}"
        doc: dict[str, Any] = {
            "MonitoringScheduleName": record.name,
            "ScheduledTime": scheduled.timestamp(),
            "EndpointName": record.doc.get("EndpointName"),
            "MonitoringJobDefinitionName": config.get("MonitoringJobDefinitionName"),
        }
        try:
            request = self._processing_request(record.name, config, job_name, scheduled, (start, end))
            self.processing.check(request)
            doc["ProcessingJobName"] = job_name
            self.processing.create(request)
        except (ValidationException, ResourceNotFound, ResourceInUse, StorageError) as exc:
            doc.pop("ProcessingJobName", None)
            doc["FailureReason"] = str(exc.message if hasattr(exc, "message") else exc)[:1024]
            log.warning("monitoring schedule %s: execution at %s failed: %s", record.name, scheduled, exc)
        created = state_now()
        self.store.insert(
            Record(
                kind=EXECUTION,
                name=job_name,
                arn=f"{record.arn}/execution/{job_name}",
                status=None,
                created=created,
                modified=created,
                doc=doc,
            )
        )
        return doc.get("ProcessingJobName")

    def baseline_uris(self, spec: JobSpec, config: dict[str, Any]) -> tuple[str | None, str | None]:
        """The baseline constraints and statistics files of a job: its resources, or the outputs of the
        baselining job it names."""
        constraints, statistics = spec.constraints_uri, spec.statistics_uri
        name = config.get("MonitoringJobDefinitionName")
        definition = self.store.get(DEFINITION, name) if name else None
        inline = config.get("MonitoringJobDefinition") or {}
        baseline = (
            definition.doc.get("DataQualityBaselineConfig") if definition else inline.get("BaselineConfig")
        )
        job_name = (baseline or {}).get("BaseliningJobName")
        if job_name and (constraints is None or statistics is None):
            job = self.store.get(PROCESSING_KIND, job_name)
            outputs = ((job.doc.get("ProcessingOutputConfig") or {}).get("Outputs") or []) if job else []
            if not outputs:
                raise ValidationException(f"Baselining job {job_name} does not exist or has no output.")
            base = str(outputs[0]["S3Output"]["S3Uri"]).rstrip("/")
            constraints = constraints or f"{base}/constraints.json"
            statistics = statistics or f"{base}/statistics.json"
        return constraints, statistics

    def _processing_request(
        self,
        schedule: str,
        config: dict[str, Any],
        job_name: str,
        scheduled: datetime,
        window: tuple[datetime, datetime],
    ) -> dict[str, Any]:
        """The CreateProcessingJob request of one execution."""
        spec = self.job_spec(config)
        start, end = window
        destination = self.capture_destination(spec.endpoint)
        endpoint_record = self.store.get("endpoint", spec.endpoint)
        variants = (
            [
                str(v.get("VariantName"))
                for v in ((endpoint_record.doc.get("_Config") or {}).get("ProductionVariants") or [])
            ]
            if endpoint_record
            else []
        )
        # the capture folders (one per hour) that hold records of [start, end); the analyzer filters the
        # records by their inferenceTime
        hours: list[datetime] = []
        hour = start.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        while hour < end and len(hours) < MAX_WINDOW_HOURS:
            hours.append(hour)
            hour += timedelta(hours=1)
        relatives: list[str] = []
        for variant in variants:
            for hour in hours:
                prefix = f"{destination}/{spec.endpoint}/{variant}/{hour:%Y/%m/%d/%H}/"
                try:
                    refs = self.storage.list(prefix)
                except StorageError:
                    continue  # no capture in that hour
                relatives += [f"{spec.endpoint}/{variant}/{hour:%Y/%m/%d/%H}/{r.relative}" for r in refs]
        if not relatives:
            raise ValidationException("Job inputs had no data")
        work = self.settings.work_dir / "monitoring" / job_name
        work.mkdir(parents=True, exist_ok=True)
        manifest = work / "endpoint-input.manifest"
        manifest.write_text(json.dumps([{"prefix": f"{destination}/"}, *relatives]))
        constraints, statistics = self.baseline_uris(spec, config)
        environment = {
            **spec.environment,
            "dataset_format": json.dumps(CAPTURE_FORMAT),
            "dataset_source": spec.local_path,
            "output_path": spec.output_local_path,
            "publish_cloudwatch_metrics": spec.environment.get("publish_cloudwatch_metrics", "Disabled"),
            "sagemaker_endpoint_name": spec.endpoint,
            "sagemaker_monitoring_schedule_name": schedule,
            "start_time": _iso(start),
            "end_time": _iso(end),
            "metric_time": _iso(scheduled),
        }
        inputs: list[dict[str, Any]] = [
            {
                "InputName": "endpoint_input_1",
                "S3Input": {
                    "S3Uri": manifest.as_uri(),
                    "S3DataType": "ManifestFile",
                    "LocalPath": spec.local_path,
                    "S3InputMode": "File",
                },
            }
        ]
        for input_name, uri, local, variable in (
            ("baseline_constraints", constraints, BASELINE_CONSTRAINTS_PATH, "baseline_constraints"),
            ("baseline_statistics", statistics, BASELINE_STATISTICS_PATH, "baseline_statistics"),
        ):
            if uri:
                inputs.append(
                    {
                        "InputName": input_name,
                        "S3Input": {
                            "S3Uri": uri,
                            "S3DataType": "S3Prefix",
                            "LocalPath": local,
                            "S3InputMode": "File",
                        },
                    }
                )
                environment[variable] = f"{local}/{uri.rstrip('/').rsplit('/', 1)[-1]}"
        app: dict[str, Any] = {"ImageUri": spec.image}
        if spec.entrypoint:
            app["ContainerEntrypoint"] = spec.entrypoint
        if spec.arguments:
            app["ContainerArguments"] = spec.arguments
        return {
            "ProcessingJobName": job_name,
            "RoleArn": spec.role,
            "AppSpecification": app,
            "Environment": environment,
            "ProcessingInputs": inputs,
            "ProcessingOutputConfig": {
                "Outputs": [
                    {
                        "OutputName": "result",
                        "S3Output": {
                            "S3Uri": f"{spec.output_uri}/{spec.endpoint}/{schedule}/{scheduled:%Y/%m/%d/%H}",
                            "LocalPath": spec.output_local_path,
                            "S3UploadMode": "EndOfJob",
                        },
                    }
                ]
            },
            "ProcessingResources": {"ClusterConfig": spec.cluster},
            "StoppingCondition": {"MaxRuntimeInSeconds": spec.max_runtime},
        }

    # -- the clock ------------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> list[str]:
        """Start the executions due at ``now`` (one per schedule: its latest tick); their job names."""
        moment = time.time() if now is None else now
        started: list[str] = []
        for record in self.store.list(SCHEDULE):
            if record.status != "Scheduled":
                continue
            config = record.doc.get("MonitoringScheduleConfig") or {}
            try:
                schedule = parse_schedule(str((config.get("ScheduleConfig") or {}).get("ScheduleExpression")))
            except ValidationException:
                continue
            tick = schedule.latest_tick(float(record.doc.get("_LastTick") or record.created), moment)
            if tick is None:
                continue
            with self._lock:
                if self.store.update(SCHEDULE, record.name, merge={"_LastTick": tick}, touch=False) is None:
                    continue  # deleted meanwhile
            when = datetime.fromtimestamp(tick, timezone.utc)
            job = self.run(record.name, when, when - WINDOW, when)
            if job:
                started.append(job)
        return started

    def _loop(self) -> None:
        while not self._stopping.wait(self.settings.monitoring_check_interval):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - one bad tick must not stop the clock
                log.exception("monitoring schedules: a tick failed")

    def start_clock(self) -> None:
        """Start the thread that runs due schedules (every ``monitoring_check_interval`` seconds).

        Ticks missed while the platform was down are skipped: a schedule's last tick moves to now."""
        for record in self.store.list(SCHEDULE):
            self.store.update(SCHEDULE, record.name, merge={"_LastTick": time.time()}, touch=False)
        self._thread = threading.Thread(target=self._loop, name="monitoring-clock", daemon=True)
        self._thread.start()

    def stop_clock(self) -> None:
        """Stop the clock thread (running executions are processing jobs: they stop with those)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

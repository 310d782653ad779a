"""CreateTrainingJob, DescribeTrainingJob, StopTrainingJob, ListTrainingJobs, UpdateTrainingJob."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.common import list_page
from selfmaker.api.metrics import Metrics, family
from selfmaker.api.ops._shared import check_instances, public, status_metrics
from selfmaker.api.registry import metrics_source, operation
from selfmaker.errors import ValidationException
from selfmaker.state import Record

if TYPE_CHECKING:
    from selfmaker.services import Services

#: required up to botocore 1.29 (the SageMaker Python SDK and older clients rely on them)
_LEGACY_REQUIRED = ("AlgorithmSpecification", "ResourceConfig", "StoppingCondition")


def _find(platform: Services, name: str) -> Record:
    record = platform.store.get("training-job", name)
    if record is None:
        raise ValidationException("Requested resource not found.")
    return record


@operation("CreateTrainingJob")
async def create_training_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Record the job (InProgress) and run it with the training runner in a thread."""
    name = params["TrainingJobName"]
    for member in _LEGACY_REQUIRED:
        if not params.get(member):
            raise ValidationException(
                f"1 validation error detected: Value null at '{member[0].lower()}{member[1:]}' "
                "failed to satisfy constraint: Member must not be null"
            )
    spec = params["AlgorithmSpecification"]
    if not spec.get("TrainingImage") and not spec.get("AlgorithmName"):
        raise ValidationException(
            "AlgorithmSpecification must specify either TrainingImage or AlgorithmName."
        )
    if spec.get("TrainingImage") and spec.get("AlgorithmName"):
        raise ValidationException(
            "AlgorithmSpecification cannot specify both TrainingImage and AlgorithmName."
        )
    resources = params["ResourceConfig"]
    groups = resources.get("InstanceGroups") or []
    hosts = sum(g.get("InstanceCount") or 0 for g in groups) if groups else resources.get("InstanceCount")
    if not hosts or hosts < 1:
        raise ValidationException(
            "ResourceConfig needs InstanceCount of at least 1 (or InstanceGroups with at least one instance)."
        )
    check_instances(platform, hosts, f"Training job '{name}'")
    channels = [c["ChannelName"] for c in params.get("InputDataConfig") or []]
    if len(set(channels)) != len(channels):
        raise ValidationException("Channel names in InputDataConfig must be unique.")
    check_spot_and_warm_pool(params)
    arn = platform.training.create(params)
    return {"TrainingJobArn": arn}


def check_spot_and_warm_pool(params: dict[str, Any]) -> None:
    """Managed spot (MaxWaitTimeInSeconds), warm pools (KeepAlivePeriodInSeconds) and CheckpointConfig's
    LocalPath, checked as SageMaker checks them."""
    stopping = params.get("StoppingCondition") or {}
    spot = bool(params.get("EnableManagedSpotTraining"))
    max_wait = stopping.get("MaxWaitTimeInSeconds")
    max_runtime = stopping.get("MaxRuntimeInSeconds") or 86400
    if spot and (max_wait is None or max_wait < max_runtime):
        raise ValidationException(
            "Invalid MaxWaitTimeInSeconds. It must be present and be greater than or equal to "
            "MaxRuntimeInSeconds"
        )
    if not spot and max_wait is not None:
        raise ValidationException(
            "Invalid MaxWaitTimeInSeconds. It is only supported when EnableManagedSpotTraining is set to true"
        )
    resources = params["ResourceConfig"]
    if resources.get("KeepAlivePeriodInSeconds"):
        if spot:
            raise ValidationException(
                "KeepAlivePeriodInSeconds (warm pools) is not supported with managed spot training "
                "(EnableManagedSpotTraining)."
            )
        if resources.get("InstanceGroups"):
            raise ValidationException(
                "KeepAlivePeriodInSeconds (warm pools) is not supported with heterogeneous clusters "
                "(ResourceConfig.InstanceGroups)."
            )
    checkpoint = params.get("CheckpointConfig")
    if checkpoint:
        # the runner's own check, so the request is refused now rather than failing the job later (the
        # training runtime is imported on demand: a platform without it still validates everything else)
        from training.runner import TrainingRequestError, checkpoint_local_path

        try:
            checkpoint_local_path(checkpoint)
        except TrainingRequestError as exc:
            raise ValidationException(str(exc)) from exc


@operation("UpdateTrainingJob")
async def update_training_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The keep-alive of a job's warm pool (ResourceConfig.KeepAlivePeriodInSeconds) and its profiler
    settings."""
    record = _find(platform, params["TrainingJobName"])
    if params.get("ResourceConfig"):
        if not record.doc.get("WarmPoolStatus") and not (record.doc.get("ResourceConfig") or {}).get(
            "KeepAlivePeriodInSeconds"
        ):
            raise ValidationException(
                f"Training job {record.name} was not created with a warm pool "
                "(ResourceConfig.KeepAlivePeriodInSeconds): its KeepAlivePeriodInSeconds cannot be updated."
            )
        pool = (record.doc.get("WarmPoolStatus") or {}).get("Status")
        if pool in ("Terminated", "Reused"):
            raise ValidationException(
                f"The warm pool of training job {record.name} is {pool}: its KeepAlivePeriodInSeconds "
                "cannot be updated."
            )
    platform.training.update(record.name, params)
    return {"TrainingJobArn": record.arn}


@operation("DescribeTrainingJob")
async def describe_training_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Status, transitions, metrics, artifacts and failure reason of a training job."""
    record = _find(platform, params["TrainingJobName"])
    doc = public(record.doc)
    doc.update(TrainingJobName=record.name, TrainingJobStatus=record.status, LastModifiedTime=record.modified)
    _with_sagemaker_defaults(doc)
    return doc


#: Members SageMaker's DescribeTrainingJob always returns, with the value it returns when the request
#: left them out (the SDK's ``Estimator.attach`` reads ``OutputDataConfig.KmsKeyId`` unconditionally).
_DESCRIBE_DEFAULTS: dict[str, Any] = {
    "EnableNetworkIsolation": False,
    "EnableInterContainerTrafficEncryption": False,
    "EnableManagedSpotTraining": False,
}


def _with_sagemaker_defaults(doc: dict[str, Any]) -> None:
    for key, value in _DESCRIBE_DEFAULTS.items():
        doc.setdefault(key, value)
    output = doc.get("OutputDataConfig")
    if isinstance(output, dict):
        doc["OutputDataConfig"] = {"KmsKeyId": "", **output}
    spec = doc.get("AlgorithmSpecification")
    if isinstance(spec, dict):
        doc["AlgorithmSpecification"] = {"EnableSageMakerMetricsTimeSeries": False, **spec}


@operation("StopTrainingJob")
async def stop_training_job(platform: Services, params: dict[str, Any]) -> None:
    """InProgress → Stopping → Stopped."""
    record = _find(platform, params["TrainingJobName"])
    platform.training.stop(record.name)


@operation("ListTrainingJobs")
async def list_training_jobs(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Training jobs, filtered (name, status, times), sorted and paginated."""

    def summary(r: Record) -> dict[str, Any]:
        return {
            "TrainingJobName": r.name,
            "TrainingJobArn": r.arn,
            "CreationTime": r.created,
            "TrainingJobStatus": r.status,
            "TrainingEndTime": r.doc.get("TrainingEndTime"),
            "LastModifiedTime": r.modified,
            "SecondaryStatus": r.doc.get("SecondaryStatus"),
            "WarmPoolStatus": r.doc.get("WarmPoolStatus"),
        }

    records = platform.store.list("training-job")
    if params.get("WarmPoolStatusEquals"):
        records = [
            r
            for r in records
            if (r.doc.get("WarmPoolStatus") or {}).get("Status") == params["WarmPoolStatusEquals"]
        ]
    items, token = list_page(records, params, summary, default_order="Ascending")
    return {"TrainingJobSummaries": items, "NextToken": token}


@metrics_source
def training_metrics(platform: Services) -> Metrics:
    """Training jobs by status; the latest value of every metric of the jobs in progress."""
    found = status_metrics(
        platform,
        "training-job",
        "selfmaker_training_jobs",
        "Training jobs in each TrainingJobStatus.",
        "TrainingJobStatus",
    )
    samples: list[tuple[dict[str, str], float | int | None]] = []
    for record in platform.store.list("training-job", status="InProgress"):
        for point in record.doc.get("FinalMetricDataList") or []:
            if isinstance(point, dict) and isinstance(point.get("Value"), (int, float)):
                labels = {"training_job": record.name, "metric": str(point.get("MetricName"))}
                samples.append((labels, point["Value"]))
    family(
        found.lines,
        "selfmaker_training_metric",
        "gauge",
        "Latest value of a training job's metric (MetricDefinitions or built-in), while the job runs.",
        samples,
    )
    return found

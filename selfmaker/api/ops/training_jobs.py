"""CreateTrainingJob, DescribeTrainingJob, StopTrainingJob, ListTrainingJobs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.common import list_page
from selfmaker.api.ops._shared import check_instances, public
from selfmaker.api.registry import operation
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
    arn = platform.training.create(params)
    return {"TrainingJobArn": arn}


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
        }

    records = platform.store.list("training-job")
    if params.get("WarmPoolStatusEquals"):  # jobs here keep no warm pool: only a status they report matches
        records = [
            r
            for r in records
            if (r.doc.get("WarmPoolStatus") or {}).get("Status") == params["WarmPoolStatusEquals"]
        ]
    items, token = list_page(records, params, summary, default_order="Ascending")
    return {"TrainingJobSummaries": items, "NextToken": token}

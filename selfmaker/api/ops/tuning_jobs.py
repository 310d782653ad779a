"""CreateHyperParameterTuningJob, DescribeHyperParameterTuningJob, ListHyperParameterTuningJobs,
StopHyperParameterTuningJob, DeleteHyperParameterTuningJob and ListTrainingJobsForHyperParameterTuningJob
(the tuning jobs run in :class:`selfmaker.jobs.tuning.TuningManager`; see docs/tuning.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.common import decode_offset, encode_token, list_page
from selfmaker.api.metrics import Metrics
from selfmaker.api.ops._shared import check_instances, status_metrics
from selfmaker.api.ops.training_jobs import check_spot_and_warm_pool
from selfmaker.api.registry import metrics_source, operation
from selfmaker.errors import ValidationException
from selfmaker.jobs.tuning import (
    KIND,
    RUNNING,
    TuningPlan,
    counters,
    describe,
    resource_config,
    training_job_summaries,
)
from selfmaker.state import Record

if TYPE_CHECKING:
    from selfmaker.services import Services

#: SageMaker's limit on warm-start parents
MAX_PARENTS = 5


def _find(platform: Services, name: str) -> Record:
    record = platform.store.get(KIND, name)
    if record is None:
        raise ValidationException(f"Amazon SageMaker can't find a tuning job with name {name}")
    return record


def _check_definition(platform: Services, name: str, definition: dict[str, Any]) -> None:
    """What CreateTrainingJob would refuse in a training job definition."""
    spec = definition["AlgorithmSpecification"]
    if not spec.get("TrainingImage") and not spec.get("AlgorithmName"):
        raise ValidationException(
            "AlgorithmSpecification must specify either TrainingImage or AlgorithmName."
        )
    if spec.get("TrainingImage") and spec.get("AlgorithmName"):
        raise ValidationException(
            "AlgorithmSpecification cannot specify both TrainingImage and AlgorithmName."
        )
    channels = [c["ChannelName"] for c in definition.get("InputDataConfig") or []]
    if len(set(channels)) != len(channels):
        raise ValidationException("Channel names in InputDataConfig must be unique.")
    resources = resource_config(definition)
    check_instances(platform, resources.get("InstanceCount"), f"Tuning job '{name}'")
    # managed spot, warm pools and checkpoints as CreateTrainingJob checks them (each training job is one)
    check_spot_and_warm_pool({**definition, "ResourceConfig": resources})


@operation("CreateHyperParameterTuningJob")
async def create_hyper_parameter_tuning_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Check the request (ranges, strategy, objective, limits, warm start), record it and start its
    optimiser."""
    name = params["HyperParameterTuningJobName"]
    plan = TuningPlan.from_request(params, name)
    for definition in plan.definitions:
        _check_definition(platform, name, definition.request)
    warm = params.get("WarmStartConfig")
    if warm:
        parents = warm.get("ParentHyperParameterTuningJobs") or []
        if not parents or len(parents) > MAX_PARENTS:
            raise ValidationException(
                f"WarmStartConfig.ParentHyperParameterTuningJobs must list 1 to {MAX_PARENTS} tuning jobs."
            )
        for parent in parents:
            parent_name = parent.get("HyperParameterTuningJobName") or ""
            record = platform.store.get(KIND, parent_name)
            if record is None:
                raise ValidationException(
                    f"The parent hyperparameter tuning job {parent_name} does not exist."
                )
            if record.status in RUNNING:
                raise ValidationException(
                    f"The parent hyperparameter tuning job {parent_name} is {record.status}; a warm start "
                    "needs parents that have ended (Completed, Stopped or Failed)."
                )
    arn = platform.tuning.create(params, plan)
    return {"HyperParameterTuningJobArn": arn}


@operation("DescribeHyperParameterTuningJob")
async def describe_hyper_parameter_tuning_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Status, counters, best training job and completion details of a tuning job."""
    record = _find(platform, params["HyperParameterTuningJobName"])
    return describe(platform.store, record)


@operation("StopHyperParameterTuningJob")
async def stop_hyper_parameter_tuning_job(platform: Services, params: dict[str, Any]) -> None:
    """InProgress → Stopping (its training jobs are stopped) → Stopped."""
    record = _find(platform, params["HyperParameterTuningJobName"])
    platform.tuning.stop(record.name)


@operation("DeleteHyperParameterTuningJob")
async def delete_hyper_parameter_tuning_job(platform: Services, params: dict[str, Any]) -> None:
    """Forget an ended tuning job (its training jobs and their artifacts stay)."""
    record = _find(platform, params["HyperParameterTuningJobName"])
    platform.tuning.delete(record.name)


@operation("ListHyperParameterTuningJobs")
async def list_hyper_parameter_tuning_jobs(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Tuning jobs, filtered (name, status, times), sorted and paginated."""

    def summary(r: Record) -> dict[str, Any]:
        status_counters, objective_counters = counters(training_job_summaries(platform.store, r))
        config = r.doc.get("HyperParameterTuningJobConfig") or {}
        return {
            "HyperParameterTuningJobName": r.name,
            "HyperParameterTuningJobArn": r.arn,
            "HyperParameterTuningJobStatus": r.status,
            "Strategy": config.get("Strategy"),
            "CreationTime": r.created,
            "HyperParameterTuningEndTime": r.doc.get("HyperParameterTuningEndTime"),
            "LastModifiedTime": r.modified,
            "TrainingJobStatusCounters": status_counters,
            "ObjectiveStatusCounters": objective_counters,
            "ResourceLimits": config.get("ResourceLimits"),
        }

    items, token = list_page(platform.store.list(KIND), params, summary)
    return {"HyperParameterTuningJobSummaries": items, "NextToken": token}


@operation("ListTrainingJobsForHyperParameterTuningJob")
async def list_training_jobs_for_hyper_parameter_tuning_job(
    platform: Services, params: dict[str, Any]
) -> dict[str, Any]:
    """A tuning job's training jobs; SortBy Name (default), CreationTime, Status or FinalObjectiveMetricValue
    (which leaves out the jobs without an objective value, as SageMaker does)."""
    record = _find(platform, params["HyperParameterTuningJobName"])
    summaries = training_job_summaries(platform.store, record)
    if params.get("StatusEquals"):
        summaries = [s for s in summaries if s["TrainingJobStatus"] == params["StatusEquals"]]
    sort_by = params.get("SortBy") or "Name"
    descending = (params.get("SortOrder") or "Ascending") == "Descending"
    if sort_by == "FinalObjectiveMetricValue":
        summaries = [s for s in summaries if "FinalHyperParameterTuningJobObjectiveMetric" in s]
        summaries.sort(
            key=lambda s: (s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"], s["TrainingJobName"]),
            reverse=descending,
        )
    else:
        field = {"Name": "TrainingJobName", "CreationTime": "CreationTime", "Status": "TrainingJobStatus"}[
            sort_by
        ]
        summaries.sort(key=lambda s: (s[field], s["TrainingJobName"]), reverse=descending)
    fingerprint = f"{record.arn}|{params.get('StatusEquals')}|{sort_by}|{descending}"
    offset = decode_offset(params["NextToken"], fingerprint) if params.get("NextToken") else 0
    limit = params.get("MaxResults") or 10
    token = encode_token(offset + limit, fingerprint) if offset + limit < len(summaries) else None
    return {"TrainingJobSummaries": summaries[offset : offset + limit], "NextToken": token}


@metrics_source
def tuning_job_metrics(platform: Services) -> Metrics:
    """Hyperparameter tuning jobs by HyperParameterTuningJobStatus (a gauge per status)."""
    return status_metrics(
        platform,
        KIND,
        "selfmaker_tuning_jobs",
        "Hyperparameter tuning jobs in each HyperParameterTuningJobStatus.",
        "HyperParameterTuningJobStatus",
    )

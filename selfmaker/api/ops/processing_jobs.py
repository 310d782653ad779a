"""CreateProcessingJob, DescribeProcessingJob, StopProcessingJob, ListProcessingJobs (the jobs run in
:class:`selfmaker.jobs.processing.ProcessingJobs`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.common import list_page
from selfmaker.api.metrics import Metrics
from selfmaker.api.ops._shared import check_instances, public, status_metrics
from selfmaker.api.registry import metrics_source, operation
from selfmaker.errors import ValidationException
from selfmaker.jobs.processing import KIND
from selfmaker.state import Record

if TYPE_CHECKING:
    from selfmaker.services import Services


def _find(platform: Services, name: str) -> Record:
    record = platform.store.get(KIND, name)
    if record is None:
        raise ValidationException(f"Could not find requested job with name {name}")
    return record


@operation("CreateProcessingJob")
async def create_processing_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Check the request (LocalPaths, inputs, outputs, image), record the job (InProgress) and start it."""
    name = params["ProcessingJobName"]
    cluster = params["ProcessingResources"]["ClusterConfig"]
    check_instances(platform, cluster.get("InstanceCount"), f"Processing job '{name}'")
    platform.processing.check(params)
    return {"ProcessingJobArn": platform.processing.create(params)}


@operation("DescribeProcessingJob")
async def describe_processing_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The request as given plus status, times, ExitMessage and FailureReason."""
    record = _find(platform, params["ProcessingJobName"])
    doc = public(record.doc)
    doc.update(
        ProcessingJobName=record.name,
        ProcessingJobStatus=record.status,
        CreationTime=record.created,
        LastModifiedTime=record.modified,
    )
    return doc


@operation("StopProcessingJob")
async def stop_processing_job(platform: Services, params: dict[str, Any]) -> None:
    """InProgress → Stopping → Stopped (SIGTERM, SIGKILL after the grace period)."""
    record = _find(platform, params["ProcessingJobName"])
    platform.processing.stop(record.name)


@operation("ListProcessingJobs")
async def list_processing_jobs(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Processing jobs, filtered (name, status, times), sorted and paginated."""

    def summary(r: Record) -> dict[str, Any]:
        return {
            "ProcessingJobName": r.name,
            "ProcessingJobArn": r.arn,
            "CreationTime": r.created,
            "ProcessingEndTime": r.doc.get("ProcessingEndTime"),
            "LastModifiedTime": r.modified,
            "ProcessingJobStatus": r.status,
            "FailureReason": r.doc.get("FailureReason"),
            "ExitMessage": r.doc.get("ExitMessage"),
        }

    # botocore documents Ascending as ListProcessingJobs' default order (as ListTrainingJobs')
    items, token = list_page(platform.store.list(KIND), params, summary, default_order="Ascending")
    return {"ProcessingJobSummaries": items, "NextToken": token}


@metrics_source
def processing_job_metrics(platform: Services) -> Metrics:
    """Processing jobs by ProcessingJobStatus (a gauge per status)."""
    return status_metrics(
        platform,
        KIND,
        "selfmaker_processing_jobs",
        "Processing jobs in each ProcessingJobStatus.",
        "ProcessingJobStatus",
    )

"""CreateTransformJob, DescribeTransformJob, StopTransformJob, ListTransformJobs (the jobs run in
:class:`selfmaker.jobs.transform.TransformJobs`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batch.errors import TransformRequestError
from batch.request import parse_request
from selfmaker.api.common import list_page
from selfmaker.api.metrics import Metrics
from selfmaker.api.ops._shared import check_instances, find, public, status_metrics
from selfmaker.api.registry import metrics_source, operation
from selfmaker.errors import ValidationException
from selfmaker.jobs.transform import KIND
from selfmaker.state import Record

if TYPE_CHECKING:
    from selfmaker.services import Services


def _find(platform: Services, name: str) -> Record:
    record = platform.store.get(KIND, name)
    if record is None:
        raise ValidationException(f"Could not find requested job with name {name}")
    return record


@operation("CreateTransformJob")
async def create_transform_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Validate, record the job (InProgress) and start it."""
    name = params["TransformJobName"]
    find(platform, "model", params["ModelName"])
    check_instances(
        platform, (params.get("TransformResources") or {}).get("InstanceCount"), f"Transform job '{name}'"
    )
    try:
        parse_request(params)
    except TransformRequestError as exc:
        raise ValidationException(str(exc)) from None
    arn = platform.transforms.create(params)
    return {"TransformJobArn": arn}


@operation("DescribeTransformJob")
async def describe_transform_job(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Status, times, failure reason and the echoed request of a transform job."""
    record = _find(platform, params["TransformJobName"])
    doc = public(record.doc)
    doc.update(TransformJobName=record.name, TransformJobStatus=record.status)
    return doc


@operation("StopTransformJob")
async def stop_transform_job(platform: Services, params: dict[str, Any]) -> None:
    """InProgress → Stopping → Stopped (finished objects stay; the rest is never written)."""
    record = _find(platform, params["TransformJobName"])
    platform.transforms.stop(record.name)


@operation("ListTransformJobs")
async def list_transform_jobs(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Transform jobs, filtered (name, status, times), sorted and paginated."""

    def summary(r: Record) -> dict[str, Any]:
        return {
            "TransformJobName": r.name,
            "TransformJobArn": r.arn,
            "CreationTime": r.created,
            "TransformJobStatus": r.status,
            "TransformEndTime": r.doc.get("TransformEndTime"),
            "LastModifiedTime": r.modified,
            "FailureReason": r.doc.get("FailureReason"),
        }

    items, token = list_page(platform.store.list(KIND), params, summary)
    return {"TransformJobSummaries": items, "NextToken": token}


@metrics_source
def transform_job_metrics(platform: Services) -> Metrics:
    """Transform jobs by TransformJobStatus (a gauge per status)."""
    return status_metrics(
        platform,
        KIND,
        "selfmaker_transform_jobs",
        "Transform jobs in each TransformJobStatus.",
        "TransformJobStatus",
    )

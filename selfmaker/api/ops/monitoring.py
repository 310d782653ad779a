"""Model Monitor's operations: monitoring schedules, their executions and alerts, and the four kinds of
monitoring job definitions (the schedules run in :class:`selfmaker.jobs.monitoring.MonitoringManager`).

Data-quality job definitions are served whole. Model-quality, bias and explainability definitions cannot
be created here (a ValidationException says so); their List operations answer empty and their Describe and
Delete ResourceNotFound, so the SageMaker SDK's clean-up code (``predictor.list_monitors()`` …) works.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from selfmaker.api.common import list_page, to_epoch
from selfmaker.api.ops._shared import public
from selfmaker.api.registry import operation
from selfmaker.errors import ResourceInUse, ResourceNotFound, ValidationException
from selfmaker.jobs.monitoring import DEFINITION, SCHEDULE, definition_spec
from selfmaker.state import Record
from selfmaker.state import now as state_now

if TYPE_CHECKING:
    from selfmaker.services import Services

#: the job definition kinds selfmaker cannot run: operation name part → ARN type
OTHER_DEFINITIONS = {
    "ModelQuality": "model-quality-job-definition",
    "ModelBias": "model-bias-job-definition",
    "ModelExplainability": "model-explainability-job-definition",
}


# -- schedules --------------------------------------------------------------------------------------


@operation("CreateMonitoringSchedule")
async def create_monitoring_schedule(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Check the schedule (cron, job definition, an endpoint that captures data), record it (Scheduled)."""
    # in a thread: a schedule that runs at once lists the endpoint's capture files (S3 calls)
    arn = await asyncio.to_thread(
        platform.monitoring.create,
        params["MonitoringScheduleName"],
        params["MonitoringScheduleConfig"],
        params.get("Tags"),
    )
    return {"MonitoringScheduleArn": arn}


@operation("DescribeMonitoringSchedule")
async def describe_monitoring_schedule(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The schedule, its status and its latest execution."""
    record = platform.monitoring.find(params["MonitoringScheduleName"])
    doc = public(record.doc)
    doc.update(
        MonitoringScheduleName=record.name,
        MonitoringScheduleStatus=record.status,
        CreationTime=record.created,
        LastModifiedTime=record.modified,
        LastMonitoringExecutionSummary=platform.monitoring.last_execution(record.name),
    )
    return doc


@operation("UpdateMonitoringSchedule")
async def update_monitoring_schedule(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """A new MonitoringScheduleConfig, checked as at creation."""
    arn = await asyncio.to_thread(  # as Create: a schedule updated to NOW runs at once
        platform.monitoring.update, params["MonitoringScheduleName"], params["MonitoringScheduleConfig"]
    )
    return {"MonitoringScheduleArn": arn}


@operation("DeleteMonitoringSchedule")
async def delete_monitoring_schedule(platform: Services, params: dict[str, Any]) -> None:
    """Forget the schedule and its executions (their processing jobs stay)."""
    platform.monitoring.delete(params["MonitoringScheduleName"])


@operation("StartMonitoringSchedule")
async def start_monitoring_schedule(platform: Services, params: dict[str, Any]) -> None:
    """Stopped → Scheduled."""
    await asyncio.to_thread(platform.monitoring.start, params["MonitoringScheduleName"])  # as Create


@operation("StopMonitoringSchedule")
async def stop_monitoring_schedule(platform: Services, params: dict[str, Any]) -> None:
    """Scheduled → Stopped."""
    platform.monitoring.stop(params["MonitoringScheduleName"])


@operation("ListMonitoringSchedules")
async def list_monitoring_schedules(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Schedules, filtered by endpoint, job definition, type, name, status and times."""
    records = platform.store.list(SCHEDULE)
    if params.get("EndpointName"):
        records = [
            r for r in records if str(r.doc.get("EndpointName", "")).lower() == params["EndpointName"].lower()
        ]
    if params.get("MonitoringJobDefinitionName"):
        wanted = params["MonitoringJobDefinitionName"].lower()
        records = [
            r for r in records if str(_config(r).get("MonitoringJobDefinitionName") or "").lower() == wanted
        ]
    if params.get("MonitoringTypeEquals"):
        records = [r for r in records if r.doc.get("MonitoringType") == params["MonitoringTypeEquals"]]

    def summary(r: Record) -> dict[str, Any]:
        return {
            "MonitoringScheduleName": r.name,
            "MonitoringScheduleArn": r.arn,
            "CreationTime": r.created,
            "LastModifiedTime": r.modified,
            "MonitoringScheduleStatus": r.status,
            "EndpointName": r.doc.get("EndpointName"),
            "MonitoringJobDefinitionName": _config(r).get("MonitoringJobDefinitionName"),
            "MonitoringType": r.doc.get("MonitoringType"),
        }

    items, token = list_page(records, params, summary)
    return {"MonitoringScheduleSummaries": items, "NextToken": token}


def _config(record: Record) -> dict[str, Any]:
    return dict(record.doc.get("MonitoringScheduleConfig") or {})


# -- executions and alerts --------------------------------------------------------------------------


@operation("ListMonitoringExecutions")
async def list_monitoring_executions(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Executions (of a schedule, an endpoint), with their status read off their processing jobs."""
    monitoring = platform.monitoring
    records = monitoring.executions(params.get("MonitoringScheduleName"))
    if params.get("EndpointName"):
        records = [
            r for r in records if str(r.doc.get("EndpointName", "")).lower() == params["EndpointName"].lower()
        ]
    if params.get("MonitoringJobDefinitionName"):
        wanted = params["MonitoringJobDefinitionName"].lower()
        records = [
            r for r in records if str(r.doc.get("MonitoringJobDefinitionName") or "").lower() == wanted
        ]
    if params.get("MonitoringTypeEquals") and params["MonitoringTypeEquals"] != "DataQuality":
        records = []
    for member, before in (("ScheduledTimeBefore", True), ("ScheduledTimeAfter", False)):
        if params.get(member) is not None:
            bound = to_epoch(params[member], member)
            records = [
                r
                for r in records
                if (r.doc["ScheduledTime"] < bound if before else r.doc["ScheduledTime"] > bound)
            ]
    summaries = {r.name: monitoring.execution_summary(r) for r in records}
    if params.get("StatusEquals"):
        records = [
            r for r in records if summaries[r.name]["MonitoringExecutionStatus"] == params["StatusEquals"]
        ]
    # an execution is created at its scheduled time: ScheduledTime sorts as CreationTime; Status sorts by
    # the status read off the job
    view = [
        Record(
            r.kind,
            r.name,
            r.arn,
            summaries[r.name]["MonitoringExecutionStatus"],
            r.created,
            r.modified,
            r.doc,
        )
        for r in records
    ]
    rest = {k: v for k, v in params.items() if k != "StatusEquals"}
    if rest.get("SortBy") in (None, "ScheduledTime"):
        rest["SortBy"] = "CreationTime"
    items, token = list_page(view, rest, lambda r: summaries[r.name])
    return {"MonitoringExecutionSummaries": items, "NextToken": token}


@operation("ListMonitoringAlerts")
async def list_monitoring_alerts(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """No alerts are defined here (they need CloudWatch): an empty list for an existing schedule."""
    platform.monitoring.find(params["MonitoringScheduleName"])
    return {"MonitoringAlertSummaries": []}


@operation("ListMonitoringAlertHistory")
async def list_monitoring_alert_history(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """No alert has ever fired here."""
    if params.get("MonitoringScheduleName"):
        platform.monitoring.find(params["MonitoringScheduleName"])
    return {"MonitoringAlertHistory": []}


# -- data-quality job definitions -------------------------------------------------------------------


def _find_definition(platform: Services, name: str) -> Record:
    record = platform.store.get(DEFINITION, name)
    if record is None:
        raise ResourceNotFound(f"Job definition {platform.arn(DEFINITION, name)} does not exist.")
    return record


@operation("CreateDataQualityJobDefinition")
async def create_data_quality_job_definition(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Check the definition (an endpoint input of an existing endpoint, one output) and store it."""
    name = params["JobDefinitionName"]
    spec = definition_spec(params, name)
    if platform.store.get("endpoint", spec.endpoint) is None:
        raise ValidationException(
            f"Endpoint {platform.arn('endpoint', spec.endpoint)} does not exist or is not valid."
        )
    now = state_now()
    arn = platform.arn(DEFINITION, name)
    doc = {k: v for k, v in params.items() if k != "Tags"}
    doc["JobDefinitionArn"] = arn
    if not platform.store.insert(Record(DEFINITION, name, arn, None, now, now, doc)):
        raise ResourceInUse(f"Job definition {arn} already exists.")
    if params.get("Tags"):
        platform.store.add_tags(arn, params["Tags"])
    return {"JobDefinitionArn": arn}


@operation("DescribeDataQualityJobDefinition")
async def describe_data_quality_job_definition(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The stored definition."""
    record = _find_definition(platform, params["JobDefinitionName"])
    doc = public(record.doc)
    doc.update(JobDefinitionName=record.name, CreationTime=record.created)
    return doc


@operation("DeleteDataQualityJobDefinition")
async def delete_data_quality_job_definition(platform: Services, params: dict[str, Any]) -> None:
    """Delete a definition no schedule uses (ResourceInUse otherwise, as on SageMaker)."""
    record = _find_definition(platform, params["JobDefinitionName"])
    users = platform.monitoring.schedules_using(record.name)
    if users:
        raise ResourceInUse(
            f"Job definition {record.arn} is used by monitoring schedule {users[0]}: "
            "delete the schedule first."
        )
    platform.store.delete(DEFINITION, record.name)


@operation("ListDataQualityJobDefinitions")
async def list_data_quality_job_definitions(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Definitions, filtered by endpoint, name and creation time."""
    records = platform.store.list(DEFINITION)
    if params.get("EndpointName"):
        wanted = params["EndpointName"].lower()
        records = [r for r in records if _endpoint_of(r).lower() == wanted]

    def summary(r: Record) -> dict[str, Any]:
        return {
            "MonitoringJobDefinitionName": r.name,
            "MonitoringJobDefinitionArn": r.arn,
            "CreationTime": r.created,
            "EndpointName": _endpoint_of(r),
        }

    items, token = list_page(records, params, summary)
    return {"JobDefinitionSummaries": items, "NextToken": token}


def _endpoint_of(record: Record) -> str:
    return str(
        ((record.doc.get("DataQualityJobInput") or {}).get("EndpointInput") or {}).get("EndpointName") or ""
    )


# -- the kinds selfmaker does not run ----------------------------------------------------------------


def _unsupported(kind: str) -> ValidationException:
    return ValidationException(
        f"{kind} monitoring is not supported by selfmaker: only DataQuality job definitions "
        "(CreateDataQualityJobDefinition) run here."
    )


def _not_found(platform: Services, kind: str, name: str) -> ResourceNotFound:
    account, region = platform.settings.account_id, platform.settings.region
    arn = f"arn:aws:sagemaker:{region}:{account}:{OTHER_DEFINITIONS[kind]}/{name.lower()}"
    return ResourceNotFound(f"Job definition {arn} does not exist.")


@operation("CreateModelQualityJobDefinition")
async def create_model_quality_job_definition(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Refused: model quality monitoring does not run here."""
    raise _unsupported("ModelQuality")


@operation("CreateModelBiasJobDefinition")
async def create_model_bias_job_definition(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Refused: bias monitoring (Clarify) does not run here."""
    raise _unsupported("ModelBias")


@operation("CreateModelExplainabilityJobDefinition")
async def create_model_explainability_job_definition(
    platform: Services, params: dict[str, Any]
) -> dict[str, Any]:
    """Refused: explainability monitoring (Clarify) does not run here."""
    raise _unsupported("ModelExplainability")


@operation("DescribeModelQualityJobDefinition")
async def describe_model_quality_job_definition(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """No such definition can exist here."""
    raise _not_found(platform, "ModelQuality", params["JobDefinitionName"])


@operation("DescribeModelBiasJobDefinition")
async def describe_model_bias_job_definition(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """No such definition can exist here."""
    raise _not_found(platform, "ModelBias", params["JobDefinitionName"])


@operation("DescribeModelExplainabilityJobDefinition")
async def describe_model_explainability_job_definition(
    platform: Services, params: dict[str, Any]
) -> dict[str, Any]:
    """No such definition can exist here."""
    raise _not_found(platform, "ModelExplainability", params["JobDefinitionName"])


@operation("DeleteModelQualityJobDefinition")
async def delete_model_quality_job_definition(platform: Services, params: dict[str, Any]) -> None:
    """No such definition can exist here."""
    raise _not_found(platform, "ModelQuality", params["JobDefinitionName"])


@operation("DeleteModelBiasJobDefinition")
async def delete_model_bias_job_definition(platform: Services, params: dict[str, Any]) -> None:
    """No such definition can exist here."""
    raise _not_found(platform, "ModelBias", params["JobDefinitionName"])


@operation("DeleteModelExplainabilityJobDefinition")
async def delete_model_explainability_job_definition(platform: Services, params: dict[str, Any]) -> None:
    """No such definition can exist here."""
    raise _not_found(platform, "ModelExplainability", params["JobDefinitionName"])


@operation("ListModelQualityJobDefinitions")
@operation("ListModelBiasJobDefinitions")
@operation("ListModelExplainabilityJobDefinitions")
async def list_other_job_definitions(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Always empty."""
    return {"JobDefinitionSummaries": []}

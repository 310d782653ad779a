"""CloudWatch Logs on the control plane's port (``X-Amz-Target: Logs_20140328.<Operation>``): the subset the
SageMaker Python SDK and ``aws logs tail`` use — DescribeLogGroups, DescribeLogStreams, GetLogEvents and
FilterLogEvents — over the platform's log files (:class:`selfmaker.logstreams.LogStreams`).

Requests are validated against botocore's ``logs`` model before they get here (bad input is an
InvalidParameterException); unknown groups and streams are ResourceNotFoundException.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from selfmaker.api.registry import operation

if TYPE_CHECKING:
    from selfmaker.services import Services

SERVICE = "Logs_20140328"


@operation("DescribeLogGroups", service=SERVICE)
async def describe_log_groups(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The log groups that have logs: the job kinds' and one per endpoint."""
    logs = platform.logs
    return await asyncio.to_thread(
        logs.run,
        logs.describe_log_groups,
        params.get("logGroupNamePrefix"),
        params.get("logGroupNamePattern"),
        params.get("limit"),
        params.get("nextToken"),
    )


@operation("DescribeLogStreams", service=SERVICE)
async def describe_log_streams(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """A group's streams by name or by last event time, a page at a time."""
    logs = platform.logs
    group = logs.group_name(params.get("logGroupName"), params.get("logGroupIdentifier"))
    return await asyncio.to_thread(
        logs.run,
        logs.describe_log_streams,
        group,
        params.get("logStreamNamePrefix"),
        params.get("orderBy"),
        bool(params.get("descending", False)),
        params.get("limit"),
        params.get("nextToken"),
    )


@operation("GetLogEvents", service=SERVICE)
async def get_log_events(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """A page of one stream's events."""
    logs = platform.logs
    group = logs.group_name(params.get("logGroupName"), params.get("logGroupIdentifier"))
    return await asyncio.to_thread(
        logs.run,
        logs.get_log_events,
        group,
        params["logStreamName"],
        params.get("startTime"),
        params.get("endTime"),
        params.get("nextToken"),
        params.get("limit"),
        bool(params.get("startFromHead", False)),
    )


@operation("FilterLogEvents", service=SERVICE)
async def filter_log_events(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The matching events of a group's streams, interleaved by time."""
    logs = platform.logs
    group = logs.group_name(params.get("logGroupName"), params.get("logGroupIdentifier"))
    return await asyncio.to_thread(
        logs.run,
        logs.filter_log_events,
        group,
        params.get("logStreamNames"),
        params.get("logStreamNamePrefix"),
        params.get("startTime"),
        params.get("endTime"),
        params.get("filterPattern"),
        params.get("nextToken"),
        params.get("limit"),
    )

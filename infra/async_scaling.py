"""Queue settings and backlog scaling of async endpoints, as pure functions (tested with hypothesis).

An async endpoint's workers are one Auto Scaling group that drains one SQS queue. Three policies size it:

- **target tracking on backlog per instance**: ``(visible + in-flight messages) / in-service instances``
  (CloudWatch metric math over ``AWS/SQS`` and the group's ``GroupInServiceInstances``), with
  ``MaxConcurrentInvocationsPerInstance`` as the target: at the target every instance has all its
  invocation slots busy and nothing waits; above it, requests wait and the group grows;
- **wake from zero**: that ratio has no value while no instance runs (division by zero), so a separate
  alarm (messages wait *and* the group's desired capacity is zero) sets the group to one instance (an
  exact capacity, so the alarm repeating while the instance boots adds nothing);
- **scale in to zero**: an alarm on an empty queue (nothing waiting, nothing in flight) for
  ``idle_minutes`` sets the group to zero. Target tracking alone never goes below one instance.

:func:`desired_capacity` is the model of what the three together converge to; the tests check it and
the policy documents against each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: SQS limits.
MAX_VISIBILITY_TIMEOUT = 43_200
MAX_RECEIVE_COUNT = 1000
#: InvokeEndpointAsync's InvocationTimeoutSeconds maximum.
MAX_INVOCATION_TIMEOUT = 3600
#: Deliveries after which the worker turns an infrastructure error into a failure object
#: (``serving.asyncq.worker.WorkerSettings.max_attempts``' default).
WORKER_MAX_ATTEMPTS = 10
#: Seconds a worker may need after the invocation to write, record and notify the result.
STORE_MARGIN_SECONDS = 120
ALARM_PERIOD_SECONDS = 60


@dataclass(frozen=True)
class BacklogScaling:
    """How one async endpoint's worker group scales (validated by :func:`check`)."""

    min_instances: int
    max_instances: int
    #: backlog per instance to hold (default: MaxConcurrentInvocationsPerInstance)
    target_backlog_per_instance: float
    #: minutes of an empty queue before the group goes to ``min_instances`` (0 when min is 0)
    idle_minutes: int = 15


def check(scaling: BacklogScaling) -> None:
    """Raise ``ValueError`` naming the bad field."""
    if scaling.min_instances < 0:
        raise ValueError(f"min_instances: must be >= 0, got {scaling.min_instances}")
    if scaling.max_instances < max(1, scaling.min_instances):
        raise ValueError(f"max_instances: must be >= 1 and >= min_instances, got {scaling.max_instances}")
    if not scaling.target_backlog_per_instance > 0:
        raise ValueError(
            f"target_backlog_per_instance: must be > 0, got {scaling.target_backlog_per_instance}"
        )
    if not 1 <= scaling.idle_minutes <= 1440:
        raise ValueError(f"idle_minutes: must be 1-1440, got {scaling.idle_minutes}")


def visibility_timeout(max_invocation_seconds: int = MAX_INVOCATION_TIMEOUT) -> int:
    """The queue's visibility timeout: above the longest invocation plus the time to store its result.

    The worker also extends its leases while it works; this default covers a worker that cannot.
    """
    if not 1 <= max_invocation_seconds <= MAX_INVOCATION_TIMEOUT:
        raise ValueError(f"max_invocation_seconds: must be 1-{MAX_INVOCATION_TIMEOUT}")
    return min(MAX_VISIBILITY_TIMEOUT, max_invocation_seconds + STORE_MARGIN_SECONDS)


def max_receive_count(worker_attempts: int = WORKER_MAX_ATTEMPTS) -> int:
    """Deliveries before SQS moves a message to the dead-letter queue.

    Above the worker's own attempts, so the worker always gets to write a failure object first; only a
    message no worker could ever handle (a crash loop) reaches the DLQ.
    """
    if worker_attempts < 1:
        raise ValueError("worker_attempts: must be >= 1")
    return min(MAX_RECEIVE_COUNT, worker_attempts + 5)


def message_retention_seconds(max_ttl_seconds: int = 21_600) -> int:
    """Keep messages at least as long as the longest RequestTTLSeconds (and a day), SQS's max 14 days."""
    return min(1_209_600, max(345_600, max_ttl_seconds + 86_400))


def backlog_per_instance(visible: int, in_flight: int, in_service: int) -> float | None:
    """The tracked metric: ``(visible + in_flight) / in_service``; None (no data) without instances."""
    if in_service <= 0:
        return None
    return (visible + in_flight) / in_service


def desired_capacity(
    visible: int, in_flight: int, in_service: int, scaling: BacklogScaling, *, idle: bool
) -> int:
    """What the policies converge to for one observation of the queue and the group.

    ``idle``: the queue has been empty for ``idle_minutes``.
    """
    check(scaling)
    total = visible + in_flight
    if total == 0:
        # Target tracking holds one running instance; only the idle alarm goes below it.
        return scaling.min_instances if idle else max(scaling.min_instances, min(in_service, 1))
    metric = backlog_per_instance(visible, in_flight, in_service)
    if metric is None:
        # No data for target tracking: the wake alarm adds one instance when messages wait.
        return max(1, scaling.min_instances) if visible > 0 else scaling.min_instances
    wanted = math.ceil(total / scaling.target_backlog_per_instance)
    return max(scaling.min_instances, 1, min(scaling.max_instances, wanted))


# --------------------------------------------------------------------------- CloudWatch documents


def _sqs(metric: str, queue_name: str) -> dict[str, Any]:
    return {
        "namespace": "AWS/SQS",
        "metric_name": metric,
        "dimensions": [{"name": "QueueName", "value": queue_name}],
    }


def backlog_metrics(queue_name: str, group_name: str) -> list[Any]:
    """Target tracking's ``customized_metric_specification.metrics``: backlog per in-service instance."""
    return [
        {
            "id": "visible",
            "metric_stat": {"metric": _sqs("ApproximateNumberOfMessagesVisible", queue_name), "stat": "Sum"},
            "return_data": False,
        },
        {
            "id": "inflight",
            "metric_stat": {
                "metric": _sqs("ApproximateNumberOfMessagesNotVisible", queue_name),
                "stat": "Sum",
            },
            "return_data": False,
        },
        {
            "id": "instances",
            "metric_stat": {
                "metric": {
                    "namespace": "AWS/AutoScaling",
                    "metric_name": "GroupInServiceInstances",
                    "dimensions": [{"name": "AutoScalingGroupName", "value": group_name}],
                },
                "stat": "Average",
            },
            "return_data": False,
        },
        {
            "id": "backlog",
            "expression": "(visible + inflight) / instances",
            "label": "backlog per instance",
            "return_data": True,
        },
    ]


def _query(metric_id: str, metric: dict[str, Any], stat: str) -> dict[str, Any]:
    # aws.cloudwatch.MetricAlarm's metric_queries shape (period on the metric itself).
    return {
        "id": metric_id,
        "return_data": False,
        "metric": {
            "namespace": metric["namespace"],
            "metric_name": metric["metric_name"],
            "dimensions": {d["name"]: d["value"] for d in metric["dimensions"]},
            "period": ALARM_PERIOD_SECONDS,
            "stat": stat,
        },
    }


def wake_alarm_queries(queue_name: str, group_name: str) -> list[Any]:
    """Alarm metric math: 1 when messages wait and the group wants no instance (SageMaker's
    ``HasBacklogWithoutCapacity``)."""
    desired = {
        "namespace": "AWS/AutoScaling",
        "metric_name": "GroupDesiredCapacity",
        "dimensions": [{"name": "AutoScalingGroupName", "value": group_name}],
    }
    return [
        _query("visible", _sqs("ApproximateNumberOfMessagesVisible", queue_name), "Maximum"),
        _query("desired", desired, "Maximum"),
        {
            "id": "stranded",
            "expression": "IF(visible > 0 AND desired == 0, 1, 0)",
            "label": "backlog without capacity",
            "return_data": True,
        },
    ]


def idle_alarm_queries(queue_name: str) -> list[Any]:
    """Alarm metric math: messages waiting plus in flight (0 = the queue is empty)."""
    return [
        _query("visible", _sqs("ApproximateNumberOfMessagesVisible", queue_name), "Maximum"),
        _query("inflight", _sqs("ApproximateNumberOfMessagesNotVisible", queue_name), "Maximum"),
        {
            "id": "total",
            "expression": "visible + inflight",
            "label": "messages waiting or in flight",
            "return_data": True,
        },
    ]


def wake_step_adjustments(min_instances: int = 0) -> list[Any]:
    """Step policy of the wake alarm (threshold 1, ExactCapacity): one instance (or the minimum)."""
    return [{"metric_interval_lower_bound": "0", "scaling_adjustment": max(1, min_instances)}]


def idle_step_adjustments(min_instances: int) -> list[Any]:
    """Step policy of the idle alarm (threshold 0, LessThanOrEqual): exactly ``min_instances``."""
    return [{"metric_interval_upper_bound": "0", "scaling_adjustment": min_instances}]

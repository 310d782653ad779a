"""CloudWatch metric alarms evaluated by the platform on its own metrics (:mod:`selfmaker.metricstore`).

``PutMetricAlarm`` stores an alarm in the state store (kind ``alarm``; its DescribeAlarms document);
:meth:`Alarms.evaluate_all` runs every ``SELFMAKER_ALARM_EVALUATION_INTERVAL`` seconds (10 by default):
for each alarm it takes the statistic of the last ``EvaluationPeriods`` periods of its metric (periods
aligned as GetMetricStatistics aligns them, the current one included while it fills), and the alarm is
``ALARM`` when at least ``DatapointsToAlarm`` of them breach the threshold, ``OK`` when they do not,
``INSUFFICIENT_DATA`` when none has data — unless ``TreatMissingData`` says otherwise (``breaching``,
``notBreaching``, ``ignore``: keep the state; ``missing``, the default). ``StateValue``, ``StateReason``,
``StateReasonData`` and the timestamps follow CloudWatch; ``SetAlarmState`` sets a state until the next
evaluation. Deployment guardrails read alarm states through :meth:`Alarms.state`.

Alarms on one metric only: metric math alarms (``Metrics``) and anomaly-detection operators are refused.
Alarm names compare case-insensitively here (the state store's rule), where CloudWatch's do not.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import operator
from collections.abc import Callable
from typing import Any

from selfmaker.errors import (
    CloudWatchResourceNotFound,
    InvalidFormat,
    InvalidNextToken,
    InvalidParameterCombination,
    InvalidParameterValue,
    LimitExceeded,
    MissingParameter,
)
from selfmaker.metricstore import MetricStore, dims_of, parse_percentile
from selfmaker.settings import PlatformSettings
from selfmaker.state import Record, StateStore, now

log = logging.getLogger(__name__)

KIND = "alarm"
STATES = ("OK", "ALARM", "INSUFFICIENT_DATA")
#: ComparisonOperator -> (test of a value against the threshold, words for StateReason)
COMPARISONS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "GreaterThanOrEqualToThreshold": (operator.ge, "greater than or equal to"),
    "GreaterThanThreshold": (operator.gt, "greater than"),
    "LessThanThreshold": (operator.lt, "less than"),
    "LessThanOrEqualToThreshold": (operator.le, "less than or equal to"),
}
TREAT_MISSING = ("breaching", "notBreaching", "ignore", "missing")
STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
#: the most alarms one platform keeps (CloudWatch's default quota is 5,000 per region)
MAX_ALARMS = 5000


def check_period(period: Any, member: str = "Period") -> int:
    """A CloudWatch period: 1, 5, 10, 30 or a multiple of 60 seconds (InvalidParameterValue otherwise)."""
    if not isinstance(period, int) or isinstance(period, bool) or period < 1:
        raise InvalidParameterValue(f"The parameter {member} must be a positive integer.")
    if period < 60 and period not in (1, 5, 10, 30):
        raise InvalidParameterValue(
            f"The parameter {member} must be 1, 5, 10, 30 or a multiple of 60 (got {period})."
        )
    if period >= 60 and period % 60:
        raise InvalidParameterValue(f"The parameter {member} must be a multiple of 60 (got {period}).")
    return period


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).strftime("%d/%m/%y %H:%M:%S")


class Alarms:
    """The platform's CloudWatch alarms: stored, described, deleted, set and evaluated."""

    def __init__(self, settings: PlatformSettings, store: StateStore, metrics: MetricStore) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics

    def arn(self, name: str) -> str:
        return f"arn:aws:cloudwatch:{self.settings.region}:{self.settings.account_id}:alarm:{name}"

    # ---- PutMetricAlarm -------------------------------------------------------------------------

    def put(self, params: dict[str, Any]) -> None:
        """Create or replace an alarm (validated against botocore's model before); it starts in
        INSUFFICIENT_DATA and is evaluated at the next round."""
        name = params["AlarmName"]
        if params.get("Metrics") or params.get("ThresholdMetricId"):
            raise InvalidParameterValue(
                "selfmaker evaluates alarms on one metric (MetricName, Namespace, Dimensions): metric math "
                "alarms (Metrics, ThresholdMetricId) are not supported."
            )
        for member in ("MetricName", "Namespace", "Period", "Threshold", "ComparisonOperator"):
            if params.get(member) is None:
                raise MissingParameter(f"The parameter {member} is required.")
        statistic, extended = params.get("Statistic"), params.get("ExtendedStatistic")
        if (statistic is None) == (extended is None):
            raise InvalidParameterCombination("Exactly one of Statistic and ExtendedStatistic must be given.")
        if extended is not None and parse_percentile(extended) is None:
            raise InvalidParameterValue(
                f"The value {extended} for parameter ExtendedStatistic is not supported (use p0.0 to p100)."
            )
        period = check_period(params["Period"])
        evaluations = int(params["EvaluationPeriods"])
        if evaluations * period > 7 * 86400:
            raise InvalidParameterValue(
                "The product of EvaluationPeriods and Period must not exceed 604,800 seconds (7 days)."
            )
        to_alarm = int(params.get("DatapointsToAlarm") or evaluations)
        if to_alarm > evaluations:
            raise InvalidParameterValue("DatapointsToAlarm must be less than or equal to EvaluationPeriods.")
        if params["ComparisonOperator"] not in COMPARISONS:
            raise InvalidParameterValue(
                f"The ComparisonOperator {params['ComparisonOperator']} needs an anomaly detection model, "
                f"which selfmaker does not have; use one of {', '.join(COMPARISONS)}."
            )
        threshold = float(params["Threshold"])
        if not math.isfinite(threshold):
            raise InvalidParameterValue("The parameter Threshold must be a finite number.")
        treat = params.get("TreatMissingData") or "missing"
        if treat not in TREAT_MISSING:
            raise InvalidParameterValue(
                f"The value {treat} for parameter TreatMissingData is not one of {', '.join(TREAT_MISSING)}."
            )
        names = [d.get("Name") for d in params.get("Dimensions") or []]
        if len(set(names)) != len(names):
            raise InvalidParameterValue("The parameter Dimensions must not repeat a dimension name.")
        stamp = now()
        existing = self.store.get(KIND, name)
        doc: dict[str, Any] = {
            "AlarmName": name,
            "AlarmArn": self.arn(name),
            "AlarmDescription": params.get("AlarmDescription"),
            "AlarmConfigurationUpdatedTimestamp": stamp,
            "ActionsEnabled": params.get("ActionsEnabled", True),
            "OKActions": list(params.get("OKActions") or []),
            "AlarmActions": list(params.get("AlarmActions") or []),
            "InsufficientDataActions": list(params.get("InsufficientDataActions") or []),
            "StateValue": "INSUFFICIENT_DATA",
            "StateReason": "Unchecked: Initial alarm creation",
            "StateUpdatedTimestamp": stamp,
            "StateTransitionedTimestamp": stamp,
            "MetricName": params["MetricName"],
            "Namespace": params["Namespace"],
            "Statistic": statistic,
            "ExtendedStatistic": extended,
            "Dimensions": [{"Name": d["Name"], "Value": d["Value"]} for d in params.get("Dimensions") or []],
            "Period": period,
            "Unit": params.get("Unit"),
            "EvaluationPeriods": evaluations,
            "DatapointsToAlarm": to_alarm,
            "Threshold": threshold,
            "ComparisonOperator": params["ComparisonOperator"],
            "TreatMissingData": treat,
            "EvaluateLowSampleCountPercentile": params.get("EvaluateLowSampleCountPercentile"),
        }
        doc = {k: v for k, v in doc.items() if v is not None}
        if existing is not None:
            if existing.name != name:
                raise InvalidParameterValue(
                    f"An alarm named {existing.name} exists: selfmaker compares alarm names without case."
                )
            # CloudWatch keeps the state of an alarm whose definition changes until the next evaluation
            for member in ("StateValue", "StateReason", "StateReasonData", "StateUpdatedTimestamp"):
                if member in existing.doc:
                    doc[member] = existing.doc[member]
            doc["StateTransitionedTimestamp"] = existing.doc.get("StateTransitionedTimestamp", stamp)
            self.store.update(KIND, name, status=doc["StateValue"], doc=doc)
        else:
            if len(self.store.list(KIND)) >= MAX_ALARMS:
                raise LimitExceeded(f"The maximum number of alarms ({MAX_ALARMS}) is reached.")
            inserted = self.store.insert(
                Record(KIND, name, doc["AlarmArn"], doc["StateValue"], stamp, stamp, doc)
            )
            if not inserted:  # created meanwhile by another request: replace it as CloudWatch would
                self.store.update(KIND, name, status=doc["StateValue"], doc=doc)
        if params.get("Tags"):
            self.store.add_tags(doc["AlarmArn"], params["Tags"])

    # ---- DescribeAlarms / DeleteAlarms / SetAlarmState ---------------------------------------------

    def describe(self, params: dict[str, Any]) -> dict[str, Any]:
        """DescribeAlarms: metric alarms by names, prefix, state or action prefix, a page at a time."""
        types = params.get("AlarmTypes") or ["MetricAlarm"]
        if "MetricAlarm" not in types:
            return {"MetricAlarms": [], "CompositeAlarms": []}
        names = params.get("AlarmNames")
        if names and params.get("AlarmNamePrefix"):
            raise InvalidParameterCombination("AlarmNames and AlarmNamePrefix cannot be given together.")
        records = sorted(self.store.list(KIND), key=lambda r: r.name)
        prefix = params.get("AlarmNamePrefix")
        state = params.get("StateValue")
        action = params.get("ActionPrefix")
        found = [
            r.doc
            for r in records
            if (not names or r.name in names)
            and (not prefix or r.name.startswith(prefix))
            and (not state or r.doc.get("StateValue") == state)
            and (not action or any(a.startswith(action) for a in r.doc.get("AlarmActions", [])))
        ]
        limit = int(params.get("MaxRecords") or 50)
        start = 0
        token = params.get("NextToken")
        if token:
            if not token.startswith("alarms-") or not token[7:].isdigit():
                raise_token(token)
            start = int(token[7:])
        page = found[start : start + limit]
        out: dict[str, Any] = {"MetricAlarms": page, "CompositeAlarms": []}
        if start + limit < len(found):
            out["NextToken"] = f"alarms-{start + limit}"
        return out

    def delete(self, names: list[str]) -> None:
        """DeleteAlarms: all or none (ResourceNotFound names the missing ones)."""
        missing = [n for n in names if self.store.get(KIND, n) is None]
        if missing:
            raise CloudWatchResourceNotFound(
                f"The alarms {', '.join(missing)} do not exist; none was deleted."
            )
        for name in names:
            record = self.store.get(KIND, name)
            if record is not None:
                self.store.delete(KIND, name)

    def set_state(self, name: str, value: str, reason: str, data: str | None) -> None:
        """SetAlarmState: the state until the next evaluation says otherwise."""
        record = self.store.get(KIND, name)
        if record is None:
            raise CloudWatchResourceNotFound(f"Alarm {name} does not exist.")
        if data is not None:
            try:
                json.loads(data)
            except ValueError:
                raise InvalidFormat("StateReasonData must be a JSON document.") from None
        self._transition(record, value, reason, data)

    def state(self, name: str) -> tuple[str, str] | None:
        """``(StateValue, StateReason)`` of alarm ``name``, or None when it does not exist."""
        record = self.store.get(KIND, name)
        if record is None:
            return None
        return str(record.doc.get("StateValue")), str(record.doc.get("StateReason", ""))

    def _transition(self, record: Record, value: str, reason: str, data: str | None) -> None:
        stamp = now()
        merge: dict[str, Any] = {
            "StateValue": value,
            "StateReason": reason[:1023],
            "StateUpdatedTimestamp": stamp,
        }
        if data is not None:
            merge["StateReasonData"] = data[:4000]
        if record.doc.get("StateValue") != value:
            merge["StateTransitionedTimestamp"] = stamp
            log.info("alarm %s: %s -> %s (%s)", record.name, record.doc.get("StateValue"), value, reason)
        self.store.update(KIND, record.name, status=value, merge=merge, touch=False)

    # ---- evaluation ------------------------------------------------------------------------------

    async def evaluate_all(self) -> None:
        """Evaluate every alarm once (on the event loop: the metrics' live part is read there)."""
        for record in self.store.list(KIND):
            try:
                await self.evaluate(record)
            except Exception:  # noqa: BLE001 - one bad alarm must not stop the others' evaluation
                log.exception("evaluating alarm %s failed", record.name)

    async def evaluate(self, record: Record) -> str:
        """Evaluate one alarm now and store its state if it changed; the state."""
        doc = record.doc
        period = int(doc["Period"])
        evaluations = int(doc["EvaluationPeriods"])
        to_alarm = int(doc.get("DatapointsToAlarm") or evaluations)
        statistic = doc.get("ExtendedStatistic") or doc["Statistic"]
        current = int(self.metrics.clock())
        step = 60 if period >= 60 else period
        end = current - current % step + step  # the period that is filling now is included
        start = end - evaluations * period
        points = await self.metrics.statistics(
            doc["Namespace"],
            doc["MetricName"],
            dims_of((d["Name"], d["Value"]) for d in doc.get("Dimensions", [])),
            start,
            end,
            period,
            statistics=[statistic] if statistic in STATISTICS else [],
            extended=[] if statistic in STATISTICS else [statistic],
        )
        by_time: dict[float, float] = {}
        for p in points:
            value = p.get(statistic, (p.get("ExtendedStatistics") or {}).get(statistic))
            if value is not None:
                by_time[p["Timestamp"]] = float(value)
        slots = [float(start + i * period) for i in range(evaluations)]
        values = [by_time.get(t) for t in slots]
        compare, words = COMPARISONS[doc["ComparisonOperator"]]
        threshold = float(doc["Threshold"])
        treat = doc.get("TreatMissingData", "missing")
        present = [(t, v) for t, v in zip(slots, values, strict=True) if v is not None]
        breaching = sum(1 for _, v in present if compare(v, threshold))
        if treat == "breaching":
            breaching += evaluations - len(present)
        if not present and treat in ("missing", "ignore"):
            if treat == "ignore":
                return str(doc.get("StateValue"))
            state, reason = (
                "INSUFFICIENT_DATA",
                (f"Insufficient Data: {evaluations} datapoint{'s' if evaluations > 1 else ''} were unknown."),
            )
        else:
            state = "ALARM" if breaching >= to_alarm else "OK"
            shown = ", ".join(f"{v:g} ({_when(t)})" for t, v in reversed(present[-5:]))
            if state == "ALARM":
                reason = (
                    f"Threshold Crossed: {breaching} out of the last {evaluations} datapoints [{shown}] "
                    f"{'was' if breaching == 1 else 'were'} {words} the threshold ({threshold:g}) (minimum "
                    f"{to_alarm} datapoint{'s' if to_alarm > 1 else ''} for OK -> ALARM transition)."
                )
            else:
                reason = (
                    f"Threshold Crossed: {len(present)} datapoint{'s' if len(present) != 1 else ''} "
                    f"[{shown}] {'was' if len(present) == 1 else 'were'} not {words} the threshold "
                    f"({threshold:g})."
                )
        data = json.dumps(
            {
                "version": "1.0",
                "queryDate": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
                "startDate": dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(),
                "statistic": statistic,
                "period": period,
                "recentDatapoints": [v for _, v in present],
                "threshold": threshold,
                "evaluatedDatapoints": [
                    {"timestamp": dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(), "value": v}
                    for t, v in reversed(present)
                ],
            }
        )
        if state != doc.get("StateValue") or reason != doc.get("StateReason"):
            self._transition(record, state, reason, data)
        return state


def raise_token(token: str) -> None:
    """InvalidNextToken for a token this platform did not hand out."""
    raise InvalidNextToken(f"The NextToken {token[:64]!r} is not valid.")

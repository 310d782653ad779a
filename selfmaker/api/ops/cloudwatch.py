"""CloudWatch's metrics and alarms on the control plane's port (``GraniteServiceVersion20100801``: botocore's
``cloudwatch`` client, smithy-rpc-v2-cbor or JSON 1.0 — :mod:`selfmaker.api.app` decodes both): the subset
that watching SageMaker endpoints and training jobs needs.

* ``GetMetricStatistics``, ``GetMetricData`` (MetricStat queries and math expressions: ``+ - * /``,
  parentheses, numbers, other queries' ids, ``SUM``/``AVG``/``MIN``/``MAX`` of ``[id, ...]`` (per timestamp)
  or of one id (a number), ``METRICS()``), ``ListMetrics`` over the metric store
  (:class:`selfmaker.metricstore.MetricStore`): namespace ``AWS/SageMaker`` (endpoint variants, dimensions
  ``EndpointName`` + ``VariantName``; async backlogs by ``EndpointName``) and ``/aws/sagemaker/TrainingJobs``
  (``TrainingJobName``; the SageMaker SDK's ``TrainingJobAnalytics`` reads it);
* ``PutMetricAlarm``, ``DescribeAlarms``, ``DeleteAlarms``, ``SetAlarmState``
  (:class:`selfmaker.alarms.Alarms`).

Bad input gets CloudWatch's codes: ``InvalidParameterValue`` (unknown namespace, metric or dimensions, a
period that is not 1/5/10/30 or a multiple of 60, StartTime not before EndTime),
``InvalidParameterCombination`` (Statistics and ExtendedStatistics both or neither, more than 1,440
datapoints), ``MissingParameter``, ``LimitExceeded`` (GetMetricData beyond 100,800 datapoints),
``ResourceNotFound`` (alarms).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selfmaker.alarms import check_period
from selfmaker.api.common import to_epoch
from selfmaker.api.registry import operation
from selfmaker.errors import (
    InvalidParameterCombination,
    InvalidParameterValue,
    LimitExceeded,
    MissingParameter,
    SageMakerError,
)
from selfmaker.metricstore import (
    LIVE_SECONDS,
    SAGEMAKER_NAMESPACE,
    TRAINING_NAMESPACE,
    UNITS,
    Dims,
    dims_of,
    parse_percentile,
)

if TYPE_CHECKING:
    from selfmaker.services import Services

SERVICE = "GraniteServiceVersion20100801"
#: the most datapoints one GetMetricStatistics / GetMetricData call may ask for (CloudWatch's limits)
MAX_STATISTICS_DATAPOINTS = 1440
MAX_DATA_DATAPOINTS = 100_800
STATISTICS = ("SampleCount", "Average", "Sum", "Minimum", "Maximum")
#: AWS/SageMaker metric -> the dimension sets it is published with
_VARIANT = frozenset({"EndpointName", "VariantName"})
_ENDPOINT = frozenset({"EndpointName"})
SAGEMAKER_DIMENSIONS: dict[str, tuple[frozenset[str], ...]] = {
    "Invocations": (_VARIANT, _ENDPOINT),
    "Invocation4XXErrors": (_VARIANT, _ENDPOINT),
    "Invocation5XXErrors": (_VARIANT, _ENDPOINT),
    "OverheadLatency": (_VARIANT, _ENDPOINT),
    "InvocationsPerInstance": (_VARIANT,),
    "ModelLatency": (_VARIANT,),
    "ModelSetupTime": (_VARIANT,),
    "ServerlessConcurrentExecutions": (_VARIANT,),
    "ApproximateBacklogSize": (_ENDPOINT,),
    "ApproximateBacklogSizePerInstance": (_ENDPOINT,),
    "ApproximateAgeOfOldestRequest": (_ENDPOINT,),
    "HasBacklogWithoutCapacity": (_ENDPOINT,),
}
#: ListMetrics lists series with data in the last two weeks (CloudWatch's rule)
LIST_HORIZON = 14 * 86400
LIST_PAGE = 500


def _dims(items: list[dict[str, Any]] | None) -> Dims:
    names = [d.get("Name") for d in items or []]
    if len(set(names)) != len(names):
        raise InvalidParameterValue("The parameter Dimensions must not repeat a dimension name.")
    for d in items or []:
        if d.get("Value") is None:
            raise MissingParameter(f"The dimension {d.get('Name')} has no Value.")
    return dims_of((d["Name"], d["Value"]) for d in items or [])


def check_metric(platform: Services, namespace: str, metric: str, items: list[dict[str, Any]] | None) -> Dims:
    """The canonical dimensions of a metric a query names; InvalidParameterValue for an unknown namespace,
    metric or dimension set."""
    dims = _dims(items)
    names = frozenset(name for name, _ in dims)
    if namespace == SAGEMAKER_NAMESPACE:
        allowed = SAGEMAKER_DIMENSIONS.get(metric)
        if allowed is None:
            raise InvalidParameterValue(
                f"The metric {metric} does not exist in namespace {namespace}; its metrics are "
                f"{', '.join(SAGEMAKER_DIMENSIONS)}."
            )
        if names not in allowed:
            raise InvalidParameterValue(
                f"The metric {namespace} {metric} has no dimensions {sorted(names) or '(none)'}: it is "
                f"published with {' or '.join('+'.join(sorted(a)) for a in allowed)}."
            )
        return dims
    if namespace == TRAINING_NAMESPACE:
        if names != {"TrainingJobName"}:
            raise InvalidParameterValue(
                f"The metrics of {namespace} have the one dimension TrainingJobName, not "
                f"{sorted(names) or '(none)'}."
            )
        job = dict(dims)["TrainingJobName"]
        record = platform.store.get("training-job", job)
        specification = (record.doc.get("AlgorithmSpecification") or {}) if record is not None else {}
        defined = {d.get("Name") for d in specification.get("MetricDefinitions") or []}
        if metric not in defined and (namespace, metric, dims) not in platform.metrics.stored_series(0):
            if record is None:
                raise InvalidParameterValue(f"The training job {job} does not exist.")
            raise InvalidParameterValue(
                f"The training job {job} has no metric {metric}"
                + (f" (its metrics: {', '.join(sorted(defined))})." if defined else ".")
            )
        return dims
    raise InvalidParameterValue(
        f"The namespace {namespace} is not served by selfmaker; use {SAGEMAKER_NAMESPACE} or "
        f"{TRAINING_NAMESPACE}."
    )


def _range(params: dict[str, Any]) -> tuple[int, int]:
    for member in ("StartTime", "EndTime"):
        if params.get(member) is None:
            raise MissingParameter(f"The parameter {member} is required.")
    try:
        start = to_epoch(params["StartTime"], "StartTime")
        end = to_epoch(params["EndTime"], "EndTime")
    except SageMakerError as exc:
        raise InvalidParameterValue(exc.message) from None
    if start >= end:
        raise InvalidParameterValue("The parameter StartTime must be less than the parameter EndTime.")
    return int(math.floor(start)), int(math.ceil(end))


def _datapoints(start: int, end: int, period: int) -> int:
    step = 60 if period >= 60 else period
    return math.ceil((end - (start - start % step)) / period)


@operation("GetMetricStatistics", service=SERVICE)
async def get_metric_statistics(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Statistics of one metric per period (oldest first, periods without data left out)."""
    for member in ("Namespace", "MetricName", "Period"):
        if params.get(member) is None:
            raise MissingParameter(f"The parameter {member} is required.")
    namespace, metric = params["Namespace"], params["MetricName"]
    statistics = list(params.get("Statistics") or [])
    extended = list(params.get("ExtendedStatistics") or [])
    if bool(statistics) == bool(extended):
        raise InvalidParameterCombination(
            "Must specify either Statistics or ExtendedStatistics, but not both."
        )
    for name in extended:
        if parse_percentile(name) is None:
            raise InvalidParameterValue(
                f"The value {name} for parameter ExtendedStatistics is not supported."
            )
    start, end = _range(params)
    period = check_period(params["Period"])
    asked = _datapoints(start, end, period)
    if asked > MAX_STATISTICS_DATAPOINTS:
        raise InvalidParameterCombination(
            f"You have requested up to {asked:,} datapoints, which exceeds the limit of "
            f"{MAX_STATISTICS_DATAPOINTS:,}. You may reduce the datapoints requested by increasing Period, "
            "or decreasing the time range."
        )
    dims = check_metric(platform, namespace, metric, params.get("Dimensions"))
    unit = params.get("Unit")
    if unit is not None and unit != UNITS.get(metric, ("None", None))[0]:
        return {"Label": metric, "Datapoints": []}
    points = await platform.metrics.statistics(
        namespace, metric, dims, start, end, period, statistics, extended
    )
    return {"Label": metric, "Datapoints": points}


# ---- GetMetricData ------------------------------------------------------------------------------------

#: a time series: ``{timestamp: value}``
Series = dict[float, float]
_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


def _avg(values: list[float]) -> float:
    return sum(values) / len(values)


#: metric math's reductions: over the points of one series, or across series per timestamp
FUNCTIONS: dict[str, Callable[[list[float]], float]] = {"SUM": sum, "AVG": _avg, "MIN": min, "MAX": max}


class Expression:
    """A recursive-descent evaluator of CloudWatch metric math's arithmetic subset."""

    def __init__(self, text: str, resolve: Any, query_id: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        for match in _TOKEN.finditer(text):
            number, name, other = match.groups()
            if number is not None:
                self.tokens.append(("num", number))
            elif name is not None:
                self.tokens.append(("name", name))
            elif other is not None and other.strip():
                self.tokens.append(("op", other))
        self.pos = 0
        self.resolve = resolve
        self.query_id = query_id

    def fail(self, why: str) -> InvalidParameterValue:
        return InvalidParameterValue(f"Error in expression {self.query_id} ({self.text!r}): {why}.")

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise self.fail(f"expected {value or 'more'}")
        self.pos += 1
        return token

    def evaluate(self) -> Any:
        result = self.sum()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return result

    def sum(self) -> Any:
        left = self.product()
        while (token := self.peek()) is not None and token[1] in "+-":
            self.take()
            left = _arith(token[1], left, self.product())
        return left

    def product(self) -> Any:
        left = self.unary()
        while (token := self.peek()) is not None and token[1] in "*/":
            self.take()
            left = _arith(token[1], left, self.unary())
        return left

    def unary(self) -> Any:
        token = self.peek()
        if token is not None and token[1] == "-":
            self.take()
            return _arith("*", -1.0, self.unary())
        return self.atom()

    def atom(self) -> Any:
        kind, value = self.take()
        if kind == "num":
            return float(value)
        if value == "(":
            inner = self.sum()
            self.take(")")
            return inner
        if value == "[":
            items = [self.sum()]
            while self.peek() == ("op", ","):
                self.take()
                items.append(self.sum())
            self.take("]")
            return [item for group in items for item in (group if isinstance(group, list) else [group])]
        if kind == "name":
            if self.peek() == ("op", "("):
                return self.call(value)
            return self.resolve(value)
        raise self.fail(f"unexpected {value!r}")

    def call(self, name: str) -> Any:
        self.take("(")
        if name == "METRICS":
            self.take(")")
            return self.resolve(None)
        function = FUNCTIONS.get(name)
        if function is None:
            raise self.fail(f"the function {name} is not supported (SUM, AVG, MIN, MAX, METRICS)")
        args = [self.sum()]
        while self.peek() == ("op", ","):
            self.take()
            args.append(self.sum())
        self.take(")")
        flat = [item for arg in args for item in (arg if isinstance(arg, list) else [arg])]
        if len(flat) == 1 and isinstance(flat[0], dict):  # one series: a number over all its points
            values = list(flat[0].values())
            return float(function(values)) if values else math.nan
        series = [s for s in flat if isinstance(s, dict)]
        if not series:
            return float(function([float(x) for x in flat]))
        out: Series = {}
        for t in sorted({t for s in series for t in s}):
            values = [s[t] for s in series if t in s] + [float(x) for x in flat if not isinstance(x, dict)]
            out[t] = float(function(values))
        return out


def _arith(op: str, left: Any, right: Any) -> Any:
    if isinstance(left, list) or isinstance(right, list):
        raise InvalidParameterValue(
            "An array of series ([...], METRICS()) can only be an argument of SUM/AVG/MIN/MAX."
        )

    def apply(a: float, b: float) -> float:
        if op == "+":
            return a + b
        if op == "-":
            return a - b
        if op == "*":
            return a * b
        return a / b if b != 0 else math.nan

    if isinstance(left, dict) and isinstance(right, dict):
        return {t: apply(left[t], right[t]) for t in sorted(left) if t in right}
    if isinstance(left, dict):
        return {t: apply(v, float(right)) for t, v in left.items()}
    if isinstance(right, dict):
        return {t: apply(float(left), v) for t, v in right.items()}
    return apply(float(left), float(right))


@operation("GetMetricData", service=SERVICE)
async def get_metric_data(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """MetricStat queries and math expressions over them, one result per query with ReturnData."""
    queries = params.get("MetricDataQueries") or []
    if not queries:
        raise MissingParameter("The parameter MetricDataQueries is required.")
    start, end = _range(params)
    ids = [q.get("Id") for q in queries]
    if len(set(ids)) != len(ids):
        raise InvalidParameterValue("The Id of each MetricDataQuery must be unique.")
    total = 0
    stats: dict[str, Series] = {}
    labels: dict[str, str] = {}
    for q in queries:
        has_stat, has_expr = q.get("MetricStat") is not None, q.get("Expression") is not None
        if has_stat == has_expr:
            raise InvalidParameterCombination(
                f"The query {q['Id']} must have exactly one of MetricStat and Expression."
            )
        if has_stat:
            stat = q["MetricStat"]
            metric = stat["Metric"]
            for member in ("Namespace", "MetricName"):
                if metric.get(member) is None:
                    raise MissingParameter(f"The query {q['Id']} has no Metric.{member}.")
            name = stat["Stat"]
            if name not in STATISTICS and parse_percentile(name) is None:
                raise InvalidParameterValue(f"The statistic {name} of query {q['Id']} is not supported.")
            period = check_period(stat["Period"], f"MetricStat.Period of query {q['Id']}")
            total += _datapoints(start, end, period)
            if total > MAX_DATA_DATAPOINTS:
                raise LimitExceeded(
                    f"The queries ask for more than {MAX_DATA_DATAPOINTS:,} datapoints; increase the periods "
                    "or decrease the time range."
                )
            dims = check_metric(platform, metric["Namespace"], metric["MetricName"], metric.get("Dimensions"))
            points = await platform.metrics.statistics(
                metric["Namespace"],
                metric["MetricName"],
                dims,
                start,
                end,
                period,
                [name] if name in STATISTICS else [],
                [] if name in STATISTICS else [name],
            )
            series: Series = {}
            for p in points:
                value = p.get(name, (p.get("ExtendedStatistics") or {}).get(name))
                if value is not None:
                    series[p["Timestamp"]] = float(value)
            stats[q["Id"]] = series
            labels[q["Id"]] = q.get("Label") or metric["MetricName"]
        elif q.get("Period") is not None:
            check_period(q["Period"], f"Period of query {q['Id']}")

    by_id = {q["Id"]: q for q in queries}
    done: dict[str, Any] = dict(stats)
    busy: set[str] = set()

    def resolve(name: str | None) -> Any:
        if name is None:  # METRICS(): every MetricStat query's series
            return [stats[i] for i in ids if i in stats]
        if name in done:
            return done[name]
        query = by_id.get(name)
        if query is None:
            raise InvalidParameterValue(f"The expression names {name}, which is not the Id of a query.")
        if name in busy:
            raise InvalidParameterValue(f"The expressions refer to one another in a cycle through {name}.")
        busy.add(name)
        done[name] = Expression(query["Expression"], resolve, name).evaluate()
        busy.discard(name)
        return done[name]

    grid = sorted({t for s in stats.values() for t in s})
    newest_first = (params.get("ScanBy") or "TimestampDescending") == "TimestampDescending"
    results = []
    for q in queries:
        value = resolve(q["Id"])
        if q.get("ReturnData") is False:
            continue
        if isinstance(value, list):
            raise InvalidParameterValue(
                f"The expression of query {q['Id']} returns several series; return one."
            )
        series = value if isinstance(value, dict) else {t: float(value) for t in grid}
        pairs = sorted(((t, v) for t, v in series.items() if not math.isnan(v)), reverse=newest_first)
        results.append(
            {
                "Id": q["Id"],
                "Label": q.get("Label") or labels.get(q["Id"]) or q["Id"],
                "Timestamps": [t for t, _ in pairs],
                "Values": [v for _, v in pairs],
                "StatusCode": "Complete",
            }
        )
    return {"MetricDataResults": results, "Messages": []}


# ---- ListMetrics ---------------------------------------------------------------------------------------


@operation("ListMetrics", service=SERVICE)
async def list_metrics(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The series with data in the last two weeks (three hours with ``RecentlyActive``), filtered."""
    store = platform.metrics
    now = int(store.clock())
    horizon = 3 * 3600 if params.get("RecentlyActive") == "PT3H" else LIST_HORIZON
    found = store.live_series(now - LIVE_SECONDS)
    found |= set(store.stored_series(now - horizon))
    namespace, metric = params.get("Namespace"), params.get("MetricName")
    wanted = [(d.get("Name"), d.get("Value")) for d in params.get("Dimensions") or []]
    rows = []
    for ns, name, dims in sorted(found):
        if (namespace and ns != namespace) or (metric and name != metric):
            continue
        have = dict(dims)
        if any(key not in have or (value is not None and have[key] != value) for key, value in wanted):
            continue
        rows.append(
            {"Namespace": ns, "MetricName": name, "Dimensions": [{"Name": k, "Value": v} for k, v in dims]}
        )
    start = 0
    token = params.get("NextToken")
    if token:
        if not token.startswith("metrics-") or not token[8:].isdigit():
            raise InvalidParameterValue(f"The NextToken {token[:64]!r} is not valid.")
        start = int(token[8:])
    out: dict[str, Any] = {"Metrics": rows[start : start + LIST_PAGE]}
    if start + LIST_PAGE < len(rows):
        out["NextToken"] = f"metrics-{start + LIST_PAGE}"
    return out


# ---- alarms ---------------------------------------------------------------------------------------------


@operation("PutMetricAlarm", service=SERVICE)
async def put_metric_alarm(platform: Services, params: dict[str, Any]) -> None:
    """Create or replace an alarm on one metric (evaluated by the platform every few seconds)."""
    platform.alarms.put(params)


@operation("DescribeAlarms", service=SERVICE)
async def describe_alarms(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Metric alarms by name, prefix, state or action prefix."""
    return platform.alarms.describe(params)


@operation("DeleteAlarms", service=SERVICE)
async def delete_alarms(platform: Services, params: dict[str, Any]) -> None:
    """Delete alarms (all or none)."""
    platform.alarms.delete(list(params.get("AlarmNames") or []))


@operation("SetAlarmState", service=SERVICE)
async def set_alarm_state(platform: Services, params: dict[str, Any]) -> None:
    """Set an alarm's state until its next evaluation."""
    platform.alarms.set_state(
        params["AlarmName"], params["StateValue"], params["StateReason"], params.get("StateReasonData")
    )

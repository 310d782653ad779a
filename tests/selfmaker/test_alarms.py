"""CloudWatch alarms evaluated on the metric store (real SQLite stores, a clock the test moves), and metric
math's evaluator, without a server."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from selfmaker.alarms import KIND, Alarms
from selfmaker.api.ops.cloudwatch import Expression
from selfmaker.errors import InvalidParameterCombination, InvalidParameterValue, SageMakerError
from selfmaker.metricstore import SAGEMAKER_NAMESPACE, Aggregate, Datum, MetricStore, dims_of
from selfmaker.settings import PlatformSettings
from selfmaker.state import StateStore

DIMS = [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "A"}]
T0 = 1_800_000_000 // 60 * 60


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Alarms, MetricStore, Clock]:
    clock = Clock(T0 + 5 * 60 + 30)
    metrics = MetricStore(tmp_path / "metrics.db", clock=clock)
    store = StateStore(tmp_path / "state.db")
    return Alarms(PlatformSettings(home=tmp_path), store, metrics), metrics, clock


def _alarm(alarms: Alarms, name: str, **overrides: Any) -> str:
    params = {
        "AlarmName": name,
        "Namespace": SAGEMAKER_NAMESPACE,
        "MetricName": "Invocation5XXErrors",
        "Dimensions": DIMS,
        "Statistic": "Sum",
        "Period": 60,
        "EvaluationPeriods": 3,
        "DatapointsToAlarm": 2,
        "Threshold": 0.0,
        "ComparisonOperator": "GreaterThanThreshold",
        **overrides,
    }
    alarms.put(params)
    record = alarms.store.get(KIND, name)
    assert record is not None
    return asyncio.run(alarms.evaluate(record))


def _errors(metrics: MetricStore, minute: int, errors: float, metric: str = "Invocation5XXErrors") -> None:
    ts = T0 + minute * 60 + 10
    metrics.put(
        [
            Datum(
                SAGEMAKER_NAMESPACE,
                metric,
                dims_of({d["Name"]: d["Value"] for d in DIMS}),
                ts,
                Aggregate(10, errors, 0, 1),
            )
        ]
    )


def test_missing_data_is_treated_as_asked(parts: tuple[Alarms, MetricStore, Clock]) -> None:
    alarms, _, _ = parts
    assert _alarm(alarms, "missing") == "INSUFFICIENT_DATA"
    assert _alarm(alarms, "not-breaching", TreatMissingData="notBreaching") == "OK"
    assert _alarm(alarms, "breaching", TreatMissingData="breaching") == "ALARM"
    assert _alarm(alarms, "ignore", TreatMissingData="ignore") == "INSUFFICIENT_DATA"  # stays as created
    described = {a["AlarmName"]: a for a in alarms.describe({})["MetricAlarms"]}
    assert described["breaching"]["StateValue"] == "ALARM"
    assert described["missing"]["StateReason"].startswith("Insufficient Data")


def test_datapoints_to_alarm_of_the_evaluation_periods(parts: tuple[Alarms, MetricStore, Clock]) -> None:
    alarms, metrics, _ = parts
    # the last three periods are minutes 3, 4 and 5 (the one in progress): one breaching is not enough
    _errors(metrics, 3, 2)
    _errors(metrics, 4, 0)
    assert _alarm(alarms, "two-of-three") == "OK"
    _errors(metrics, 5, 1)
    record = alarms.store.get(KIND, "two-of-three")
    assert record is not None and asyncio.run(alarms.evaluate(record)) == "ALARM"
    state = alarms.state("two-of-three")
    assert state is not None and state[0] == "ALARM"
    assert "2 out of the last 3 datapoints" in state[1] and "greater than the threshold (0)" in state[1]
    # SetAlarmState holds until the next evaluation
    alarms.set_state("two-of-three", "OK", "by hand", None)
    assert alarms.state("two-of-three") == ("OK", "by hand")
    record = alarms.store.get(KIND, "two-of-three")
    assert record is not None and asyncio.run(alarms.evaluate(record)) == "ALARM"


def test_percentile_alarms_and_bad_definitions(parts: tuple[Alarms, MetricStore, Clock]) -> None:
    alarms, metrics, _ = parts
    buckets = [0] * 17
    buckets[10] = 10  # ten samples between 0.5 and 1 s (in µs: 500,000 to 1,000,000)
    latency = Aggregate(10, 7e6, 6e5, 9e5, buckets)
    metrics.put(
        [
            Datum(
                SAGEMAKER_NAMESPACE,
                "ModelLatency",
                dims_of({"EndpointName": "ep", "VariantName": "A"}),
                T0 + 5 * 60,
                latency,
            )
        ]
    )
    slow = {
        "MetricName": "ModelLatency",
        "ExtendedStatistic": "p99",
        "Statistic": None,
        "EvaluationPeriods": 1,
    }
    slow.update(DatapointsToAlarm=1)
    assert _alarm(alarms, "p99-slow", **slow, Threshold=500_000) == "ALARM"
    assert _alarm(alarms, "p99-fast", **slow, Threshold=950_000) == "OK"
    with pytest.raises(InvalidParameterValue):
        _alarm(alarms, "bad-period", Period=90)
    with pytest.raises(InvalidParameterValue):
        _alarm(alarms, "math", Metrics=[{"Id": "m1", "Expression": "1"}])
    with pytest.raises(InvalidParameterCombination):
        _alarm(alarms, "both", ExtendedStatistic="p99")
    with pytest.raises(InvalidParameterValue):
        _alarm(alarms, "anomaly", ComparisonOperator="LessThanLowerOrGreaterThanUpperThreshold")
    with pytest.raises(SageMakerError) as missing:
        alarms.delete(["p99-slow", "nothing"])
    assert missing.value.code == "ResourceNotFound"
    assert alarms.state("p99-slow") is not None  # all or none


def test_metric_math() -> None:
    series = {"a": {1.0: 2.0, 2.0: 4.0}, "b": {1.0: 1.0, 2.0: 3.0, 3.0: 5.0}}

    def resolve(name: str | None) -> Any:
        if name is None:
            return list(series.values())
        if name not in series:
            raise InvalidParameterValue(f"no {name}")
        return series[name]

    def ev(text: str) -> Any:
        return Expression(text, resolve, "e").evaluate()

    assert ev("a + b") == {1.0: 3.0, 2.0: 7.0}  # only timestamps both have
    assert ev("-a * 2 + 1") == {1.0: -3.0, 2.0: -7.0}
    assert ev("SUM([a, b])") == {1.0: 3.0, 2.0: 7.0, 3.0: 5.0}
    assert ev("MAX(METRICS())") == {1.0: 2.0, 2.0: 4.0, 3.0: 5.0}
    assert ev("AVG(a)") == 3.0 and ev("(1 + 2) * 3 / 2") == 4.5
    assert math.isnan(ev("a / 0")[1.0])
    for bad in ("a +", "FOO(a)", "nothing", "a b", "[a, b] + 1", "(a"):
        with pytest.raises(InvalidParameterValue):
            ev(bad)

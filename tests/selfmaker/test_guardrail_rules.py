"""Deployment guardrails: traffic-shifting schedules (property tests), alarm rules and their evaluation,
and a whole blue/green run driven by a real recorder."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfmaker.features.guardrails.bluegreen import (
    AlarmRule,
    DeploymentProgress,
    FleetRecorder,
    GuardrailError,
    TrafficSplit,
    evaluate,
    load_alarm_setting,
    load_alarms,
    resolve_alarms,
    run_blue_green,
    statistic_value,
    traffic_steps,
    validate_deployment_config,
)

waits = st.integers(min_value=0, max_value=3600)
capacities = st.integers(min_value=1, max_value=50)


def routing(kind: str, wait: int, size: dict[str, object] | None = None) -> dict[str, object]:
    out: dict[str, object] = {"Type": kind, "WaitIntervalInSeconds": wait}
    if kind == "CANARY":
        out["CanarySize"] = size
    if kind == "LINEAR":
        out["LinearStepSize"] = size
    return out


def check_schedule(steps: list, wait: int) -> None:
    fractions = [s.new_fraction for s in steps]
    assert fractions[-1] == 1.0
    assert all(0 < f <= 1 for f in fractions)
    assert all(a < b for a, b in zip(fractions, fractions[1:], strict=False))
    assert all(s.bake_seconds == wait for s in steps)


@given(wait=waits)
def test_all_at_once_is_one_step(wait: int) -> None:
    steps = traffic_steps(routing("ALL_AT_ONCE", wait), 3)
    assert [(s.new_fraction, s.bake_seconds) for s in steps] == [(1.0, wait)]


@given(wait=waits, percent=st.integers(min_value=1, max_value=50))
def test_canary_percent_is_canary_then_rest(wait: int, percent: int) -> None:
    steps = traffic_steps(routing("CANARY", wait, {"Type": "CAPACITY_PERCENT", "Value": percent}), 4)
    check_schedule(steps, wait)
    assert [s.new_fraction for s in steps] == [percent / 100, 1.0]


@given(wait=waits, capacity=capacities, data=st.data())
def test_canary_instance_count_is_a_share_of_the_new_fleet(
    wait: int, capacity: int, data: st.DataObject
) -> None:
    count = data.draw(st.integers(min_value=1, max_value=capacity))
    size = {"Type": "INSTANCE_COUNT", "Value": count}
    if count / capacity > 0.5:
        with pytest.raises(GuardrailError, match="50%"):
            traffic_steps(routing("CANARY", wait, size), capacity)
        return
    steps = traffic_steps(routing("CANARY", wait, size), capacity)
    check_schedule(steps, wait)
    assert math.isclose(steps[0].new_fraction, count / capacity)


@given(wait=waits, percent=st.integers(min_value=10, max_value=50))
def test_linear_steps_rise_evenly_to_everything(wait: int, percent: int) -> None:
    steps = traffic_steps(routing("LINEAR", wait, {"Type": "CAPACITY_PERCENT", "Value": percent}), 10)
    check_schedule(steps, wait)
    assert len(steps) == math.ceil(100 / percent)
    for index, step in enumerate(steps[:-1], 1):
        assert math.isclose(step.new_fraction, index * percent / 100)


@given(percent=st.one_of(st.integers(min_value=1, max_value=9), st.integers(min_value=51, max_value=100)))
def test_linear_steps_outside_10_to_50_percent_are_refused(percent: int) -> None:
    with pytest.raises(GuardrailError, match="LinearStepSize"):
        traffic_steps(routing("LINEAR", 1, {"Type": "CAPACITY_PERCENT", "Value": percent}), 10)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        (routing("BLUE", 1), "Type"),
        (routing("ALL_AT_ONCE", -1), "WaitIntervalInSeconds"),
        (routing("CANARY", 1), "CanarySize is required"),
        (routing("CANARY", 1, {"Type": "INSTANCE_COUNT", "Value": 3}), "exceeds"),
        (routing("CANARY", 1, {"Type": "PERCENT", "Value": 3}), "CanarySize.Type"),
        (routing("LINEAR", 1, {"Type": "CAPACITY_PERCENT", "Value": 0}), "Value"),
    ],
)
def test_bad_routing_names_the_field(config: dict[str, object], needle: str) -> None:
    with pytest.raises(GuardrailError, match=needle):
        traffic_steps(config, 2)


def test_validate_deployment_config_collects_problems() -> None:
    assert (
        validate_deployment_config(
            {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": routing("ALL_AT_ONCE", 0),
                    "MaximumExecutionTimeoutInSeconds": 600,
                }
            }
        )
        == []
    )
    problems = validate_deployment_config(
        {
            "BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": routing("ALL_AT_ONCE", 0),
                "TerminationWaitInSeconds": 7200,
                "MaximumExecutionTimeoutInSeconds": 10,
            },
            "AutoRollbackConfiguration": {"Alarms": []},
        }
    )
    assert len(problems) == 3


def test_alarm_rules_parse_like_cloudwatch_and_reject_bad_fields(tmp_path: Path) -> None:
    rule = AlarmRule.from_dict(
        {
            "AlarmName": "p99",
            "MetricName": "ModelLatency",
            "ExtendedStatistic": "p99",
            "Threshold": 1000,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        }
    )
    assert (rule.statistic, rule.fleet, rule.period) == ("p99", "new", 60.0)
    for bad, needle in (
        ({"AlarmName": "x", "MetricName": "CPU", "Threshold": 1}, "MetricName"),
        ({"AlarmName": "x", "MetricName": "Invocations", "Threshold": "1"}, "Threshold"),
        ({"AlarmName": "x", "MetricName": "Invocations", "Threshold": 1, "Statistic": "p0"}, "Statistic"),
        ({"AlarmName": "x", "MetricName": "Invocations", "Threshold": 1, "Fleet": "blue"}, "Fleet"),
    ):
        with pytest.raises(GuardrailError, match=needle):
            AlarmRule.from_dict(bad)
    # the setting is a document or a path; the home file overrides it by name
    doc = {
        "Alarms": [
            {"AlarmName": "a", "MetricName": "Invocations", "Threshold": 1},
            {"AlarmName": "b", "MetricName": "Invocations", "Threshold": 2},
        ]
    }
    path = tmp_path / "alarms-setting.json"
    path.write_text(json.dumps(doc))
    assert set(load_alarm_setting(str(path))) == set(load_alarm_setting(json.dumps(doc))) == {"a", "b"}
    (tmp_path / "alarms.json").write_text(
        json.dumps([{"AlarmName": "b", "MetricName": "Invocations", "Threshold": 9}])
    )
    rules = load_alarms(tmp_path, load_alarm_setting(json.dumps(doc)))
    assert rules["b"].threshold == 9 and rules["a"].threshold == 1
    with pytest.raises(GuardrailError, match="not defined: c"):
        resolve_alarms({"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "c"}]}}, rules)
    with pytest.raises(GuardrailError, match="not valid JSON"):
        load_alarm_setting("{nope")


@given(values=st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50))
def test_statistics_are_bounded_by_the_data(values: list[float]) -> None:
    low, high = min(values), max(values)
    for stat in ("Average", "Maximum", "Minimum", "p50", "p99", "p99.9"):
        assert low - 1e-6 <= statistic_value(stat, values) <= high + 1e-6
    assert statistic_value("SampleCount", values) == len(values)
    assert statistic_value("p100", values) == high


def test_error_rate_alarm_fires_on_the_new_fleet_only() -> None:
    now = [100.0]
    recorder = FleetRecorder(clock=lambda: now[0])
    rule = AlarmRule.from_dict(
        {
            "AlarmName": "e",
            "MetricName": "Invocation5XXErrors",
            "Statistic": "Average",
            "Threshold": 0.25,
            "Period": 10,
            "MinimumSamples": 4,
        }
    )
    for _ in range(10):
        recorder.record("old", 500, 0.01)  # the old fleet's errors do not count for a new-fleet alarm
    for status in (200, 200, 500):
        recorder.record("new", status, 0.01)
    assert evaluate(rule, recorder) == (False, None)  # fewer than MinimumSamples
    recorder.record("new", 0, 0.01)  # no answer at all counts as a 5xx
    assert evaluate(rule, recorder) == (True, 0.5)
    now[0] += 11  # outside the Period
    assert evaluate(rule, recorder) == (False, None)


def test_traffic_split_protects_callers_while_in_progress() -> None:
    draws = iter([0.1, 0.9])
    split = TrafficSplit(rng=lambda: next(draws))
    split.new_fraction = 0.5
    assert split.pick_new() is True and split.pick_new() is False
    assert split.retry_on_old(503) and split.retry_on_old(0) and not split.retry_on_old(400)
    split.protecting = False
    assert not split.retry_on_old(500)


def _policy(kind: str, wait: int, **extra: object) -> dict[str, object]:
    size = {"Type": "CAPACITY_PERCENT", "Value": 50}
    return {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing(kind, wait, size), **extra}}


def test_blue_green_run_completes_and_shifts_in_order() -> None:
    shifts: list[float] = []
    recorder = FleetRecorder()
    split = TrafficSplit()
    progress = DeploymentProgress()

    async def on_shift(fraction: float) -> None:
        shifts.append(fraction)

    outcome = asyncio.run(
        run_blue_green(
            _policy("LINEAR", 0),
            new_capacity=2,
            alarms=[],
            recorder=recorder,
            split=split,
            progress=progress,
            on_shift=on_shift,
            check_interval=0.01,
        )
    )
    assert outcome.completed and outcome.reason is None
    assert shifts == [0.5, 1.0] and split.new_fraction == 1.0 and split.protecting is False


def test_blue_green_run_rolls_back_when_an_alarm_fires_while_baking() -> None:
    recorder = FleetRecorder()
    split = TrafficSplit()
    rule = AlarmRule.from_dict(
        {
            "AlarmName": "errors",
            "MetricName": "Invocation5XXErrors",
            "Statistic": "Sum",
            "Threshold": 0,
            "Period": 60,
        }
    )

    async def scenario() -> object:
        async def on_shift(fraction: float) -> None:
            if fraction > 0:
                recorder.record("new", 500, 0.02)  # the canary fails at once

        return await run_blue_green(
            _policy("CANARY", 3600),
            new_capacity=2,
            alarms=[rule],
            recorder=recorder,
            split=split,
            progress=DeploymentProgress(),
            on_shift=on_shift,
            check_interval=0.01,
        )

    outcome = asyncio.run(scenario())
    assert not outcome.completed and outcome.alarm == "errors"
    assert "Alarm errors fired" in outcome.reason and "canary" in outcome.reason
    assert split.new_fraction == 0.0 and split.protecting is True


def test_blue_green_run_rolls_back_after_the_maximum_execution_time() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 200.0  # every look at the clock is 200 s later
        return now[0]

    policy = _policy("LINEAR", 3600, MaximumExecutionTimeoutInSeconds=600)
    split = TrafficSplit()
    outcome = asyncio.run(
        run_blue_green(
            policy,
            new_capacity=2,
            alarms=[],
            recorder=FleetRecorder(),
            split=split,
            progress=DeploymentProgress(),
            check_interval=0.001,
            clock=clock,
        )
    )
    assert not outcome.completed and "MaximumExecutionTimeoutInSeconds=600" in outcome.reason
    assert split.new_fraction == 0.0

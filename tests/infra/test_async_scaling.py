"""Backlog scaling of async endpoints: pure functions, checked with hypothesis."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra import async_scaling as sc

COUNTS = st.integers(min_value=0, max_value=100_000)


@st.composite
def scalings(draw: st.DrawFn) -> sc.BacklogScaling:
    low = draw(st.integers(0, 20))
    high = draw(st.integers(max(1, low), 50))
    target = draw(st.floats(0.1, 500, allow_nan=False))
    return sc.BacklogScaling(
        min_instances=low,
        max_instances=high,
        target_backlog_per_instance=target,
        idle_minutes=draw(st.integers(1, 120)),
    )


@given(st.integers(1, sc.MAX_INVOCATION_TIMEOUT))
def test_visibility_timeout_outlasts_the_longest_invocation(seconds: int) -> None:
    timeout = sc.visibility_timeout(seconds)
    assert seconds < timeout <= sc.MAX_VISIBILITY_TIMEOUT
    assert timeout - seconds >= sc.STORE_MARGIN_SECONDS  # time to write, record and notify after it


@given(st.integers(1, 900))
def test_the_dead_letter_queue_only_gets_what_the_worker_gave_up_on(attempts: int) -> None:
    count = sc.max_receive_count(attempts)
    assert attempts < count <= sc.MAX_RECEIVE_COUNT


@given(st.integers(60, 21_600))
def test_messages_live_longer_than_their_ttl(ttl: int) -> None:
    assert ttl < sc.message_retention_seconds(ttl) <= 1_209_600


@given(COUNTS, COUNTS, st.integers(0, 60), scalings(), st.booleans())
def test_desired_capacity_stays_within_the_group(
    visible: int, in_flight: int, in_service: int, scaling: sc.BacklogScaling, idle: bool
) -> None:
    desired = sc.desired_capacity(visible, in_flight, in_service, scaling, idle=idle)
    assert scaling.min_instances <= desired <= scaling.max_instances


@given(COUNTS, st.integers(0, 60), scalings())
def test_waiting_messages_always_get_an_instance(
    visible: int, in_service: int, scaling: sc.BacklogScaling
) -> None:
    """The wake-from-zero policy: messages wait → at least one instance, idle or not."""
    if visible > 0:
        assert sc.desired_capacity(visible, 0, in_service, scaling, idle=False) >= 1


@given(st.integers(0, 60), scalings())
def test_an_empty_queue_that_stays_empty_goes_to_the_minimum(
    in_service: int, scaling: sc.BacklogScaling
) -> None:
    assert sc.desired_capacity(0, 0, in_service, scaling, idle=True) == scaling.min_instances
    # not yet idle: target tracking alone keeps one running instance (never scales in to zero itself)
    assert sc.desired_capacity(0, 0, in_service, scaling, idle=False) == max(
        scaling.min_instances, min(in_service, 1)
    )


@given(COUNTS, COUNTS, st.integers(1, 60), scalings())
def test_enough_slots_for_the_backlog_unless_capped(
    visible: int, in_flight: int, in_service: int, scaling: sc.BacklogScaling
) -> None:
    """Target tracking: backlog per instance at or below the target once the group has grown."""
    desired = sc.desired_capacity(visible, in_flight, in_service, scaling, idle=False)
    total = visible + in_flight
    if total and desired < scaling.max_instances:
        assert total / desired <= scaling.target_backlog_per_instance + 1e-9
        # and not more instances than the backlog needs (one step of slack for rounding up)
        assert (
            desired == max(scaling.min_instances, 1)
            or (total / (desired - 1)) > scaling.target_backlog_per_instance
        )


@given(COUNTS, COUNTS, COUNTS, st.integers(0, 60), scalings())
def test_more_backlog_never_means_fewer_instances(
    a: int, b: int, in_flight: int, in_service: int, scaling: sc.BacklogScaling
) -> None:
    low, high = sorted((a, b))
    assert sc.desired_capacity(low, in_flight, in_service, scaling, idle=False) <= sc.desired_capacity(
        high, in_flight, in_service, scaling, idle=False
    )


@given(COUNTS, COUNTS, st.integers(0, 60))
def test_backlog_per_instance_has_no_value_without_instances(
    visible: int, in_flight: int, in_service: int
) -> None:
    value = sc.backlog_per_instance(visible, in_flight, in_service)
    if in_service == 0:
        assert value is None
    else:
        assert value == (visible + in_flight) / in_service


def _ids_and_refs(queries: list[dict[str, object]]) -> tuple[set[str], set[str]]:
    ids = {str(q["id"]) for q in queries}
    refs: set[str] = set()
    for q in queries:
        if "expression" in q:
            refs |= set(re.findall(r"\b([a-z][a-z0-9_]*)\b", str(q["expression"]))) - {"and"}
    return ids, refs - {"IF", "AND"}


@pytest.mark.parametrize(
    "queries",
    [
        sc.backlog_metrics("q", "g"),
        sc.wake_alarm_queries("q", "g"),
        sc.idle_alarm_queries("q"),
    ],
)
def test_metric_math_refers_to_defined_queries_and_returns_one_series(
    queries: list[dict[str, object]],
) -> None:
    ids, refs = _ids_and_refs(queries)
    assert refs <= ids, refs - ids
    assert sum(1 for q in queries if q["return_data"]) == 1
    assert all(re.fullmatch(r"[a-z][a-zA-Z0-9_]*", i) for i in ids)  # CloudWatch's id rule


def _evaluate(expression: str, values: dict[str, float]) -> float:
    """A tiny evaluator for the metric-math subset used (IF, AND, comparisons, + and /)."""
    python = expression.replace("AND", "and")
    python = re.sub(r"IF\((.+), (\S+), (\S+)\)$", r"(\2 if \1 else \3)", python)
    return float(eval(python, {"__builtins__": {}}, dict(values)))


@given(COUNTS, st.integers(0, 60))
def test_the_wake_alarm_fires_exactly_when_messages_wait_and_the_group_wants_none(
    visible: int, desired: int
) -> None:
    (expr,) = [q["expression"] for q in sc.wake_alarm_queries("q", "g") if "expression" in q]
    fired = _evaluate(str(expr), {"visible": visible, "desired": desired}) >= 1
    assert fired == (visible > 0 and desired == 0)


@given(COUNTS, COUNTS)
def test_the_idle_alarm_fires_exactly_when_nothing_waits_or_runs(visible: int, in_flight: int) -> None:
    (expr,) = [q["expression"] for q in sc.idle_alarm_queries("q") if "expression" in q]
    assert (_evaluate(str(expr), {"visible": visible, "inflight": in_flight}) <= 0) == (
        visible + in_flight == 0
    )


@given(COUNTS, COUNTS, st.integers(1, 60))
def test_the_tracked_expression_is_backlog_per_instance(visible: int, in_flight: int, instances: int) -> None:
    (expr,) = [m["expression"] for m in sc.backlog_metrics("q", "g") if "expression" in m]
    value = _evaluate(str(expr), {"visible": visible, "inflight": in_flight, "instances": instances})
    assert value == pytest.approx(sc.backlog_per_instance(visible, in_flight, instances))


@given(st.integers(0, 20))
def test_step_adjustments(min_instances: int) -> None:
    (wake,) = sc.wake_step_adjustments(min_instances)
    assert wake["scaling_adjustment"] == max(1, min_instances) and wake["metric_interval_lower_bound"] == "0"
    (idle,) = sc.idle_step_adjustments(min_instances)
    assert idle["scaling_adjustment"] == min_instances and idle["metric_interval_upper_bound"] == "0"


@pytest.mark.parametrize(
    ("scaling", "field"),
    [
        (sc.BacklogScaling(-1, 2, 1.0), "min_instances"),
        (sc.BacklogScaling(3, 2, 1.0), "max_instances"),
        (sc.BacklogScaling(0, 0, 1.0), "max_instances"),
        (sc.BacklogScaling(0, 2, 0.0), "target_backlog_per_instance"),
        (sc.BacklogScaling(0, 2, 1.0, idle_minutes=0), "idle_minutes"),
    ],
)
def test_bad_scaling_names_the_field(scaling: sc.BacklogScaling, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        sc.check(scaling)

"""Pure logic of the gateway: ALB weights, listener-rule priorities, rollout checkpoints, the dashboard."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from infra import endpoints

NAMES = st.from_regex(r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,20}", fullmatch=True)
WEIGHTS = st.lists(
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False), min_size=1, max_size=5
)


@given(WEIGHTS)
def test_alb_weights_keep_the_ratio_within_half_a_percent(weights: list[float]) -> None:
    assume(max(weights) > 0)
    ints = endpoints.alb_weights(weights)
    assert len(ints) == len(weights)
    assert all(isinstance(i, int) and 0 <= i <= 999 for i in ints)
    assert max(ints) == 999
    assert [i == 0 for i in ints] == [
        w == 0 for w in weights
    ]  # a variant gets traffic exactly when its weight > 0
    assert endpoints.share_error(weights, ints) < 0.005


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([0.9, 0.1], [999, 111]),
        ([1.0], [999]),
        ([1, 1, 1], [999, 999, 999]),
        ([1, 0], [999, 0]),
        ([1e6, 1], [999, 1]),  # never rounded to 0: the variant keeps its (tiny) share
    ],
)
def test_alb_weight_examples(weights: list[float], expected: list[int]) -> None:
    assert endpoints.alb_weights(weights) == expected


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([], "at least one"),
        ([1] * 6, "at most 5 target groups"),
        ([0, 0], "at least one weight must be positive"),
        ([1, -1], ">= 0"),
        ([1, math.inf], "finite"),
    ],
)
def test_alb_weights_refuse_what_an_alb_cannot_do(weights: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        endpoints.alb_weights(weights)


def _disjoint_homes(names: set[str]) -> bool:
    homes = [endpoints._home_slot(n) for n in names]
    return len(set(homes)) == len(homes)


@given(st.sets(NAMES, max_size=30), NAMES)
def test_priority_blocks_are_stable_when_an_endpoint_comes_or_goes(names: set[str], extra: str) -> None:
    assume(extra not in names)
    before = endpoints.priority_blocks(names)
    after = endpoints.priority_blocks(names | {extra})
    assert set(after) == names | {extra}
    if _disjoint_homes(names | {extra}):  # the usual case: no other endpoint's rules move
        assert {n: after[n] for n in names} == before


@given(st.lists(NAMES, max_size=40))
def test_priority_blocks_are_unique_in_range_and_order_free(names: list[str]) -> None:
    blocks = endpoints.priority_blocks(names)
    assert blocks == endpoints.priority_blocks(list(reversed(names)))
    assert len(set(blocks.values())) == len(blocks)
    for block in blocks.values():
        assert (
            block % endpoints.BLOCK == 0
            and block > 0
            and block + endpoints.BLOCK - 1 <= endpoints.MAX_PRIORITY
        )


def test_colliding_names_still_get_their_own_blocks() -> None:
    # find two names with the same home slot: both are placed, one probes to the next block
    seen: dict[int, str] = {}
    pair = None
    for i in range(100_000):
        name = f"ep{i}"
        home = endpoints._home_slot(name)
        if home in seen:
            pair = (seen[home], name)
            break
        seen[home] = name
    assert pair is not None
    first, second = sorted(pair)
    home = endpoints._home_slot(first)
    assert endpoints.priority_blocks(pair) == {
        first: endpoints.BLOCK * (home + 1),
        second: endpoints.BLOCK * ((home + 1) % endpoints.SLOTS + 1),
    }


@given(st.lists(NAMES, min_size=1, max_size=8, unique=True), st.integers(1, endpoints.SLOTS))
def test_header_rules_come_before_the_weighted_rule_inside_the_block(variants: list[str], slot: int) -> None:
    block = slot * endpoints.BLOCK
    prio = endpoints.rule_priorities(block, variants)
    values = list(prio.header.values())
    assert len(set(values)) == len(values)
    assert all(block < p < prio.weighted for p in values)
    assert prio.weighted < block + endpoints.BLOCK


def test_rollout_checkpoints() -> None:
    assert endpoints.checkpoints("canary", canary_percent=10) == [10, 100]
    assert endpoints.checkpoints("linear", linear_step_percent=25) == [25, 50, 75, 100]
    assert endpoints.checkpoints("linear", linear_step_percent=30) == [30, 60, 90, 100]
    assert endpoints.checkpoints("all-at-once") == []
    with pytest.raises(ValueError, match="strategy"):
        endpoints.checkpoints("blue-green")
    with pytest.raises(ValueError, match="canary_percent"):
        endpoints.checkpoints("canary", canary_percent=100)


def test_paths_and_names() -> None:
    assert endpoints.invoke_paths("churn") == [
        "/endpoints/churn/invocations",
        "/endpoints/churn/invocations-response-stream",
    ]
    assert endpoints.valid_sagemaker_name("AllTraffic") and endpoints.valid_sagemaker_name("a-b--c")
    for bad in ("-a", "a-", "a_b", "", "a" * 64, "a/b"):
        assert not endpoints.valid_sagemaker_name(bad)
    with pytest.raises(ValueError):
        endpoints.invoke_paths("a/b")


def test_dashboard_shows_every_variant_on_every_panel() -> None:
    body = endpoints.dashboard_body(
        "churn", "us-east-1", "app/gw/1", {"champion": "targetgroup/a/1", "challenger": "targetgroup/b/2"}
    )
    metrics = [w["properties"] for w in body["widgets"] if w["type"] == "metric"]
    names = {m[1] for panel in metrics for m in panel["metrics"]}
    assert names == {
        "RequestCount",
        "TargetResponseTime",
        "HTTPCode_Target_4XX_Count",
        "HTTPCode_Target_5XX_Count",
        "HealthyHostCount",
    }
    stats = {m[-1]["stat"] for panel in metrics for m in panel["metrics"] if m[1] == "TargetResponseTime"}
    assert stats == {"p50", "p99"}
    for panel in metrics:
        assert {m[5] for m in panel["metrics"]} == {"targetgroup/a/1", "targetgroup/b/2"}
        assert all(m[3] == "app/gw/1" for m in panel["metrics"]) and panel["region"] == "us-east-1"

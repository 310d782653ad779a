"""Pure routing logic (serving/router.py): weighted variant choice and least outstanding requests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.router import WeightedChoice, least_outstanding, shares

weights_st = st.lists(
    st.floats(min_value=0, max_value=1000, allow_nan=False, allow_infinity=False), min_size=1, max_size=10
)


@given(weights_st, st.floats(min_value=0, max_value=1, exclude_max=True))
def test_choice_never_picks_a_zero_weight(weights: list[float], r: float) -> None:
    chooser = WeightedChoice(weights)
    if not chooser:
        with pytest.raises(ValueError):
            chooser.choose(r)
        return
    index = chooser.choose(r)
    assert 0 <= index < len(weights)
    assert weights[index] > 0


@given(weights_st)
def test_choice_intervals_match_the_shares(weights: list[float]) -> None:
    """Each index owns exactly its share of [0, 1): sweeping r over a fine grid reproduces the shares."""
    chooser = WeightedChoice(weights)
    if not chooser:
        return
    steps = 4000
    counts = [0] * len(weights)
    for i in range(steps):
        counts[chooser.choose(i / steps)] += 1
    for got, want in zip(counts, shares(weights), strict=True):
        assert abs(got / steps - want) <= 1.5 / steps * len(weights) + 1e-9


@settings(max_examples=30)
@given(st.lists(st.integers(min_value=1, max_value=100), min_size=2, max_size=5), st.integers(0, 2**31))
def test_random_draws_converge_to_the_shares(weights: list[int], seed: int) -> None:
    rng = random.Random(seed)
    chooser = WeightedChoice(weights)
    counts = [0] * len(weights)
    draws = 20_000
    for _ in range(draws):
        counts[chooser.choose(rng.random())] += 1
    for got, want in zip(counts, shares(weights), strict=True):
        assert abs(got / draws - want) < 0.03


def test_choice_at_the_upper_edge_stays_in_range() -> None:
    chooser = WeightedChoice([0.1, 0.2, 0.0])
    assert chooser.choose(0.9999999999999999) == 1


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_weights_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match="weight 1"):
        WeightedChoice([1.0, bad])


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=20), st.integers(0, 1000))
def test_least_outstanding_picks_a_minimum(outstanding: list[int], start: int) -> None:
    index = least_outstanding(outstanding, start)
    assert outstanding[index] == min(outstanding)


@given(st.integers(min_value=1, max_value=12))
def test_ties_rotate_over_every_idle_instance(count: int) -> None:
    picked = {least_outstanding([0] * count, start) for start in range(count)}
    assert picked == set(range(count))


def test_least_outstanding_needs_instances() -> None:
    with pytest.raises(ValueError):
        least_outstanding([])

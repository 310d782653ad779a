"""Pure routing decisions of an endpoint: which variant, which instance.

No I/O and no imports of the platform: the platform (``selfmaker``) keeps the live state and calls these
functions on every request, so they are small and allocation-free on the hot path.

* Variants are chosen by weight: share of variant *i* = ``w_i / sum(w)``; weight-0 variants are never
  chosen by weight (only by an explicit TargetVariant).
* Instances of a variant are chosen by least outstanding requests; ties rotate so idle instances share
  the load evenly.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


class WeightedChoice:
    """Picks an index with probability proportional to its weight (cumulative table + bisect)."""

    __slots__ = ("_cumulative", "_indices", "total")

    def __init__(self, weights: Sequence[float]) -> None:
        self._cumulative: list[float] = []
        self._indices: list[int] = []
        for index, weight in enumerate(weights):
            if not (isinstance(weight, (int, float)) and math.isfinite(weight)) or weight < 0:
                raise ValueError(f"weight {index} must be a finite number >= 0, got {weight!r}")
        # relative to the largest weight, so tiny (even subnormal) weights keep exact proportions
        scale = max(weights, default=0.0)
        total = 0.0
        for index, weight in enumerate(weights):
            if weight > 0:
                total += float(weight) / scale
                self._cumulative.append(total)
                self._indices.append(index)
        self.total = total

    def __bool__(self) -> bool:
        return self.total > 0

    def choose(self, r: float) -> int:
        """The index for a uniform draw ``r`` in [0, 1); raises ValueError when every weight is 0."""
        if not self._indices:
            raise ValueError("every weight is 0")
        position = bisect.bisect_right(self._cumulative, r * self.total)
        # r * total can round up to total exactly
        return self._indices[min(position, len(self._indices) - 1)]


def shares(weights: Sequence[float]) -> list[float]:
    """Expected traffic share of each weight (all zeros when the weights sum to 0)."""
    total = float(sum(weights))
    return [float(w) / total if total > 0 else 0.0 for w in weights]


def least_outstanding(outstanding: Sequence[int], start: int = 0) -> int:
    """Index of the smallest value; among equals the first at or after ``start`` (cyclically).

    ``start`` rotating per call spreads requests over idle instances instead of always the first.
    """
    count = len(outstanding)
    if count == 0:
        raise ValueError("no instances")
    best = start % count
    best_value = outstanding[best]
    for step in range(1, count):
        index = (start + step) % count
        value = outstanding[index]
        if value < best_value:
            best, best_value = index, value
    return best

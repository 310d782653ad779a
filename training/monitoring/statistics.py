"""Data-quality statistics, suggested constraints and constraint violations in SageMaker Model Monitor's
schemas (https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-byoc-statistics.html and
``-constraints.html``, ``-violations.html``).

A dataset is a list of named columns of raw text values (what a CSV cell or a captured CSV field holds; an
empty cell is missing). Each column's type is inferred as SageMaker's analyzer does (``Integral`` when every
present value is an integer, ``Fractional`` when every one is a number, ``String`` otherwise, ``Unknown``
when none is present). Numerical columns get their distribution as an Apache DataSketches KLL sketch (the
sketch parameters SageMaker's statistics carry: k 2048), from which the buckets are read
(``get_pmf``); drift is the largest distance between the baseline's and the current cumulative
distributions (the L-infinity / Kolmogorov-Smirnov distance) compared with the constraints'
``comparison_threshold``. With ``comparison_method`` ``Robust`` (the default) the distance must also exceed
the two-sample Kolmogorov-Smirnov critical value for the two sample sizes at 1 % (scipy's ``kolmogi``), so
a small current window's sampling noise is not reported as drift; ``Simple`` compares with the threshold
alone.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from datasketches import kll_doubles_sketch
from scipy.special import kolmogi

#: SageMaker's KLL parameters as its statistics.json reports them
KLL_K = 2048
KLL_C = 0.64
#: buckets of a numerical feature's distribution in statistics.json
BUCKETS = 10
#: a String feature with at most this many distinct values gets a ``domains`` constraint
MAX_DOMAIN = 20
#: "Robust" comparison: a distance is drift only when the two samples differ at this significance level too
ROBUST_ALPHA = 0.01
#: the ``monitoring_config`` SageMaker suggests
MONITORING_CONFIG: dict[str, Any] = {
    "evaluate_constraints": "Enabled",
    "emit_metrics": "Enabled",
    "datatype_check_threshold": 1.0,
    "domain_content_threshold": 1.0,
    "distribution_constraints": {
        "perform_comparison": "Enabled",
        "comparison_threshold": 0.1,
        "comparison_method": "Robust",
        "categorical_comparison_threshold": 0.1,
        "categorical_drift_method": "LInfinity",
    },
}

Columns = list[tuple[str, list[str]]]


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _kind(value: str) -> str:
    """``Integral``, ``Fractional`` or ``String`` for one present value."""
    number = _number(value)
    if number is None:
        return "String"
    try:
        int(value)
    except ValueError:
        return "Fractional"
    return "Integral"


def infer_type(values: Sequence[str]) -> str:
    """The inferred_type of a column: the narrowest type every present value has."""
    kinds = {_kind(v) for v in values if v != ""}
    if not kinds:
        return "Unknown"
    if kinds == {"Integral"}:
        return "Integral"
    if kinds <= {"Integral", "Fractional"}:
        return "Fractional"
    return "String"


def _sketch(numbers: np.ndarray) -> kll_doubles_sketch:
    sketch = kll_doubles_sketch(KLL_K)
    for x in numbers:
        sketch.update(float(x))
    return sketch


def _sketch_data(sketch: kll_doubles_sketch) -> list[list[float]]:
    """The retained items by level (an item of level i stands for 2**i values), as statistics.json's
    ``sketch.data`` lists them."""
    levels: dict[int, list[float]] = {}
    for item, weight in sketch:
        levels.setdefault(int(weight).bit_length() - 1, []).append(float(item))
    return [sorted(levels.get(i, [])) for i in range(max(levels, default=-1) + 1)]


def _buckets(sketch: kll_doubles_sketch, low: float, high: float) -> list[dict[str, float]]:
    if sketch.is_empty():
        return []
    if high <= low:
        return [{"lower_bound": low, "upper_bound": high, "count": float(sketch.n)}]
    edges = np.linspace(low, high, BUCKETS + 1)
    # get_pmf's masses are of (-inf, e1), [e1, e2) … [e_last, +inf): the first and last fold into the ends
    masses = sketch.get_pmf([float(e) for e in edges[1:-1]])
    return [
        {"lower_bound": float(edges[i]), "upper_bound": float(edges[i + 1]), "count": float(m * sketch.n)}
        for i, m in enumerate(masses)
    ]


def feature_statistics(name: str, values: Sequence[str]) -> dict[str, Any]:
    """One ``features[]`` item of statistics.json."""
    present = [v for v in values if v != ""]
    common = {"num_present": len(present), "num_missing": len(values) - len(present)}
    kind = infer_type(values)
    if kind in ("Integral", "Fractional"):
        numbers = np.array([float(v) for v in present], dtype=np.float64)
        sketch = _sketch(numbers)
        low, high = (float(numbers.min()), float(numbers.max())) if len(numbers) else (0.0, 0.0)
        return {
            "name": name,
            "inferred_type": kind,
            "numerical_statistics": {
                "common": common,
                "mean": float(numbers.mean()) if len(numbers) else 0.0,
                "sum": float(numbers.sum()),
                "std_dev": float(numbers.std()) if len(numbers) else 0.0,
                "min": low,
                "max": high,
                "distribution": {
                    "kll": {
                        "buckets": _buckets(sketch, low, high),
                        "sketch": {
                            "parameters": {"c": KLL_C, "k": float(KLL_K)},
                            "data": _sketch_data(sketch),
                        },
                    }
                },
            },
        }
    counts = Counter(present)
    return {
        "name": name,
        "inferred_type": kind,
        "string_statistics": {
            "common": common,
            "distinct_count": float(len(counts)),
            "distribution": {
                "categorical": {
                    "buckets": [{"value": value, "count": count} for value, count in counts.most_common()]
                }
            },
        },
    }


def dataset_statistics(columns: Columns, item_count: int) -> dict[str, Any]:
    """statistics.json of a dataset of ``item_count`` rows."""
    return {
        "version": 0.0,
        "dataset": {"item_count": item_count},
        "features": [feature_statistics(name, values) for name, values in columns],
    }


def suggest_constraints(statistics: dict[str, Any]) -> dict[str, Any]:
    """constraints.json suggested from a baseline's statistics.json."""
    features = []
    for feature in statistics.get("features") or []:
        kind = feature.get("inferred_type", "Unknown")
        item: dict[str, Any] = {"name": feature["name"], "inferred_type": kind}
        section = feature.get("numerical_statistics") or feature.get("string_statistics") or {}
        common = section.get("common") or {}
        total = (common.get("num_present") or 0) + (common.get("num_missing") or 0)
        item["completeness"] = (common.get("num_present") or 0) / total if total else 1.0
        if kind in ("Integral", "Fractional"):
            item["num_constraints"] = {"is_non_negative": bool((section.get("min") or 0.0) >= 0)}
        elif kind == "String":
            buckets = ((section.get("distribution") or {}).get("categorical") or {}).get("buckets") or []
            if 0 < len(buckets) <= MAX_DOMAIN:
                item["string_constraints"] = {"domains": [str(b["value"]) for b in buckets]}
        features.append(item)
    return {"version": 0.0, "features": features, "monitoring_config": dict(MONITORING_CONFIG)}


def _baseline_cdf(feature: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(sorted values, cumulative weights in [0, 1]) of a baseline feature's KLL sketch data."""
    kll = (((feature.get("numerical_statistics") or {}).get("distribution") or {}).get("kll")) or {}
    data = (kll.get("sketch") or {}).get("data") or []
    items = [(float(x), float(2**level)) for level, row in enumerate(data) for x in row]
    if not items:
        return None
    items.sort()
    values = np.array([x for x, _ in items])
    weights = np.cumsum([w for _, w in items])
    return values, weights / weights[-1]


def robust_limit(baseline_count: float, current_count: float) -> float:
    """The two-sample Kolmogorov-Smirnov distance that samples of these sizes exceed by chance with
    probability :data:`ROBUST_ALPHA` (asymptotic)."""
    if baseline_count <= 0 or current_count <= 0:
        return 0.0
    return float(kolmogi(ROBUST_ALPHA)) * math.sqrt(
        (baseline_count + current_count) / (baseline_count * current_count)
    )


def numerical_distance(baseline_feature: dict[str, Any], values: Sequence[str]) -> float | None:
    """The largest gap between the baseline's and the current cumulative distributions (None when one of
    them is empty)."""
    base = _baseline_cdf(baseline_feature)
    numbers = [n for n in (_number(v) for v in values if v != "") if n is not None]
    if base is None or not numbers:
        return None
    current = _sketch(np.array(numbers))
    points = np.unique(np.concatenate([base[0], np.array([x for x, _ in current])]))
    # the baseline's CDF at each point: the weight of the items <= point
    base_cdf = np.concatenate([[0.0], base[1]])[np.searchsorted(base[0], points, side="right")]
    current_cdf = np.array(current.get_cdf([float(p) for p in points], inclusive=True)[:-1])
    return float(np.max(np.abs(base_cdf - current_cdf)))


def categorical_distance(baseline_feature: dict[str, Any], values: Sequence[str]) -> float | None:
    """The L-infinity distance between the baseline's and the current category frequencies."""
    stats = baseline_feature.get("string_statistics") or {}
    buckets = ((stats.get("distribution") or {}).get("categorical") or {}).get("buckets") or []
    base = {str(b["value"]): float(b["count"]) for b in buckets}
    current = Counter(v for v in values if v != "")
    base_total, current_total = sum(base.values()), sum(current.values())
    if not base_total or not current_total:
        return None
    return max(
        abs(base.get(k, 0.0) / base_total - current.get(k, 0) / current_total)
        for k in set(base) | set(current)
    )


def _matching_share(values: Sequence[str], expected: str) -> float:
    present = [v for v in values if v != ""]
    if not present or expected in ("String", "Unknown"):
        return 1.0
    allowed = {"Integral"} if expected == "Integral" else {"Integral", "Fractional"}
    return sum(_kind(v) in allowed for v in present) / len(present)


def violations(
    columns: Columns, constraints: dict[str, Any], baseline_statistics: dict[str, Any] | None
) -> list[dict[str, str]]:
    """constraint_violations.json's ``violations`` for a dataset checked against a baseline."""
    config = constraints.get("monitoring_config") or MONITORING_CONFIG
    distribution = config.get("distribution_constraints") or {}
    compare = distribution.get("perform_comparison", "Enabled") == "Enabled"
    threshold = float(distribution.get("comparison_threshold", 0.1))
    robust = distribution.get("comparison_method", "Robust") == "Robust"
    categorical_threshold = float(distribution.get("categorical_comparison_threshold", 0.1))
    type_threshold = float(config.get("datatype_check_threshold", 1.0))
    domain_threshold = float(config.get("domain_content_threshold", 1.0))
    expected = constraints.get("features") or []
    current = dict(columns)
    base_features = {f["name"]: f for f in (baseline_statistics or {}).get("features") or []}
    found: list[dict[str, str]] = []

    def add(name: str, check: str, description: str) -> None:
        found.append({"feature_name": name, "constraint_check_type": check, "description": description})

    missing = [f["name"] for f in expected if f["name"] not in current]
    if missing:
        add(
            ",".join(missing),
            "missing_column_check",
            f"There are missing columns in current dataset. Number of columns in current dataset: "
            f"{len(current)}, Number of columns in baseline constraints: {len(expected)}",
        )
    extra = [name for name in current if name not in {f["name"] for f in expected}]
    if extra:
        add(
            ",".join(extra),
            "extra_column_check",
            f"There are extra columns in current dataset. Number of columns in current dataset: "
            f"{len(current)}, Number of columns in baseline constraints: {len(expected)}",
        )
    for feature in expected:
        name = feature["name"]
        if name not in current:
            continue
        values = current[name]
        kind = feature.get("inferred_type", "Unknown")
        share = _matching_share(values, kind)
        if share < type_threshold:
            add(
                name,
                "data_type_check",
                f"Data type match requirement is not met. Expected data type: {kind}, Expected match: "
                f"{type_threshold * 100:g}%. Observed: Only {share * 100:.4g}% of data is {kind}.",
            )
        if "completeness" in feature and values:
            completeness = sum(v != "" for v in values) / len(values)
            if completeness < float(feature["completeness"]):
                add(
                    name,
                    "completeness_check",
                    f"Data completeness requirement is not met. Expected completeness: "
                    f"{float(feature['completeness']):.4g}, Observed: {completeness:.4g}",
                )
        domains = (feature.get("string_constraints") or {}).get("domains")
        if domains:
            present = [v for v in values if v != ""]
            inside = sum(v in set(domains) for v in present) / len(present) if present else 1.0
            if inside < domain_threshold:
                add(
                    name,
                    "categorical_values_check",
                    f"Data does not meet the categorical values requirement. Expected: "
                    f"{domain_threshold * 100:g}% of values in the baseline domain, Observed: "
                    f"{inside * 100:.4g}%",
                )
        base = base_features.get(name)
        if not compare or base is None:
            continue
        if kind in ("Integral", "Fractional"):
            distance = numerical_distance(base, values)
            limit = threshold
        elif kind == "String":
            distance = categorical_distance(base, values)
            limit = categorical_threshold
        else:
            continue
        section = base.get("numerical_statistics") or base.get("string_statistics") or {}
        noise = (
            robust_limit(
                float((section.get("common") or {}).get("num_present") or 0), sum(v != "" for v in values)
            )
            if robust
            else 0.0
        )
        if distance is not None and distance > limit and distance > noise:
            add(
                name,
                "baseline_drift_check",
                f"Baseline drift distance: {distance:.4g} exceeds threshold: {limit:g}",
            )
    return found

"""The direct xgboost → ONNX writer against ``booster.predict``: every objective, NaN, exact split values."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import xgboost as xgb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.onnx_export import XGBOOST_OBJECTIVES, xgboost_to_onnx
from training.algorithms.xgboost_algo import OBJECTIVES

ATOL = 1e-5
D = 5


def _data(n: int = 300, seed: int = 0, nan_fraction: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D)).astype(np.float32)
    X[rng.random(X.shape) < nan_fraction] = np.nan
    return X


def _labels(objective: str, X: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(X)
    if objective.startswith("binary:"):
        return (x[:, 0] + x[:, 1] > 0).astype(np.float32)
    if objective.startswith("multi:"):
        return np.digitize(x[:, 0], [-0.5, 0.5]).astype(np.float32)
    if objective == "reg:logistic":
        return (0.1 + 0.8 * (x[:, 0] > 0)).astype(np.float32)
    if objective in ("count:poisson", "reg:gamma", "reg:tweedie", "reg:squaredlogerror"):
        return np.exp(0.5 * x[:, 0]).astype(np.float32)
    return (2 * x[:, 0] + x[:, 2] + 3).astype(np.float32)


def _train(objective: str, X: np.ndarray, rounds: int = 8, **params: Any) -> Any:
    p: dict[str, Any] = {"objective": objective, "max_depth": 4, "nthread": 1, **params}
    if objective.startswith("multi:"):
        p["num_class"] = 3
    return xgb.train(p, xgb.DMatrix(X, label=_labels(objective, X), missing=np.nan), rounds)


def _split_probes(booster: Any, base: np.ndarray) -> np.ndarray:
    """Rows that put every split value (and the float32 just below it) into its feature."""
    rows = []
    for tree in json.loads(bytes(booster.save_raw("json")))["learner"]["gradient_booster"]["model"]["trees"]:
        for left, feature, cond in zip(
            tree["left_children"], tree["split_indices"], tree["split_conditions"], strict=True
        ):
            if left == -1:
                continue
            for value in (np.float32(cond), np.nextafter(np.float32(cond), np.float32(-np.inf))):
                row = base[len(rows) % len(base)].copy()
                row[feature] = value
                rows.append(row)
    return np.asarray(rows, dtype=np.float32).reshape(-1, base.shape[1])


def _run(model: onnx.ModelProto, X: np.ndarray) -> dict[str, np.ndarray]:
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, {"input": X}), strict=True)}


def assert_parity(booster: Any, objective: str, X: np.ndarray) -> float:
    """ONNX outputs = xgboost's predictions (values within 1e-5, labels equal); returns the max difference."""
    X = np.concatenate([X, _split_probes(booster, X)]) if len(X) else X
    out = _run(xgboost_to_onnx(booster, X.shape[1], objective), X)
    dm = xgb.DMatrix(X, missing=np.nan)
    pred = booster.predict(dm, strict_shape=True)
    margin = booster.predict(dm, output_margin=True, strict_shape=True)
    if objective.startswith("multi:"):
        assert sorted(out) == ["label", "probabilities"]
        assert out["label"].dtype == np.int64 and out["label"].shape == (len(X),)
        assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (len(X), 3)
        e = np.exp(margin.astype(np.float64) - margin.max(axis=1, keepdims=True))
        expected = e / e.sum(axis=1, keepdims=True) if objective == "multi:softmax" else pred
        labels = pred.reshape(-1) if objective == "multi:softmax" else margin.argmax(axis=1)
        np.testing.assert_array_equal(out["label"], labels)
        got = out["probabilities"]
    elif objective.startswith("binary:"):
        assert sorted(out) == ["label", "probabilities"]
        assert out["label"].dtype == np.int64 and out["label"].shape == (len(X),)
        assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (len(X), 2)
        p1 = pred.reshape(-1).astype(np.float64)
        if objective == "binary:logitraw":  # served as probabilities
            p1 = 1.0 / (1.0 + np.exp(-p1))
        np.testing.assert_array_equal(out["label"], (p1 >= 0.5).astype(np.int64))
        np.testing.assert_allclose(out["probabilities"][:, 0], 1.0 - p1, atol=ATOL, rtol=0)
        got, expected = out["probabilities"][:, 1], p1
    else:
        assert list(out) == ["variable"]
        assert out["variable"].dtype == np.float32 and out["variable"].shape == (len(X), 1)
        got, expected = out["variable"], pred
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=ATOL)
    return float(
        np.max(
            np.abs(np.asarray(got, dtype=np.float64) - np.asarray(expected, dtype=np.float64)), initial=0.0
        )
    )


def test_every_builtin_objective_is_exportable() -> None:
    assert set(OBJECTIVES) <= set(XGBOOST_OBJECTIVES)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_parity_with_missing_values_and_exact_split_values(objective: str) -> None:
    X = _data()
    booster = _train("reg:squarederror" if objective == "reg:linear" else objective, X)
    assert_parity(booster, "reg:squarederror" if objective == "reg:linear" else objective, X)


STRUCTURES: list[tuple[str, str, dict[str, Any], Callable[[Any], Any]]] = [
    # (id, objective, xgboost params, booster transform)
    (
        "pruned-nodes-exact",
        "binary:logistic",
        {"tree_method": "exact", "gamma": 5.0, "max_depth": 8},
        lambda b: b,
    ),
    ("single-leaf-trees", "multi:softprob", {"gamma": 1e9}, lambda b: b),
    (
        "lossguide",
        "reg:squarederror",
        {"grow_policy": "lossguide", "max_depth": 0, "max_leaves": 5, "tree_method": "hist"},
        lambda b: b,
    ),
    ("approx", "count:poisson", {"tree_method": "approx"}, lambda b: b),
    (
        "parallel-trees",
        "multi:softmax",
        {"num_parallel_tree": 3, "subsample": 0.7, "colsample_bynode": 0.6},
        lambda b: b,
    ),
    ("base-score-set", "binary:logistic", {"base_score": 0.2}, lambda b: b),
    ("base-score-set-gamma", "reg:gamma", {"base_score": 2.5}, lambda b: b),
    ("base-score-set-logistic", "reg:logistic", {"base_score": 0.9}, lambda b: b),
    ("sliced-early-stop", "multi:softprob", {}, lambda b: b[:3]),
    ("no-trees", "binary:logistic", {}, lambda b: b[:0]),
    (
        "deep",
        "reg:tweedie",
        {"max_depth": 10, "min_child_weight": 0, "tweedie_variance_power": 1.3},
        lambda b: b,
    ),
]


@pytest.mark.parametrize(
    ("objective", "params", "transform"),
    [case[1:] for case in STRUCTURES],
    ids=[case[0] for case in STRUCTURES],
)
def test_tree_structures_parity(
    objective: str, params: dict[str, Any], transform: Callable[[Any], Any]
) -> None:
    X = _data(seed=3)
    assert_parity(transform(_train(objective, X, **params)), objective, X)


def test_unused_features_and_constant_columns() -> None:
    X = _data(seed=4)
    X[:, 1] = 1.0  # never split on
    X[:, 3] = np.nan  # always missing
    wide = np.concatenate([X, np.zeros((len(X), 3), dtype=np.float32)], axis=1)  # trained on 8 columns
    booster = xgb.train(
        {"objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(wide, label=_labels("binary:logistic", X)),
        5,
    )
    assert_parity(booster, "binary:logistic", wide)


def test_incremental_training_keeps_the_base_margin() -> None:
    X = _data(seed=5)
    first = _train("count:poisson", X, rounds=3)
    more = xgb.train(
        {"objective": "count:poisson", "nthread": 1},
        xgb.DMatrix(X, label=_labels("count:poisson", X) * 2),
        4,
        xgb_model=first,
    )
    assert_parity(more, "count:poisson", X)


def test_all_missing_rows_follow_the_default_directions() -> None:
    X = _data(seed=6)
    booster = _train("multi:softprob", X)
    assert_parity(booster, "multi:softprob", np.full((4, D), np.nan, dtype=np.float32))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    objective=st.sampled_from(
        ["reg:squarederror", "binary:logistic", "multi:softprob", "count:poisson", "binary:hinge"]
    ),
    n=st.integers(2, 60),
    seed=st.integers(0, 2**16),
    nan_fraction=st.sampled_from([0.0, 0.3, 0.9]),
    grid=st.booleans(),
    max_depth=st.integers(1, 6),
    rounds=st.integers(1, 6),
)
def test_parity_property(
    objective: str, n: int, seed: int, nan_fraction: float, grid: bool, max_depth: int, rounds: int
) -> None:
    X = _data(n, seed, nan_fraction)
    if grid:  # few distinct values: splits land exactly between/at the probe values
        X = np.round(X * 2) / 2
    booster = _train(objective, X, rounds=rounds, max_depth=max_depth, min_child_weight=0)
    assert_parity(booster, objective, np.concatenate([X, _data(20, seed + 1, nan_fraction)]))


def test_rejects_what_it_cannot_export() -> None:
    X = _data(seed=7, nan_fraction=0)
    y = _labels("binary:logistic", X)
    booster = _train("binary:logistic", X, rounds=2)
    with pytest.raises(ValueError, match="trained with objective binary:logistic"):
        xgboost_to_onnx(booster, D, "reg:squarederror")
    with pytest.raises(ValueError, match="'reg:quantileerror' cannot be exported"):
        xgboost_to_onnx(booster, D, "reg:quantileerror")
    with pytest.raises(ValueError, match="splits on feature"):
        xgboost_to_onnx(booster, 1, "binary:logistic")
    dart = xgb.train(
        {"objective": "binary:logistic", "booster": "dart", "nthread": 1}, xgb.DMatrix(X, label=y), 2
    )
    with pytest.raises(ValueError, match="booster 'dart'"):
        xgboost_to_onnx(dart, D, "binary:logistic")
    Xc = X.copy()
    Xc[:, 4] = 2 * y + np.arange(len(X)) % 2  # four categories that carry the label
    cat = xgb.DMatrix(Xc, label=y, feature_types=["q"] * 4 + ["c"], enable_categorical=True)
    categorical = xgb.train(
        {"objective": "binary:logistic", "tree_method": "hist", "max_cat_to_onehot": 1, "nthread": 1}, cat, 4
    )
    with pytest.raises(ValueError, match="categorical splits"):
        xgboost_to_onnx(categorical, D, "binary:logistic")


def test_graph_uses_only_onnx_and_ai_onnx_ml() -> None:
    model = xgboost_to_onnx(_train("multi:softprob", _data()), D, "multi:softprob")
    assert {op.domain for op in model.opset_import} == {"", "ai.onnx.ml"}
    assert [n.op_type for n in model.graph.node] == ["TreeEnsembleRegressor", "Softmax", "ArgMax"]
    assert [i.name for i in model.graph.input] == ["input"]

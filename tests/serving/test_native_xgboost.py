"""SageMaker's own XGBoost artifacts (``xgboost-model`` alone, in every save format its images write) are
served: converted at load, answers equal to ``booster.predict``; corrupt or unconvertible boosters fail the
load with the reason."""

from __future__ import annotations

import io
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from serving.dataplane import DataPlane
from serving.errors import ModelLoadError
from serving.native import artifact_format

RNG = np.random.default_rng(7)
X = RNG.normal(size=(300, 5)).astype(np.float32)
X[RNG.random(X.shape) < 0.1] = np.nan  # missing values take the trees' default directions


def _booster(objective: str) -> xgb.Booster:
    params: dict[str, object] = {"objective": objective, "max_depth": 3, "eta": 0.3, "seed": 0}
    if objective.startswith("binary:"):
        y = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) > 0).astype(int)
    elif objective.startswith("multi:"):
        y = np.digitize(np.nan_to_num(X[:, 0]), [-0.5, 0.5])
        params["num_class"] = 3
    else:
        y = 2 * np.nan_to_num(X[:, 0]) - np.nan_to_num(X[:, 2])
    return xgb.train(params, xgb.DMatrix(X, label=y, missing=np.nan), num_boost_round=8)


def _saved(booster: xgb.Booster, fmt: str) -> bytes:
    """What SageMaker's XGBoost images leave in ``xgboost-model``, written by xgboost itself."""
    if fmt == "pickle":  # the 0.90 images pickled the Booster
        return pickle.dumps(booster)
    if fmt == "binary":  # the 1.x images: save_model("xgboost-model") with no extension
        with warnings.catch_warnings():  # xgboost warns that the format is deprecated
            warnings.simplefilter("ignore")
            return bytes(booster.save_raw("deprecated"))
    return bytes(booster.save_raw("json" if fmt == "json" else "ubj"))


def _csv(rows: np.ndarray) -> bytes:
    return "\n".join(",".join("" if np.isnan(v) else f"{v:.9g}" for v in row) for row in rows).encode()


@pytest.mark.parametrize("fmt", ["binary", "json", "ubjson", "pickle"])
@pytest.mark.parametrize("objective", ["binary:logistic", "reg:squarederror", "multi:softprob"])
def test_sagemaker_xgboost_artifacts_answer_as_booster_predict(
    tmp_path: Path, fmt: str, objective: str
) -> None:
    booster = _booster(objective)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    data = _saved(booster, fmt)
    assert artifact_format(data) == fmt
    (model_dir / "xgboost-model").write_bytes(data)
    plane = DataPlane(model_dir).load()
    assert (model_dir / "model.onnx").is_file()
    rows = X[:40]
    expected = booster.predict(xgb.DMatrix(rows, missing=np.nan))
    body, ctype = plane.invoke(_csv(rows), "text/csv", "text/csv")
    assert ctype == "text/csv"
    got = np.loadtxt(io.StringIO(body.decode()), delimiter=",", ndmin=2).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    body, _ = plane.invoke(_csv(rows[:3]), "text/csv", "application/json")
    scores = [p["score"] for p in json.loads(body)["predictions"]]
    np.testing.assert_allclose(
        np.asarray(scores).reshape(expected[:3].shape), expected[:3], rtol=1e-4, atol=1e-5
    )


def test_a_corrupt_booster_fails_the_load_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "xgboost-model").write_bytes(b"binf" + b"\x00" * 40)
    with pytest.raises(ModelLoadError, match="xgboost-model .* is not a model xgboost can read"):
        DataPlane(tmp_path).load()


def test_a_pickle_of_something_else_is_refused(tmp_path: Path) -> None:
    (tmp_path / "xgboost-model").write_bytes(pickle.dumps({"not": "a booster"}))
    with pytest.raises(ModelLoadError, match="pickle of dict, not of an xgboost Booster"):
        DataPlane(tmp_path).load()


def test_a_booster_onnx_cannot_express_fails_the_load(tmp_path: Path) -> None:
    y = np.nan_to_num(X[:, 0])
    booster = xgb.train({"booster": "gblinear", "objective": "reg:squarederror"}, xgb.DMatrix(X, label=y), 3)
    (tmp_path / "xgboost-model").write_bytes(bytes(booster.save_raw("json")))
    with pytest.raises(ModelLoadError, match="cannot be served: booster 'gblinear'"):
        DataPlane(tmp_path).load()

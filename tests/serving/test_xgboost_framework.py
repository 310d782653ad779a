"""SageMaker's XGBoost framework mode at serving: a script written for SageMaker's XGBoost image (the hooks
it defines, the image's defaults for the rest) answers as the script's booster predicts."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from common.recordio import encode_dense
from serving.dataplane import DataPlane
from serving.errors import BadRequestError, ModelLoadError
from serving.settings import ServingSettings

RNG = np.random.default_rng(11)
X = RNG.normal(size=(200, 4)).astype(np.float32)
Y = (X[:, 0] - X[:, 2] > 0).astype(int)

#: what SageMaker's XGBoost documentation shows: model_fn alone, unpickling the booster
MODEL_FN_ONLY = """
    import os
    import pickle

    def model_fn(model_dir):
        with open(os.path.join(model_dir, "xgboost-model"), "rb") as f:
            return pickle.load(f)

    if __name__ == "__main__":
        raise SystemExit("the training part must not run at serving")
"""

#: no model_fn: the image's default loads xgboost-model; the script only shapes the answer
OUTPUT_FN_ONLY = """
    import json

    def output_fn(prediction, accept):
        return json.dumps({"p": [round(float(v), 6) for v in prediction]}), "application/json"
"""

ALL_HOOKS = """
    import json
    import os

    import numpy as np
    import xgboost as xgb

    def model_fn(model_dir):
        booster = xgb.Booster()
        booster.load_model(os.path.join(model_dir, "xgboost-model"))
        return booster

    def input_fn(request_body, request_content_type):
        assert request_content_type == "application/json", request_content_type
        return xgb.DMatrix(np.asarray(json.loads(request_body)["rows"], dtype=np.float32))

    def predict_fn(input_data, model):
        return model.predict(input_data) * 100.0

    def output_fn(prediction, accept):
        return json.dumps({"percent": prediction.tolist()}), "application/json"
"""


def _booster(objective: str = "binary:logistic") -> xgb.Booster:
    params: dict[str, object] = {"objective": objective, "max_depth": 3, "seed": 0}
    y = Y
    if objective.startswith("multi:"):
        y = np.digitize(X[:, 0], [-0.5, 0.5])
        params["num_class"] = 3
    return xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=6)


def _model(tmp_path: Path, script: str, artifact: bytes, name: str = "train.py") -> Path:
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code" / name).write_text(textwrap.dedent(script))
    (model / "xgboost-model").write_bytes(artifact)
    return model


def _plane(model: Path, program: str = "train.py") -> DataPlane:
    return DataPlane(model, ServingSettings(workers=1, program=program)).load()


def _csv(rows: np.ndarray) -> bytes:
    return "\n".join(",".join("" if np.isnan(v) else f"{v:.9g}" for v in row) for row in rows).encode()


def test_model_fn_only_gets_the_images_input_predict_and_output(tmp_path: Path) -> None:
    booster = _booster()
    model = _model(tmp_path, MODEL_FN_ONLY, pickle.dumps(booster))
    plane = _plane(model)
    assert not (model / "model.onnx").exists()  # the script's booster serves, not a conversion
    rows = X[:25].copy()
    rows[3, 1] = np.nan  # a missing value takes the trees' default direction, as in xgboost
    expected = booster.predict(xgb.DMatrix(rows, missing=np.nan))

    body, ctype = plane.invoke(_csv(rows), "text/csv", "text/csv")
    assert ctype == "text/csv"
    np.testing.assert_allclose(np.loadtxt(io.StringIO(body.decode())), expected, rtol=1e-6)

    body, ctype = plane.invoke(_csv(rows), "text/csv", "application/json")
    assert ctype == "application/json"
    np.testing.assert_allclose(json.loads(body), expected, rtol=1e-6)

    libsvm = "\n".join(
        "0 " + " ".join(f"{j}:{v:.9g}" for j, v in enumerate(row) if not np.isnan(v)) for row in rows
    )
    body, _ = plane.invoke(libsvm.encode(), "text/x-libsvm", "application/json")
    np.testing.assert_allclose(json.loads(body), expected, rtol=1e-6)

    body, _ = plane.invoke(encode_dense(X[:5]), "application/x-recordio-protobuf", "application/json")
    np.testing.assert_allclose(json.loads(body), booster.predict(xgb.DMatrix(X[:5])), rtol=1e-6)

    body, _ = plane.invoke(json.dumps(X[:2].tolist()).encode(), "application/json", "application/jsonlines")
    assert [json.loads(line) for line in body.decode().splitlines()] == pytest.approx(
        booster.predict(xgb.DMatrix(X[:2])).tolist(), rel=1e-6
    )


@pytest.mark.parametrize("fmt", ["binary", "ubjson", "json"])
def test_no_model_fn_loads_xgboost_model_in_every_format(tmp_path: Path, fmt: str) -> None:
    booster = _booster()
    with warnings.catch_warnings():  # xgboost warns that the legacy binary format is deprecated
        warnings.simplefilter("ignore")
        data = bytes(booster.save_raw({"binary": "deprecated", "ubjson": "ubj", "json": "json"}[fmt]))
    plane = _plane(_model(tmp_path, OUTPUT_FN_ONLY, data))
    body, ctype = plane.invoke(_csv(X[:4]), "text/csv", "application/json")
    assert ctype == "application/json"
    expected = booster.predict(xgb.DMatrix(X[:4]))
    np.testing.assert_allclose(json.loads(body)["p"], expected, atol=1e-6)


def test_every_hook_of_the_script_runs(tmp_path: Path) -> None:
    booster = _booster()
    plane = _plane(_model(tmp_path, ALL_HOOKS, bytes(booster.save_raw("ubj")), name="serve.py"), "serve.py")
    body, ctype = plane.invoke(json.dumps({"rows": X[:3].tolist()}).encode(), "application/json", "*/*")
    assert ctype == "application/json"
    np.testing.assert_allclose(
        json.loads(body)["percent"], booster.predict(xgb.DMatrix(X[:3])) * 100.0, rtol=1e-5
    )


def test_multiclass_answers_one_row_of_probabilities_per_line(tmp_path: Path) -> None:
    booster = _booster("multi:softprob")
    plane = _plane(_model(tmp_path, MODEL_FN_ONLY, pickle.dumps(booster)))
    body, _ = plane.invoke(_csv(X[:6]), "text/csv", "text/csv")
    got = np.loadtxt(io.StringIO(body.decode()), delimiter=",")
    np.testing.assert_allclose(got, booster.predict(xgb.DMatrix(X[:6])), rtol=1e-6)
    assert got.shape == (6, 3)


def test_a_scikit_learn_wrapper_predicts_with_its_own_predict(tmp_path: Path) -> None:
    clf = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(X, Y)
    plane = _plane(_model(tmp_path, MODEL_FN_ONLY, pickle.dumps(clf)))
    body, _ = plane.invoke(_csv(X[:10]), "text/csv", "application/json")
    assert json.loads(body) == clf.predict(X[:10]).tolist()  # labels, as XGBClassifier.predict gives


def test_bad_input_is_a_400_naming_the_fault(tmp_path: Path) -> None:
    plane = _plane(_model(tmp_path, MODEL_FN_ONLY, pickle.dumps(_booster())))
    with pytest.raises(BadRequestError, match="takes 4 features per row, got 3"):
        plane.invoke(b"1,2,3\n", "text/csv", "text/csv")
    with pytest.raises(BadRequestError):
        plane.invoke(b"1,2,x,4\n", "text/csv", "text/csv")
    with pytest.raises(BadRequestError):
        plane.invoke(b"0 7:1.5\n", "text/libsvm", "text/csv")  # index beyond the model's 4 features


def test_a_missing_or_corrupt_xgboost_model_fails_the_load_with_the_reason(tmp_path: Path) -> None:
    model = _model(tmp_path, OUTPUT_FN_ONLY, b"binf" + b"\x00" * 40)
    with pytest.raises(ModelLoadError, match="xgboost-model .* is not a model xgboost can read"):
        _plane(model)
    (model / "xgboost-model").unlink()
    with pytest.raises(ModelLoadError):  # neither xgboost-model nor model.onnx: nothing to load
        _plane(model)


def test_a_server_that_fetches_its_model_adds_the_submit_directory(tmp_path: Path) -> None:
    """As on AWS, where the model server fetches its own model data: the SDK's XGBoostModel leaves the code
    in the training job's sourcedir.tar.gz (SAGEMAKER_SUBMIT_DIRECTORY), not in the model archive."""
    booster = _booster()
    source = tmp_path / "src"
    source.mkdir()
    (source / "train.py").write_text(textwrap.dedent(MODEL_FN_ONLY))
    (tmp_path / "xgboost-model").write_bytes(pickle.dumps(booster))
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "xgboost-model", "xgboost-model")
    with tarfile.open(tmp_path / "sourcedir.tar.gz", "w:gz") as tar:
        tar.add(source / "train.py", "train.py")
    settings = ServingSettings(
        workers=1,
        program="train.py",
        submit_directory=(tmp_path / "sourcedir.tar.gz").as_uri(),
        model_data=(tmp_path / "model.tar.gz").as_uri(),
    )
    plane = DataPlane(None, settings, state_dir=tmp_path / "state").load()
    body, _ = plane.invoke(_csv(X[:5]), "text/csv", "application/json")
    np.testing.assert_allclose(json.loads(body), booster.predict(xgb.DMatrix(X[:5])), rtol=1e-6)

    missing = ServingSettings(
        workers=1,
        program="train.py",
        submit_directory=(tmp_path / "nope.tar.gz").as_uri(),
        model_data=(tmp_path / "model.tar.gz").as_uri(),
    )
    with pytest.raises(ModelLoadError, match="SAGEMAKER_SUBMIT_DIRECTORY: .*nope.tar.gz does not exist"):
        DataPlane(None, missing, state_dir=tmp_path / "state2").load()

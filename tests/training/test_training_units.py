"""In-process pieces: the SM_* environment, hyperparameters, data readers, RecordIO, ONNX export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from training_helpers import (
    binary_data,
    multiclass_data,
    regression_data,
    write_csv,
    write_libsvm,
    write_parquet,
    write_recordio,
)

from common.onnx_export import linear_to_onnx, xgboost_to_onnx
from training.algorithms import linear_learner
from training.data import read_csv, read_libsvm, read_parquet
from training.environment import TrainingEnvironment, decode_hyperparameter
from training.errors import DataError, HyperparameterError
from training.hyperparameters import Hyperparameters
from training.recordio import read_dense
from training.script_mode import to_cmd_args


def _tree(
    root: Path, hps: dict[str, str], channels: dict[str, dict[str, str]], hosts: list[str] | None = None
) -> Path:
    cfg = root / "input" / "config"
    cfg.mkdir(parents=True)
    (cfg / "hyperparameters.json").write_text(json.dumps(hps))
    (cfg / "inputdataconfig.json").write_text(json.dumps(channels))
    hosts = hosts or ["algo-1"]
    (cfg / "resourceconfig.json").write_text(
        json.dumps({"current_host": hosts[-1], "hosts": hosts, "network_interface_name": "eth0"})
    )
    return root


def test_sm_environment_matches_the_toolkit(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "epochs": "10",
            "lr": "0.01",
            "name": '"abc"',
            "sagemaker_program": '"train.py"',
            "sagemaker_mpi_enabled": "false",
            "opt": '{"a": 1}',
        },
        {"train": {"TrainingInputMode": "File"}, "validation": {"TrainingInputMode": "File"}},
        ["algo-1", "algo-2"],
    )
    env = TrainingEnvironment.load(root)
    sm = env.sm_env(
        module_name="train", user_entry_point="train.py", user_args=to_cmd_args(env.user_hyperparameters)
    )
    assert sm["SM_MODEL_DIR"] == str(root / "model")
    assert json.loads(sm["SM_CHANNELS"]) == ["train", "validation"]
    assert sm["SM_CHANNEL_TRAIN"] == str(root / "input" / "data" / "train")
    assert json.loads(sm["SM_HPS"]) == {"epochs": 10, "lr": 0.01, "name": "abc", "opt": {"a": 1}}
    assert sm["SM_HP_EPOCHS"] == "10" and sm["SM_HP_NAME"] == "abc"
    assert "SM_HP_SAGEMAKER_PROGRAM" not in sm
    assert json.loads(sm["SM_FRAMEWORK_PARAMS"]) == {"sagemaker_mpi_enabled": False}
    assert json.loads(sm["SM_HOSTS"]) == ["algo-1", "algo-2"] and sm["SM_CURRENT_HOST"] == "algo-2"
    te = json.loads(sm["SM_TRAINING_ENV"])
    assert te["master_hostname"] == "algo-1" and te["is_master"] is False
    assert int(sm["SM_NUM_CPUS"]) >= 1 and sm["SM_NUM_GPUS"] == "0"
    assert json.loads(sm["SM_USER_ARGS"]) == [
        "--epochs",
        "10",
        "--lr",
        "0.01",
        "--name",
        "abc",
        "--opt",
        "a=1",
    ]
    assert (root / "model").is_dir() and (root / "output" / "data").is_dir()


def test_hyperparameter_decoding_and_cmd_args() -> None:
    assert decode_hyperparameter("10") == 10
    assert decode_hyperparameter('"abc"') == "abc"
    assert decode_hyperparameter("not json") == "not json"
    assert to_cmd_args({"bb": True, "a": 1, "k": "v"}) == ["-a", "1", "--bb", "True", "-k", "v"]


@pytest.mark.parametrize(
    ("raw", "call", "needle"),
    [
        ({"num_round": "ten"}, lambda h: h.int("num_round"), "'num_round'"),
        ({"eta": "2"}, lambda h: h.float("eta", maximum=1), "'eta'"),
        ({"use_bias": "maybe"}, lambda h: h.bool("use_bias", True), "'use_bias'"),
        ({"optimizer": "lbfgs"}, lambda h: h.choice("optimizer", "adam", ["adam", "sgd"]), "'optimizer'"),
        ({}, lambda h: h.int("num_round", required=True), "'num_round'"),
        ({"typo": "1"}, lambda h: h.check_known({"num_round"}), "'typo'"),
    ],
)
def test_bad_hyperparameters_name_the_field(raw: dict[str, str], call, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HyperparameterError, match=needle):
        call(Hyperparameters(raw))


def test_readers_agree(tmp_path: Path) -> None:
    X, y = binary_data(50)
    a = read_csv(write_csv(tmp_path / "a.csv", X, y), "a.csv")
    with open(write_libsvm(tmp_path / "a.libsvm", X, y), "rb") as f:
        b = read_libsvm(f, "a.libsvm")
    c = read_parquet(write_parquet(tmp_path / "a.parquet", X, y), "a.parquet")
    with open(write_recordio(tmp_path / "a.rec", X, y), "rb") as f:
        dX, dy = read_dense(f)
    for got_X, got_y in ((a.X, a.y), (b.dense, b.y), (c.X, c.y), (dX, dy)):
        np.testing.assert_allclose(got_X, X, rtol=1e-6)
        np.testing.assert_array_equal(got_y, y)


def test_csv_weights_column(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    path.write_text("1,0.5,1.0,2.0\n0,2.0,3.0,4.0\n")
    ds = read_csv(path, "w.csv", csv_weights=True)
    np.testing.assert_array_equal(ds.weights, [0.5, 2.0])
    np.testing.assert_array_equal(ds.X, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("1,2,3\n0,4,5\n1,6\n", "bad.csv:3", "expected 3 columns, got 2"),
        ("1,2,3\n0,x,5\n", "bad.csv:2", "'x' is not a number"),
        (",2,3\n", "bad.csv:1", "label"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path: Path, text: str, where: str, what: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_csv(path, "bad.csv")
    assert where in str(info.value) and what in str(info.value)


def test_malformed_libsvm_names_the_line() -> None:
    with pytest.raises(DataError, match=r"t.libsvm:2: 'oops' is not index:value"):
        read_libsvm(io.BytesIO(b"1 0:1.0\n0 oops\n"), "t.libsvm")


def test_recordio_sparse_records() -> None:
    from common.recordio import Record, frame

    record = Record()
    tensor = record.features["values"].float32_tensor
    tensor.values.extend([3.0, 4.0])
    tensor.keys.extend([1, 3])
    tensor.shape.append(5)
    record.label["values"].float32_tensor.values.append(1.0)
    X, y = read_dense(io.BytesIO(frame(record.SerializeToString())))
    np.testing.assert_array_equal(X, [[0, 3, 0, 4, 0]])
    np.testing.assert_array_equal(y, [1.0])


@pytest.mark.parametrize(
    ("objective", "extra", "data"),
    [
        ("binary:logistic", {}, binary_data(400)),
        ("multi:softprob", {"num_class": 3}, multiclass_data(400)),
        ("reg:squarederror", {}, regression_data(400)),
        ("reg:logistic", {}, binary_data(400)),
        ("count:poisson", {}, (regression_data(400)[0], np.abs(regression_data(400)[1]))),
    ],
)
def test_xgboost_onnx_predicts_what_xgboost_predicts(
    objective: str, extra: dict[str, int], data: tuple[np.ndarray, np.ndarray]
) -> None:
    import onnxruntime as ort

    X, y = data
    booster = xgb.train(
        {"objective": objective, "max_depth": 4, "nthread": 1, **extra}, xgb.DMatrix(X, label=y), 15
    )
    model = xgboost_to_onnx(booster, X.shape[1], objective)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": X})
    expected = booster.predict(xgb.DMatrix(X))
    if objective == "binary:logistic":
        got = out[1][:, 1]
        np.testing.assert_array_equal(out[0], (expected >= 0.5).astype(np.int64))
    elif objective.startswith("multi:"):
        got = out[1]
        np.testing.assert_array_equal(out[0], expected.argmax(axis=1))
    else:
        got = out[0].reshape(-1)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", ["binary_classification", "multiclass_classification", "regression"])
def test_linear_onnx_predicts_what_numpy_predicts(task: str) -> None:
    import onnxruntime as ort

    ptype = {
        "binary_classification": "binary_classifier",
        "multiclass_classification": "multiclass_classifier",
        "regression": "regressor",
    }[task]
    hps = {"predictor_type": ptype} | ({"num_classes": "4"} if ptype == "multiclass_classifier" else {})
    cfg = linear_learner.parse(Hyperparameters(hps))
    rng = np.random.default_rng(3)
    model = linear_learner.Model(cfg, 6)
    model.W = rng.normal(size=model.W.shape)
    model.b = rng.normal(size=model.b.shape)
    model.mean, model.std = rng.normal(size=6), rng.uniform(0.5, 2.0, size=6)
    model.y_mean, model.y_std = 3.0, 2.0
    X = rng.normal(size=(64, 6)).astype(np.float32)
    W, b = model.raw_weights()
    sess = ort.InferenceSession(
        linear_to_onnx(W, b, task, threshold=0.4).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    out = {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, {"input": X}), strict=True)}
    expected = model.predict_scores(X.astype(np.float64))
    if task == "binary_classification":
        np.testing.assert_allclose(out["probabilities"][:, 1], expected, atol=1e-5)
        np.testing.assert_array_equal(out["label"], (out["probabilities"][:, 1] >= 0.4).astype(np.int64))
    elif task == "multiclass_classification":
        np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
        np.testing.assert_array_equal(out["label"], expected.argmax(axis=1))
    else:
        np.testing.assert_allclose(out["score"].reshape(-1), expected, atol=1e-4, rtol=1e-5)


def test_threshold_selection_meets_the_target() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=2000).astype(float)
    scores = np.clip(0.5 * y + rng.normal(scale=0.3, size=2000), 0, 1)
    for crit, target in (
        ("precision_at_target_recall", "target_recall"),
        ("recall_at_target_precision", "target_precision"),
    ):
        cfg = linear_learner.parse(
            Hyperparameters(
                {
                    "predictor_type": "binary_classifier",
                    "binary_classifier_model_selection_criteria": crit,
                    target: "0.95",
                }
            )
        )
        thr = linear_learner.choose_threshold(cfg, scores, y)
        pred = scores >= thr
        tp = float(np.sum(pred & (y == 1)))
        recall, precision = tp / np.sum(y == 1), tp / max(np.sum(pred), 1)
        assert (recall if target == "target_recall" else precision) >= 0.95
    acc_cfg = linear_learner.parse(Hyperparameters({"predictor_type": "binary_classifier"}))
    thr = linear_learner.choose_threshold(acc_cfg, scores, y)
    assert np.mean((scores >= thr) == y) >= np.mean((scores >= 0.5) == y)


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 8), st.integers(1, 6)),
        elements=st.floats(-1e6, 1e6, allow_nan=False, width=32),
    ),
    st.integers(0, 3),
)
def test_recordio_round_trip(X: np.ndarray, label_kind: int) -> None:
    from training.recordio import write_recordio as write

    y = np.arange(X.shape[0], dtype=np.float32) * label_kind
    buf = io.BytesIO()
    write(buf, X, y)
    assert len(buf.getvalue()) % 4 == 0
    buf.seek(0)
    got_X, got_y = read_dense(buf)
    np.testing.assert_array_equal(got_X, X)
    np.testing.assert_array_equal(got_y, y)


@settings(max_examples=30, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 20), st.integers(1, 5)),
        elements=st.floats(-1e4, 1e4, allow_nan=False, width=32),
    )
)
def test_csv_reader_round_trip(X: np.ndarray) -> None:
    y = (np.arange(X.shape[0]) % 2).astype(np.float32)
    text = (
        "\n".join(
            ",".join([f"{label:g}", *(repr(float(v)) for v in row)]) for label, row in zip(y, X, strict=True)
        )
        + "\n"
    )
    ds = read_csv(text.encode(), "mem.csv")
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)

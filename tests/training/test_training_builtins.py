"""The built-in algorithms run as real training jobs (runner → process → /opt/ml → model.tar.gz)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from training_helpers import (
    LL_IMAGE,
    XGB_IMAGE,
    binary_data,
    channel,
    local_model,
    multiclass_data,
    onnx_predict,
    regression_data,
    request,
    run_job,
    signature,
    write_csv,
    write_libsvm,
    write_parquet,
    write_recordio,
)

XGB_AUC = {
    "Name": "validation:auc",
    "Regex": r".*\[[0-9]+\].*#011validation-auc:([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?).*",
}
LL_ACC = {
    "Name": "validation:binary_classification_accuracy",
    "Regex": r"#quality_metric: host=\S+, validation binary_classification_accuracy <score>=(\S+)",
}
LL_LOSS = {
    "Name": "train:objective_loss",
    "Regex": r"#quality_metric: host=\S+, epoch=\S+, train \S+_objective <loss>=(\S+)",
}


def _split(
    X: np.ndarray, y: np.ndarray, frac: float = 0.75
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    n = int(len(X) * frac)
    return (X[:n], y[:n]), (X[n:], y[n:])


def test_xgboost_binary_learns_and_exports(tmp_path: Path) -> None:
    (Xt, yt), (Xv, yv) = _split(*binary_data(1600))
    write_csv(tmp_path / "data/train/part-0.csv", Xt, yt)
    write_csv(tmp_path / "data/validation/v.csv", Xv, yv)
    req = request(
        "xgb-binary",
        XGB_IMAGE,
        {"num_round": 30, "objective": "binary:logistic", "eval_metric": "auc", "max_depth": 3},
        [
            channel("train", (tmp_path / "data/train").as_uri()),
            channel("validation", (tmp_path / "data/validation").as_uri()),
        ],
        (tmp_path / "out").as_uri(),
        metrics=[XGB_AUC],
    )
    state, lines = run_job(req, tmp_path / "job")
    fields = state.describe_fields()
    assert fields["TrainingJobStatus"] == "Completed", fields.get("FailureReason")
    assert [t["Status"] for t in fields["SecondaryStatusTransitions"]] == [
        "Starting",
        "Downloading",
        "Training",
        "Uploading",
        "Completed",
    ]
    assert (
        fields["ModelArtifacts"]["S3ModelArtifacts"]
        == (tmp_path / "out").as_uri() + "/xgb-binary/output/model.tar.gz"
    )
    assert (tmp_path / "out/xgb-binary/output/output.tar.gz").is_file()
    assert any(re.search(r"\[29\]#011train-auc:[0-9.]+#011validation-auc:[0-9.]+", line) for line in lines)
    series = [m for m in state.metrics if m["MetricName"] == "validation:auc"]
    assert len(series) == 30 and fields["FinalMetricDataList"][0]["Value"] == series[-1]["Value"] > 0.97
    model_dir = local_model(state, tmp_path / "model")
    sig = signature(model_dir)
    assert (
        sig["response_format"] == "xgboost"
        and sig["task"] == "binary_classification"
        and sig["inputs"][0]["shape"] == [None, 6]
    )
    out = onnx_predict(model_dir, Xv)
    assert np.mean(out["label"] == yv) > 0.95
    booster = xgb.Booster()
    booster.load_model(bytearray((model_dir / "xgboost-model").read_bytes()))
    np.testing.assert_allclose(out["probabilities"][:, 1], booster.predict(xgb.DMatrix(Xv)), atol=1e-5)


def test_xgboost_multiclass_from_parquet(tmp_path: Path) -> None:
    (Xt, yt), (Xv, yv) = _split(*multiclass_data(900))
    write_parquet(tmp_path / "data/train.parquet", Xt, yt)
    req = request(
        "xgb-parquet",
        "xgboost:latest",
        {"num_round": 15, "objective": "multi:softprob", "num_class": 3, "max_depth": 3},
        [channel("train", (tmp_path / "data").as_uri(), "application/x-parquet")],
        (tmp_path / "out").as_uri(),
    )
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    model_dir = local_model(state, tmp_path / "model")
    out = onnx_predict(model_dir, Xv)
    assert out["probabilities"].shape == (len(Xv), 3)
    assert np.mean(out["label"] == yv) > 0.9
    assert signature(model_dir)["classes"] == [0, 1, 2]


@pytest.mark.parametrize("ptype", ["binary_classifier", "multiclass_classifier", "regressor"])
def test_linear_learner_learns(tmp_path: Path, ptype: str) -> None:
    if ptype == "binary_classifier":
        data, ct, writer, extra = binary_data(1600), "text/csv", write_csv, {}
    elif ptype == "multiclass_classifier":
        data, ct, writer, extra = (
            multiclass_data(1200),
            "application/x-recordio-protobuf",
            write_recordio,
            {"num_classes": 3, "balance_multiclass_weights": "true"},
        )
    else:
        data, ct, writer, extra = regression_data(1200), "text/csv", write_csv, {}
    (Xt, yt), (Xv, yv) = _split(*data)
    writer(tmp_path / "data/train/d", Xt, yt)
    writer(tmp_path / "data/validation/d", Xv, yv)
    hps = {
        "predictor_type": ptype,
        "epochs": 10,
        "mini_batch_size": 64,
        "feature_dim": Xt.shape[1],
        "wd": 0.0001,
        **extra,
    }
    req = request(
        f"ll-{ptype.replace('_', '-')}",
        LL_IMAGE,
        hps,
        [
            channel("train", (tmp_path / "data/train").as_uri(), ct),
            channel("validation", (tmp_path / "data/validation").as_uri(), ct),
        ],
        (tmp_path / "out").as_uri(),
        metrics=[LL_ACC, LL_LOSS],
    )
    state, lines = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    assert any(
        line.endswith(tuple(f"epoch={e}, validation" for e in range(1))) or "epoch=0, validation" in line
        for line in lines
    )
    losses = [m["Value"] for m in state.metrics if m["MetricName"] == "train:objective_loss"]
    assert len(losses) >= 2 and losses[-1] < losses[0]
    model_dir = local_model(state, tmp_path / "model")
    sig = signature(model_dir)
    assert sig["framework"] == "linear-learner" and sig["response_format"] == "linear-learner"
    out = onnx_predict(model_dir, Xv)
    if ptype == "binary_classifier":
        assert np.mean(out["label"] == yv) > 0.95
        assert state.final_metrics["validation:binary_classification_accuracy"]["Value"] > 0.95
        assert 0.0 < sig["threshold"] < 1.0
    elif ptype == "multiclass_classifier":
        assert np.mean(out["label"] == yv) > 0.95
    else:
        pred = out["score"].reshape(-1)
        assert 1 - np.sum((pred - yv) ** 2) / np.sum((yv - yv.mean()) ** 2) > 0.95


def test_bad_hyperparameter_fails_with_a_reason_naming_it(tmp_path: Path) -> None:
    X, y = binary_data(100)
    write_csv(tmp_path / "data/t.csv", X, y)
    req = request(
        "xgb-bad-hp",
        XGB_IMAGE,
        {"num_round": 10, "max_depth": "deep"},
        [channel("train", (tmp_path / "data").as_uri())],
        (tmp_path / "out").as_uri(),
    )
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Failed" and state.secondary_status == "Failed"
    assert state.failure_reason is not None and state.failure_reason.startswith("ClientError: ")
    assert "'max_depth'" in state.failure_reason and "'deep' is not an integer" in state.failure_reason
    failure = (tmp_path / "job/hosts/algo-1/output/failure").read_text()
    assert "'max_depth'" in failure
    assert state.model_artifacts is None


def test_malformed_data_line_is_named(tmp_path: Path) -> None:
    X, y = binary_data(50)
    path = write_csv(tmp_path / "data/train.csv", X, y)
    lines = path.read_text().splitlines()
    lines[6] = lines[6] + ",oops"
    path.write_text("\n".join(lines) + "\n")
    req = request(
        "ll-bad-line",
        LL_IMAGE,
        {"predictor_type": "binary_classifier"},
        [channel("train", (tmp_path / "data").as_uri())],
        (tmp_path / "out").as_uri(),
    )
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Failed"
    assert re.search(r"train\.csv:7: expected 7 columns, got 8", state.failure_reason or ""), (
        state.failure_reason
    )


def test_xgboost_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    X, y = regression_data(600)
    write_libsvm(tmp_path / "data/t.libsvm", X, y)  # no ContentType: xgboost's default, libsvm
    ckpt = (tmp_path / "checkpoints").as_uri()
    chans = [channel("train", (tmp_path / "data").as_uri(), None)]
    first, _ = run_job(
        request(
            "xgb-ckpt-1",
            XGB_IMAGE,
            {"num_round": 6, "max_depth": 3},
            chans,
            (tmp_path / "out").as_uri(),
            checkpoint=ckpt,
        ),
        tmp_path / "job1",
        checkpoint_sync_interval=0.2,
    )
    assert first.status == "Completed", first.failure_reason
    saved = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert saved == [f"xgboost-checkpoint.{i}" for i in range(1, 6)]  # the last five rounds are kept
    # a restarted job (e.g. after a spot interruption) with the same checkpoint location continues at round 6
    second, lines = run_job(
        request(
            "xgb-ckpt-2",
            XGB_IMAGE,
            {"num_round": 10, "max_depth": 3},
            chans,
            (tmp_path / "out").as_uri(),
            checkpoint=ckpt,
        ),
        tmp_path / "job2",
    )
    assert second.status == "Completed", second.failure_reason
    rounds = [int(m.group(1)) for line in lines if (m := re.search(r"\| \[(\d+)\]#011", line))]
    assert rounds == [6, 7, 8, 9]
    assert any("Resuming from checkpoint xgboost-checkpoint.5" in line for line in lines)
    booster = xgb.Booster()
    booster.load_model(bytearray((local_model(second, tmp_path / "m2") / "xgboost-model").read_bytes()))
    assert booster.num_boosted_rounds() == 10
    # the first 6 trees are exactly the first job's model
    b1 = xgb.Booster()
    b1.load_model(bytearray((local_model(first, tmp_path / "m1") / "xgboost-model").read_bytes()))
    np.testing.assert_allclose(booster[:6].predict(xgb.DMatrix(X)), b1.predict(xgb.DMatrix(X)), rtol=1e-6)


def test_incremental_training_from_a_model_channel(tmp_path: Path) -> None:
    (Xt, yt), _ = _split(*binary_data(600))
    write_csv(tmp_path / "data/t.csv", Xt, yt)
    chans = [channel("train", (tmp_path / "data").as_uri())]
    first, _ = run_job(
        request(
            "xgb-inc-1",
            XGB_IMAGE,
            {"num_round": 4, "objective": "binary:logistic"},
            chans,
            (tmp_path / "out").as_uri(),
        ),
        tmp_path / "job1",
    )
    assert first.status == "Completed", first.failure_reason
    model_chan = channel("model", first.model_artifacts or "", "application/x-sagemaker-model")
    second, lines = run_job(
        request(
            "xgb-inc-2",
            XGB_IMAGE,
            {"num_round": 3, "objective": "binary:logistic"},
            [*chans, model_chan],
            (tmp_path / "out").as_uri(),
        ),
        tmp_path / "job2",
    )
    assert second.status == "Completed", second.failure_reason
    assert any("continuing from a model with 4 rounds" in line for line in lines)
    booster = xgb.Booster()
    booster.load_model(bytearray((local_model(second, tmp_path / "m2") / "xgboost-model").read_bytes()))
    assert booster.num_boosted_rounds() == 7


@pytest.mark.parametrize("algo", ["xgboost", "linear-learner"])
def test_pipe_and_file_modes_give_the_same_model(tmp_path: Path, algo: str) -> None:
    X, y = binary_data(800)
    if algo == "xgboost":
        write_csv(tmp_path / "data/a.csv", X[:400], y[:400])
        write_csv(tmp_path / "data/b.csv", X[400:], y[400:])
        image, ct, hps = XGB_IMAGE, "text/csv", {"num_round": 8, "objective": "binary:logistic"}
    else:
        write_recordio(tmp_path / "data/a.rec", X[:400], y[:400])
        write_recordio(tmp_path / "data/b.rec", X[400:], y[400:])
        image, ct, hps = (
            LL_IMAGE,
            "application/x-recordio-protobuf",
            {"predictor_type": "binary_classifier", "epochs": 3},
        )
    models = {}
    for mode in ("File", "Pipe"):
        req = request(
            f"pipe-{algo}-{mode.lower()}",
            image,
            hps,
            [channel("train", (tmp_path / "data").as_uri(), ct)],
            (tmp_path / "out").as_uri(),
            mode=mode,
        )
        state, _ = run_job(req, tmp_path / f"job-{mode}")
        assert state.status == "Completed", state.failure_reason
        models[mode] = onnx_predict(local_model(state, tmp_path / f"m-{mode}"), X)["probabilities"]
    assert list((tmp_path / "job-Pipe/hosts/algo-1/input/data").iterdir())[0].name.startswith("train_")
    np.testing.assert_array_equal(models["File"], models["Pipe"])


def test_linear_learner_resumes_from_its_checkpoint_and_continues_a_model(tmp_path: Path) -> None:
    X, y = binary_data(600)
    write_csv(tmp_path / "data/t.csv", X, y)
    chans = [channel("train", (tmp_path / "data").as_uri())]
    ckpt = (tmp_path / "ckpt").as_uri()
    hps = {"predictor_type": "binary_classifier", "mini_batch_size": 50}
    first, _ = run_job(
        request(
            "ll-ckpt-1", LL_IMAGE, {**hps, "epochs": 2}, chans, (tmp_path / "out").as_uri(), checkpoint=ckpt
        ),
        tmp_path / "job1",
    )
    assert first.status == "Completed", first.failure_reason
    assert (tmp_path / "ckpt/linear-learner-checkpoint.npz").is_file()
    second, lines = run_job(
        request(
            "ll-ckpt-2", LL_IMAGE, {**hps, "epochs": 4}, chans, (tmp_path / "out").as_uri(), checkpoint=ckpt
        ),
        tmp_path / "job2",
    )
    assert second.status == "Completed", second.failure_reason
    assert any("Resuming from checkpoint: epoch 2 of 4" in line for line in lines)
    epochs = [int(m.group(1)) for line in lines if (m := re.search(r"epoch=(\d+), train", line))]
    assert epochs == [2, 3]
    # incremental training: a 'model' channel with the previous model.tar.gz is the starting point
    third, lines = run_job(
        request(
            "ll-inc",
            LL_IMAGE,
            {**hps, "epochs": 1},
            [*chans, channel("model", second.model_artifacts or "", None)],
            (tmp_path / "out").as_uri(),
        ),
        tmp_path / "job3",
    )
    assert third.status == "Completed", third.failure_reason
    assert any("starting from the weights of the previous model" in line for line in lines)
    assert np.mean(onnx_predict(local_model(third, tmp_path / "m3"), X)["label"] == y) > 0.95


def test_linear_learner_stops_early_when_validation_gets_worse(tmp_path: Path) -> None:
    X, y = binary_data(800)
    write_csv(tmp_path / "data/train/t.csv", X[:400], y[:400])
    write_csv(
        tmp_path / "data/validation/v.csv", X[400:], 1 - y[400:]
    )  # flipped labels: learning makes it worse
    hps = {
        "predictor_type": "binary_classifier",
        "epochs": 10,
        "early_stopping_patience": 2,
        "mini_batch_size": 20,
    }
    req = request(
        "ll-early",
        LL_IMAGE,
        hps,
        [
            channel("train", (tmp_path / "data/train").as_uri()),
            channel("validation", (tmp_path / "data/validation").as_uri()),
        ],
        (tmp_path / "out").as_uri(),
    )
    state, lines = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    epochs = [int(m.group(1)) for line in lines if (m := re.search(r"epoch=(\d+), validation", line))]
    assert epochs == [0, 1, 2]
    assert any("Early stopping: validation loss did not improve for 2 epochs" in line for line in lines)


def test_xgboost_saves_its_model_when_stopped_with_save_model_on_termination(tmp_path: Path) -> None:
    import threading

    from training.runner import TrainingJobRunner

    X, y = binary_data(300)
    write_csv(tmp_path / "data/t.csv", X, y)
    req = request(
        "xgb-term",
        XGB_IMAGE,
        {
            "num_round": 100000,
            "objective": "binary:logistic",
            "max_depth": 2,
            "save_model_on_termination": "true",
        },
        [channel("train", (tmp_path / "data").as_uri())],
        (tmp_path / "out").as_uri(),
    )
    holder: dict[str, TrainingJobRunner] = {}

    def on_log(host: str, line: str) -> None:
        if line.startswith("[3]#011"):
            threading.Thread(target=holder["runner"].stop).start()

    holder["runner"] = TrainingJobRunner(req, tmp_path / "job", on_log=on_log, stop_grace_seconds=60.0)
    state = holder["runner"].run()
    assert state.status == "Stopped", state.describe_fields()
    model_dir = local_model(state, tmp_path / "m")
    booster = xgb.Booster()
    booster.load_model(bytearray((model_dir / "xgboost-model").read_bytes()))
    assert 4 <= booster.num_boosted_rounds() < 100000
    assert np.mean(onnx_predict(model_dir, X)["label"] == y) > 0.8


#: Every hyperparameter of SageMaker's Linear Learner documentation, with a legal value (the SDK's
#: ``LinearLearner`` sends use_lr_scheduler and friends on every job).
LL_DOCUMENTED = {
    "accuracy_top_k": 3,
    "balance_multiclass_weights": "false",
    "beta_1": 0.9,
    "beta_2": 0.999,
    "bias_lr_mult": 10,
    "bias_wd_mult": 0,
    "binary_classifier_model_selection_criteria": "accuracy",
    "early_stopping_patience": 3,
    "early_stopping_tolerance": 0.001,
    "epochs": 6,
    "f_beta": 1.0,
    "huber_delta": 1.0,
    "init_bias": 0.0,
    "init_method": "uniform",
    "init_scale": 0.07,
    "init_sigma": 0.01,
    "l1": "auto",
    "learning_rate": "auto",
    "loss": "auto",
    "loss_insensitivity": 0.01,
    "lr_scheduler_factor": 0.99,
    "lr_scheduler_minimum_lr": 0.00001,
    "lr_scheduler_step": 100,
    "margin": 1.0,
    "mini_batch_size": 64,
    "momentum": 0,
    "normalize_data": "true",
    "normalize_label": "auto",
    "num_calibration_samples": 10000000,
    "num_models": "auto",
    "num_point_for_scaler": 10000,
    "optimizer": "auto",
    "positive_example_weight_mult": 1.0,
    "quantile": 0.5,
    "target_precision": 0.8,
    "target_recall": 0.8,
    "unbias_data": "auto",
    "unbias_label": "auto",
    "use_bias": "true",
    "use_lr_scheduler": "true",
    "wd": "auto",
}


def _ll_job(tmp_path: Path, name: str, hps: dict[str, object], data: tuple[np.ndarray, np.ndarray]) -> Any:
    (Xt, yt), (Xv, yv) = _split(*data)
    write_csv(tmp_path / "data/train/d", Xt, yt)
    req = request(
        name,
        LL_IMAGE,
        {"feature_dim": Xt.shape[1], **hps},
        [channel("train", (tmp_path / "data/train").as_uri(), "text/csv")],
        (tmp_path / "out").as_uri(),
        metrics=[LL_LOSS],
    )
    state, lines = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    return state, onnx_predict(local_model(state, tmp_path / "model"), Xv), yv, lines


def test_linear_learner_takes_every_documented_hyperparameter(tmp_path: Path) -> None:
    _, out, yv, _ = _ll_job(
        tmp_path, "ll-documented", {"predictor_type": "binary_classifier", **LL_DOCUMENTED}, binary_data(800)
    )
    assert np.mean(out["label"] == yv) > 0.9


@pytest.mark.parametrize("loss", ["hinge_loss"])
def test_linear_learner_binary_losses(tmp_path: Path, loss: str) -> None:
    _, out, yv, lines = _ll_job(
        tmp_path,
        f"ll-{loss.replace('_', '-')}",
        {"predictor_type": "binary_classifier", "loss": loss, "epochs": 8, "mini_batch_size": 64},
        binary_data(800),
    )
    assert np.mean(out["label"] == yv) > 0.9
    assert any(f"train {loss}_objective <loss>=" in line for line in lines)


@pytest.mark.parametrize(
    "loss",
    [
        "absolute_loss",
        "eps_insensitive_squared_loss",
        "eps_insensitive_absolute_loss",
        "quantile_loss",
        "huber_loss",
    ],
)
def test_linear_learner_regression_losses(tmp_path: Path, loss: str) -> None:
    state, out, yv, _ = _ll_job(
        tmp_path,
        f"ll-{loss.replace('_', '-')}",
        {"predictor_type": "regressor", "loss": loss, "epochs": 10, "mini_batch_size": 64},
        regression_data(800),
    )
    pred = out["score"].reshape(-1)
    assert 1 - np.sum((pred - yv) ** 2) / np.sum((yv - yv.mean()) ** 2) > 0.9
    losses = [m["Value"] for m in state.metrics if m["MetricName"] == "train:objective_loss"]
    assert losses[-1] < losses[0]


def test_linear_learner_quantile_loss_fits_the_quantile(tmp_path: Path) -> None:
    """quantile=0.9 puts about 90 % of the labels under the prediction; the median about half."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(1500, 2)).astype(np.float32)
    y = X @ np.array([1.0, -1.0]) + rng.normal(scale=1.0, size=1500)
    shares = {}
    for q in (0.5, 0.9):
        _, out, yv, _ = _ll_job(
            tmp_path / str(q),
            f"ll-q{int(q * 10)}",
            {"predictor_type": "regressor", "loss": "quantile_loss", "quantile": q, "epochs": 15},
            (X, y),
        )
        shares[q] = float(np.mean(yv < out["score"].reshape(-1)))
    assert 0.35 < shares[0.5] < 0.65 and shares[0.9] > 0.8, shares


def test_linear_learner_lr_scheduler_changes_training(tmp_path: Path) -> None:
    """use_lr_scheduler with a steep factor ends on different weights than without (same seed)."""
    base = {"predictor_type": "regressor", "epochs": 4, "mini_batch_size": 32, "learning_rate": 0.1}
    data = regression_data(400)
    _, without, _, _ = _ll_job(tmp_path / "off", "ll-sched-off", {**base, "use_lr_scheduler": "false"}, data)
    _, steep, _, _ = _ll_job(
        tmp_path / "on",
        "ll-sched-on",
        {**base, "use_lr_scheduler": "true", "lr_scheduler_step": 1, "lr_scheduler_factor": 0.5},
        data,
    )
    assert not np.allclose(without["score"], steep["score"])


def test_linear_learner_refuses_a_loss_of_another_predictor_type(tmp_path: Path) -> None:
    X, y = binary_data(100)
    write_csv(tmp_path / "data/t.csv", X, y)
    req = request(
        "ll-bad-loss",
        LL_IMAGE,
        {"predictor_type": "binary_classifier", "loss": "huber_loss"},
        [channel("train", (tmp_path / "data").as_uri(), "text/csv")],
        (tmp_path / "out").as_uri(),
    )
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Failed" and "loss" in (state.failure_reason or "")


#: Every hyperparameter of SageMaker's built-in XGBoost documentation, with a legal value for booster=gbtree
#: (DART's and the GPU images' settings are accepted and have no effect here).
XGB_DOCUMENTED = {
    "num_round": 5,
    "objective": "binary:logistic",
    "alpha": 0,
    "base_score": 0.5,
    "booster": "gbtree",
    "colsample_bylevel": 1,
    "colsample_bynode": 1,
    "colsample_bytree": 1,
    "csv_weights": 0,
    "deterministic_histogram": "true",
    "early_stopping_rounds": 3,
    "eta": 0.3,
    "eval_metric": "auc",
    "gamma": 0,
    "grow_policy": "depthwise",
    "interaction_constraints": "[[0, 1], [2, 3, 4, 5]]",
    "lambda": 1,
    "lambda_bias": 0,
    "max_bin": 256,
    "max_delta_step": 0,
    "max_depth": 4,
    "max_leaves": 0,
    "min_child_weight": 1,
    "monotone_constraints": "(0,0,0,0,0,0)",
    "normalize_type": "tree",
    "nthread": 1,
    "one_drop": 0,
    "process_type": "default",
    "rate_drop": 0.0,
    "refresh_leaf": 1,
    "sample_type": "uniform",
    "scale_pos_weight": 1,
    "seed": 0,
    "single_precision_histogram": "false",
    "sketch_eps": 0.03,
    "skip_drop": 0.0,
    "subsample": 1,
    "tree_method": "hist",
    "tweedie_variance_power": 1.5,
    "updater": "grow_quantile_histmaker",
    "use_dask_gpu_training": "false",
    "verbosity": 1,
}


def test_xgboost_takes_every_documented_hyperparameter(tmp_path: Path) -> None:
    (Xt, yt), (Xv, yv) = _split(*binary_data(600))
    write_csv(tmp_path / "data/train/d", Xt, yt)
    write_csv(tmp_path / "data/validation/d", Xv, yv)
    req = request(
        "xgb-documented",
        XGB_IMAGE,
        XGB_DOCUMENTED,
        [
            channel("train", (tmp_path / "data/train").as_uri()),
            channel("validation", (tmp_path / "data/validation").as_uri()),
        ],
        (tmp_path / "out").as_uri(),
    )
    state, lines = run_job(req, tmp_path / "job")
    assert state.status == "Completed", (state.failure_reason, lines[-10:])
    out = onnx_predict(local_model(state, tmp_path / "model"), Xv)
    assert np.mean(out["label"] == yv) > 0.9

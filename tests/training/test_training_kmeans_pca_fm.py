"""The built-in KMeans, PCA and Factorization Machines run as real training jobs (runner → process →
/opt/ml → model.tar.gz): what they learn, their hyperparameters, input formats, bad input, and ONNX parity
with numpy."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from training_helpers import channel, local_model, onnx_predict, request, run_job, signature

from common.recordio import encode_dense
from selfmaker.jobs.tuning import builtin_metric_definitions
from training.images import classify_image
from training.runner import TrainingJobState
from training.warm import preload_kind

KMEANS_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/kmeans:1"
PCA_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/pca:1"
TRUE_CENTERS = np.array([[0.0, 0.0, 0.0], [8.0, 8.0, 0.0], [-8.0, 6.0, 5.0]])


def blobs(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated Gaussian blobs in 3-D and each row's blob."""
    rng = np.random.default_rng(seed)
    which = rng.integers(0, 3, size=n)
    return (TRUE_CENTERS[which] + rng.normal(scale=0.5, size=(n, 3))).astype(np.float32), which


def correlated(n: int = 400, d: int = 6, seed: int = 1) -> np.ndarray:
    """Data whose variance lies mostly in two directions, plus an offset (so subtract_mean matters)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    scales = np.array([5.0, 2.0, 0.3, 0.2, 0.1, 0.05])[:d]
    data: np.ndarray = (rng.normal(size=(n, d)) * scales @ basis.T + 3.0).astype(np.float32)
    return data


def write_recordio(path: Path, X: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_dense(X))  # what the SDK's record_set() writes: no labels


def write_csv(path: Path, X: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, X, delimiter=",", fmt="%.7g")


def run(
    tmp_path: Path,
    image: str,
    hps: dict[str, Any],
    data: Mapping[str, tuple[np.ndarray | bytes, str]],
    metrics: list[dict[str, str]] | None = None,
) -> tuple[TrainingJobState, list[str]]:
    channels = []
    for name, (X, content_type) in data.items():
        folder = tmp_path / "data" / name
        if isinstance(X, bytes):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "part-0").write_bytes(X)
        elif content_type == "text/csv":
            write_csv(folder / "part-0.csv", X)
        else:
            write_recordio(folder / "part-0.pbr", X)
        channels.append(channel(name, folder.as_uri(), content_type))
    req = request("job", image, hps, channels, (tmp_path / "out").as_uri(), metrics=metrics)
    return run_job(req, tmp_path / "job")


def nearest(X: np.ndarray, centers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((X[:, None, :].astype(np.float64) - centers[None, :, :]) ** 2).sum(axis=2))
    return d.argmin(axis=1), d.min(axis=1)


def test_the_sdks_image_uris_are_the_builtins() -> None:
    assert classify_image(KMEANS_IMAGE) == "kmeans" and classify_image(PCA_IMAGE) == "pca"
    assert classify_image("174872318107.dkr.ecr.us-west-2.amazonaws.com/kmeans:latest") == "kmeans"
    assert classify_image(FM_IMAGE) == "factorization-machines"
    # a warm pool's standby imports the built-in ahead (training/standby.py)
    assert [preload_kind(i) for i in (KMEANS_IMAGE, PCA_IMAGE, FM_IMAGE)] == [
        "kmeans",
        "pca",
        "factorization-machines",
    ]


@pytest.mark.parametrize("init_method", ["kmeans++", "random"])
def test_kmeans_finds_the_blobs_from_recordio_and_exports_onnx(tmp_path: Path, init_method: str) -> None:
    X, which = blobs()
    Xt, _ = blobs(90, seed=5)
    definitions = builtin_metric_definitions(KMEANS_IMAGE)
    hps = {
        "k": 3,
        "feature_dim": 3,
        "init_method": init_method,
        "local_lloyd_num_trials": 3,
        "eval_metrics": "['msd', 'ssd']",  # what the SDK sends for eval_metrics=["msd", "ssd"]
        "mini_batch_size": 100,
        "epochs": 2,
        "force_dense": "True",
    }
    data = {"train": (X, "application/x-recordio-protobuf"), "test": (Xt, "application/x-recordio-protobuf")}
    state, lines = run(tmp_path, KMEANS_IMAGE, hps, data, metrics=definitions)
    assert state.status == "Completed", state.failure_reason
    model_dir = local_model(state, tmp_path / "model")
    centers = np.load(model_dir / "kmeans.npz")["centers"]
    assert centers.shape == (3, 3)
    # each true center has a learned one close by
    assert np.sort(nearest(TRUE_CENTERS, centers)[1]).max() < 0.3
    sig = signature(model_dir)
    assert sig["response_format"] == "kmeans" and sig["task"] == "clustering"
    assert sig["inputs"][0]["shape"] == [None, 3] and sig["k"] == 3
    # ONNX agrees with numpy on the closest center and the distance to it
    probe = np.concatenate([X[:50], np.random.default_rng(9).normal(scale=6, size=(50, 3))]).astype(
        np.float32
    )
    out = onnx_predict(model_dir, probe)
    index, distance = nearest(probe, centers.astype(np.float64))
    assert out["closest_cluster"].dtype == np.float32
    np.testing.assert_array_equal(out["closest_cluster"], index.astype(np.float32))
    np.testing.assert_allclose(out["distance_to_cluster"], distance, rtol=1e-5, atol=1e-5)
    # the metric lines as SageMaker prints them, found by the built-in MetricDefinitions
    _, train_d = nearest(X, centers.astype(np.float64))
    _, test_d = nearest(Xt, centers.astype(np.float64))
    found = {m["MetricName"]: m["Value"] for m in state.metrics}
    assert any(re.search(r"#quality_metric: host=algo-1, test msd <loss>=[0-9.]+$", line) for line in lines)
    assert found["train:msd"] == pytest.approx(np.mean(train_d**2), rel=1e-4)
    assert found["test:msd"] == pytest.approx(np.mean(test_d**2), rel=1e-4)
    assert found["test:ssd"] == pytest.approx(np.sum(test_d**2), rel=1e-4)


def test_kmeans_reads_csv_without_a_label_column(tmp_path: Path) -> None:
    X, which = blobs(120, seed=2)
    state, lines = run(tmp_path, KMEANS_IMAGE, {"k": 3, "feature_dim": 3}, {"train": (X, "text/csv")})
    assert state.status == "Completed", state.failure_reason
    centers = np.load(local_model(state, tmp_path / "model") / "kmeans.npz")["centers"]
    # every column is a feature: the clusters are the blobs (one learned label per true blob)
    labels, _ = nearest(X, centers.astype(np.float64))
    assert all(len(set(labels[which == b].tolist())) == 1 for b in range(3))
    assert len(set(labels.tolist())) == 3
    # eval_metrics defaults to msd only
    assert any("train msd <loss>=" in line for line in lines)
    assert not any(" ssd <loss>=" in line for line in lines)


@pytest.mark.parametrize(
    ("hps", "named", "says"),
    [
        ({"feature_dim": 3}, "k", "is required"),
        ({"k": "three", "feature_dim": 3}, "k", "not an integer"),
        ({"k": 1, "feature_dim": 3}, "k", ""),
        ({"k": 500, "feature_dim": 3}, "k", "only 120 records"),
        ({"k": 3}, "feature_dim", "is required"),
        ({"k": 3, "feature_dim": 4}, "feature_dim", "has 3 columns"),
        ({"k": 3, "feature_dim": 3, "init_method": "forgy"}, "init_method", ""),
        ({"k": 3, "feature_dim": 3, "local_lloyd_init_method": "x"}, "local_lloyd_init_method", ""),
        ({"k": 3, "feature_dim": 3, "eval_metrics": '["mse"]'}, "eval_metrics", "'mse' is not one of"),
        ({"k": 3, "feature_dim": 3, "local_lloyd_max_iter": 0}, "local_lloyd_max_iter", ""),
        ({"k": 3, "feature_dim": 3, "local_lloyd_tol": -1}, "local_lloyd_tol", ""),
        ({"k": 3, "feature_dim": 3, "mini_batch_size": "big"}, "mini_batch_size", "not an integer"),
        ({"k": 3, "feature_dim": 3, "epochs": 0}, "epochs", ""),
        ({"k": 3, "feature_dim": 3, "num_clusters": 3}, "num_clusters", "not a hyperparameter"),
    ],
)
def test_kmeans_bad_hyperparameters_fail_naming_them(
    tmp_path: Path, hps: dict[str, Any], named: str, says: str
) -> None:
    X, _ = blobs(120, seed=2)
    state, _ = run(tmp_path, KMEANS_IMAGE, hps, {"train": (X, "text/csv")})
    assert state.status == "Failed"
    reason = state.failure_reason or ""
    assert reason.startswith("ClientError: ") and f"Hyperparameter {named!r}" in reason and says in reason


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"1,2,3\n4,x,6\n", "text/csv", r"part-0:2: column 2: 'x' is not a number"),
        (b"1,2,3\n4,,6\n7,8,9\n", "text/csv", "record 2 has an empty or non-finite feature value"),
        (b"\x00\x01garbage", "application/x-recordio-protobuf", "part-0"),
    ],
)
def test_kmeans_bad_data_fails_with_the_place(
    tmp_path: Path, body: bytes, content_type: str, says: str
) -> None:
    state, _ = run(tmp_path, KMEANS_IMAGE, {"k": 2, "feature_dim": 3}, {"train": (body, content_type)})
    assert state.status == "Failed"
    assert re.search(says, state.failure_reason or ""), state.failure_reason


@pytest.mark.parametrize("mode", ["regular", "randomized"])
def test_pca_components_match_numpys_svd(tmp_path: Path, mode: str) -> None:
    X = correlated()
    hps = {"num_components": 2, "feature_dim": 6, "mini_batch_size": 50, "algorithm_mode": mode}
    state, lines = run(tmp_path, PCA_IMAGE, hps, {"train": (X, "application/x-recordio-protobuf")})
    assert state.status == "Completed", state.failure_reason
    model_dir = local_model(state, tmp_path / "model")
    saved = np.load(model_dir / "pca.npz")
    X64 = X.astype(np.float64)
    mean = X64.mean(axis=0)
    _, s, vt = np.linalg.svd(X64 - mean, full_matrices=False)
    np.testing.assert_allclose(saved["mean"], mean, rtol=1e-5)
    np.testing.assert_allclose(saved["singular_values"], s[:2], rtol=1e-4)
    # the same subspace, component by component (up to sign)
    for j in range(2):
        assert abs(float(saved["components"][:, j] @ vt[j])) == pytest.approx(1.0, abs=1e-4)
    sig = signature(model_dir)
    assert sig["response_format"] == "pca" and sig["task"] == "dimensionality_reduction"
    assert sig["num_components"] == 2 and sig["inputs"][0]["shape"] == [None, 6]
    out = onnx_predict(model_dir, X[:40])["projection"]
    expected = (X64[:40] - saved["mean"].astype(np.float64)) @ saved["components"].astype(np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    assert any("2 components explain" in line for line in lines)


def test_pca_without_subtract_mean_from_csv(tmp_path: Path) -> None:
    X = correlated(200, seed=4)
    hps = {"num_components": 3, "feature_dim": 6, "subtract_mean": "False", "extra_components": 2}
    state, _ = run(tmp_path, PCA_IMAGE, hps, {"train": (X, "text/csv")})
    assert state.status == "Completed", state.failure_reason
    model_dir = local_model(state, tmp_path / "model")
    saved = np.load(model_dir / "pca.npz")
    assert not saved["mean"].any()
    _, s, _ = np.linalg.svd(
        np.loadtxt(tmp_path / "data/train/part-0.csv", delimiter=","), full_matrices=False
    )
    np.testing.assert_allclose(saved["singular_values"], s[:3], rtol=1e-4)
    out = onnx_predict(model_dir, X[:5])["projection"]
    np.testing.assert_allclose(out, X[:5].astype(np.float64) @ saved["components"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    ("hps", "named"),
    [
        ({"feature_dim": 6}, "num_components"),
        ({"num_components": 7, "feature_dim": 6}, "num_components"),
        ({"num_components": 2}, "feature_dim"),
        ({"num_components": 2, "feature_dim": 5}, "feature_dim"),
        ({"num_components": 2, "feature_dim": 6, "algorithm_mode": "fast"}, "algorithm_mode"),
        ({"num_components": 2, "feature_dim": 6, "subtract_mean": "maybe"}, "subtract_mean"),
        ({"num_components": 2, "feature_dim": 6, "extra_components": 0}, "extra_components"),
        ({"num_components": 2, "feature_dim": 6, "k": 3}, "k"),
    ],
)
def test_pca_bad_hyperparameters_fail_naming_them(tmp_path: Path, hps: dict[str, Any], named: str) -> None:
    state, _ = run(tmp_path, PCA_IMAGE, hps, {"train": (correlated(50), "text/csv")})
    assert state.status == "Failed"
    reason = state.failure_reason or ""
    assert reason.startswith("ClientError: ") and f"Hyperparameter {named!r}" in reason, reason


def test_kmeans_recordio_with_labels_ignores_them(tmp_path: Path) -> None:
    X, which = blobs(90, seed=7)
    body = io.BytesIO(encode_dense(X, which.astype(np.float32))).getvalue()
    state, _ = run(
        tmp_path,
        KMEANS_IMAGE,
        {"k": 3, "feature_dim": 3},
        {"train": (body, "application/x-recordio-protobuf")},
    )
    assert state.status == "Completed", state.failure_reason


# -- Factorization Machines ---------------------------------------------------------------------
FM_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/factorization-machines:1"
FM_FAST = {"bias_lr": 0.05, "linear_lr": 0.05, "factors_lr": 0.05, "factors_init_sigma": 0.1}


def fm_margin(saved: Any, X: np.ndarray) -> np.ndarray:
    """The factorization machine by its definition: w0 + x·w + Σ_{i<j} <v_i, v_j> x_i x_j."""
    X = X.astype(np.float64)
    V = saved["factors"].astype(np.float64)
    gram = V @ V.T
    pairs = np.einsum("ni,ij,nj->n", X, np.triu(gram, 1), X)
    out: np.ndarray = saved["bias"][0] + X @ saved["linear"] + pairs
    return out


def write_labelled(folder: Path, X: np.ndarray, y: np.ndarray, content_type: str) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    if content_type == "text/csv":
        np.savetxt(folder / "part-0.csv", np.column_stack([y, X]), delimiter=",", fmt="%.7g")
    else:
        (folder / "part-0.pbr").write_bytes(encode_dense(X, y.astype(np.float32)))
    return channel(folder.name, folder.as_uri(), content_type)


def test_fm_binary_classifier_learns_an_interaction_and_exports_onnx(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(1200, 4)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.float32)  # no linear model can separate this
    hps = {"feature_dim": 4, "num_factors": 4, "predictor_type": "binary_classifier", "epochs": 20}
    hps |= {"mini_batch_size": 100, **FM_FAST}
    channels = [
        write_labelled(tmp_path / "data/train", X[:900], y[:900], "application/x-recordio-protobuf"),
        write_labelled(tmp_path / "data/test", X[900:], y[900:], "application/x-recordio-protobuf"),
    ]
    req = request(
        "fm",
        FM_IMAGE,
        hps,
        channels,
        (tmp_path / "out").as_uri(),
        metrics=builtin_metric_definitions(FM_IMAGE),
    )
    state, lines = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    found = {m["MetricName"]: m["Value"] for m in state.metrics}
    assert found["test:binary_classification_accuracy"] > 0.85, found
    assert any(re.search(r"epoch=19, train binary_classification_accuracy <score>=", line) for line in lines)
    model_dir = local_model(state, tmp_path / "model")
    saved = np.load(model_dir / "factorization-machines.npz")
    sig = signature(model_dir)
    assert sig["response_format"] == "linear-learner" and sig["task"] == "binary_classification"
    assert sig["framework"] == "factorization-machines" and sig["classes"] == [0, 1]
    out = onnx_predict(model_dir, X[900:])
    p1 = 1 / (1 + np.exp(-fm_margin(saved, X[900:])))
    np.testing.assert_allclose(out["probabilities"][:, 1], p1, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["label"], (p1 >= 0.5).astype(np.int64))
    assert found["test:binary_classification_accuracy"] == pytest.approx(
        float(np.mean((p1 >= 0.5) == y[900:]))
    )


def test_fm_regressor_from_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(800, 3)).astype(np.float32)
    y = (2 * X[:, 0] * X[:, 1] + X[:, 2] + 0.5).astype(np.float32)
    hps = {"feature_dim": 3, "num_factors": 2, "predictor_type": "regressor", "epochs": 30, **FM_FAST}
    hps["mini_batch_size"] = 50
    channels = [write_labelled(tmp_path / "data/train", X, y, "text/csv")]
    state, lines = run_job(
        request("fm-reg", FM_IMAGE, hps, channels, (tmp_path / "out").as_uri()), tmp_path / "j"
    )
    assert state.status == "Completed", state.failure_reason
    model_dir = local_model(state, tmp_path / "model")
    saved = np.load(model_dir / "factorization-machines.npz")
    predicted = fm_margin(saved, X)
    assert float(np.sqrt(np.mean((predicted - y) ** 2))) < 0.3
    np.testing.assert_allclose(
        onnx_predict(model_dir, X[:50])["score"][:, 0], predicted[:50], rtol=1e-4, atol=1e-4
    )
    assert any(re.search(r"epoch=29, train rmse <loss>=", line) for line in lines)


@pytest.mark.parametrize(
    ("hps", "named"),
    [
        ({"feature_dim": 3, "num_factors": 2}, "predictor_type"),
        ({"feature_dim": 3, "predictor_type": "regressor"}, "num_factors"),
        ({"num_factors": 2, "predictor_type": "regressor"}, "feature_dim"),
        ({"feature_dim": 3, "num_factors": 2, "predictor_type": "multiclass_classifier"}, "predictor_type"),
        (
            {"feature_dim": 3, "num_factors": 2, "predictor_type": "regressor", "factors_init_method": "x"},
            "factors_init_method",
        ),
        ({"feature_dim": 3, "num_factors": 2, "predictor_type": "regressor", "linear_lr": -1}, "linear_lr"),
        ({"feature_dim": 3, "num_factors": 2, "predictor_type": "regressor", "k": 2}, "k"),
    ],
)
def test_fm_bad_hyperparameters_fail_naming_them(tmp_path: Path, hps: dict[str, Any], named: str) -> None:
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    channels = [write_labelled(tmp_path / "data/train", X, np.ones(20, dtype=np.float32), "text/csv")]
    state, _ = run_job(
        request("fm-bad", FM_IMAGE, hps, channels, (tmp_path / "out").as_uri()), tmp_path / "j"
    )
    assert state.status == "Failed"
    reason = state.failure_reason or ""
    assert reason.startswith("ClientError: ") and f"Hyperparameter {named!r}" in reason, reason


def test_fm_binary_labels_must_be_0_or_1(tmp_path: Path) -> None:
    X = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    channels = [write_labelled(tmp_path / "data/train", X, np.full(20, 2.0, dtype=np.float32), "text/csv")]
    hps = {"feature_dim": 3, "num_factors": 2, "predictor_type": "binary_classifier"}
    state, _ = run_job(
        request("fm-lab", FM_IMAGE, hps, channels, (tmp_path / "out").as_uri()), tmp_path / "j"
    )
    assert state.status == "Failed" and "needs labels 0 or 1, found [2.0]" in (state.failure_reason or "")


def test_kmeans_and_pca_read_pipe_mode_channels(tmp_path: Path) -> None:
    """Pipe mode hands unlabeled RecordIO / CSV through the FIFO (training/data.py, ``labelled=False``)."""
    X, _ = blobs(150, seed=11)
    for image, hps, content_type in (
        (KMEANS_IMAGE, {"k": 3, "feature_dim": 3}, "application/x-recordio-protobuf"),
        (PCA_IMAGE, {"num_components": 2, "feature_dim": 3}, "text/csv"),
    ):
        work = tmp_path / image.rsplit("/", 1)[-1].split(":")[0]
        folder = work / "data/train"
        if content_type == "text/csv":
            write_csv(folder / "part-0.csv", X)
        else:
            write_recordio(folder / "part-0.pbr", X)
        req = request(
            "pipe",
            image,
            hps,
            [channel("train", folder.as_uri(), content_type)],
            (work / "out").as_uri(),
            mode="Pipe",
        )
        state, _ = run_job(req, work / "job")
        assert state.status == "Completed", state.failure_reason
        out = onnx_predict(local_model(state, work / "model"), X[:5])
        assert set(out) in ({"closest_cluster", "distance_to_cluster"}, {"projection"})

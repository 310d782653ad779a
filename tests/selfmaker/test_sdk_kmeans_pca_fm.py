"""The SDK's ``KMeans``, ``PCA`` and ``FactorizationMachines`` estimators end to end against `selfmaker up`
(SDK venv: tests/sdkkit.py).

``record_set()`` uploads the numpy arrays to S3 (moto) as unlabeled RecordIO-protobuf, ``fit`` trains the
built-in on them, ``deploy`` makes an endpoint from the SDK's own image URI (``.../kmeans:1``,
``.../pca:1``) and the default predictors send ``application/x-recordio-protobuf`` and read ``Record``s:
KMeans' ``closest_cluster`` must be the nearest of the centers in the job's model artifact (and
``distance_to_cluster`` the distance to it), PCA's ``projection`` the artifact's (x − mean) @ components,
Factorization Machines' ``score`` / ``predicted_label`` the artifact's model by its definition.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _artifact(moto_server: str, uri: str, name: str) -> Any:
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return np.load(io.BytesIO(member.read()))


def test_kmeans_record_set_fit_deploy_predict_returns_the_nearest_centers(
    run_sdk: Callable[..., object], moto_server: str, tmp_path: Path
) -> None:
    run = run_sdk(
        """
        import numpy as np
        import sagemaker

        rng = np.random.default_rng(27)
        centers = np.array([[0, 0, 0, 0], [6, 6, 0, 0], [0, -6, 6, 3]], dtype="float32")
        X = (centers[rng.integers(0, 3, size=300)] + rng.normal(scale=0.5, size=(300, 4))).astype("float32")
        kmeans = sagemaker.KMeans(
            ROLE, instance_count=1, instance_type="ml.m5.large", k=3, sagemaker_session=session,
            output_path=f"s3://{BUCKET}/sdk-kmeans/output", data_location=f"s3://{BUCKET}/sdk-kmeans/data",
            eval_metrics=["msd", "ssd"], init_method="kmeans++",
        )
        image = kmeans.training_image_uri()
        kmeans.fit(kmeans.record_set(X), logs=False)
        job = session.describe_training_job(kmeans.latest_training_job.name)
        assert job["TrainingJobStatus"] == "Completed", job
        predictor = kmeans.deploy(1, "ml.m5.large")
        try:
            answer = predictor.predict(X[:40])
        finally:
            predictor.delete_endpoint()
        assert all(type(r).__name__ == "Record" for r in answer), [type(r) for r in answer]
        result({
            "image": image,
            "hyperparameters": job["HyperParameters"],
            "metrics": {m["MetricName"]: m["Value"] for m in job.get("FinalMetricDataList", [])},
            "model": kmeans.model_data,
            "X": X[:40].tolist(),
            "clusters": [r.label["closest_cluster"].float32_tensor.values[0] for r in answer],
            "distances": [r.label["distance_to_cluster"].float32_tensor.values[0] for r in answer],
        })
        """,
        timeout=900,
    )
    out = run.result  # type: ignore[attr-defined]
    assert out["image"].endswith("/kmeans:1"), out["image"]
    assert out["hyperparameters"]["k"] == "3" and out["hyperparameters"]["feature_dim"] == "4"
    centers = _artifact(moto_server, out["model"], "kmeans.npz")["centers"].astype(np.float64)
    X = np.array(out["X"], dtype=np.float64)
    distances = np.sqrt(((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2))
    assert out["clusters"] == [float(i) for i in distances.argmin(axis=1)]
    np.testing.assert_allclose(out["distances"], distances.min(axis=1), rtol=1e-5, atol=1e-5)
    # the three blobs were found: 3 distinct clusters, each point close to its center
    assert len(set(out["clusters"])) == 3 and max(out["distances"]) < 2.5


def test_pca_record_set_fit_deploy_predict_returns_projections(
    run_sdk: Callable[..., object], moto_server: str, tmp_path: Path
) -> None:
    run = run_sdk(
        """
        import numpy as np
        import sagemaker

        rng = np.random.default_rng(10)
        basis = np.linalg.qr(rng.normal(size=(5, 5)))[0]
        scales = np.array([4.0, 2.0, 0.2, 0.1, 0.1])
        X = (rng.normal(size=(200, 5)) * scales @ basis.T + 1.0).astype("float32")
        pca = sagemaker.PCA(
            ROLE, instance_count=1, instance_type="ml.m5.large", num_components=2, sagemaker_session=session,
            output_path=f"s3://{BUCKET}/sdk-pca/output", data_location=f"s3://{BUCKET}/sdk-pca/data",
        )
        image = pca.training_image_uri()
        pca.fit(pca.record_set(X), mini_batch_size=50, logs=False)
        predictor = pca.deploy(1, "ml.m5.large")
        try:
            answer = predictor.predict(X[:20])
        finally:
            predictor.delete_endpoint()
        result({
            "image": image,
            "model": pca.model_data,
            "X": X[:20].tolist(),
            "projections": [list(r.label["projection"].float32_tensor.values) for r in answer],
        })
        """,
        timeout=900,
    )
    out = run.result  # type: ignore[attr-defined]
    assert out["image"].endswith("/pca:1"), out["image"]
    saved = _artifact(moto_server, out["model"], "pca.npz")
    X = np.array(out["X"], dtype=np.float64)
    expected = (X - saved["mean"].astype(np.float64)) @ saved["components"].astype(np.float64)
    assert np.array(out["projections"]).shape == (20, 2)
    np.testing.assert_allclose(out["projections"], expected, rtol=1e-4, atol=1e-4)


def test_factorization_machines_record_set_fit_deploy_predict_returns_scores(
    run_sdk: Callable[..., object], moto_server: str, tmp_path: Path
) -> None:
    run = run_sdk(
        """
        import numpy as np
        import sagemaker

        rng = np.random.default_rng(12)
        X = rng.normal(size=(600, 4)).astype("float32")
        y = (X[:, 0] * X[:, 1] > 0).astype("float32")
        fm = sagemaker.FactorizationMachines(
            ROLE, instance_count=1, instance_type="ml.m5.large", num_factors=4,
            predictor_type="binary_classifier", sagemaker_session=session, epochs=20,
            bias_lr=0.05, linear_lr=0.05, factors_lr=0.05, factors_init_sigma=0.1,
            output_path=f"s3://{BUCKET}/sdk-fm/output", data_location=f"s3://{BUCKET}/sdk-fm/data",
        )
        image = fm.training_image_uri()
        fm.fit(fm.record_set(X, labels=y), mini_batch_size=100, logs=False)
        predictor = fm.deploy(1, "ml.m5.large")
        try:
            answer = predictor.predict(X[:40])
        finally:
            predictor.delete_endpoint()
        result({
            "image": image,
            "model": fm.model_data,
            "X": X[:40].tolist(),
            "y": y[:40].tolist(),
            "scores": [r.label["score"].float32_tensor.values[0] for r in answer],
            "labels": [r.label["predicted_label"].float32_tensor.values[0] for r in answer],
        })
        """,
        timeout=900,
    )
    out = run.result  # type: ignore[attr-defined]
    assert out["image"].endswith("/factorization-machines:1"), out["image"]
    saved = _artifact(moto_server, out["model"], "factorization-machines.npz")
    X = np.array(out["X"], dtype=np.float64)
    V = saved["factors"].astype(np.float64)
    margin = saved["bias"][0] + X @ saved["linear"] + np.einsum("ni,ij,nj->n", X, np.triu(V @ V.T, 1), X)
    p1 = 1 / (1 + np.exp(-margin))
    np.testing.assert_allclose(out["scores"], p1, rtol=1e-4, atol=1e-5)
    assert out["labels"] == [float(p >= 0.5) for p in p1]
    assert np.mean(np.array(out["labels"]) == np.array(out["y"])) >= 0.8

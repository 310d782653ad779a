"""The SageMaker Python SDK's default formats end to end against `selfmaker up` (SDK venv: tests/sdkkit.py).

``LinearLearner.record_set()`` uploads numpy arrays to S3 (moto) as RecordIO-protobuf and a manifest,
``fit`` trains the built-in on them, ``deploy`` makes an endpoint and the default ``LinearLearnerPredictor``
sends ``application/x-recordio-protobuf`` (its ``RecordSerializer``) and reads the answer with its
``RecordDeserializer``: the ``Record``s' scores must equal the trained model's own, computed here from the
model artifact the job wrote. The built-in XGBoost, trained on libsvm, answers the SDK's ``LibSVMSerializer``
with xgboost's own predictions.
"""

from __future__ import annotations

import io
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path

import boto3
import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.slow


def test_linear_learner_record_set_fit_deploy_predict_returns_records(
    run_sdk: Callable[..., object], moto_server: str, tmp_path: Path
) -> None:
    run = run_sdk(
        """
        import numpy as np
        from sagemaker import LinearLearner

        rng = np.random.default_rng(24)
        X = rng.normal(size=(400, 5)).astype("float32")
        y = (X @ np.array([1.5, -2.0, 0.5, 0.0, 1.0]) > 0.2).astype("float32")
        estimator = LinearLearner(
            ROLE, 1, "ml.m5.large", predictor_type="binary_classifier", sagemaker_session=session,
            output_path=f"s3://{BUCKET}/sdk-ll/output", data_location=f"s3://{BUCKET}/sdk-ll/data",
            epochs=5,
        )
        records = estimator.record_set(X, labels=y)
        estimator.fit(records, mini_batch_size=100, logs=False)
        job = session.describe_training_job(estimator.latest_training_job.name)
        assert job["TrainingJobStatus"] == "Completed", job
        predictor = estimator.deploy(1, "ml.m5.large")
        try:
            assert predictor.content_type == "application/x-recordio-protobuf"
            answer = predictor.predict(X[:30])  # a numpy array, the predictor's own serializer
            one = predictor.predict(X[7])  # a 1-D array: one record
        finally:
            predictor.delete_endpoint()
        assert all(type(r).__name__ == "Record" for r in answer), [type(r) for r in answer]
        result({
            "model": estimator.model_data,
            "manifest": records.s3_data_type,
            "X": X[:30].tolist(),
            "y": y[:30].tolist(),
            "scores": [r.label["score"].float32_tensor.values[0] for r in answer],
            "labels": [r.label["predicted_label"].float32_tensor.values[0] for r in answer],
            "one": [r.label["score"].float32_tensor.values[0] for r in one],
        })
        """,
        timeout=900,
    )
    out = run.result  # type: ignore[attr-defined]
    assert out["manifest"] == "ManifestFile"
    # the model's own scores: its ONNX graph from the artifact the job uploaded to (moto) S3
    bucket, key = out["model"].removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        member = tar.extractfile("model.onnx")
        assert member is not None
        graph = member.read()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    X = np.array(out["X"], dtype=np.float32)
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": X}), strict=True))
    expected = outputs["probabilities"][:, 1]
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-6, atol=1e-7)
    assert out["labels"] == [float(label) for label in outputs["label"].reshape(-1)]
    np.testing.assert_allclose(out["one"], expected[7:8], rtol=1e-6)
    # and the model learned the problem (the scores are not constants)
    assert np.mean(np.array(out["labels"]) == np.array(out["y"])) >= 0.8


def test_xgboost_on_libsvm_predicts_with_the_sdks_libsvm_serializer(
    run_sdk: Callable[..., object], moto_server: str, tmp_path: Path
) -> None:
    """The built-in XGBoost trained on sparse libsvm (its default format), called with the SDK's
    ``LibSVMSerializer``: the endpoint's scores equal xgboost's own predictions on the same libsvm lines
    (absent features missing, not zero), computed here from the job's ``xgboost-model``."""
    import xgboost as xgb

    rng = np.random.default_rng(8)
    X = rng.normal(size=(400, 5))
    y = ((X[:, 0] > 0) ^ (X[:, 3] > 0.3)).astype(int)
    X[rng.random(X.shape) < 0.35] = np.nan
    y[np.isnan(X[:, 0])] = 1

    def libsvm(rows: np.ndarray, labels: np.ndarray) -> str:
        return "".join(
            f"{label} " + " ".join(f"{j}:{v:.5f}" for j, v in enumerate(row) if not np.isnan(v)) + "\n"
            for row, label in zip(rows, labels, strict=True)
        )

    workdir = tmp_path / "sdk"
    workdir.mkdir()
    (workdir / "train.libsvm").write_text(libsvm(X, y))
    requests_text = libsvm(X[:25], y[:25])
    (workdir / "request.libsvm").write_text(requests_text)
    run = run_sdk(
        """
        from sagemaker.estimator import Estimator
        from sagemaker.inputs import TrainingInput
        from sagemaker.serializers import LibSVMSerializer
        from sagemaker.deserializers import CSVDeserializer

        train = session.upload_data("train.libsvm", BUCKET, "sdk-libsvm/train")
        estimator = Estimator(
            sagemaker.image_uris.retrieve("xgboost", "us-east-1", "1.7-1"), ROLE, instance_count=1,
            instance_type="ml.m5.large", sagemaker_session=session, output_path=f"s3://{BUCKET}/sdk-libsvm/out",
            hyperparameters={"objective": "binary:logistic", "num_round": 15, "max_depth": 3},
        )
        estimator.fit({"train": TrainingInput(train, content_type="text/libsvm")}, logs=False)
        predictor = estimator.deploy(
            1, "ml.m5.large", serializer=LibSVMSerializer(), deserializer=CSVDeserializer()
        )
        try:
            rows = predictor.predict(open("request.libsvm").read())
        finally:
            predictor.delete_endpoint()
        result({"model": estimator.model_data, "scores": [float(row[0]) for row in rows]})
        """,
        workdir=workdir,
        timeout=900,
    )
    out = run.result  # type: ignore[attr-defined]
    bucket, key = out["model"].removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    with tarfile.open(fileobj=io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())) as tar:
        member = tar.extractfile("xgboost-model")
        assert member is not None
        booster = xgb.Booster()
        booster.load_model(bytearray(member.read()))
    path = tmp_path / "request.libsvm"
    path.write_text(requests_text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # xgboost 3.1+ deprecates its text reader, the reference
        expected = booster.predict(xgb.DMatrix(f"{path}?format=libsvm"))
    np.testing.assert_allclose(out["scores"], expected, rtol=1e-5, atol=1e-6)

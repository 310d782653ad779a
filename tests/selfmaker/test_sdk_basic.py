"""The real SageMaker Python SDK (sagemaker<3, in its own venv: tests/sdkkit.py) against `selfmaker up`.

The basic flow a notebook runs: built-in XGBoost ``Estimator.fit`` on S3 data → its training curve with
``TrainingJobAnalytics`` (CloudWatch metrics) → ``deploy`` → ``predict`` → ``delete_endpoint``, with the
SDK's own clients pointed at the platform by ``AWS_ENDPOINT_URL_SAGEMAKER*`` (and ``_CLOUDWATCH*``) and at
moto for S3.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import WAIT, deploy, variant

pytestmark = pytest.mark.slow


def test_sdk_estimator_fit_deploy_predict(run_sdk: Callable[..., object]) -> None:
    run = run_sdk(
        """
        import numpy as np
        from sagemaker.estimator import Estimator
        from sagemaker.inputs import TrainingInput
        from sagemaker.serializers import CSVSerializer
        from sagemaker.deserializers import CSVDeserializer

        rng = np.random.default_rng(0)
        X = rng.normal(size=(300, 4))
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
        rows = "\\n".join(",".join(f"{v:.6g}" for v in row) for row in np.column_stack([y, X]))
        train = session.upload_string_as_file_body(rows, BUCKET, "sdk-basic/train/train.csv")
        image = sagemaker.image_uris.retrieve("xgboost", "us-east-1", "1.7-1")
        estimator = Estimator(
            image, ROLE, instance_count=1, instance_type="ml.m5.large", sagemaker_session=session,
            output_path=f"s3://{BUCKET}/sdk-basic/output",
            hyperparameters={"objective": "binary:logistic", "num_round": 20, "max_depth": 3},
        )
        estimator.fit({"train": TrainingInput(train, content_type="text/csv")}, logs=False)
        job = session.describe_training_job(estimator.latest_training_job.name)
        assert job["TrainingJobStatus"] == "Completed", job
        # a job the SDK did not create in this process: attach reads SageMaker's always-present members
        attached = Estimator.attach(estimator.latest_training_job.name, sagemaker_session=session)
        assert attached.model_data == estimator.model_data, (attached.model_data, estimator.model_data)
        assert attached.hyperparameters()["num_round"] == "20", attached.hyperparameters()
        # the built-in algorithm's own metric, one value per round, through CloudWatch's GetMetricStatistics
        from sagemaker.analytics import TrainingJobAnalytics
        curve = TrainingJobAnalytics(
            estimator.latest_training_job.name, metric_names=["train:logloss"], sagemaker_session=session
        ).dataframe()
        predictor = estimator.deploy(
            1, "ml.m5.large", serializer=CSVSerializer(), deserializer=CSVDeserializer()
        )
        try:
            scores = [float(row[0]) for row in predictor.predict(X[:20])]
        finally:
            predictor.delete_endpoint()
        labels = [int(s > 0.5) for s in scores]
        accuracy = float(np.mean(np.array(labels) == y[:20]))
        result({"model": estimator.model_data, "scores": scores, "accuracy": accuracy,
                "curve": curve.to_dict(orient="list")})
        """
    )
    out = run.result  # type: ignore[attr-defined]
    assert out["model"].startswith("s3://sdk-tests/sdk-basic/output/")
    assert len(out["scores"]) == 20 and all(0.0 <= s <= 1.0 for s in out["scores"])
    assert out["accuracy"] >= 0.8
    curve = out["curve"]
    assert set(curve["metric_name"]) == {"train:logloss"} and curve["timestamp"][0] == 0
    # CloudWatch's minute average of the rounds' values: a logloss, between the last round's and ln 2
    assert all(0 < value < 0.7 for value in curve["value"])


def test_sdk_attaches_to_what_it_did_not_create(
    run_sdk: Callable[..., Any], sdk_platform: Any, onnx_model_tar: str, tmp_path: Path
) -> None:
    """``Transformer.attach()`` and ``Predictor(endpoint_name)`` on a transform job and an endpoint made
    with plain boto3: the SDK reads SageMaker's Describe shapes back."""
    sm = sdk_platform.sagemaker()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "rows.csv").write_text("3,0,0,0\n-3,0,0,0\n")
    sm.create_model(
        ModelName="attach-model",
        PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": onnx_model_tar},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    sm.create_transform_job(
        TransformJobName="attach-transform",
        ModelName="attach-model",
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": (tmp_path / "in").as_uri()}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        TransformOutput={"S3OutputPath": (tmp_path / "out").as_uri(), "Accept": "application/json"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )
    deploy(sm, "attach-endpoint", [variant("AllTraffic", "attach-model")], wait=False)
    sm.get_waiter("endpoint_in_service").wait(EndpointName="attach-endpoint", WaiterConfig=WAIT)
    try:
        run = run_sdk(
            """
            from sagemaker.transformer import Transformer
            from sagemaker.predictor import Predictor
            from sagemaker.serializers import CSVSerializer
            from sagemaker.deserializers import JSONDeserializer
            transformer = Transformer.attach("attach-transform", sagemaker_session=session)
            transformer.wait(logs=False)
            described = session.describe_transform_job("attach-transform")
            predictor = Predictor("attach-endpoint", sagemaker_session=session, serializer=CSVSerializer(),
                                  deserializer=JSONDeserializer())
            result({"model": transformer.model_name, "status": described["TransformJobStatus"],
                    "output": transformer.output_path, "answer": predictor.predict([[3, 0, 0, 0]])})
            """
        )
    finally:
        sm.delete_endpoint(EndpointName="attach-endpoint")
    out = run.result
    assert out["model"] == "attach-model" and out["status"] == "Completed"
    assert out["output"] == (tmp_path / "out").as_uri() and out["answer"]
    assert (tmp_path / "out" / "rows.csv.out").is_file()

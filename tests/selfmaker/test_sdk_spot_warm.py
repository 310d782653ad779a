"""The SageMaker Python SDK's managed spot, retry and warm-pool arguments against `selfmaker up`
(tests/sdkkit.py): ``use_spot_instances`` + ``max_wait`` + ``checkpoint_s3_uri`` + ``max_retry_attempts``,
and ``keep_alive_period_in_seconds`` on two fits in a row (the second reuses the first one's pool), then
``Session.update_training_job`` releasing it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytestmark = pytest.mark.slow


def test_sdk_spot_retry_and_warm_pool_arguments(run_sdk: Callable[..., object]) -> None:
    run = run_sdk(
        """
        import time
        import numpy as np
        from sagemaker.estimator import Estimator
        from sagemaker.inputs import TrainingInput

        rng = np.random.default_rng(0)
        X = rng.normal(size=(300, 4))
        y = (X[:, 0] + X[:, 1] > 0).astype(int)
        rows = "\\n".join(",".join(f"{v:.6g}" for v in row) for row in np.column_stack([y, X]))
        train = session.upload_string_as_file_body(rows, BUCKET, "sdk-spot/train/train.csv")
        image = sagemaker.image_uris.retrieve("xgboost", "us-east-1", "1.7-1")
        hps = {"objective": "binary:logistic", "num_round": 10, "max_depth": 3}
        channels = {"train": TrainingInput(train, content_type="text/csv")}

        spot = Estimator(
            image, ROLE, instance_count=1, instance_type="ml.m5.large", sagemaker_session=session,
            output_path=f"s3://{BUCKET}/sdk-spot/output", hyperparameters=hps,
            use_spot_instances=True, max_run=300, max_wait=600, max_retry_attempts=2,
            checkpoint_s3_uri=f"s3://{BUCKET}/sdk-spot/checkpoints",
        )
        spot.fit(channels, logs=False)
        job = session.describe_training_job(spot.latest_training_job.name)
        assert job["TrainingJobStatus"] == "Completed", job
        checkpoints = boto_session.client("s3").list_objects_v2(Bucket=BUCKET, Prefix="sdk-spot/checkpoints/")
        keys = [o["Key"] for o in checkpoints.get("Contents", [])]

        def warm(name):
            est = Estimator(
                image, ROLE, instance_count=1, instance_type="ml.m5.large", sagemaker_session=session,
                output_path=f"s3://{BUCKET}/sdk-warm/output", hyperparameters=hps,
                keep_alive_period_in_seconds=300,
            )
            est.fit(channels, logs=False, job_name=name)
            deadline = time.monotonic() + 60
            while True:
                desc = session.describe_training_job(name)
                if desc.get("WarmPoolStatus", {}).get("Status") == "Available":
                    return desc
                assert time.monotonic() < deadline, desc.get("WarmPoolStatus")
                time.sleep(0.2)

        first = warm("sdk-warm-first")
        second = warm("sdk-warm-second")
        first = session.describe_training_job("sdk-warm-first")
        session.update_training_job("sdk-warm-second", resource_config={"KeepAlivePeriodInSeconds": 0})
        deadline = time.monotonic() + 30
        while session.describe_training_job("sdk-warm-second")["WarmPoolStatus"]["Status"] != "Terminated":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        result({
            "spot": {k: job.get(k) for k in (
                "EnableManagedSpotTraining", "BillableTimeInSeconds", "TrainingTimeInSeconds",
                "RetryStrategy", "StoppingCondition", "CheckpointConfig")},
            "checkpoints": keys,
            "first": first["WarmPoolStatus"],
            "second_keep_alive": second["ResourceConfig"]["KeepAlivePeriodInSeconds"],
        })
        """
    )
    out = run.result  # type: ignore[attr-defined]
    spot = out["spot"]
    assert spot["EnableManagedSpotTraining"] is True
    assert spot["BillableTimeInSeconds"] < spot["TrainingTimeInSeconds"] or spot["TrainingTimeInSeconds"] <= 1
    assert spot["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    assert spot["StoppingCondition"]["MaxWaitTimeInSeconds"] == 600
    assert spot["CheckpointConfig"]["S3Uri"] == "s3://sdk-tests/sdk-spot/checkpoints"
    assert any("xgboost-checkpoint." in key for key in out["checkpoints"])  # the built-in's rounds, synced
    assert out["first"]["Status"] == "Reused" and out["first"]["ReusedByJob"] == "sdk-warm-second"
    assert out["second_keep_alive"] == 300

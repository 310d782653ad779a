"""The SageMaker Python SDK's ``HyperparameterTuner`` (sagemaker<3, tests/sdkkit.py) against `selfmaker up`:
``fit`` → ``best_training_job()`` → ``deploy()`` → ``predict``, with the built-in XGBoost, its built-in
``validation:auc`` objective (no MetricDefinitions given: the tuner knows the built-in's metrics) and the
tuning job's results read back through the SDK's own ``describe()``, ``attach()`` and ``analytics()``.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytestmark = pytest.mark.slow


def test_sdk_hyperparameter_tuner_fit_best_deploy_predict(run_sdk: Callable[..., object]) -> None:
    run = run_sdk(
        """
        import numpy as np
        from sagemaker.estimator import Estimator
        from sagemaker.inputs import TrainingInput
        from sagemaker.serializers import CSVSerializer
        from sagemaker.deserializers import CSVDeserializer
        from sagemaker.tuner import ContinuousParameter, HyperparameterTuner, IntegerParameter

        rng = np.random.default_rng(1)
        X = rng.normal(size=(600, 4))
        y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int)
        channels = {}
        for name, rows in (("train", slice(0, 400)), ("validation", slice(400, None))):
            table = np.column_stack([y[rows], X[rows]])
            body = "\\n".join(",".join(f"{v:.6g}" for v in row) for row in table)
            uri = session.upload_string_as_file_body(body, BUCKET, f"sdk-tuning/{name}/data.csv")
            channels[name] = TrainingInput(uri, content_type="text/csv")
        image = sagemaker.image_uris.retrieve("xgboost", "us-east-1", "1.7-1")
        estimator = Estimator(
            image, ROLE, instance_count=1, instance_type="ml.m5.large", sagemaker_session=session,
            output_path=f"s3://{BUCKET}/sdk-tuning/output",
            hyperparameters={"objective": "binary:logistic", "num_round": 15, "nthread": 1},
        )
        tuner = HyperparameterTuner(
            estimator,
            objective_metric_name="validation:auc",
            hyperparameter_ranges={
                "eta": ContinuousParameter(0.05, 0.5, scaling_type="Logarithmic"),
                "max_depth": IntegerParameter(1, 6),
            },
            strategy="Bayesian",
            objective_type="Maximize",
            max_jobs=4,
            max_parallel_jobs=2,
            random_seed=5,
        )
        tuner.fit(channels, include_cls_metadata=False, wait=True)
        description = tuner.describe()
        assert description["HyperParameterTuningJobStatus"] == "Completed", description
        assert description["TrainingJobStatusCounters"]["Completed"] == 4, description
        best = tuner.best_training_job()
        assert best == description["BestTrainingJob"]["TrainingJobName"]
        # a notebook that comes back later: attach by name, and the SDK's analytics table
        attached = HyperparameterTuner.attach(tuner.latest_tuning_job.name, sagemaker_session=session)
        assert attached.best_training_job() == best
        assert attached.objective_metric_name == "validation:auc" and attached.strategy == "Bayesian"
        table = tuner.analytics().dataframe()
        assert len(table) == 4 and set(table["TrainingJobStatus"]) == {"Completed"}
        assert table["FinalObjectiveValue"].max() == description["BestTrainingJob"][
            "FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        summaries = session.sagemaker_client.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=tuner.latest_tuning_job.name
        )["TrainingJobSummaries"]
        predictor = tuner.deploy(1, "ml.m5.large", serializer=CSVSerializer(), deserializer=CSVDeserializer())
        try:
            scores = [float(row[0]) for row in predictor.predict(X[400:440])]
        finally:
            predictor.delete_endpoint()
        accuracy = float(np.mean((np.array(scores) > 0.5) == y[400:440]))
        objective = description["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]
        result({
            "best": best,
            "best_auc": objective["Value"],
            "aucs": [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in summaries],
            "tuned": description["BestTrainingJob"]["TunedHyperParameters"],
            "scores": scores,
            "accuracy": accuracy,
        })
        """,
    )
    out = run.result  # type: ignore[attr-defined]
    assert len(out["aucs"]) == 4 and out["best_auc"] == max(out["aucs"])
    assert set(out["tuned"]) == {"eta", "max_depth"} and 1 <= int(out["tuned"]["max_depth"]) <= 6
    assert len(out["scores"]) == 40 and all(0.0 <= s <= 1.0 for s in out["scores"])
    assert out["accuracy"] >= 0.6

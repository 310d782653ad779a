"""SageMaker's XGBoost framework mode through the real SDK: ``sagemaker.xgboost.XGBoost(entry_point=...,
framework_version="1.7-1")`` trains a script written for SageMaker's XGBoost image (argparse of the
hyperparameters, ``SM_CHANNEL_TRAIN``, ``SM_MODEL_DIR``, ``xgb.train``) on the XGBoost image URI, and
``deploy()`` serves the SDK-repacked model with the script's hooks (or the image's defaults for the ones it
leaves out)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import xgboost as xgb

from common.archives import safe_extract

pytestmark = pytest.mark.slow

#: a script as SageMaker's XGBoost documentation writes them; every hook, the booster saved natively
FULL_SCRIPT = """
import argparse
import json
import os

import numpy as np
import xgboost as xgb


def model_fn(model_dir):
    booster = xgb.Booster()
    booster.load_model(os.path.join(model_dir, "xgboost-model"))
    return booster


def input_fn(request_body, request_content_type):
    if request_content_type != "text/csv":
        raise ValueError(f"unsupported content type {request_content_type}")
    rows = [[float(v) for v in line.split(",")] for line in request_body.strip().splitlines()]
    return xgb.DMatrix(np.asarray(rows, dtype=np.float32))


def predict_fn(input_data, model):
    return model.predict(input_data)


def output_fn(prediction, accept):
    return "\\n".join(f"{float(p):.9g}" for p in prediction), "text/csv"


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--max_depth", type=int, default=5)
    parser.add_argument("--eta", type=float, default=0.2)
    parser.add_argument("--num_round", type=int, default=5)
    parser.add_argument("--objective", type=str, default="reg:squarederror")
    parser.add_argument("--model_dir", type=str, default=os.environ.get("SM_MODEL_DIR"))
    parser.add_argument("--train", type=str, default=os.environ.get("SM_CHANNEL_TRAIN"))
    parser.add_argument("--output-data-dir", type=str, default=os.environ.get("SM_OUTPUT_DATA_DIR"))
    parser.add_argument("--sm-hosts", type=str, default=os.environ.get("SM_HOSTS"))
    parser.add_argument("--sm-current-host", type=str, default=os.environ.get("SM_CURRENT_HOST"))
    args, _ = parser.parse_known_args()
    assert json.loads(args.sm_hosts) == [args.sm_current_host], (args.sm_hosts, args.sm_current_host)
    data = np.loadtxt(os.path.join(args.train, "train.csv"), delimiter=",")
    dtrain = xgb.DMatrix(data[:, 1:], label=data[:, 0])
    params = {"max_depth": args.max_depth, "eta": args.eta, "objective": args.objective}
    booster = xgb.train(params, dtrain, num_boost_round=args.num_round, evals=[(dtrain, "train")])
    booster.save_model(os.path.join(args.model_dir, "xgboost-model"))
"""

#: model_fn alone, the booster pickled as SageMaker's framework-mode examples do
MODEL_FN_SCRIPT = """
import argparse
import os
import pickle

import numpy as np
import xgboost as xgb


def model_fn(model_dir):
    with open(os.path.join(model_dir, "xgboost-model"), "rb") as f:
        return pickle.load(f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_round", type=int, default=5)
    args, _ = parser.parse_known_args()
    data = np.loadtxt(os.path.join(os.environ["SM_CHANNEL_TRAIN"], "train.csv"), delimiter=",")
    dtrain = xgb.DMatrix(data[:, 1:], label=data[:, 0])
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, dtrain, args.num_round)
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "xgboost-model"), "wb") as f:
        pickle.dump(booster, f)
"""

FAILING_SCRIPT = """
import os

raise ValueError("train.csv has no label column in " + os.environ["SM_CHANNEL_TRAIN"])
"""

#: fit → deploy → predict(csv); the model's URI and the answers come back for the comparison
FIT_DEPLOY = """
import numpy as np
from sagemaker.deserializers import CSVDeserializer
from sagemaker.inputs import TrainingInput
from sagemaker.serializers import CSVSerializer
from sagemaker.xgboost import XGBoost

rows = np.array(ROWS)
X = np.array(X_PRED)
train = session.upload_string_as_file_body(
    "\\n".join(",".join(repr(float(v)) for v in row) for row in rows), BUCKET, PREFIX + "/train/train.csv"
)
estimator = XGBoost(
    entry_point="train.py", source_dir="src", framework_version="1.7-1", py_version="py3", role=ROLE,
    instance_count=1, instance_type="ml.m5.large", sagemaker_session=session,
    output_path=f"s3://{BUCKET}/{PREFIX}/output", hyperparameters=HPS,
)
estimator.fit({"train": TrainingInput(train, content_type="text/csv")}, logs=False)
job = session.describe_training_job(estimator.latest_training_job.name)
assert job["TrainingJobStatus"] == "Completed", job
assert job["HyperParameters"]["sagemaker_program"] == '"train.py"', job["HyperParameters"]
predictor = estimator.deploy(1, "ml.m5.large", serializer=CSVSerializer(), deserializer=CSVDeserializer())
try:
    answer = predictor.predict(X)
    endpoint = session.sagemaker_client.describe_endpoint(EndpointName=predictor.endpoint_name)
    model = session.sagemaker_client.describe_model(ModelName=endpoint["EndpointName"])
finally:
    predictor.delete_endpoint()
transformed = None
if TRANSFORM:  # the same model through a batch transform job (the platform adds the code there too)
    x_uri = session.upload_string_as_file_body(
        "\\n".join(",".join(repr(float(v)) for v in row) for row in X), BUCKET, PREFIX + "/batch/x.csv"
    )
    transformer = estimator.transformer(
        1, "ml.m5.large", output_path=f"s3://{BUCKET}/{PREFIX}/batch-out", accept="text/csv"
    )
    transformer.transform(x_uri, content_type="text/csv", split_type="Line", wait=True, logs=False)
    transformed = session.read_s3_file(BUCKET, PREFIX + "/batch-out/x.csv.out")
result({
    "transformed": transformed,
    "training_model": estimator.model_data,
    "deployed_model": model["PrimaryContainer"]["ModelDataUrl"],
    "image": model["PrimaryContainer"]["Image"],
    "env": model["PrimaryContainer"]["Environment"],
    "answer": [[float(v) for v in row] for row in answer],
})
"""


def _data(seed: int, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(200, 4)).round(4)
    y = X[:, 0] - 2 * X[:, 1] + 0.5 * X[:, 3]
    if binary:
        y = (y > 0).astype(float)
    return np.column_stack([y, X]), X[:12]


def _write_source(workdir: Path, script: str) -> None:
    src = workdir / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "train.py").write_text(textwrap.dedent(script))


def _booster_from(uri: str, moto: str, tmp: Path) -> xgb.Booster:
    """The booster in a model.tar.gz on moto's S3, as the test's own xgboost reads it."""
    bucket, key = uri.removeprefix("s3://").split("/", 1)
    body = boto3.client("s3", endpoint_url=moto, region_name="us-east-1").get_object(Bucket=bucket, Key=key)
    tmp.mkdir(parents=True, exist_ok=True)
    archive = tmp / "model.tar.gz"
    archive.write_bytes(body["Body"].read())
    out = safe_extract(archive, tmp / "model")
    data = (out / "xgboost-model").read_bytes()
    if data[:1] == b"\x80":
        import pickle  # only the pickled script's artifact needs it

        booster: xgb.Booster = pickle.loads(data)  # noqa: S301 — written by this test's own script
        return booster
    booster = xgb.Booster()
    booster.load_model(bytearray(data))
    return booster


def _fit_deploy(
    run_sdk: Callable[..., Any],
    tmp_path: Path,
    script: str,
    prefix: str,
    hps: dict[str, Any],
    binary: bool,
    transform: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    rows, X = _data(len(prefix), binary)
    workdir = tmp_path / "sdk"
    _write_source(workdir, script)
    code = (
        FIT_DEPLOY.replace("ROWS", repr(rows.tolist()))
        .replace("X_PRED", repr(X.tolist()))
        .replace("PREFIX", repr(prefix))
        .replace("HPS", repr(hps))
        .replace("TRANSFORM", repr(transform))
    )
    run = run_sdk(code, workdir=workdir, timeout=900)
    return run.result, X


def test_framework_script_trains_and_serves_with_its_hooks(
    run_sdk: Callable[..., Any], moto_server: str, tmp_path: Path
) -> None:
    out, X = _fit_deploy(
        run_sdk, tmp_path, FULL_SCRIPT, "xgbfw-full", {"max_depth": 3, "num_round": 8}, binary=False
    )
    assert "sagemaker-xgboost:1.7-1" in out["image"]
    assert out["env"]["SAGEMAKER_PROGRAM"] == "train.py"
    booster = _booster_from(out["training_model"], moto_server, tmp_path / "trained")
    assert booster.num_boosted_rounds() == 8  # the hyperparameter reached the script's argparse
    expected = booster.predict(xgb.DMatrix(X.astype(np.float32)))
    got = np.asarray(out["answer"]).reshape(-1)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # what the endpoint served: the training job's archive as it is (the SDK does not repack XGBoost
    # models) and the script from the sourcedir.tar.gz training used, which the platform fetched
    assert out["deployed_model"] == out["training_model"]
    submit = out["env"]["SAGEMAKER_SUBMIT_DIRECTORY"]
    assert submit.startswith("s3://sdk-tests/") and submit.endswith("/sourcedir.tar.gz"), out["env"]


def test_a_script_with_only_model_fn_gets_the_images_defaults(
    run_sdk: Callable[..., Any], moto_server: str, tmp_path: Path
) -> None:
    out, X = _fit_deploy(
        run_sdk, tmp_path, MODEL_FN_SCRIPT, "xgbfw-modelfn", {"num_round": 6}, binary=True, transform=True
    )
    booster = _booster_from(out["training_model"], moto_server, tmp_path / "trained")
    expected = booster.predict(xgb.DMatrix(X.astype(np.float32)))
    np.testing.assert_allclose(np.asarray(out["answer"]).reshape(-1), expected, rtol=1e-6, atol=1e-7)
    transformed = np.loadtxt(out["transformed"].splitlines())
    np.testing.assert_allclose(transformed, expected, rtol=1e-6, atol=1e-7)


def test_a_failing_script_fails_the_job_with_its_error_and_a_missing_one_says_so(
    run_sdk: Callable[..., Any], tmp_path: Path
) -> None:
    workdir = tmp_path / "sdk"
    _write_source(workdir, FAILING_SCRIPT)
    run = run_sdk(
        """
        import json
        import time
        from sagemaker.inputs import TrainingInput
        from sagemaker.xgboost import XGBoost

        train = session.upload_string_as_file_body("1,2,3\\n0,1,2\\n", BUCKET, "xgbfw-fail/train/train.csv")
        estimator = XGBoost(
            entry_point="train.py", source_dir="src", framework_version="1.7-1", py_version="py3",
            role=ROLE, instance_count=1, instance_type="ml.m5.large", sagemaker_session=session,
            output_path=f"s3://{BUCKET}/xgbfw-fail/output",
        )
        try:
            estimator.fit({"train": TrainingInput(train, content_type="text/csv")}, logs=False)
        except Exception as exc:  # the SDK raises UnexpectedStatusException for a Failed job
            raised = type(exc).__name__
        else:
            raised = None
        failed = session.describe_training_job(estimator.latest_training_job.name)

        # the same submit directory with an entry point it does not hold
        hps = dict(failed["HyperParameters"], sagemaker_program=json.dumps("missing.py"))
        request = {
            key: failed[key]
            for key in ("AlgorithmSpecification", "RoleArn", "InputDataConfig", "OutputDataConfig",
                        "ResourceConfig", "StoppingCondition")
        }
        request["AlgorithmSpecification"] = {
            key: value for key, value in request["AlgorithmSpecification"].items()
            if key in ("TrainingImage", "TrainingInputMode")
        }
        session.sagemaker_client.create_training_job(
            TrainingJobName="xgbfw-missing-script", HyperParameters=hps, **request
        )
        deadline = time.monotonic() + 300
        while True:
            missing = session.describe_training_job("xgbfw-missing-script")
            done = missing["TrainingJobStatus"] in ("Completed", "Failed", "Stopped")
            if done or time.monotonic() > deadline:
                break
            time.sleep(1)
        result({
            "raised": raised,
            "status": failed["TrainingJobStatus"],
            "reason": failed.get("FailureReason", ""),
            "image": failed["AlgorithmSpecification"]["TrainingImage"],
            "missing_status": missing["TrainingJobStatus"],
            "missing_reason": missing.get("FailureReason", ""),
        })
        """,
        workdir=workdir,
        timeout=900,
    )
    out = run.result
    assert "sagemaker-xgboost:1.7-1" in out["image"]
    assert out["raised"] == "UnexpectedStatusException"
    assert out["status"] == "Failed"
    assert "ValueError: train.csv has no label column in " in out["reason"], out
    assert "input/data/train" in out["reason"], out
    assert out["missing_status"] == "Failed"
    assert "'missing.py' not found in the submit directory" in out["missing_reason"], out

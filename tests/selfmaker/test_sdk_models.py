"""The SageMaker Python SDK with models it did not train here: archives repacked by its own
``repack_model`` (every ``Model`` deployed with an ``entry_point``; they hold a root entry named ``''``),
the model registry, training under network isolation, and SageMaker XGBoost's own ``xgboost-model``."""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from platform_helpers import WAIT, build_classifier_tar, deploy, variant

from common.archives import safe_extract

pytestmark = pytest.mark.slow

INFERENCE = """
def output_fn(prediction, accept):
    return "labels=" + ",".join(str(int(v)) for v in prediction["label"]), "text/plain"
"""


def test_sdk_repacked_model_unpacks_and_serves(
    run_sdk: Callable[..., Any], sdk_platform: Any, tmp_path: Path
) -> None:
    model = build_classifier_tar(tmp_path / "model")
    source = tmp_path / "src"
    source.mkdir()
    (source / "inference.py").write_text(INFERENCE)
    repacked = tmp_path / "repacked" / "model.tar.gz"
    repacked.parent.mkdir()
    run_sdk(
        f"""
        from sagemaker.utils import repack_model
        repack_model("inference.py", {str(source)!r}, [], {model.as_uri()!r}, {repacked.as_uri()!r}, session)
        """
    )
    with tarfile.open(repacked) as tar:
        names = tar.getnames()
    assert "" in names and "code/inference.py" in names  # the SDK's root entry, as the issue describes
    out = safe_extract(repacked, tmp_path / "unpacked")
    assert (out / "model.onnx").is_file() and (out / "code" / "inference.py").is_file()

    sm, smr = sdk_platform.sagemaker(), sdk_platform.runtime()
    sm.create_model(
        ModelName="sdk-repacked",
        PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": repacked.as_uri()},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    deploy(sm, "sdk-repacked", [variant("AllTraffic", "sdk-repacked")], wait=False)
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName="sdk-repacked", WaiterConfig=WAIT)
        answer = smr.invoke_endpoint(
            EndpointName="sdk-repacked",
            Body=b"3,0,0,0\n-3,0,0,0\n",
            ContentType="text/csv",
            Accept="text/plain",
        )
        assert answer["Body"].read() == b"labels=1,0"
    finally:
        sm.delete_endpoint(EndpointName="sdk-repacked")


def test_sdk_register_then_deploy_the_model_package(
    run_sdk: Callable[..., Any], moto_server: str, tmp_path: Path
) -> None:
    """``Model.register()`` → the version's ARN → ``ModelPackage(...).deploy()`` → ``predict``, all through
    the SDK (the group is created by the SDK after its Search finds none)."""
    import boto3  # the test uploads the model to moto's S3 for the SDK

    model = build_classifier_tar(tmp_path / "model")
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="registry-models")
    s3.upload_file(str(model), "registry-models", "churn/model.tar.gz")
    run = run_sdk(
        """
        from sagemaker.model import Model, ModelPackage
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import CSVSerializer
        from sagemaker.deserializers import JSONDeserializer

        model = Model(image_uri="selfmaker", model_data="s3://registry-models/churn/model.tar.gz", role=ROLE,
                      sagemaker_session=session)
        registered = model.register(
            content_types=["text/csv"], response_types=["application/json"],
            inference_instances=["ml.m5.large"], transform_instances=["ml.m5.large"],
            model_package_group_name="sdk-churn", approval_status="Approved",
        )
        arn = registered.model_package_arn
        described = session.sagemaker_client.describe_model_package(ModelPackageName=arn)
        assert described["ModelApprovalStatus"] == "Approved", described
        package = ModelPackage(role=ROLE, model_package_arn=arn, sagemaker_session=session)
        # deploy() of a plain ModelPackage returns no predictor: attach one by endpoint name, as users do
        package.deploy(1, "ml.m5.large", endpoint_name="sdk-registry")
        predictor = Predictor("sdk-registry", sagemaker_session=session, serializer=CSVSerializer(),
                              deserializer=JSONDeserializer())
        try:
            answer = predictor.predict([[3, 0, 0, 0], [-3, 0, 0, 0]])
        finally:
            predictor.delete_endpoint()
        result({"arn": arn, "answer": answer})
        """
    )
    out = run.result
    assert out["arn"].endswith(":model-package/sdk-churn/1")
    assert out["answer"]


PROBE = """
import json, os, socket
try:
    socket.create_connection(("127.0.0.1", int(os.environ["PROBE_PORT"])), timeout=5).close()
    outcome = "connected"
except OSError as exc:
    outcome = f"refused: {exc}"
with open(os.path.join(os.environ["SM_MODEL_DIR"], "probe.json"), "w") as f:
    json.dump({"outcome": outcome}, f)
"""


def test_sdk_estimator_with_network_isolation(run_sdk: Callable[..., Any], tmp_path: Path) -> None:
    """``Estimator(entry_point=..., enable_network_isolation=True)``: the SDK passes the code as the ``code``
    channel; the script runs and cannot reach even a server on the host's loopback."""
    import socket  # the server the script tries to reach

    source = tmp_path / "src"
    source.mkdir()
    (source / "probe.py").write_text(PROBE)
    server = socket.create_server(("127.0.0.1", 0))
    try:
        run = run_sdk(
            f"""
            import io, tarfile
            from sagemaker.estimator import Estimator
            train = session.upload_string_as_file_body("1,2\\n", BUCKET, "iso/data/d.csv")
            estimator = Estimator(
                image_uri="selfmaker", role=ROLE, instance_count=1, instance_type="ml.m5.large",
                entry_point="probe.py", source_dir={str(source)!r}, enable_network_isolation=True,
                environment={{"PROBE_PORT": "{server.getsockname()[1]}"}},
                output_path=f"s3://{{BUCKET}}/iso/output", sagemaker_session=session,
            )
            estimator.fit({{"train": train}}, logs=False)
            job = session.describe_training_job(estimator.latest_training_job.name)
            assert job["EnableNetworkIsolation"] is True, job
            channels = [c["ChannelName"] for c in job["InputDataConfig"]]
            local = sagemaker.s3.S3Downloader.read_bytes(estimator.model_data, sagemaker_session=session)
            with tarfile.open(fileobj=io.BytesIO(local)) as tar:
                probe = json.load(tar.extractfile("probe.json"))
            result({{"channels": channels, "probe": probe,
                     "submit": job["HyperParameters"]["sagemaker_submit_directory"]}})
            """
        )
    finally:
        server.close()
    out = run.result
    assert "code" in out["channels"] and out["submit"].strip('"').startswith("/opt/ml/input/data/code/")
    assert out["probe"]["outcome"].startswith("refused"), out["probe"]


def test_sdk_deploys_a_sagemaker_xgboost_artifact(
    run_sdk: Callable[..., Any], sdk_platform: Any, moto_server: str, tmp_path: Path
) -> None:
    """A model.tar.gz holding only ``xgboost-model`` in the legacy binary format SageMaker's XGBoost 1.x
    images write, deployed with the built-in XGBoost image URI through the SDK: predictions equal
    ``booster.predict``. A corrupt one fails its endpoint with the reason."""
    import io
    import tarfile
    import warnings

    import boto3  # the test uploads the artifacts to moto's S3
    import numpy as np
    import xgboost as xgb

    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    y = (X[:, 0] - X[:, 1] > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(X, label=y), 10)
    with warnings.catch_warnings():  # xgboost warns that the legacy binary format is deprecated
        warnings.simplefilter("ignore")
        native = bytes(booster.save_raw("deprecated"))
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="sagemaker-xgb")
    for key, data in (("good/model.tar.gz", native), ("corrupt/model.tar.gz", b"binf" + b"\x00" * 32)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            info = tarfile.TarInfo("xgboost-model")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        s3.put_object(Bucket="sagemaker-xgb", Key=key, Body=buf.getvalue())
    rows = X[:10]
    run = run_sdk(
        f"""
        from sagemaker.model import Model
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import CSVSerializer
        from sagemaker.deserializers import CSVDeserializer
        image = sagemaker.image_uris.retrieve("xgboost", "us-east-1", "1.7-1")
        model = Model(image_uri=image, model_data="s3://sagemaker-xgb/good/model.tar.gz", role=ROLE,
                      sagemaker_session=session, predictor_cls=Predictor)
        predictor = model.deploy(1, "ml.m5.large", endpoint_name="sagemaker-xgb",
                                 serializer=CSVSerializer(), deserializer=CSVDeserializer())
        try:
            scores = [float(row[0]) for row in predictor.predict({rows.tolist()!r})]
        finally:
            predictor.delete_endpoint()
        result(scores)
        """
    )
    np.testing.assert_allclose(run.result, booster.predict(xgb.DMatrix(rows)), rtol=1e-4, atol=1e-5)

    sm = sdk_platform.sagemaker()
    sm.create_model(
        ModelName="corrupt-xgb",
        PrimaryContainer={
            "Image": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1",
            "ModelDataUrl": "s3://sagemaker-xgb/corrupt/model.tar.gz",
        },
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    deploy(sm, "corrupt-xgb", [variant("AllTraffic", "corrupt-xgb")], wait=False)
    try:
        with pytest.raises(Exception):  # noqa: B017 - the waiter's WaiterError on Failed
            sm.get_waiter("endpoint_in_service").wait(EndpointName="corrupt-xgb", WaiterConfig=WAIT)
        described = sm.describe_endpoint(EndpointName="corrupt-xgb")
        assert described["EndpointStatus"] == "Failed"
        assert (
            "xgboost-model" in described["FailureReason"]
            and "not a model xgboost can read" in described["FailureReason"]
        ), described["FailureReason"]
    finally:
        sm.delete_endpoint(EndpointName="corrupt-xgb")

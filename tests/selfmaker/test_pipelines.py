"""Inference pipelines (models of several containers) through boto3: Serial chains and Direct invocation on
endpoints, a transform job over a Serial pipeline, and the bad input SageMaker refuses.

The pipeline: a ``scaler`` container (script mode: ``code/inference.py`` standardizes CSV features and answers
JSON unless asked for CSV) then a ``classifier`` (a logistic regression exported to ONNX). Expected answers
are computed here by hand: the scaling with numpy, the classifier with onnxruntime on the same model.onnx.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from botocore.exceptions import ClientError
from platform_helpers import WAIT, build_classifier_tar, deploy, variant

from selfmaker.endpoints.runtime import Pipeline
from selfmaker.modeldata import execution_mode, model_containers

pytestmark = pytest.mark.slow

MEAN = [1.0, -2.0, 0.5, 3.0]
SCALE = [2.0, 0.5, 4.0, 1.5]

SCALER = """
import json, os
import numpy as np


def model_fn(model_dir):
    with open(os.path.join(model_dir, "scaler.json")) as f:
        params = json.load(f)
    return np.array(params["mean"]), np.array(params["scale"])


def transform_fn(model, data, content_type, accept):
    if not content_type.startswith("text/csv"):
        raise ValueError("the scaler reads text/csv, not " + content_type)
    mean, scale = model
    rows = np.array([[float(v) for v in line.split(",")] for line in data.strip().splitlines()])
    width = rows.shape[1]
    scaled = (rows - mean[:width]) / scale[:width]
    if accept == "text/csv":
        return "\\n".join(",".join(repr(float(v)) for v in row) for row in scaled) + "\\n", "text/csv"
    return json.dumps(scaled.tolist()), "application/json"
"""


def _scaler_tar(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "scaler.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (
            ("scaler.json", json.dumps({"mean": MEAN, "scale": SCALE}).encode()),
            ("code/inference.py", SCALER.encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def _labels(classifier: Path, rows: np.ndarray) -> list[int]:
    """The classifier's labels for ``rows`` (already scaled), by onnxruntime on its model.onnx."""
    with tarfile.open(classifier) as tar:
        member = tar.extractfile("model.onnx")
        assert member is not None
        session = ort.InferenceSession(member.read(), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: rows.astype(np.float32)}
    return [int(v) for v in session.run(None, feeds)[0]]


def _csv(rows: np.ndarray) -> bytes:
    return "".join(",".join(str(v) for v in row) + "\n" for row in rows).encode()


def _containers(scaler: Path, classifier: Path, *, named: bool = True) -> list[dict[str, Any]]:
    first = {"Image": "selfmaker", "ModelDataUrl": scaler.as_uri()}
    second = {"Image": "selfmaker", "ModelDataUrl": classifier.as_uri()}
    if named:
        first["ContainerHostname"], second["ContainerHostname"] = "scaler", "classifier"
    return [first, second]


ROLE = "arn:aws:iam::123456789012:role/selfmaker"


def _error(info: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    err = info.value.response
    return err["Error"]["Code"], err["Error"]["Message"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_serial_and_direct_pipelines(sm: Any, smr: Any, tmp_path: Path, broken_model_tar: str) -> None:
    """One Serial and one Direct endpoint over the same two containers: the Serial answer equals the chain
    computed by hand, content types pass along, Direct reaches each container, errors name the container,
    and TargetContainerHostname is refused where SageMaker refuses it. A pipeline whose second container
    cannot load fails its endpoint naming that container."""
    scaler, classifier = _scaler_tar(tmp_path / "scaler"), build_classifier_tar(tmp_path / "classifier")
    rng = np.random.default_rng(7)
    rows = rng.normal(size=(6, 4)) * 3
    scaled = (rows - np.array(MEAN)) / np.array(SCALE)
    expected = _labels(classifier, scaled)
    assert len(set(expected)) == 2  # both classes: a wrong scaling would change some labels

    sm.create_model(
        ModelName="pipe-serial",
        Containers=_containers(scaler, classifier, named=False),
        ExecutionRoleArn=ROLE,
    )
    described = sm.describe_model(ModelName="pipe-serial")
    assert described["InferenceExecutionConfig"] == {"Mode": "Serial"}  # SageMaker's default
    assert [c["ModelDataUrl"] for c in described["Containers"]] == [scaler.as_uri(), classifier.as_uri()]
    assert "PrimaryContainer" not in described
    sm.create_model(
        ModelName="pipe-direct",
        Containers=_containers(scaler, classifier),
        InferenceExecutionConfig={"Mode": "Direct"},
        ExecutionRoleArn=ROLE,
    )
    described = sm.describe_model(ModelName="pipe-direct")
    assert described["InferenceExecutionConfig"] == {"Mode": "Direct"}
    assert [c["ContainerHostname"] for c in described["Containers"]] == ["scaler", "classifier"]

    deploy(sm, "pipe-serial", [variant("AllTraffic", "pipe-serial")], wait=False)
    deploy(sm, "pipe-direct", [variant("Direct", "pipe-direct")], wait=False)
    sm.create_model(
        ModelName="pipe-broken",
        Containers=[
            {"Image": "selfmaker", "ModelDataUrl": scaler.as_uri()},
            {"Image": "selfmaker", "ModelDataUrl": broken_model_tar},
        ],
        ExecutionRoleArn=ROLE,
    )
    deploy(sm, "pipe-broken", [variant("AllTraffic", "pipe-broken")], wait=False)
    try:
        for name in ("pipe-serial", "pipe-direct"):
            sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)

        # Serial: the scaler gets the client's text/csv and, without the client's Accept, answers JSON;
        # the classifier gets that JSON as application/json and answers in the client's Accept (CSV)
        answer = smr.invoke_endpoint(
            EndpointName="pipe-serial", Body=_csv(rows), ContentType="text/csv", Accept="text/csv"
        )
        assert answer["ContentType"].startswith("text/csv")
        assert answer["InvokedProductionVariant"] == "AllTraffic"
        body = answer["Body"].read().decode()
        assert [int(float(line.split(",")[0])) for line in body.split()] == expected, body
        # the same chain answering JSON
        answer = smr.invoke_endpoint(
            EndpointName="pipe-serial", Body=_csv(rows), ContentType="text/csv", Accept="application/json"
        )
        assert answer["ContentType"].startswith("application/json")
        assert [p["label"] for p in json.loads(answer["Body"].read())["predictions"]] == expected

        # Direct: each container alone; the scaler honours the client's Accept there
        answer = smr.invoke_endpoint(
            EndpointName="pipe-direct",
            Body=_csv(rows),
            ContentType="text/csv",
            Accept="text/csv",
            TargetContainerHostname="scaler",
        )
        assert answer["InvokedProductionVariant"] == "Direct"
        direct_scaled = np.array(
            [[float(v) for v in line.split(",")] for line in answer["Body"].read().decode().split()]
        )
        np.testing.assert_allclose(direct_scaled, scaled, rtol=1e-12)
        answer = smr.invoke_endpoint(
            EndpointName="pipe-direct",
            Body=_csv(scaled),
            ContentType="text/csv",
            Accept="text/csv",
            TargetContainerHostname="classifier",
        )
        direct = answer["Body"].read().decode()
        assert [int(float(line.split(",")[0])) for line in direct.split()] == expected, direct

        # an error of container 2 names it (three features: the scaler copes, the classifier refuses)
        with pytest.raises(ClientError) as info:
            smr.invoke_endpoint(EndpointName="pipe-serial", Body=_csv(rows[:, :3]), ContentType="text/csv")
        code, message, status = _error(info)
        assert (code, status) == ("ModelError", 424)
        assert message.startswith("Received client error (400) from container-2 with message"), message
        # an error of container 1 names it: the scaler refuses JSON input
        with pytest.raises(ClientError) as info:
            smr.invoke_endpoint(
                EndpointName="pipe-serial", Body=b"[[1,2,3,4]]", ContentType="application/json"
            )
        code, message, status = _error(info)
        assert code == "ModelError" and message.startswith(
            'Received server error (500) from container-1 with message "'
        ), message
        with pytest.raises(ClientError) as info:
            smr.invoke_endpoint(
                EndpointName="pipe-direct",
                Body=b"[[1,2]]",
                ContentType="text/csv",
                TargetContainerHostname="classifier",
            )
        assert "from classifier with message" in _error(info)[1]

        # TargetContainerHostname: required in Direct, known hostnames only, refused in Serial
        for endpoint, kwargs, fragment in (
            ("pipe-direct", {}, "is configured for direct invocation"),
            ("pipe-direct", {"TargetContainerHostname": "nope"}, "The container hostname nope was not found"),
            ("pipe-serial", {"TargetContainerHostname": "scaler"}, "is not configured for direct invocation"),
        ):
            with pytest.raises(ClientError) as info:
                smr.invoke_endpoint(EndpointName=endpoint, Body=_csv(rows), ContentType="text/csv", **kwargs)
            code, message, status = _error(info)
            assert (code, status) == ("ValidationError", 400), (endpoint, kwargs, message)
            assert fragment in message, message

        # a transform job over the Serial pipeline: each record flows through the chain
        data = tmp_path / "batch"
        data.mkdir()
        (data / "rows.csv").write_bytes(_csv(rows))
        sm.create_transform_job(
            TransformJobName="pipe-transform",
            ModelName="pipe-serial",
            TransformInput={
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}},
                "ContentType": "text/csv",
                "SplitType": "Line",
            },
            TransformOutput={
                "S3OutputPath": (tmp_path / "out").as_uri(),
                "Accept": "text/csv",
                "AssembleWith": "Line",
            },
            TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
        )
        deadline = time.monotonic() + 180
        while True:
            job = sm.describe_transform_job(TransformJobName="pipe-transform")
            if job["TransformJobStatus"] not in ("InProgress", "Stopping") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert job["TransformJobStatus"] == "Completed", job.get("FailureReason")
        out = (tmp_path / "out" / "rows.csv.out").read_text()
        assert [int(float(line.split(",")[0])) for line in out.split()] == expected, out

        deadline = time.monotonic() + 120
        while (broken := sm.describe_endpoint(EndpointName="pipe-broken"))["EndpointStatus"] == "Creating":
            assert time.monotonic() < deadline
            time.sleep(0.25)
        assert broken["EndpointStatus"] == "Failed"
        assert broken["FailureReason"].startswith(
            "The container container-2 for production variant AllTraffic did not pass the ping health check."
        ), broken["FailureReason"]
    finally:
        for name in ("pipe-serial", "pipe-direct", "pipe-broken"):
            sm.delete_endpoint(EndpointName=name)


def test_pipeline_models_refused_as_sagemaker_refuses_them(sm: Any) -> None:
    """More than 15 containers, duplicate hostnames, Direct without hostnames, some named and some not."""
    image = {"Image": "selfmaker"}
    for kwargs, fragment in (
        (
            {"Containers": [dict(image) for _ in range(16)]},
            "Member must have length less than or equal to 15",
        ),
        (
            {"Containers": [{**image, "ContainerHostname": "a"}, {**image, "ContainerHostname": "a"}]},
            "ContainerHostname 'a' is used by more than one container",
        ),
        (
            {"Containers": [dict(image), dict(image)], "InferenceExecutionConfig": {"Mode": "Direct"}},
            "must be specified for every container when InferenceExecutionConfig.Mode is Direct",
        ),
        (
            {"Containers": [{**image, "ContainerHostname": "a"}, dict(image)]},
            "must be specified for every container of an inference pipeline",
        ),
        ({"Containers": [dict(image)], "InferenceExecutionConfig": {"Mode": "Sideways"}}, "enum value set"),
    ):
        with pytest.raises(ClientError) as info:
            sm.create_model(ModelName="pipe-bad", ExecutionRoleArn=ROLE, **kwargs)
        code, message, status = _error(info)
        assert (code, status) == ("ValidationException", 400), message
        assert fragment in message, message
    with pytest.raises(ClientError):
        sm.describe_model(ModelName="pipe-bad")  # nothing was stored
    # a pipeline is served by real-time variants only
    sm.create_model(ModelName="pipe-two", ExecutionRoleArn=ROLE, Containers=[dict(image), dict(image)])
    serverless = {
        "VariantName": "S",
        "ModelName": "pipe-two",
        "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1},
    }
    asynchronous = {"AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://bucket/out"}}}
    for kwargs in (
        {"ProductionVariants": [serverless]},
        {"ProductionVariants": [variant("A", "pipe-two")], **asynchronous},
    ):
        with pytest.raises(ClientError) as info:
            sm.create_endpoint_config(EndpointConfigName="pipe-bad-config", **kwargs)
        code, message, status = _error(info)
        assert (code, status) == ("ValidationException", 400), message
        assert "has several containers (an inference pipeline)" in message, message


def test_sdk_pipeline_model_deploys_and_predicts(
    run_sdk: Any, sdk_platform: Any, moto_server: str, tmp_path: Path
) -> None:
    """The SDK's ``PipelineModel(models=[scaler, classifier]).deploy()`` → ``predict`` → the chain's answer;
    the model the SDK made is a Serial pipeline of both containers; ``delete_endpoint`` removes it."""
    import boto3  # the test uploads the models to moto's S3 for the SDK

    scaler, classifier = _scaler_tar(tmp_path / "scaler"), build_classifier_tar(tmp_path / "classifier")
    rows = np.random.default_rng(11).normal(size=(5, 4)) * 3
    expected = _labels(classifier, (rows - np.array(MEAN)) / np.array(SCALE))
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="sdk-pipeline")
    s3.upload_file(str(scaler), "sdk-pipeline", "scaler/model.tar.gz")
    s3.upload_file(str(classifier), "sdk-pipeline", "classifier/model.tar.gz")
    run = run_sdk(
        f"""
        from sagemaker.model import Model
        from sagemaker.pipeline import PipelineModel
        from sagemaker.predictor import Predictor
        from sagemaker.serializers import CSVSerializer
        from sagemaker.deserializers import JSONDeserializer

        models = [
            Model(image_uri="selfmaker", model_data=f"s3://sdk-pipeline/{{part}}/model.tar.gz", role=ROLE,
                  sagemaker_session=session)
            for part in ("scaler", "classifier")
        ]
        pipeline = PipelineModel(models=models, role=ROLE, predictor_cls=Predictor, name="sdk-pipeline-model",
                                 sagemaker_session=session)
        predictor = pipeline.deploy(initial_instance_count=1, instance_type="ml.m5.large",
                                    endpoint_name="sdk-pipeline", serializer=CSVSerializer(),
                                    deserializer=JSONDeserializer())
        try:
            answer = predictor.predict({rows.tolist()!r})
            described = session.sagemaker_client.describe_model(ModelName="sdk-pipeline-model")
        finally:
            predictor.delete_endpoint()
        result({{"answer": answer, "containers": len(described["Containers"]),
                 "mode": described["InferenceExecutionConfig"]["Mode"]}})
        """
    )
    out = run.result
    assert [p["label"] for p in out["answer"]["predictions"]] == expected, out
    assert (out["containers"], out["mode"]) == (2, "Serial")
    sm = sdk_platform.sagemaker()
    with pytest.raises(ClientError):
        sm.describe_endpoint(EndpointName="sdk-pipeline")


def test_model_containers_name_and_order_the_containers() -> None:
    """One container is ``primary`` (PrimaryContainer, or a Containers list of one); a pipeline's containers
    keep their hostnames or get ``container-<n>``; the mode defaults to Serial; hostnames match exactly
    first, else regardless of case."""
    one = {"Image": "a"}
    assert model_containers({"PrimaryContainer": one}) == [("primary", one)]
    assert model_containers({"Containers": [one]}) == [("primary", one)]
    assert execution_mode({"Containers": [one], "InferenceExecutionConfig": {"Mode": "Direct"}}) is None
    two = [{"Image": "a"}, {"Image": "b"}]
    assert [h for h, _ in model_containers({"Containers": two})] == ["container-1", "container-2"]
    assert execution_mode({"Containers": two}) == "Serial"
    named = [{"Image": "a", "ContainerHostname": "pre"}, {"Image": "b", "ContainerHostname": "Post"}]
    assert [c["Image"] for _, c in model_containers({"Containers": named})] == ["a", "b"]
    assert execution_mode({"Containers": named, "InferenceExecutionConfig": {"Mode": "Direct"}}) == "Direct"
    pipeline = Pipeline("Direct", ("pre", "Post", "post"))
    assert (pipeline.position("post"), pipeline.position("POST"), pipeline.position("PRE")) == (2, 1, 0)
    assert pipeline.position("other") is None

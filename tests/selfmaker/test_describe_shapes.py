"""Every Describe answer carries the members SageMaker always returns: the members botocore's service model
marks required in the output shape, checked recursively into every structure, list and map present, for
one finished resource of each kind the platform serves (models, endpoint configs, endpoints, training,
transform, processing and tuning jobs, model packages and groups)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import botocore.session
import numpy as np
import pytest
from platform_helpers import WAIT

pytestmark = pytest.mark.slow

XGB_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
ROLE = "arn:aws:iam::123456789012:role/selfmaker"
MODEL = botocore.session.get_session().get_service_model("sagemaker")


def missing_members(shape: Any, value: Any, path: str = "") -> list[str]:
    """Required members of ``shape`` absent from ``value`` (a parsed boto3 answer), recursively."""
    missing: list[str] = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for name in shape.metadata.get("required", []):
            if name not in value:
                missing.append(f"{path}{name}")
        for name, member in shape.members.items():
            if name in value:
                missing += missing_members(member, value[name], f"{path}{name}.")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, item in enumerate(value):
            missing += missing_members(shape.member, item, f"{path}[{i}].")
    elif shape.type_name == "map" and isinstance(value, dict):
        for key, item in value.items():
            missing += missing_members(shape.value, item, f"{path}{key}.")
    return missing


def _check(op: str, answer: dict[str, Any]) -> None:
    answer = {k: v for k, v in answer.items() if k != "ResponseMetadata"}
    assert not missing_members(MODEL.operation_model(op).output_shape, answer), (op, answer)


def _wait(describe: Any, key: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = describe()
        if answer[key] in ("Completed", "Failed", "Stopped"):
            return dict(answer)
        time.sleep(0.5)
    raise AssertionError(f"{key} did not end")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] > 0).astype(int)
    for channel in ("train", "validation"):
        (root / channel).mkdir()
        np.savetxt(root / channel / "d.csv", np.column_stack([y, x]), delimiter=",", fmt="%.5f")
    (root / "batch").mkdir()
    np.savetxt(root / "batch" / "in.csv", x[:5], delimiter=",", fmt="%.5f")
    (root / "code").mkdir()
    (root / "code" / "step.py").write_text("print('processing step')\n")
    return root


def _channels(data: Path) -> list[dict[str, Any]]:
    return [
        {
            "ChannelName": ch,
            "ContentType": "text/csv",
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": (data / ch).as_uri()}},
        }
        for ch in ("train", "validation")
    ]


def test_describe_answers_carry_what_sagemaker_always_returns(
    sm: Any, data: Path, onnx_model_tar: str
) -> None:
    common = {
        "RoleArn": ROLE,
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
        "OutputDataConfig": {"S3OutputPath": (data / "out").as_uri()},
    }
    sm.create_training_job(
        TrainingJobName="shapes-train",
        AlgorithmSpecification={"TrainingImage": XGB_IMAGE, "TrainingInputMode": "File"},
        HyperParameters={"objective": "binary:logistic", "num_round": "3"},
        InputDataConfig=_channels(data),
        **common,
    )
    job = _wait(lambda: sm.describe_training_job(TrainingJobName="shapes-train"), "TrainingJobStatus")
    assert job["TrainingJobStatus"] == "Completed", job.get("FailureReason")
    _check("DescribeTrainingJob", job)
    assert job["OutputDataConfig"]["KmsKeyId"] == "" and job["EnableNetworkIsolation"] is False

    sm.create_model(
        ModelName="shapes-model",
        PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": onnx_model_tar},
        ExecutionRoleArn=ROLE,
    )
    _check("DescribeModel", sm.describe_model(ModelName="shapes-model"))
    variant = {
        "VariantName": "AllTraffic",
        "ModelName": "shapes-model",
        "InstanceType": "ml.m5.large",
        "InitialInstanceCount": 1,
    }
    sm.create_endpoint_config(EndpointConfigName="shapes-config", ProductionVariants=[variant])
    _check("DescribeEndpointConfig", sm.describe_endpoint_config(EndpointConfigName="shapes-config"))
    sm.create_endpoint(EndpointName="shapes-endpoint", EndpointConfigName="shapes-config")
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName="shapes-endpoint", WaiterConfig=WAIT)
        _check("DescribeEndpoint", sm.describe_endpoint(EndpointName="shapes-endpoint"))
    finally:
        sm.delete_endpoint(EndpointName="shapes-endpoint")

    sm.create_transform_job(
        TransformJobName="shapes-transform",
        ModelName="shapes-model",
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": (data / "batch").as_uri()}},
            "ContentType": "text/csv",
        },
        TransformOutput={"S3OutputPath": (data / "batch-out").as_uri()},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )
    _check(
        "DescribeTransformJob",
        _wait(lambda: sm.describe_transform_job(TransformJobName="shapes-transform"), "TransformJobStatus"),
    )

    local = "/opt/ml/processing/"
    sm.create_processing_job(
        ProcessingJobName="shapes-processing",
        RoleArn=ROLE,
        AppSpecification={
            "ImageUri": XGB_IMAGE,
            "ContainerEntrypoint": ["python3", local + "input/code/step.py"],
        },
        ProcessingInputs=[
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": (data / "code").as_uri(),
                    "S3DataType": "S3Prefix",
                    "LocalPath": local + "input/code",
                },
            }
        ],
        ProcessingResources={
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1}
        },
    )
    _check(
        "DescribeProcessingJob",
        _wait(
            lambda: sm.describe_processing_job(ProcessingJobName="shapes-processing"), "ProcessingJobStatus"
        ),
    )

    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName="shapes-tuning",
        HyperParameterTuningJobConfig={
            "Strategy": "Random",
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:auc"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 1, "MaxParallelTrainingJobs": 1},
            "ParameterRanges": {
                "ContinuousParameterRanges": [{"Name": "eta", "MinValue": "0.1", "MaxValue": "0.5"}]
            },
        },
        TrainingJobDefinition={
            "AlgorithmSpecification": {"TrainingImage": XGB_IMAGE, "TrainingInputMode": "File"},
            "StaticHyperParameters": {"objective": "binary:logistic", "num_round": "3", "eval_metric": "auc"},
            "InputDataConfig": _channels(data),
            **common,
        },
    )
    _check(
        "DescribeHyperParameterTuningJob",
        _wait(
            lambda: sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName="shapes-tuning"),
            "HyperParameterTuningJobStatus",
        ),
    )

    sm.create_model_package_group(ModelPackageGroupName="shapes-group")
    _check("DescribeModelPackageGroup", sm.describe_model_package_group(ModelPackageGroupName="shapes-group"))
    arn = sm.create_model_package(
        ModelPackageGroupName="shapes-group",
        InferenceSpecification={
            "Containers": [{"Image": "selfmaker", "ModelDataUrl": onnx_model_tar}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )["ModelPackageArn"]
    _check("DescribeModelPackage", sm.describe_model_package(ModelPackageName=arn))


def test_the_checker_finds_what_is_missing() -> None:
    shape = MODEL.operation_model("DescribeTrainingJob").output_shape
    found = missing_members(shape, {"TrainingJobName": "x", "ModelArtifacts": {}, "StoppingCondition": {}})
    assert "TrainingJobArn" in found and "ModelArtifacts.S3ModelArtifacts" in found

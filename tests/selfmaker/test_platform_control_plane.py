"""Control plane through plain boto3 against a real `selfmaker up`: CRUD, errors, listing, tags."""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from typing import Any

import pytest
import requests
from botocore.exceptions import ClientError
from platform_helpers import make_model, variant

ROLE = "arn:aws:iam::123456789012:role/selfmaker"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _error(info: pytest.ExceptionInfo[ClientError]) -> tuple[str, str, int]:
    err = info.value.response
    return err["Error"]["Code"], err["Error"]["Message"], err["ResponseMetadata"]["HTTPStatusCode"]


def test_model_crud_and_errors(sm: Any, onnx_model_tar: str) -> None:
    name = _name("Model")
    arn = sm.create_model(
        ModelName=name,
        PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": onnx_model_tar, "Environment": {"A": "1"}},
        ExecutionRoleArn=ROLE,
        Tags=[{"Key": "team", "Value": "ml"}],
    )["ModelArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:model/{name.lower()}"
    desc = sm.describe_model(ModelName=name)
    assert desc["ModelName"] == name and desc["ModelArn"] == arn
    assert desc["PrimaryContainer"]["Environment"] == {"A": "1"}
    assert isinstance(desc["CreationTime"], dt.datetime)
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "ml"}]

    with pytest.raises(ClientError) as info:
        sm.create_model(ModelName=name, PrimaryContainer={"Image": "selfmaker"})
    assert _error(info) == ("ValidationException", f'Cannot create already existing model "{arn}".', 400)

    sm.delete_model(ModelName=name)
    for call in (sm.describe_model, sm.delete_model):
        with pytest.raises(ClientError) as info:
            call(ModelName=name)
        assert _error(info) == ("ValidationException", f'Could not find model "{arn}".', 400)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"ModelName": "bad_name", "PrimaryContainer": {"Image": "x"}}, "'modelName'"),
        ({"ModelName": "m" * 64, "PrimaryContainer": {"Image": "x"}}, "less than or equal to 63"),
        (
            {"ModelName": "ok", "PrimaryContainer": {"Image": "x", "ModelDataUrl": "ftp://a/b"}},
            "'primaryContainer.modelDataUrl'",
        ),
        ({"ModelName": "ok", "PrimaryContainer": {"Image": "x", "Mode": "Bogus"}}, "enum value set"),
        ({"ModelName": "ok2"}, "Either PrimaryContainer or Containers"),
        (
            {
                "ModelName": "pipe",
                "Containers": [
                    {"Image": "x", "ContainerHostname": "a"},
                    {"Image": "y", "ContainerHostname": "A"},
                ],
            },
            "ContainerHostname 'A' is used by more than one container",
        ),
        (
            {"ModelName": "mme", "PrimaryContainer": {"Image": "x", "Mode": "MultiModel"}},
            "MultiModel is not supported",
        ),
    ],
)
def test_invalid_model_requests(sm: Any, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ClientError) as info:
        sm.create_model(**kwargs)
    code, message, status = _error(info)
    assert (code, status) == ("ValidationException", 400)
    assert fragment in message


def test_endpoint_config_crud_and_errors(sm: Any, onnx_model_tar: str) -> None:
    model, cfg = _name("m"), _name("cfg")
    make_model(sm, model, onnx_model_tar)
    arn = sm.create_endpoint_config(EndpointConfigName=cfg, ProductionVariants=[variant("A", model)])[
        "EndpointConfigArn"
    ]
    desc = sm.describe_endpoint_config(EndpointConfigName=cfg)
    assert desc["EndpointConfigArn"] == arn
    assert desc["ProductionVariants"][0]["InitialVariantWeight"] == 1.0
    with pytest.raises(ClientError) as info:
        sm.create_endpoint_config(EndpointConfigName=cfg, ProductionVariants=[variant("A", model)])
    assert _error(info) == (
        "ValidationException",
        f'Cannot create already existing endpoint configuration "{arn}".',
        400,
    )

    missing = _name("missing")
    with pytest.raises(ClientError) as info:
        sm.create_endpoint_config(EndpointConfigName=_name("c"), ProductionVariants=[variant("A", missing)])
    assert (
        _error(info)[1] == f'Could not find model "arn:aws:sagemaker:us-east-1:123456789012:model/{missing}".'
    )

    for variants, fragment in (
        ([variant("A", model), variant("a", model)], "unique"),
        ([variant("A", model, weight=0.0)], "InitialVariantWeight above 0"),
        ([{"VariantName": "A", "ModelName": model, "InitialInstanceCount": 1}], "instanceType"),
        (
            [
                {
                    **variant("A", model),
                    "ManagedInstanceScaling": {
                        "Status": "ENABLED",
                        "MinInstanceCount": 3,
                        "MaxInstanceCount": 2,
                    },
                }
            ],
            "MinInstanceCount (3)",
        ),
    ):
        with pytest.raises(ClientError) as info:
            sm.create_endpoint_config(EndpointConfigName=_name("c"), ProductionVariants=variants)
        assert _error(info)[0] == "ValidationException"
        assert fragment in _error(info)[1]

    sm.delete_endpoint_config(EndpointConfigName=cfg)
    with pytest.raises(ClientError) as info:
        sm.describe_endpoint_config(EndpointConfigName=cfg)
    assert _error(info) == ("ValidationException", f'Could not find endpoint configuration "{arn}".', 400)


def test_instance_counts_past_the_platform_limit_are_refused(
    sm: Any, onnx_model_tar: str, tmp_path: Any
) -> None:
    """Each instance is a local process: more than SELFMAKER_MAX_INSTANCES (16) per variant or job is
    SageMaker's ResourceLimitExceeded, and nothing is created or started."""
    model, cfg, endpoint = _name("m"), _name("big"), _name("big")
    make_model(sm, model, onnx_model_tar)
    sm.create_endpoint_config(EndpointConfigName=cfg, ProductionVariants=[variant("A", model, count=1000)])
    with pytest.raises(ClientError) as info:
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=cfg)
    code, message, status = _error(info)
    assert (code, status) == ("ResourceLimitExceeded", 400) and "1000 instances" in message
    assert sm.list_endpoints(NameContains=endpoint)["Endpoints"] == []
    job = {
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": "sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"},
        "OutputDataConfig": {"S3OutputPath": (tmp_path / "out").as_uri()},
        "StoppingCondition": {"MaxRuntimeInSeconds": 60},
    }
    for count, expected in ((17, "ResourceLimitExceeded"), (0, "ValidationException")):
        name = _name("job")
        with pytest.raises(ClientError) as info:
            sm.create_training_job(
                TrainingJobName=name,
                ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": count, "VolumeSizeInGB": 1},
                **job,
            )
        assert _error(info)[0] == expected, count
        assert sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"] == []


def test_missing_endpoint_and_config_errors(sm: Any) -> None:
    name = _name("Ghost")
    arn = f"arn:aws:sagemaker:us-east-1:123456789012:endpoint/{name.lower()}"
    for call, kwargs in (
        (sm.describe_endpoint, {}),
        (sm.delete_endpoint, {}),
        (sm.update_endpoint, {"EndpointConfigName": "whatever"}),
        (
            sm.update_endpoint_weights_and_capacities,
            {"DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredWeight": 1.0}]},
        ),
    ):
        with pytest.raises(ClientError) as info:
            call(EndpointName=name, **kwargs)
        assert _error(info) == ("ValidationException", f'Could not find endpoint "{arn}".', 400)
    with pytest.raises(ClientError) as info:
        sm.create_endpoint(EndpointName=name, EndpointConfigName="no-such-config")
    assert _error(info) == (
        "ValidationException",
        "Could not find endpoint configuration "
        '"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/no-such-config".',
        400,
    )
    with pytest.raises(ClientError) as info:
        sm.describe_training_job(TrainingJobName=name)
    assert _error(info) == ("ValidationException", "Requested resource not found.", 400)


def test_list_pagination_filters_and_sorting(sm: Any, onnx_model_tar: str) -> None:
    prefix = f"pg{uuid.uuid4().hex[:6]}"
    names = [f"{prefix}-{i:02d}" for i in range(13)]
    for name in names:
        make_model(sm, name, onnx_model_tar)
    first = sm.list_models(NameContains=prefix, MaxResults=5, SortBy="Name", SortOrder="Ascending")
    assert [m["ModelName"] for m in first["Models"]] == names[:5]
    assert "NextToken" in first
    # boto3's paginator follows NextToken to the end
    pages = list(
        sm.get_paginator("list_models").paginate(
            NameContains=prefix, SortBy="Name", SortOrder="Ascending", PaginationConfig={"PageSize": 4}
        )
    )
    assert [len(p["Models"]) for p in pages] == [4, 4, 4, 1]
    assert "NextToken" not in pages[-1]
    assert [m["ModelName"] for p in pages for m in p["Models"]] == names
    # default: CreationTime descending, 10 per page
    default = sm.list_models(NameContains=prefix)
    assert [m["ModelName"] for m in default["Models"]] == list(reversed(names))[:10]
    # NameContains is case-insensitive; creation-time filters
    assert len(sm.list_models(NameContains=prefix.upper(), MaxResults=100)["Models"]) == 13
    middle = sm.describe_model(ModelName=names[6])["CreationTime"]
    after = sm.list_models(NameContains=prefix, CreationTimeAfter=middle, MaxResults=100)["Models"]
    assert sorted(m["ModelName"] for m in after) == names[7:]
    before = sm.list_models(NameContains=prefix, CreationTimeBefore=middle, MaxResults=100)["Models"]
    assert sorted(m["ModelName"] for m in before) == names[:6]
    assert sm.list_models(NameContains="zz-no-such-zz")["Models"] == []
    with pytest.raises(ClientError) as info:
        sm.list_models(NameContains=prefix, NextToken="garbage")
    assert _error(info)[0] == "ValidationException"
    with pytest.raises(ClientError) as info:
        sm.list_models(MaxResults=101)
    assert _error(info)[0] == "ValidationException"
    crafted = base64.urlsafe_b64encode(b'{"p": 1e999, "f": "x"}').decode()
    for token in (crafted, base64.urlsafe_b64encode(b'{"o": 1e999, "f": "x"}').decode()):
        with pytest.raises(ClientError) as info:
            sm.list_models(NameContains=prefix, NextToken=token)
        assert _error(info)[0] == "ValidationException"


def test_delete_while_paginating_visits_every_record(sm: Any, onnx_model_tar: str) -> None:
    """NextToken is a position, not an offset: deleting the records of one page while paginating (a
    common clean-up loop) skips none of the others, in either sort order."""
    for order in ("Ascending", "Descending"):
        prefix = f"dp{uuid.uuid4().hex[:6]}"
        names = [f"{prefix}-{i:02d}" for i in range(11)]
        for name in names:
            make_model(sm, name, onnx_model_tar)
        seen = []
        for page in sm.get_paginator("list_models").paginate(
            NameContains=prefix, SortOrder=order, PaginationConfig={"PageSize": 3}
        ):
            for model in page["Models"]:
                seen.append(model["ModelName"])
                sm.delete_model(ModelName=model["ModelName"])
        assert sorted(seen) == names and len(seen) == len(set(seen))
        assert sm.list_models(NameContains=prefix)["Models"] == []


def test_tags(sm: Any, onnx_model_tar: str) -> None:
    name = _name("tagged")
    arn = sm.create_model(
        ModelName=name, PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": onnx_model_tar}
    )["ModelArn"]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "b", "Value": "2"}, {"Key": "a", "Value": "1"}])
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "a", "Value": "one"}])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "a", "Value": "one"}, {"Key": "b", "Value": "2"}]
    sm.delete_tags(ResourceArn=arn, TagKeys=["a"])
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "b", "Value": "2"}]
    with pytest.raises(ClientError) as info:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(50)])
    assert _error(info)[0] == "ResourceLimitExceeded"
    with pytest.raises(ClientError) as info:
        sm.list_tags(ResourceArn="arn:aws:sagemaker:us-east-1:123456789012:model/does-not-exist")
    assert _error(info)[0] == "ValidationException"
    # the same name in another region or account is another resource
    for other in (arn.replace("us-east-1", "eu-west-1"), arn.replace("123456789012", "999999999999")):
        with pytest.raises(ClientError) as info:
            sm.add_tags(ResourceArn=other, Tags=[{"Key": "x", "Value": "y"}])
        assert _error(info)[0] == "ValidationException"
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "b", "Value": "2"}]
    with pytest.raises(ClientError) as info:
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "aws:owner", "Value": "me"}])
    assert _error(info)[0] == "ValidationException" and "reserved" in _error(info)[1]


def test_wire_protocol_edges(platform_server: Any) -> None:
    url = platform_server.url
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    resp = requests.post(
        url, data=b"{}", headers={**headers, "X-Amz-Target": "SageMaker.NoSuchOperation"}, timeout=10
    )
    assert resp.status_code == 400 and resp.json()["__type"] == "UnknownOperationException"
    resp = requests.post(
        url, data=b"{not json", headers={**headers, "X-Amz-Target": "SageMaker.ListModels"}, timeout=10
    )
    assert resp.status_code == 400 and resp.json()["__type"] == "ValidationException"
    resp = requests.post(
        url, data=b"[]", headers={**headers, "X-Amz-Target": "SageMaker.ListModels"}, timeout=10
    )
    assert resp.status_code == 400 and resp.json()["__type"] == "ValidationException"
    for bound in (b'"nan"', b'"inf"', b"1e999"):  # non-finite timestamps are refused, not matched against
        resp = requests.post(
            url,
            data=b'{"CreationTimeAfter": ' + bound + b"}",
            headers={**headers, "X-Amz-Target": "SageMaker.ListModels"},
            timeout=10,
        )
        assert resp.status_code == 400 and resp.json()["__type"] == "ValidationException", bound
    resp = requests.post(
        url, data=b"", headers={**headers, "X-Amz-Target": "SageMaker.ListModels"}, timeout=10
    )
    assert resp.status_code == 200 and "Models" in resp.json() and "x-amzn-RequestId" in resp.headers
    assert "null" not in resp.text

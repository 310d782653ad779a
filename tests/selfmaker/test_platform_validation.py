"""Request validation generated from botocore's SageMaker model (selfmaker/api/validation.py)."""

from __future__ import annotations

import pytest

from selfmaker.api.validation import service_model, validate_request, validation_errors
from selfmaker.errors import ValidationException


def _op(name: str):  # noqa: ANN202
    return service_model().operation_model(name)


GOOD_CONFIG = {
    "EndpointConfigName": "cfg-1",
    "ProductionVariants": [
        {
            "VariantName": "AllTraffic",
            "ModelName": "m",
            "InstanceType": "ml.m5.large",
            "InitialInstanceCount": 1,
        }
    ],
}


def test_valid_request_passes_and_unknown_members_are_ignored() -> None:
    assert validation_errors(_op("CreateEndpointConfig"), {**GOOD_CONFIG, "SomeFutureMember": {"x": 1}}) == []


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (
            {"ModelName": "bad name"},
            "at 'modelName' failed to satisfy constraint: Member must satisfy regular expression",
        ),
        (
            {"ModelName": "x" * 64},
            "at 'modelName' failed to satisfy constraint: Member must have length less than or equal to 63",
        ),
        ({}, "Value null at 'modelName' failed to satisfy constraint: Member must not be null"),
        ({"ModelName": 5}, "at 'modelName' failed to satisfy constraint: Member must be a string"),
    ],
)
def test_describe_model_constraints(params: dict, fragment: str) -> None:
    with pytest.raises(ValidationException) as info:
        validate_request(_op("DescribeModel"), params)
    assert fragment in info.value.message
    assert info.value.message.startswith("1 validation error detected: ")


def test_nested_enum_range_and_list_paths() -> None:
    params = {
        "EndpointConfigName": "cfg",
        "ProductionVariants": [
            {
                "VariantName": "A",
                "ModelName": "m",
                "InstanceType": "ml.nope",
                "InitialInstanceCount": 0,
                "InitialVariantWeight": -1,
            }
        ],
    }
    errors = validation_errors(_op("CreateEndpointConfig"), params)
    joined = "\n".join(errors)
    assert (
        "at 'productionVariants.1.member.instanceType' failed to satisfy constraint: Member must satisfy enum"
        in joined
    )
    assert "at 'productionVariants.1.member.initialInstanceCount'" in joined
    assert "at 'productionVariants.1.member.initialVariantWeight'" in joined
    assert len(errors) == 3


def test_list_and_map_limits() -> None:
    too_many = [dict(GOOD_CONFIG["ProductionVariants"][0], VariantName=f"v{i}") for i in range(11)]
    errors = validation_errors(
        _op("CreateEndpointConfig"), {"EndpointConfigName": "c", "ProductionVariants": too_many}
    )
    assert any("'productionVariants'" in e and "less than or equal to 10" in e for e in errors)
    env = {"1BAD": "x"}
    errors = validation_errors(
        _op("CreateModel"), {"ModelName": "m", "PrimaryContainer": {"Environment": env}}
    )
    assert any("primaryContainer.environment.1BAD.key" in e for e in errors)


def test_java_unicode_classes_in_patterns_are_enforced() -> None:
    ok = {
        "ResourceArn": "arn:aws:sagemaker:us-east-1:123456789012:model/m",
        "Tags": [{"Key": "team name", "Value": "ü"}],
    }
    assert validation_errors(_op("AddTags"), ok) == []
    bad = {"ResourceArn": ok["ResourceArn"], "Tags": [{"Key": "semi;colon", "Value": "v"}]}
    assert any("tags.1.member.key" in e for e in validation_errors(_op("AddTags"), bad))


def test_file_uris_are_accepted_where_s3_uris_are() -> None:
    params = {"ModelName": "m", "PrimaryContainer": {"ModelDataUrl": "file:///tmp/model.tar.gz"}}
    assert validation_errors(_op("CreateModel"), params) == []
    params["PrimaryContainer"]["ModelDataUrl"] = "ftp://host/model.tar.gz"
    assert validation_errors(_op("CreateModel"), params)


def test_booleans_are_not_integers() -> None:
    errors = validation_errors(_op("ListModels"), {"MaxResults": True})
    assert errors and "maxResults" in errors[0]


def test_whole_number_floats_become_integers_for_the_operations() -> None:
    """JSON clients may send ``2.0`` for an integer member: accepted, and handed on as ``2``."""
    params = {
        "EndpointName": "e",
        "DesiredWeightsAndCapacities": [
            {"VariantName": "A", "DesiredInstanceCount": 2.0, "DesiredWeight": 1}
        ],
    }
    validate_request(_op("UpdateEndpointWeightsAndCapacities"), params)
    count = params["DesiredWeightsAndCapacities"][0]["DesiredInstanceCount"]
    assert count == 2 and type(count) is int
    config = {
        "EndpointConfigName": "c",
        "ProductionVariants": [dict(GOOD_CONFIG["ProductionVariants"][0], InitialInstanceCount=1.0)],
    }
    validate_request(_op("CreateEndpointConfig"), config)
    assert type(config["ProductionVariants"][0]["InitialInstanceCount"]) is int
    assert validation_errors(_op("ListModels"), {"MaxResults": 2.5})

"""The model registry and Search with plain boto3 against a running `selfmaker up`."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from platform_helpers import WAIT, deploy, variant

from selfmaker.api.ops.search import matches

ROLE = "arn:aws:iam::123456789012:role/selfmaker"


def _container(model_data: str) -> dict[str, Any]:
    return {
        "Containers": [{"Image": "selfmaker", "ModelDataUrl": model_data}],
        "SupportedContentTypes": ["text/csv"],
        "SupportedResponseMIMETypes": ["application/json"],
    }


def _error(call: Any, **kwargs: Any) -> dict[str, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    return info.value.response["Error"]


def test_versioned_packages_approval_and_a_model_from_a_package(
    sm: Any, smr: Any, onnx_model_tar: str
) -> None:
    group_arn = sm.create_model_package_group(
        ModelPackageGroupName="churn-models",
        ModelPackageGroupDescription="churn",
        Tags=[{"Key": "team", "Value": "ml"}],
    )["ModelPackageGroupArn"]
    assert group_arn.endswith(":model-package-group/churn-models")
    assert (
        "already existing"
        in _error(sm.create_model_package_group, ModelPackageGroupName="churn-models")["Message"]
    )
    arns = [
        sm.create_model_package(
            ModelPackageGroupName="churn-models", InferenceSpecification=_container(onnx_model_tar)
        )["ModelPackageArn"]
        for _ in range(2)
    ]
    assert [a.rsplit("/", 2)[-2:] for a in arns] == [["churn-models", "1"], ["churn-models", "2"]]
    first = sm.describe_model_package(ModelPackageName=arns[0])
    assert first["ModelPackageGroupName"] == "churn-models" and first["ModelPackageVersion"] == 1
    assert first["ModelApprovalStatus"] == "PendingManualApproval"
    assert first["ModelPackageStatus"] == "Completed"
    assert first["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == onnx_model_tar

    sm.update_model_package(ModelPackageArn=arns[1], ModelApprovalStatus="Approved", ApprovalDescription="ok")
    approved = sm.list_model_packages(ModelPackageGroupName="churn-models", ModelApprovalStatus="Approved")
    assert [p["ModelPackageArn"] for p in approved["ModelPackageSummaryList"]] == [arns[1]]
    listed = sm.list_model_packages(
        ModelPackageGroupName="churn-models", SortBy="CreationTime", SortOrder="Ascending"
    )
    assert [p["ModelPackageVersion"] for p in listed["ModelPackageSummaryList"]] == [1, 2]
    pages = sm.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName="churn-models", PaginationConfig={"PageSize": 1}
    )
    assert sorted(p["ModelPackageVersion"] for page in pages for p in page["ModelPackageSummaryList"]) == [
        1,
        2,
    ]
    groups = sm.list_model_package_groups(NameContains="churn")["ModelPackageGroupSummaryList"]
    assert [g["ModelPackageGroupName"] for g in groups] == ["churn-models"]

    # a model made from the approved version serves its container
    sm.create_model(
        ModelName="from-package", PrimaryContainer={"ModelPackageName": arns[1]}, ExecutionRoleArn=ROLE
    )
    assert sm.describe_model(ModelName="from-package")["PrimaryContainer"]["ModelPackageName"] == arns[1]
    deploy(sm, "from-package", [variant("AllTraffic", "from-package")], wait=False)
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName="from-package", WaiterConfig=WAIT)
        body = smr.invoke_endpoint(EndpointName="from-package", Body=b"3,0,0,0", ContentType="text/csv")[
            "Body"
        ]
        assert body.read()
    finally:
        sm.delete_endpoint(EndpointName="from-package")

    # Search finds packages by approval status and tags, groups by name
    hits = sm.search(
        Resource="ModelPackage",
        SearchExpression={
            "Filters": [
                {"Name": "ModelApprovalStatus", "Operator": "Equals", "Value": "Approved"},
                {"Name": "ModelPackageGroupName", "Operator": "Equals", "Value": "churn-models"},
            ]
        },
    )["Results"]
    assert [h["ModelPackage"]["ModelPackageArn"] for h in hits] == [arns[1]]
    hits = sm.search(
        Resource="ModelPackageGroup",
        SearchExpression={"Filters": [{"Name": "Tags.team", "Operator": "Equals", "Value": "ml"}]},
    )["Results"]
    assert [h["ModelPackageGroup"]["ModelPackageGroupName"] for h in hits] == ["churn-models"]

    # a group with packages cannot go; its packages can, then the group
    assert (
        _error(sm.delete_model_package_group, ModelPackageGroupName="churn-models")["Code"]
        == "ConflictException"
    )
    for arn in arns:
        sm.delete_model_package(ModelPackageName=arn)
    sm.delete_model_package_group(ModelPackageGroupName="churn-models")
    missing = _error(sm.describe_model_package_group, ModelPackageGroupName="churn-models")
    assert missing["Code"] == "ValidationException" and "does not exist" in missing["Message"]


def test_registry_bad_input(sm: Any, onnx_model_tar: str) -> None:
    spec = _container(onnx_model_tar)
    err = _error(sm.create_model_package, ModelPackageGroupName="no-such-group", InferenceSpecification=spec)
    assert err["Code"] == "ValidationException" and "no-such-group" in err["Message"]
    err = _error(
        sm.create_model_package,
        ModelPackageName="solo",
        ModelApprovalStatus="Approved",
        InferenceSpecification=spec,
    )
    assert "only supported for versioned" in err["Message"]
    arn = sm.create_model_package(ModelPackageName="solo", InferenceSpecification=spec)["ModelPackageArn"]
    assert arn.endswith(":model-package/solo")
    err = _error(sm.update_model_package, ModelPackageArn=arn, ModelApprovalStatus="Approved")
    assert "only supported for versioned" in err["Message"]
    err = _error(sm.update_model_package, ModelPackageArn=arn, ModelApprovalStatus="Maybe")
    assert err["Code"] == "ValidationException"
    assert _error(sm.describe_model_package, ModelPackageName="nope")["Code"] == "ValidationException"
    err = _error(
        sm.create_model,
        ModelName="bad-pkg",
        PrimaryContainer={"ModelPackageName": "nope"},
        ExecutionRoleArn=ROLE,
    )
    assert "does not exist" in err["Message"]
    unversioned = sm.list_model_packages()["ModelPackageSummaryList"]
    assert "solo" in [p["ModelPackageName"] for p in unversioned]
    sm.delete_model_package(ModelPackageName="solo")


def test_search_training_jobs_and_endpoints_by_their_members(sm: Any) -> None:
    """Search over kinds with nothing matching answers empty; unknown kinds of SageMaker have no results;
    operators are checked against botocore's enum."""
    none = sm.search(
        Resource="TrainingJob",
        SearchExpression={
            "Filters": [{"Name": "TrainingJobName", "Operator": "Equals", "Value": "no-such-job"}]
        },
    )
    assert none["Results"] == []
    assert sm.search(Resource="Experiment")["Results"] == []
    err = _error(
        sm.search,
        Resource="TrainingJob",
        SearchExpression={"Filters": [{"Name": "X", "Operator": "Like", "Value": "1"}]},
    )
    assert err["Code"] == "ValidationException"


JOB = {
    "TrainingJobName": "xgb-1",
    "HyperParameters": {"eta": "0.3", "max_depth": "5"},
    "FinalMetricDataList": [{"MetricName": "validation:auc", "Value": 0.91}],
    "InputDataConfig": [
        {"ChannelName": "train", "ContentType": "text/csv"},
        {"ChannelName": "validation", "ContentType": "application/x-parquet"},
    ],
    "CreationTime": 1_790_000_000.0,
    "Tags": {"team": "ml"},
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ({"Filters": [{"Name": "HyperParameters.eta", "Operator": "Equals", "Value": "0.3"}]}, True),
        ({"Filters": [{"Name": "HyperParameters.max_depth", "Operator": "GreaterThan", "Value": "4"}]}, True),
        ({"Filters": [{"Name": "HyperParameters.max_depth", "Operator": "LessThan", "Value": "5"}]}, False),
        (
            {
                "Filters": [
                    {"Name": "FinalMetricDataList.Value", "Operator": "GreaterThanOrEqualTo", "Value": "0.9"}
                ]
            },
            True,
        ),
        ({"Filters": [{"Name": "TrainingJobName", "Operator": "Contains", "Value": "XGB"}]}, True),
        ({"Filters": [{"Name": "TrainingJobName", "Operator": "In", "Value": "a,xgb-1"}]}, True),
        ({"Filters": [{"Name": "TrainingJobName", "Operator": "NotEquals", "Value": "xgb-1"}]}, False),
        ({"Filters": [{"Name": "Tags.team", "Operator": "Exists"}]}, True),
        ({"Filters": [{"Name": "Tags.owner", "Operator": "NotExists"}]}, True),
        (
            {
                "Filters": [
                    {"Name": "CreationTime", "Operator": "GreaterThan", "Value": "2026-01-01T00:00:00Z"}
                ]
            },
            True,
        ),
        (
            {
                "NestedFilters": [
                    {
                        "NestedPropertyName": "InputDataConfig",
                        "Filters": [
                            {"Name": "InputDataConfig.ChannelName", "Operator": "Equals", "Value": "train"},
                            {
                                "Name": "InputDataConfig.ContentType",
                                "Operator": "Equals",
                                "Value": "text/csv",
                            },
                        ],
                    }
                ]
            },
            True,
        ),
        (  # both hold, but not in the same channel
            {
                "NestedFilters": [
                    {
                        "NestedPropertyName": "InputDataConfig",
                        "Filters": [
                            {"Name": "InputDataConfig.ChannelName", "Operator": "Equals", "Value": "train"},
                            {
                                "Name": "InputDataConfig.ContentType",
                                "Operator": "Equals",
                                "Value": "application/x-parquet",
                            },
                        ],
                    }
                ]
            },
            False,
        ),
        (
            {
                "Operator": "Or",
                "Filters": [{"Name": "TrainingJobName", "Operator": "Equals", "Value": "other"}],
                "SubExpressions": [{"Filters": [{"Name": "Tags.team", "Operator": "Equals", "Value": "ml"}]}],
            },
            True,
        ),
    ],
)
def test_search_expression_semantics(expression: dict[str, Any], expected: bool) -> None:
    assert matches(JOB, expression) is expected

"""Hyperparameter tuning jobs' control plane through boto3 against a real `selfmaker up`: bad input answered
with SageMaker's ValidationException (never a 500), stop, list filters and pagination, tags, warm start.

The optimiser's quality and early stopping are in tests/acceptance/test_tuning.py; the search-space mapping
in tests/selfmaker/test_tuning_plan.py.
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

XGB_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
ROLE = "arn:aws:iam::123456789012:role/selfmaker"
TERMINAL = {"Completed", "Failed", "Stopped"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tuning-api")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(scale=0.3, size=300)
    for channel, rows in (("train", slice(0, 200)), ("validation", slice(200, None))):
        (root / channel).mkdir()
        np.savetxt(
            root / channel / "part.csv", np.column_stack([y[rows], x[rows]]), delimiter=",", fmt="%.5f"
        )
    return root


def request(data: Path, name: str, **config: Any) -> dict[str, Any]:
    """A small Random tuning job of the built-in xgboost (validation:rmse, Minimize)."""
    tuning = {
        "Strategy": "Random",
        "HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "validation:rmse"},
        "ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 2},
        "ParameterRanges": {
            "ContinuousParameterRanges": [{"Name": "eta", "MinValue": "0.05", "MaxValue": "0.5"}],
        },
        "RandomSeed": 3,
    }
    tuning.update(config)
    return {
        "HyperParameterTuningJobName": name,
        "HyperParameterTuningJobConfig": tuning,
        "TrainingJobDefinition": {
            "AlgorithmSpecification": {"TrainingImage": XGB_IMAGE, "TrainingInputMode": "File"},
            "RoleArn": ROLE,
            "StaticHyperParameters": {"num_round": "5", "nthread": "1"},
            "InputDataConfig": [
                {
                    "ChannelName": ch,
                    "ContentType": "text/csv",
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": (data / ch).as_uri()}},
                }
                for ch in ("train", "validation")
            ],
            "OutputDataConfig": {"S3OutputPath": (data / "out").as_uri()},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
            "StoppingCondition": {"MaxRuntimeInSeconds": 300},
        },
    }


def wait_tuning(sm: Any, name: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)
        if desc["HyperParameterTuningJobStatus"] in TERMINAL:
            return dict(desc)
        time.sleep(0.5)
    raise AssertionError(f"tuning job {name} did not end in {timeout} s")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _ranges(**ranges: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ParameterRanges": {f"{kind}ParameterRanges": value for kind, value in ranges.items()}}


BAD = {
    "min above max": (
        _ranges(Continuous=[{"Name": "eta", "MinValue": "0.5", "MaxValue": "0.1"}]),
        "must be less than or equal to its MaxValue",
    ),
    "integer min above max": (
        _ranges(Integer=[{"Name": "max_depth", "MinValue": "9", "MaxValue": "2"}]),
        "must be less than or equal to its MaxValue",
    ),
    "not a number": (
        _ranges(Continuous=[{"Name": "eta", "MinValue": "low", "MaxValue": "0.5"}]),
        "is not a number",
    ),
    "unknown scaling": (
        _ranges(Continuous=[{"Name": "eta", "MinValue": "0.1", "MaxValue": "0.5", "ScalingType": "Cubic"}]),
        "enum value set",
    ),
    "log of zero": (
        _ranges(
            Continuous=[{"Name": "eta", "MinValue": "0", "MaxValue": "0.5", "ScalingType": "Logarithmic"}]
        ),
        "MinValue greater than 0",
    ),
    "reverse log reaching 1": (
        _ranges(
            Continuous=[
                {"Name": "eta", "MinValue": "0.1", "MaxValue": "1", "ScalingType": "ReverseLogarithmic"}
            ]
        ),
        "MaxValue < 1",
    ),
    "reverse log of an integer": (
        _ranges(
            Integer=[
                {"Name": "max_depth", "MinValue": "1", "MaxValue": "5", "ScalingType": "ReverseLogarithmic"}
            ]
        ),
        "only valid for continuous",
    ),
    "grid with a continuous range": ({"Strategy": "Grid"}, "continuous ranges given: ['eta']"),
    "unknown objective metric": (
        {"HyperParameterTuningJobObjective": {"Type": "Minimize", "MetricName": "validation:accuracy"}},
        "The objective metric 'validation:accuracy' is not defined",
    ),
    "more parallel than jobs": (
        {"ResourceLimits": {"MaxNumberOfTrainingJobs": 2, "MaxParallelTrainingJobs": 3}},
        "MaxParallelTrainingJobs (3) cannot be greater than MaxNumberOfTrainingJobs (2)",
    ),
    "no job budget": (
        {"ResourceLimits": {"MaxParallelTrainingJobs": 1}},
        "MaxNumberOfTrainingJobs is required",
    ),
    "hyperband with early stopping": (
        {"Strategy": "Hyperband", "TrainingJobEarlyStoppingType": "Auto"},
        "must be Off with the Hyperband strategy",
    ),
    "unknown strategy": ({"Strategy": "Genetic"}, "enum value set"),
    "a name twice": (
        _ranges(
            Continuous=[{"Name": "eta", "MinValue": "0.1", "MaxValue": "0.5"}],
            Categorical=[{"Name": "eta", "Values": ["0.1", "0.2"]}],
        ),
        "appears in more than one parameter range",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tuning_requests_are_validation_errors(sm: Any, data: Path, case: str) -> None:
    config, message = BAD[case]
    name = _name("bad")
    with pytest.raises(ClientError) as info:
        sm.create_hyper_parameter_tuning_job(**request(data, name, **copy.deepcopy(config)))
    error = info.value.response["Error"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert error["Code"] == "ValidationException" and message in error["Message"], error
    with pytest.raises(ClientError):  # nothing was recorded
        sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)


def test_other_bad_requests(sm: Any, data: Path) -> None:
    body = request(data, _name("bad"))
    body["TrainingJobDefinition"]["StaticHyperParameters"]["eta"] = "0.1"  # static and tuned
    with pytest.raises(ClientError) as info:
        sm.create_hyper_parameter_tuning_job(**body)
    assert "both static and tuned" in info.value.response["Error"]["Message"]
    body = request(data, _name("bad"))
    body["TrainingJobDefinition"]["EnableManagedSpotTraining"] = True  # without MaxWaitTimeInSeconds
    with pytest.raises(ClientError) as info:
        sm.create_hyper_parameter_tuning_job(**body)
    assert "Invalid MaxWaitTimeInSeconds" in info.value.response["Error"]["Message"]
    body = request(data, _name("bad"))
    body["WarmStartConfig"] = {
        "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": "no-such-parent"}],
        "WarmStartType": "IdenticalDataAndAlgorithm",
    }
    with pytest.raises(ClientError) as info:
        sm.create_hyper_parameter_tuning_job(**body)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "no-such-parent does not exist" in info.value.response["Error"]["Message"]
    for call in (
        sm.describe_hyper_parameter_tuning_job,
        sm.stop_hyper_parameter_tuning_job,
        sm.delete_hyper_parameter_tuning_job,
        sm.list_training_jobs_for_hyper_parameter_tuning_job,
    ):
        with pytest.raises(ClientError) as info:
            call(HyperParameterTuningJobName="never-created")
        assert info.value.response["Error"]["Code"] == "ValidationException"
        assert "never-created" in info.value.response["Error"]["Message"]


def test_run_stop_list_tags_and_warm_start(sm: Any, data: Path) -> None:
    parent = _name("parent")
    arn = sm.create_hyper_parameter_tuning_job(**request(data, parent), Tags=[{"Key": "k", "Value": "v"}])[
        "HyperParameterTuningJobArn"
    ]
    desc = wait_tuning(sm, parent)
    assert desc["HyperParameterTuningJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["TrainingJobStatusCounters"]["Completed"] == 2
    assert desc["BestTrainingJob"]["FinalHyperParameterTuningJobObjectiveMetric"]["MetricName"] == (
        "validation:rmse"
    )
    assert "OverallBestTrainingJob" not in desc
    assert desc["HyperParameterTuningEndTime"] >= desc["CreationTime"]
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "k", "Value": "v"}]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "k2", "Value": "v2"}])
    assert len(sm.list_tags(ResourceArn=arn)["Tags"]) == 2

    # warm start: the parent's jobs seed the study; OverallBestTrainingJob covers both
    child = _name("child")
    body = request(data, child)
    body["WarmStartConfig"] = {
        "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": parent}],
        "WarmStartType": "TransferLearning",
    }
    sm.create_hyper_parameter_tuning_job(**body)
    desc = wait_tuning(sm, child)
    assert desc["HyperParameterTuningJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["WarmStartConfig"]["WarmStartType"] == "TransferLearning"
    overall = desc["OverallBestTrainingJob"]
    values = [
        s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"]
        for name in (parent, child)
        for s in sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=name)[
            "TrainingJobSummaries"
        ]
    ]
    assert len(values) == 4
    assert overall["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == min(values)

    # stop while running: the running training jobs are stopped, the tuning job ends Stopped
    stopped = _name("stopped")
    body = request(data, stopped, ResourceLimits={"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 1})
    body["TrainingJobDefinition"]["StaticHyperParameters"]["num_round"] = "100000"
    sm.create_hyper_parameter_tuning_job(**body)
    with pytest.raises(ClientError) as info:  # running: cannot be deleted
        sm.delete_hyper_parameter_tuning_job(HyperParameterTuningJobName=stopped)
    assert info.value.response["Error"]["Code"] == "ValidationException"
    body = request(data, _name("warm"))
    body["WarmStartConfig"] = {
        "ParentHyperParameterTuningJobs": [{"HyperParameterTuningJobName": stopped}],
        "WarmStartType": "IdenticalDataAndAlgorithm",
    }
    with pytest.raises(ClientError) as info:  # a running parent cannot seed a warm start
        sm.create_hyper_parameter_tuning_job(**body)
    assert "InProgress" in info.value.response["Error"]["Message"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # a training job has started
        jobs = sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=stopped)
        if jobs["TrainingJobSummaries"]:
            break
        time.sleep(0.2)
    sm.stop_hyper_parameter_tuning_job(HyperParameterTuningJobName=stopped)
    assert sm.describe_hyper_parameter_tuning_job(HyperParameterTuningJobName=stopped)[
        "HyperParameterTuningJobStatus"
    ] in {"Stopping", "Stopped"}
    desc = wait_tuning(sm, stopped)
    assert desc["HyperParameterTuningJobStatus"] == "Stopped"
    jobs = sm.list_training_jobs_for_hyper_parameter_tuning_job(HyperParameterTuningJobName=stopped)
    summaries = jobs["TrainingJobSummaries"]
    assert len(summaries) == 1 and summaries[0]["TrainingJobStatus"] == "Stopped", summaries
    assert desc["TrainingJobStatusCounters"]["Stopped"] == 1
    for status, count in (("Stopped", 1), ("Completed", 0)):
        only = sm.list_training_jobs_for_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=stopped, StatusEquals=status
        )["TrainingJobSummaries"]
        assert len(only) == count

    # listing: filters, sort, pagination
    listed = sm.list_hyper_parameter_tuning_jobs(StatusEquals="Stopped", NameContains=stopped)
    assert [s["HyperParameterTuningJobName"] for s in listed["HyperParameterTuningJobSummaries"]] == [stopped]
    names = [
        s["HyperParameterTuningJobName"]
        for page in sm.get_paginator("list_hyper_parameter_tuning_jobs").paginate(
            SortBy="Name", SortOrder="Ascending", PaginationConfig={"PageSize": 1}
        )
        for s in page["HyperParameterTuningJobSummaries"]
    ]
    assert {parent, child, stopped} <= set(names) and names == sorted(names, key=str.lower)
    sm.delete_hyper_parameter_tuning_job(HyperParameterTuningJobName=stopped)
    assert stopped not in json.dumps(sm.list_hyper_parameter_tuning_jobs(MaxResults=100), default=str)


def test_several_training_job_definitions(sm: Any, data: Path) -> None:
    """TrainingJobDefinitions: the definition is one more choice of the optimiser; each has its own ranges
    and static hyperparameters, and its jobs say which definition they ran."""
    name = _name("multi")
    base = request(data, name)["TrainingJobDefinition"]
    shallow = {
        **copy.deepcopy(base),
        "DefinitionName": "shallow",
        "HyperParameterRanges": {
            "IntegerParameterRanges": [{"Name": "max_depth", "MinValue": "1", "MaxValue": "2"}],
        },
    }
    deep = {
        **copy.deepcopy(base),
        "DefinitionName": "deep",
        "TuningObjective": {"Type": "Minimize", "MetricName": "train:rmse"},
        "HyperParameterRanges": {
            "ContinuousParameterRanges": [{"Name": "eta", "MinValue": "0.1", "MaxValue": "0.3"}],
        },
        "StaticHyperParameters": {"num_round": "5", "nthread": "1", "max_depth": "8"},
    }
    config = request(data, name)["HyperParameterTuningJobConfig"]
    del config["ParameterRanges"]
    config["ResourceLimits"] = {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    with pytest.raises(ClientError) as info:  # a definition without a name
        sm.create_hyper_parameter_tuning_job(
            HyperParameterTuningJobName=name,
            HyperParameterTuningJobConfig=config,
            TrainingJobDefinitions=[shallow, {k: v for k, v in deep.items() if k != "DefinitionName"}],
        )
    assert "unique DefinitionName" in info.value.response["Error"]["Message"]
    sm.create_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name,
        HyperParameterTuningJobConfig=config,
        TrainingJobDefinitions=[shallow, deep],
    )
    desc = wait_tuning(sm, name)
    assert desc["HyperParameterTuningJobStatus"] == "Completed", desc.get("FailureReason")
    assert [d["DefinitionName"] for d in desc["TrainingJobDefinitions"]] == ["shallow", "deep"]
    jobs = sm.list_training_jobs_for_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name, MaxResults=10
    )["TrainingJobSummaries"]
    assert len(jobs) == 6
    assert {j["TrainingJobDefinitionName"] for j in jobs} == {"shallow", "deep"}  # seeded Random: both drawn
    for job in jobs:
        definition = job["TrainingJobDefinitionName"]
        assert set(job["TunedHyperParameters"]) == ({"max_depth"} if definition == "shallow" else {"eta"})
        metric = job["FinalHyperParameterTuningJobObjectiveMetric"]["MetricName"]
        assert metric == ("validation:rmse" if definition == "shallow" else "train:rmse")
        hps = sm.describe_training_job(TrainingJobName=job["TrainingJobName"])["HyperParameters"]
        assert hps["max_depth"] == ("8" if definition == "deep" else job["TunedHyperParameters"]["max_depth"])

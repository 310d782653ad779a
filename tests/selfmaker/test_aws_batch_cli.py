"""`selfmaker train|transform REQUEST.json --aws-batch QUEUE`, `logs JOB --aws-batch`, `status
--aws-batch QUEUE`
against moto's Batch, S3, ECR and Logs (its Docker-less Batch: a submitted job succeeds, or fails with
``MOTO_SIMPLE_BATCH_FAIL_AFTER=0``). What the containers do is tested in tests/batch and tests/training."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_batch_kit import LOG_GROUP, FakeStack, create_stack
from testkit import sigint_default

from batch import storage
from batch.cli import platform_url
from selfmaker.cli import main
from selfmaker.jobs.aws_batch import instance_resources

CSV = b"1.0,2.0,3.0,4.0\n0.5,0.1,0.2,0.3\n"


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.delenv("AWS_ENDPOINT_URL_SAGEMAKER", raising=False)
    storage.configure_s3(moto_server)
    try:
        yield {
            s: boto3.client(s, endpoint_url=moto_server, region_name="us-east-1")
            for s in ("s3", "batch", "logs")
        }
    finally:
        storage.configure_s3(None)


@pytest.fixture
def stack(aws: Any, moto_server: str) -> FakeStack:
    return create_stack(
        moto_server, prefix=f"sm-{uuid.uuid4().hex[:8]}"
    )  # the moto server lives for the session


def _transform_request(tmp_path: Path, aws: Any, bucket: str, **over: Any) -> Path:
    aws["s3"].create_bucket(Bucket=bucket)
    aws["s3"].put_object(Bucket=bucket, Key="in/a.csv", Body=CSV)
    aws["s3"].put_object(Bucket=bucket, Key="model/model.tar.gz", Body=b"not read by the submitter")
    req = {
        "TransformJobName": over.pop("name", bucket),
        "ModelName": "m",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{bucket}/in/"}},
            "ContentType": "text/csv",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": f"s3://{bucket}/out/", "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 2},
    }
    req.update(over)
    path = tmp_path / f"{bucket}.json"
    path.write_text(json.dumps(req))
    return path


def _jobs_in(aws: Any, queue: str) -> list[dict[str, Any]]:
    out = []
    for status in ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED", "FAILED"):
        out += aws["batch"].list_jobs(jobQueue=queue, jobStatus=status)["jobSummaryList"]
    return [j for j in out if ":" not in j["jobId"]]  # parents, not the children of array jobs


def test_transform_is_submitted_as_an_array_job_and_waited_for(
    aws: Any, stack: FakeStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req = _transform_request(tmp_path, aws, "cli-tf")
    code = main(
        [
            "transform",
            str(req),
            "--aws-batch",
            stack.queues["on-demand"],
            "--model-data",
            "s3://cli-tf/model/model.tar.gz",
            "--children",
            "3",
            "--part-mb",
            "0.00001",
            "--poll",
            "0.2",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "TransformJobStatus: Completed" in out.out and "outputs: s3://cli-tf/out/" in out.out
    assert "children 3/3 done" in out.err  # the progress bar's last line
    (summary,) = _jobs_in(aws, stack.queues["on-demand"])
    job = aws["batch"].describe_jobs(jobs=[summary["jobId"]])["jobs"][0]
    assert job["arrayProperties"]["size"] == 3 and job["jobName"] == "cli-tf"
    assert job["parameters"] == {"state": "s3://cli-tf/selfmaker-jobs/transform/cli-tf/"}
    assert job["tags"]["selfmaker:kind"] == "transform"
    state = json.loads(storage.read_bytes("s3://cli-tf/selfmaker-jobs/transform/cli-tf/job.json"))
    assert (
        state["model"] == "s3://cli-tf/model/model.tar.gz"
        and state["request"]["TransformJobName"] == "cli-tf"
    )
    assert main(["status", "--aws-batch", stack.queues["on-demand"]]) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(summary["jobId"])]
    assert "SUCCEEDED" in row and "3/3 shares done" in row  # the array's size, though ListJobs may not say it


def test_a_failed_share_is_named_with_its_log_stream(
    aws: Any,
    stack: FakeStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # moto's Batch fails every job at once
    req = _transform_request(tmp_path, aws, "cli-fail")
    code = main(
        [
            "transform",
            str(req),
            "--aws-batch",
            stack.queues["on-demand"],
            "--model-data",
            "s3://cli-fail/model/model.tar.gz",
            "--children",
            "1",
            "--poll",
            "0.2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "TransformJobStatus: Failed" in err
    (line,) = [x for x in err.splitlines() if "failed (" in x]
    assert line.startswith("selfmaker transform: share 0 failed (") and f"log stream {LOG_GROUP} " in line


def test_train_single_and_multi_node_no_wait(
    aws: Any, stack: FakeStack, moto_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws["s3"].create_bucket(Bucket="cli-tr")
    aws["s3"].put_object(Bucket="cli-tr", Key="train/t.csv", Body=CSV)
    base = {
        "TrainingJobName": "cli-train",
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "AlgorithmSpecification": {"TrainingImage": "sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://cli-tr/train/"}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://cli-tr/models"},
        "ResourceConfig": {"InstanceType": "ml.g5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 30},
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(base))
    assert main(["train", str(path), "--aws-batch", stack.queues["on-demand"], "--no-wait"]) == 2
    assert "ml.g5.2xlarge has GPUs and job queue" in capsys.readouterr().err  # a CPU queue
    gpu = create_stack(moto_server, prefix=f"sm-{uuid.uuid4().hex[:8]}", accelerator="gpu")
    stack = gpu
    assert main(["train", str(path), "--aws-batch", stack.queues["on-demand"], "--no-wait"]) == 0
    out = capsys.readouterr().out
    assert "s3://cli-tr/models/cli-train/output/model.tar.gz" in out
    (summary,) = _jobs_in(aws, stack.queues["on-demand"])
    job = aws["batch"].describe_jobs(jobs=[summary["jobId"]])["jobs"][0]
    assert job["timeout"] == {"attemptDurationSeconds": 60}  # MaxRuntime 30 s, raised to Batch's minimum
    assert job["jobDefinition"].endswith(f"{stack.definitions['train']}:1")
    stored = json.loads(storage.read_bytes("s3://cli-tr/selfmaker-jobs/training/cli-train/request.json"))
    assert stored == base
    assert instance_resources("ml.g5.2xlarge").gpus == 1

    # waiting: moto's Batch finishes the job at once
    assert main(["train", str(path), "--aws-batch", stack.queues["on-demand"], "--poll", "0.2"]) == 0
    assert "TrainingJobStatus: Completed" in capsys.readouterr().out

    # spot and several instances: AWS Batch has no multi-node jobs on spot
    multi = {
        **base,
        "TrainingJobName": "cli-multi",
        "EnableManagedSpotTraining": True,
        "ResourceConfig": {**base["ResourceConfig"], "InstanceCount": 2},
    }
    path.write_text(json.dumps(multi))
    assert main(["train", str(path), "--aws-batch", stack.queues["on-demand"], "--no-wait"]) == 2
    assert "no multi-node job on spot" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change",
    [
        {
            "TransformInput": {
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://cli-bad/in/"}},
                "SplitType": "Paragraph",
            }
        },
        {"BatchStrategy": "Everything"},
    ],
)
def test_a_request_the_local_command_refuses_is_refused_with_its_message(
    aws: Any,
    stack: FakeStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    req = _transform_request(tmp_path, aws, "cli-bad", **change)
    monkeypatch.setenv("SELFMAKER_HOME", str(tmp_path / "home"))
    local = main(["transform", str(req), "--model-dir", str(tmp_path)])
    local_err = capsys.readouterr().err.strip()
    remote = main(
        ["transform", str(req), "--aws-batch", stack.queues["on-demand"], "--model-data", "s3://cli-bad/m"]
    )
    remote_err = capsys.readouterr().err.strip()
    assert local == remote == 2
    assert remote_err == local_err and remote_err.startswith("selfmaker transform: ValidationException: ")
    assert _jobs_in(aws, stack.queues["on-demand"]) == []  # nothing submitted


def test_unknown_queue_missing_image_and_empty_input_fail_with_one_line(
    aws: Any, stack: FakeStack, moto_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req = _transform_request(tmp_path, aws, "cli-one")
    args = ["--model-data", "s3://cli-one/model/model.tar.gz"]
    assert main(["transform", str(req), "--aws-batch", "no-such-queue", *args]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "selfmaker transform: unknown job queue 'no-such-queue' in us-east-1"
    )

    unpushed = create_stack(moto_server, prefix=f"sm-{uuid.uuid4().hex[:8]}", tag="9.9.9", push=False)
    assert main(["transform", str(req), "--aws-batch", unpushed.queues["on-demand"], *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"image {unpushed.image} is not in ECR" in err[0]

    empty = json.loads(req.read_text())
    empty["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"] = "s3://cli-one/nothing-here/"
    req.write_text(json.dumps(empty))
    assert main(["transform", str(req), "--aws-batch", stack.queues["on-demand"], *args]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "selfmaker transform: no input objects found at s3://cli-one/nothing-here/"
    )
    assert _jobs_in(aws, stack.queues["on-demand"]) == []


def test_logs_and_status_read_the_job_and_its_stream(
    aws: Any, stack: FakeStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req = _transform_request(
        tmp_path, aws, "cli-logs", TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1}
    )
    assert (
        main(
            [
                "transform",
                str(req),
                "--aws-batch",
                stack.queues["spot"],
                "--model-data",
                "s3://cli-logs/model/model.tar.gz",
                "--no-wait",
            ]
        )
        == 0
    )
    job_id = capsys.readouterr().out.split()[1]
    job = aws["batch"].describe_jobs(jobs=[job_id])["jobs"][0]
    stream = job["container"]["logStreamName"]
    aws["logs"].create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
    aws["logs"].put_log_events(
        logGroupName=LOG_GROUP,
        logStreamName=stream,
        logEvents=[
            {"timestamp": int(time.time() * 1000) + i, "message": f"share 0: line {i}"} for i in range(3)
        ],
    )
    assert main(["logs", job_id, "--aws-batch"]) == 0
    out = capsys.readouterr().out
    assert f"==> {LOG_GROUP} {stream}" in out and "share 0: line 2" in out
    assert main(["logs", job_id, "--aws-batch", "--tail", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["share 0: line 2"]
    assert main(["logs", "no-such-job", "--aws-batch"]) == 1
    assert "unknown AWS Batch job 'no-such-job'" in capsys.readouterr().err

    assert main(["status", "--aws-batch", stack.queues["spot"]]) == 0
    out = capsys.readouterr().out
    assert f"queue {stack.queues['spot']} (spot)" in out and job_id in out and "cli-logs" in out


def test_the_platform_is_found_the_way_a_user_expects(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert platform_url("http://x:1", {"AWS_ENDPOINT_URL_SAGEMAKER": "http://y:2"}) == "http://x:1"
    assert (
        platform_url(None, {"AWS_ENDPOINT_URL_SAGEMAKER": "http://y:2", "SELFMAKER_HOME": str(home)})
        == "http://y:2"
    )
    (home / "platform.json").write_text(json.dumps({"url": "http://127.0.0.1:4567", "pid": os.getpid()}))
    assert platform_url(None, {"SELFMAKER_HOME": str(home)}) == "http://127.0.0.1:4567"
    (home / "platform.json").write_text(json.dumps({"url": "http://127.0.0.1:4567", "pid": 2**22 + 12345}))
    assert (
        platform_url(None, {"SELFMAKER_HOME": str(home)}) == "http://127.0.0.1:7070"
    )  # that platform is gone


def test_a_model_name_is_resolved_on_the_running_platform_of_the_home(
    aws: Any,
    stack: FakeStack,
    platform_server: Any,
    sm: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    announced = json.loads((platform_server.home / "platform.json").read_text())
    assert announced["url"] == platform_server.url
    sm.create_model(
        ModelName="cli-resolved",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/r",
        PrimaryContainer={
            "Image": "selfmaker:latest",
            "ModelDataUrl": "s3://cli-res/model/model.tar.gz",
            "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
        },
    )
    req = _transform_request(tmp_path, aws, "cli-res", ModelName="cli-resolved")
    monkeypatch.setenv("SELFMAKER_HOME", str(platform_server.home))
    monkeypatch.delenv("SELFMAKER_ENDPOINT_URL", raising=False)
    assert main(["transform", str(req), "--aws-batch", stack.queues["on-demand"], "--no-wait"]) == 0, (
        capsys.readouterr().err
    )
    state = json.loads(storage.read_bytes("s3://cli-res/selfmaker-jobs/transform/cli-res/job.json"))
    assert state["model"] == "s3://cli-res/model/model.tar.gz"
    assert state["environment"] == {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}


def test_a_training_request_is_refused_before_anything_is_submitted(
    aws: Any, stack: FakeStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws["s3"].create_bucket(Bucket="cli-tr-bad")
    req = {
        "TrainingJobName": "cli-bad-train",
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "AlgorithmSpecification": {"TrainingImage": "sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://cli-tr-bad/empty/"}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://cli-tr-bad/models"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    path = tmp_path / "bad.json"
    queue = stack.queues["on-demand"]
    path.write_text(json.dumps({**req, "TrainingJobName": None}))
    assert main(["train", str(path), "--aws-batch", queue]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "selfmaker train: the request must be a JSON object with TrainingJobName"
    )  # train-local's words
    path.write_text(json.dumps({**req, "ResourceConfig": {**req["ResourceConfig"], "InstanceCount": -1}}))
    assert main(["train", str(path), "--aws-batch", queue]) == 2
    assert (
        capsys.readouterr().err.strip() == "selfmaker train: ResourceConfig.InstanceCount must be at least 1"
    )
    path.write_text(json.dumps({**req, "TrainingJobName": "no spaces allowed"}))
    assert main(["train", str(path), "--aws-batch", queue]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        "selfmaker train: ValidationException: 1 validation error detected:"
    )  # `selfmaker up`'s
    assert "trainingJobName" in err
    path.write_text(json.dumps(req))
    assert main(["train", str(path), "--aws-batch", queue]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "selfmaker train: channel 'train': no objects under s3://cli-tr-bad/empty/"
    )
    assert _jobs_in(aws, queue) == []


@pytest.mark.parametrize("command", ["train", "transform", "logs", "status"])
def test_the_local_help_points_at_the_aws_batch_form(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f"selfmaker {command} " in out and "--aws-batch" in out.split("\n\n")[-1]  # the last paragraph
    flag = ["--aws-batch"] if command == "logs" else ["--aws-batch", "QUEUE"]
    with pytest.raises(SystemExit):
        main([command, *flag, "--help"])
    batch_help = capsys.readouterr().out
    assert "``" not in batch_help and f"usage: selfmaker {command} [-h] --aws-batch" in batch_help


def test_without_a_platform_the_model_name_error_names_this_form_s_option(
    aws: Any, stack: FakeStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    req = _transform_request(tmp_path, aws, "cli-noplat")
    assert (
        main(["transform", str(req), "--aws-batch", stack.queues["on-demand"], "--endpoint-url", closed]) == 2
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"selfmaker transform: no selfmaker platform answers at {closed} to resolve ModelName 'm'; "
        "start `selfmaker up` or pass --model-data"
    )  # --model-dir / --model-url are the local form's
    assert _jobs_in(aws, stack.queues["on-demand"]) == []


def test_a_training_request_the_runner_would_fail_is_refused_before_submitting(
    aws: Any, stack: FakeStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.trainer import NO_PROGRAM

    aws["s3"].create_bucket(Bucket="cli-tr-run")
    aws["s3"].put_object(Bucket="cli-tr-run", Key="train/t.csv", Body=CSV)
    req = {
        "TrainingJobName": "cli-run",
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "AlgorithmSpecification": {"TrainingImage": "sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://cli-tr-run/train/"}},
            }
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://cli-tr-run/models"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    path = tmp_path / "run.json"
    queue = stack.queues["on-demand"]
    cases = [
        ({**req, "AlgorithmSpecification": {"TrainingInputMode": "File"}}, NO_PROGRAM),  # the trainer's words
        (
            {
                **req,
                "InputDataConfig": [
                    {
                        "ChannelName": "train",
                        "DataSource": {
                            "S3DataSource": {
                                "S3DataType": "AugmentedManifestFile",
                                "S3Uri": "s3://cli-tr-run/train/",
                            }
                        },
                    }
                ],
            },
            "InputDataConfig[0].DataSource.S3DataSource.S3DataType 'AugmentedManifestFile' is not supported "
            "(S3Prefix, ManifestFile)",
        ),  # the runner's words
        (
            {
                **req,
                "AlgorithmSpecification": {
                    "TrainingImage": "123.dkr.ecr.us-east-1.amazonaws.com/mine:1",
                    "TrainingInputMode": "File",
                },
            },
            "AlgorithmSpecification.TrainingImage '123.dkr.ecr.us-east-1.amazonaws.com/mine:1' "
            "is not one the stack's image runs",
        ),
    ]
    for body, message in cases:
        path.write_text(json.dumps(body))
        assert main(["train", str(path), "--aws-batch", queue, "--no-wait"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"selfmaker train: {message}")
    assert _jobs_in(aws, queue) == []
    script = {
        **req,
        "AlgorithmSpecification": {"TrainingInputMode": "File"},
        "HyperParameters": {
            "sagemaker_program": "train.py",
            "sagemaker_submit_directory": "s3://cli-tr-run/src.tar.gz",
        },
    }
    path.write_text(json.dumps(script))
    assert main(["train", str(path), "--aws-batch", queue, "--no-wait"]) == 0, capsys.readouterr().err


def test_logs_of_a_multi_node_job_are_in_the_stack_s_group_and_a_stream_not_yet_written_is_no_error(
    aws: Any, stack: FakeStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    aws["s3"].create_bucket(Bucket="cli-mn-logs")
    aws["s3"].put_object(Bucket="cli-mn-logs", Key="train/t.csv", Body=CSV)
    req = {
        "TrainingJobName": "cli-mn-logs",
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "AlgorithmSpecification": {"TrainingImage": "sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://cli-mn-logs/train/"}
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://cli-mn-logs/models"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    path = tmp_path / "mn.json"
    path.write_text(json.dumps(req))
    assert main(["train", str(path), "--aws-batch", stack.queues["on-demand"], "--no-wait"]) == 0
    job_id = capsys.readouterr().out.split()[1]
    # moto runs no container: the streams Batch names were never written, as while a job is still starting
    assert main(["logs", job_id, "--aws-batch"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith(f"==> {LOG_GROUP} ") and "(no log events yet)" in out


def test_a_failed_training_job_names_the_node_and_its_log_stream(
    aws: Any,
    stack: FakeStack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "0")  # moto's Batch fails every job at once
    aws["s3"].create_bucket(Bucket="cli-tr-fail")
    aws["s3"].put_object(Bucket="cli-tr-fail", Key="train/t.csv", Body=CSV)
    req = {
        "TrainingJobName": "cli-tr-fail",
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "AlgorithmSpecification": {"TrainingImage": "sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"},
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://cli-tr-fail/train/"}
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": "s3://cli-tr-fail/models"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 2, "VolumeSizeInGB": 10},
        "StoppingCondition": {"MaxRuntimeInSeconds": 600},
    }
    path = tmp_path / "fail.json"
    path.write_text(json.dumps(req))
    assert main(["train", str(path), "--aws-batch", stack.queues["on-demand"], "--poll", "0.2"]) == 1
    err = capsys.readouterr().err
    assert "TrainingJobStatus: Failed" in err
    (line,) = [x for x in err.splitlines() if "failed (" in x]
    assert line.startswith("selfmaker train: node 0 failed (") and f"log stream {LOG_GROUP} " in line


def test_ctrl_c_while_waiting_leaves_the_job_running_and_says_how_to_follow_it(
    aws: Any, stack: FakeStack, moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signal
    import subprocess
    import sys

    monkeypatch.setenv("MOTO_SIMPLE_BATCH_FAIL_AFTER", "10")  # moto's Batch keeps the job running that long
    req = _transform_request(tmp_path, aws, "cli-sigint")
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "selfmaker",
            "transform",
            str(req),
            "--aws-batch",
            stack.queues["on-demand"],
            "--model-data",
            "s3://cli-sigint/model/model.tar.gz",
            "--poll",
            "0.2",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_default,  # the test interrupts it with SIGINT
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once the job is submitted
        assert first.startswith("submitted "), first
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert "Traceback" not in err and "stopped waiting; job " in err and "selfmaker logs " in err

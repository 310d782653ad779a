"""Training jobs on AWS Batch, for real without AWS: submitted to moto's Batch, each node run as a local
process with the environment a multi-node job's containers get, against moto S3.

Two nodes must train the model a local two-host job trains; a node killed mid-training (a reclaimed spot
instance) and run again (Batch's retry) must resume from the last checkpoint.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from aws_batch_kit import batch_env, create_stack, kill_container, start_container
from testkit import find_free_port
from training_helpers import XGB_IMAGE, binary_data, channel, request, run_job, write_csv

from selfmaker.jobs.aws_batch import BatchJobs, submit_training
from training.awsbatch import node_identity

NODE_TIMEOUT = 300


def test_node_identity_follows_the_batch_environment() -> None:
    main = node_identity(
        {
            "AWS_BATCH_JOB_NODE_INDEX": "0",
            "AWS_BATCH_JOB_NUM_NODES": "3",
            "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
            "SELFMAKER_NODE_ADDRESS": "10.0.1.7",
        }
    )
    assert (main.host, main.count, main.main_address) == ("algo-1", 3, "10.0.1.7")
    other = node_identity(
        {
            "AWS_BATCH_JOB_NODE_INDEX": "2",
            "AWS_BATCH_JOB_NUM_NODES": "3",
            "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
            "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.1.7",
        }
    )
    assert (other.host, other.main_address) == ("algo-3", "10.0.1.7")
    single = node_identity({"SELFMAKER_NODE_ADDRESS": "127.0.0.1"})
    assert (single.host, single.count) == ("algo-1", 1)
    with pytest.raises(ValueError, match="MAIN_NODE_PRIVATE_IPV4_ADDRESS"):
        node_identity({"AWS_BATCH_JOB_NODE_INDEX": "1", "AWS_BATCH_JOB_NUM_NODES": "2"})


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(
        "AWS_ENDPOINT_URL", moto_server
    )  # boto3 here (Batch, S3, the runner's storage) uses moto
    return boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")


def _put_dir(s3: Any, bucket: str, prefix: str, files: dict[str, Path]) -> str:
    for name, path in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}{name}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def _model_file(s3: Any, uri: str, member: str) -> bytes:
    bucket, key = uri[len("s3://") :].split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        handle = tar.extractfile(member)
        assert handle is not None
        return handle.read()


def _node_env(moto_server: str, index: int, count: int, tracker: int, work: Path) -> dict[str, str]:
    extra = {
        "AWS_BATCH_JOB_NODE_INDEX": str(index),
        "AWS_BATCH_JOB_NUM_NODES": str(count),
        "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
        "SELFMAKER_TRACKER_PORT": str(tracker),
        "SELFMAKER_WORK_DIR": str(work / f"node-{index}"),
    }
    if index == 0:
        extra["SELFMAKER_NODE_ADDRESS"] = "127.0.0.1"  # what the main node's own address is on this machine
    else:
        extra["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = "127.0.0.1"
    if count == 1:
        for key in ("AWS_BATCH_JOB_NODE_INDEX", "AWS_BATCH_JOB_NUM_NODES", "AWS_BATCH_JOB_MAIN_NODE_INDEX"):
            extra.pop(key)  # a single-node job is a plain container job
    return batch_env(moto_server, extra)


def test_two_nodes_train_the_model_of_a_local_two_host_job(s3: Any, moto_server: str, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="tn-data")
    s3.create_bucket(Bucket="tn-out")
    X, y = binary_data(2400, seed=11)
    train = _put_dir(
        s3,
        "tn-data",
        "train/",
        {
            "part-a.csv": write_csv(tmp_path / "a.csv", X[:1000], y[:1000]),
            "part-b.csv": write_csv(tmp_path / "b.csv", X[1000:2000], y[1000:2000]),
        },
    )
    validation = _put_dir(
        s3, "tn-data", "validation/", {"v.csv": write_csv(tmp_path / "v.csv", X[2000:], y[2000:])}
    )
    hps = {
        "num_round": 15,
        "objective": "binary:logistic",
        "max_depth": 4,
        "tree_method": "hist",
        "eval_metric": "auc",
    }
    channels = [channel("train", train, distribution="ShardedByS3Key"), channel("validation", validation)]

    local, _ = run_job(
        request("tn-local", XGB_IMAGE, hps, channels, "s3://tn-out/local/", count=2), tmp_path / "local"
    )
    assert local.status == "Completed", local.failure_reason

    stack = create_stack(moto_server, prefix="sm-nodes")
    req = request("tn-batch", XGB_IMAGE, hps, channels, "s3://tn-out/batch/", count=2, max_runtime=1800)
    req["ResourceConfig"]["InstanceType"] = "ml.c5.2xlarge"
    sent: list[dict[str, Any]] = []
    jobs = BatchJobs()
    jobs.batch.meta.events.register(
        "provide-client-params.batch.SubmitJob", lambda params, **_: sent.append(params)
    )
    submitted = submit_training(jobs, req, stack.queues["on-demand"])
    assert submitted.queue == stack.queues["on-demand"]
    params = sent[0]
    assert params["jobDefinition"] == f"{stack.definitions['train-multinode']}:1"
    assert params["timeout"] == {"attemptDurationSeconds": 1800}  # MaxRuntimeInSeconds
    assert params["parameters"] == {"state": "s3://tn-out/selfmaker-jobs/training/tn-batch/"}
    assert params["nodeOverrides"] == {
        "numNodes": 2,
        "nodePropertyOverrides": [
            {
                "targetNodes": "0:1",
                "containerOverrides": {
                    "resourceRequirements": [
                        {"type": "VCPU", "value": "8"},
                        {"type": "MEMORY", "value": str(int(16 * 1024 * 0.9))},
                    ]
                },
            }
        ],
    }
    stored = boto3.client("batch").describe_jobs(jobs=[submitted.job_id])["jobs"][0]
    assert (
        stored["timeout"] == {"attemptDurationSeconds": 1800} and stored["parameters"] == params["parameters"]
    )

    tracker = find_free_port()
    nodes = [
        start_container(
            ["train-node", "--state", submitted.state],
            _node_env(moto_server, i, 2, tracker, tmp_path),
            tmp_path / f"node-{i}.log",
        )
        for i in range(2)
    ]
    try:
        codes = [p.wait(timeout=NODE_TIMEOUT) for p in nodes]
    finally:
        for p in nodes:
            kill_container(p)
    logs = [(tmp_path / f"node-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs
    assert "node 2/2 runs algo-2; algo-1 at 127.0.0.1" in logs[1]
    assert "Distributed training: algo-2 of 2 hosts" in logs[1]
    rc = (tmp_path / "node-1/tn-batch/hosts/algo-2/input/config/resourceconfig.json").read_text()
    assert '"hosts": ["algo-1", "algo-2"]' in rc and '"current_host": "algo-2"' in rc
    assert [p.name for p in (tmp_path / "node-1/tn-batch/hosts/algo-2/input/data/train").iterdir()] == [
        "part-b.csv"
    ]

    import xgboost as xgb

    boosters = []
    for uri in (local.model_artifacts, submitted.outputs):
        booster = xgb.Booster()
        booster.load_model(bytearray(_model_file(s3, str(uri), "xgboost-model")))
        boosters.append(booster)
    probe = xgb.DMatrix(X[2000:])
    np.testing.assert_allclose(boosters[0].predict(probe), boosters[1].predict(probe), rtol=1e-6, atol=1e-7)


def test_a_reclaimed_spot_node_resumes_from_its_last_checkpoint(
    s3: Any, moto_server: str, tmp_path: Path
) -> None:
    s3.create_bucket(Bucket="ts-data")
    s3.create_bucket(Bucket="ts-out")
    X, y = binary_data(20000, d=8, seed=3)
    train = _put_dir(s3, "ts-data", "train/", {"t.csv": write_csv(tmp_path / "t.csv", X, y)})
    hps = {
        "num_round": 300,
        "objective": "binary:logistic",
        "max_depth": 6,
        "tree_method": "hist",
        "nthread": 1,
    }
    req = request(
        "ts-spot",
        XGB_IMAGE,
        hps,
        [channel("train", train)],
        "s3://ts-out/models/",
        checkpoint="s3://ts-out/checkpoints/ts-spot/",
    )
    req["EnableManagedSpotTraining"] = True
    req["StoppingCondition"]["MaxWaitTimeInSeconds"] = 1200
    stack = create_stack(moto_server, prefix="sm-spot")
    submitted = submit_training(BatchJobs(), req, stack.queues["on-demand"])
    assert submitted.queue == stack.queues["spot"]  # managed spot training goes to the spot queue
    stored = boto3.client("batch").describe_jobs(jobs=[submitted.job_id])["jobs"][0]
    assert stored["jobQueue"].endswith(f"job-queue/{stack.queues['spot']}")

    env = _node_env(moto_server, 0, 1, find_free_port(), tmp_path)
    env["SELFMAKER_CHECKPOINT_SYNC_SECONDS"] = "0.2"
    first = start_container(["train-node", "--state", submitted.state], env, tmp_path / "attempt-1.log")
    try:
        deadline = time.monotonic() + NODE_TIMEOUT
        while time.monotonic() < deadline and first.poll() is None:
            found = s3.list_objects_v2(Bucket="ts-out", Prefix="checkpoints/ts-spot/").get("Contents", [])
            if len(found) >= 2:
                break
            time.sleep(0.1)
        assert first.poll() is None, (tmp_path / "attempt-1.log").read_text()
    finally:
        kill_container(first)  # the instance is gone: no SIGTERM grace, no upload
    assert "Completed" not in (tmp_path / "attempt-1.log").read_text()
    saved = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket="ts-out", Prefix="checkpoints/ts-spot/").get("Contents", [])
    ]
    assert saved

    second = start_container(["train-node", "--state", submitted.state], env, tmp_path / "attempt-2.log")
    try:
        code = second.wait(timeout=NODE_TIMEOUT)
    finally:
        kill_container(second)
    log = (tmp_path / "attempt-2.log").read_text()
    assert code == 0, log
    resumed = [line for line in log.splitlines() if "Resuming from checkpoint xgboost-checkpoint." in line]
    assert resumed, log
    last = int(resumed[0].split("xgboost-checkpoint.")[1].split(":")[0])
    assert f"{last + 1} rounds done" in resumed[0]
    rounds = [
        line.split(" | ", 1)[1].split("#011")[0] for line in log.splitlines() if line.startswith("algo-1 | [")
    ]
    assert rounds[0] == f"[{last + 1}]" and rounds[-1] == "[299]"  # the checkpointed rounds are not redone
    model = _model_file(s3, submitted.outputs, "xgboost-model")
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    assert booster.num_boosted_rounds() == 300

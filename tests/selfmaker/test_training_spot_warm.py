"""Managed spot, retries and warm pools through `selfmaker up` with boto3: a platform of its own (the test
knob SELFMAKER_SPOT_INTERRUPT_AFTER is read once), checkpoints on moto's S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from platform_helpers import PlatformProcess, moto_env, running

ROLE = "arn:aws:iam::123456789012:role/selfmaker"
MAX_WAIT_MISSING = (
    "Invalid MaxWaitTimeInSeconds. It must be present and be greater than or equal to MaxRuntimeInSeconds"
)
MAX_WAIT_NOT_SPOT = (
    "Invalid MaxWaitTimeInSeconds. It is only supported when EnableManagedSpotTraining is set to true"
)
BUCKET = "spot-warm"

#: ``steps`` × ``pause`` seconds of work checkpointed in CheckpointConfig.LocalPath (read from
#: checkpointconfig.json); ``die_once`` (a path) SIGKILLs the host the first time; ``user_error`` fails
PROGRAM = """
import json, os, signal, sys, time
from pathlib import Path

hps = json.loads(os.environ["SM_HPS"])
cfg = Path(os.environ["SM_INPUT_CONFIG_DIR"]) / "checkpointconfig.json"
ckpt = Path(json.loads(cfg.read_text())["LocalPath"]) if cfg.exists() else None
start = int((ckpt / "step.txt").read_text()) if ckpt is not None and (ckpt / "step.txt").exists() else 0
print(f"start step {start}", flush=True)
once = hps.get("die_once")
if once and not os.path.exists(once):
    Path(once).write_text("died")
    os.killpg(os.getpgid(0), signal.SIGKILL)
if hps.get("user_error"):
    sys.exit("bad hyperparameter: user_error")
for step in range(start, int(hps.get("steps", 1))):
    time.sleep(float(hps.get("pause", 0)))
    if ckpt is not None:
        (ckpt / "step.tmp").write_text(str(step + 1))
        os.replace(ckpt / "step.tmp", ckpt / "step.txt")
    print(f"step {step + 1}", flush=True)
Path(os.environ["SM_MODEL_DIR"], "model.json").write_text(json.dumps({"start": start, "pid": os.getppid()}))
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[PlatformProcess]:
    home = tmp_path_factory.mktemp("spot-home")
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    with running(home, env=moto_env(moto_server, SELFMAKER_SPOT_INTERRUPT_AFTER="4")) as server:
        yield server


@pytest.fixture(scope="module")
def sm(platform: PlatformProcess) -> Any:
    return platform.sagemaker()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("spot-jobs")
    (base / "code").mkdir()
    (base / "code/train.py").write_text(PROGRAM)
    (base / "data").mkdir()
    (base / "data/a.csv").write_text("1,2\n")
    return base


def _request(workdir: Path, name: str, hps: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    all_hps = {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps((workdir / "code").as_uri()),
    }
    all_hps.update({k: json.dumps(v) for k, v in (hps or {}).items()})
    req: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": ROLE,
        "AlgorithmSpecification": {"TrainingImage": "selfmaker", "TrainingInputMode": "File"},
        "HyperParameters": all_hps,
        "InputDataConfig": [
            {
                "ChannelName": "train",
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": (workdir / "data").as_uri()}
                },
            }
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{BUCKET}/out"},
        "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
    }
    req.update(extra)
    return req


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _wait_done(sm: Any, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + 180
    while True:
        desc: dict[str, Any] = sm.describe_training_job(TrainingJobName=name)
        if desc["TrainingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return desc
        assert time.monotonic() < deadline, desc
        time.sleep(0.25)


def _wait_pool(sm: Any, name: str, status: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        desc: dict[str, Any] = sm.describe_training_job(TrainingJobName=name)
        if (desc.get("WarmPoolStatus") or {}).get("Status") == status:
            return desc
        assert time.monotonic() < deadline, desc.get("WarmPoolStatus")
        time.sleep(0.2)


def _model(moto_server: str, name: str, tmp_path: Path) -> dict[str, Any]:
    import tarfile

    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    dest = tmp_path / f"{name}.tar.gz"
    s3.download_file(BUCKET, f"out/{name}/output/model.tar.gz", str(dest))
    with tarfile.open(dest) as tar:
        member = tar.extractfile("model.json")
        assert member is not None
        model: dict[str, Any] = json.loads(member.read())
    return model


def _standbys(platform: PlatformProcess) -> set[int]:
    """PIDs of the platform's standby interpreters (children of its process running training.standby)."""
    assert platform.proc is not None
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == platform.proc.pid and b"training.standby" in cmdline:
            found.add(int(entry))
    return found


def test_a_spot_job_is_interrupted_resumes_from_its_checkpoint_and_bills_less(
    sm: Any, platform: PlatformProcess, moto_server: str, workdir: Path, tmp_path: Path
) -> None:
    name = _name("spot")
    sm.create_training_job(
        **_request(
            workdir,
            name,
            {"steps": 40, "pause": 0.3},
            EnableManagedSpotTraining=True,
            StoppingCondition={"MaxRuntimeInSeconds": 300, "MaxWaitTimeInSeconds": 600},
            CheckpointConfig={"S3Uri": f"s3://{BUCKET}/ckpt/{name}", "LocalPath": "/opt/ml/my-checkpoints"},
        )
    )
    desc = _wait_done(sm, name)
    assert desc["TrainingJobStatus"] == "Completed", desc.get("FailureReason")
    statuses = [t["Status"] for t in desc["SecondaryStatusTransitions"]]
    assert statuses[:5] == ["Starting", "Downloading", "Training", "Interrupted", "Starting"], statuses
    assert statuses[-3:] == ["Training", "Uploading", "Completed"]
    assert desc["EnableManagedSpotTraining"] is True
    assert desc["BillableTimeInSeconds"] < desc["TrainingTimeInSeconds"]
    assert desc["CheckpointConfig"]["LocalPath"] == "/opt/ml/my-checkpoints"
    model = _model(moto_server, name, tmp_path)
    assert 0 < model["start"] < 40  # the second attempt started from the checkpoint synced to S3
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    body = s3.get_object(Bucket=BUCKET, Key=f"ckpt/{name}/step.txt")["Body"].read()
    assert body == b"40"
    log = (platform.home / "logs/training-jobs" / f"{name}.log").read_text()
    assert f"start step {model['start']}" in log and "Managed Spot Training savings: " in log


def test_an_internal_error_is_retried_a_user_error_is_not(sm: Any, workdir: Path, tmp_path: Path) -> None:
    name = _name("retry")
    once = tmp_path / "once"
    sm.create_training_job(
        **_request(workdir, name, {"die_once": str(once)}, RetryStrategy={"MaximumRetryAttempts": 2})
    )
    desc = _wait_done(sm, name)
    assert desc["TrainingJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["RetryStrategy"] == {"MaximumRetryAttempts": 2}
    restarts = [t for t in desc["SecondaryStatusTransitions"] if t["Status"] == "Restarting"]
    assert len(restarts) == 1 and "attempt 2 of 2" in restarts[0]["StatusMessage"]

    name = _name("user-error")
    sm.create_training_job(
        **_request(workdir, name, {"user_error": True}, RetryStrategy={"MaximumRetryAttempts": 3})
    )
    desc = _wait_done(sm, name)
    assert desc["TrainingJobStatus"] == "Failed"
    assert "bad hyperparameter: user_error" in desc["FailureReason"]
    assert "Restarting" not in [t["Status"] for t in desc["SecondaryStatusTransitions"]]


def test_a_warm_pool_is_kept_reused_updated_and_released(
    sm: Any, platform: PlatformProcess, moto_server: str, workdir: Path, tmp_path: Path
) -> None:
    first, second = _name("warm-a"), _name("warm-b")
    keep = {
        "InstanceType": "ml.m5.large",
        "InstanceCount": 1,
        "VolumeSizeInGB": 1,
        "KeepAlivePeriodInSeconds": 120,
    }
    sm.create_training_job(**_request(workdir, first, ResourceConfig=keep))
    assert _wait_done(sm, first)["TrainingJobStatus"] == "Completed"
    desc = _wait_pool(sm, first, "Available")
    assert desc["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 120
    listed = sm.list_training_jobs(WarmPoolStatusEquals="Available", NameContains=first)[
        "TrainingJobSummaries"
    ]
    assert [(s["TrainingJobName"], s["WarmPoolStatus"]["Status"]) for s in listed] == [(first, "Available")]
    standbys = _standbys(platform)
    assert len(standbys) >= 1
    status = subprocess.run(
        [sys.executable, "-m", "selfmaker", "status", "--home", str(platform.home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert f"{first}  Completed (Completed)" in status and "warm pool: Available" in status

    # a job that does not match (another instance type) does not take it
    other = _name("warm-other")
    sm.create_training_job(
        **_request(workdir, other, ResourceConfig={**keep, "InstanceType": "ml.c5.xlarge"})
    )
    assert _wait_done(sm, other)["TrainingJobStatus"] == "Completed"
    assert sm.describe_training_job(TrainingJobName=first)["WarmPoolStatus"]["Status"] == "Available"

    sm.create_training_job(**_request(workdir, second, ResourceConfig=keep))
    assert _wait_done(sm, second)["TrainingJobStatus"] == "Completed"
    reused = sm.describe_training_job(TrainingJobName=first)["WarmPoolStatus"]
    assert reused["Status"] == "Reused" and reused["ReusedByJob"] == second
    assert reused["ResourceRetainedBillableTimeInSeconds"] >= 0
    model = _model(moto_server, second, tmp_path)
    assert model["pid"] in standbys  # the second job's host ran in a standby the first job's pool kept
    log = (platform.home / "logs/training-jobs" / f"{second}.log").read_text()
    assert f"Reusing the warm pool of training job {first}" in log

    # UpdateTrainingJob: a shorter keep-alive, then 0 releases the pool and its standby
    _wait_pool(sm, second, "Available")
    sm.update_training_job(TrainingJobName=second, ResourceConfig={"KeepAlivePeriodInSeconds": 60})
    assert (
        sm.describe_training_job(TrainingJobName=second)["ResourceConfig"]["KeepAlivePeriodInSeconds"] == 60
    )
    before = _standbys(platform)
    sm.update_training_job(
        TrainingJobName=second,
        ResourceConfig={"KeepAlivePeriodInSeconds": 0},
        ProfilerConfig={"ProfilingIntervalInMilliseconds": 500},
    )
    desc = _wait_pool(sm, second, "Terminated")
    assert desc["WarmPoolStatus"]["ResourceRetainedBillableTimeInSeconds"] >= 0
    assert desc["ProfilerConfig"]["ProfilingIntervalInMilliseconds"] == 500
    deadline = time.monotonic() + 20
    while len(_standbys(platform)) != len(before) - 1:  # the pool of `other` keeps its standby
        assert time.monotonic() < deadline, (before, _standbys(platform))
        time.sleep(0.2)
    with pytest.raises(ClientError) as err:
        sm.update_training_job(TrainingJobName=second, ResourceConfig={"KeepAlivePeriodInSeconds": 30})
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "Terminated" in err.value.response["Error"]["Message"]
    sm.update_training_job(TrainingJobName=other, ResourceConfig={"KeepAlivePeriodInSeconds": 0})
    _wait_pool(sm, other, "Terminated")


def test_a_warm_pool_expires_after_its_keep_alive(sm: Any, platform: PlatformProcess, workdir: Path) -> None:
    name = _name("warm-expire")
    keep = {
        "InstanceType": "ml.m5.xlarge",
        "InstanceCount": 1,
        "VolumeSizeInGB": 1,
        "KeepAlivePeriodInSeconds": 2,
    }
    sm.create_training_job(**_request(workdir, name, ResourceConfig=keep))
    assert _wait_done(sm, name)["TrainingJobStatus"] == "Completed"
    desc = _wait_pool(sm, name, "Terminated", timeout=60)
    assert desc["WarmPoolStatus"]["ResourceRetainedBillableTimeInSeconds"] >= 1
    assert (
        sm.list_training_jobs(WarmPoolStatusEquals="Available", NameContains=name)["TrainingJobSummaries"]
        == []
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"EnableManagedSpotTraining": True},
            MAX_WAIT_MISSING,
        ),
        (
            {
                "EnableManagedSpotTraining": True,
                "StoppingCondition": {"MaxRuntimeInSeconds": 600, "MaxWaitTimeInSeconds": 300},
            },
            MAX_WAIT_MISSING,
        ),
        (
            {"StoppingCondition": {"MaxRuntimeInSeconds": 60, "MaxWaitTimeInSeconds": 600}},
            MAX_WAIT_NOT_SPOT,
        ),
        (
            {
                "EnableManagedSpotTraining": True,
                "StoppingCondition": {"MaxRuntimeInSeconds": 60, "MaxWaitTimeInSeconds": 600},
                "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1,
                                   "KeepAlivePeriodInSeconds": 60},
            },
            "not supported with managed spot training",
        ),
        (
            {
                "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1,
                                   "KeepAlivePeriodInSeconds": 21601},
            },
            "keepAlivePeriodInSeconds",
        ),
        (
            {"RetryStrategy": {"MaximumRetryAttempts": 31}},
            "maximumRetryAttempts",
        ),
        (
            {"CheckpointConfig": {"S3Uri": f"s3://{BUCKET}/c", "LocalPath": "relative/dir"}},
            "CheckpointConfig.LocalPath 'relative/dir'",
        ),
        (
            {"CheckpointConfig": {"S3Uri": f"s3://{BUCKET}/c", "LocalPath": "/opt/ml/input/ckpt"}},
            "must not be inside /opt/ml/input",
        ),
    ],
)  # fmt: skip
def test_bad_spot_warm_pool_and_retry_settings_are_refused(
    sm: Any, workdir: Path, extra: dict[str, Any], message: str
) -> None:
    name = _name("bad")
    with pytest.raises(ClientError) as err:
        sm.create_training_job(**_request(workdir, name, **extra))
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert message in err.value.response["Error"]["Message"]
    assert sm.list_training_jobs(NameContains=name)["TrainingJobSummaries"] == []


def test_update_training_job_refuses_what_it_cannot_change(sm: Any, workdir: Path) -> None:
    name = _name("no-pool")
    sm.create_training_job(**_request(workdir, name))
    with pytest.raises(ClientError) as err:
        sm.update_training_job(TrainingJobName=name, ResourceConfig={"KeepAlivePeriodInSeconds": 30})
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "was not created with a warm pool" in err.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as err:
        sm.update_training_job(TrainingJobName=name, ResourceConfig={"KeepAlivePeriodInSeconds": 99999})
    assert err.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as err:
        sm.update_training_job(
            TrainingJobName=_name("missing"), ResourceConfig={"KeepAlivePeriodInSeconds": 3}
        )
    assert err.value.response["Error"]["Code"] == "ValidationException"
    _wait_done(sm, name)


@pytest.mark.slow
def test_a_crash_releases_the_warm_pools(tmp_path: Path, workdir: Path, moto_server: str) -> None:
    """SIGKILLed platform: its standbys exit on their own (stdin closed) and the next start reports the pools
    Terminated and removes what they kept on disk."""
    home = tmp_path / "home"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    server = PlatformProcess(home, env=moto_env(moto_server)).start()
    try:
        sm = server.sagemaker()
        name = _name("warm-crash")
        keep = {
            "InstanceType": "ml.m5.large",
            "InstanceCount": 1,
            "VolumeSizeInGB": 1,
            "KeepAlivePeriodInSeconds": 600,
        }
        sm.create_training_job(**_request(workdir, name, ResourceConfig=keep))
        assert _wait_done(sm, name)["TrainingJobStatus"] == "Completed"
        _wait_pool(sm, name, "Available")
        standbys = _standbys(server)
        assert standbys and (home / "work/warm-pools").is_dir()
        server.stop(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in standbys):
            assert time.monotonic() < deadline, standbys
            time.sleep(0.2)
        server = PlatformProcess(home, port=server.port, env=moto_env(moto_server)).start()
        pool = server.sagemaker().describe_training_job(TrainingJobName=name)["WarmPoolStatus"]
        assert pool["Status"] == "Terminated"
        assert not (home / "work/warm-pools").exists()
    finally:
        server.stop()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"

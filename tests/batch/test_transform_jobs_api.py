"""Transform jobs through the control plane: boto3 against `selfmaker up` (a real process on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from batch_helpers import (
    N_FEATURES,
    build_hooks_model,
    find_free_port,
    predict,
    read_rows,
    request,
    write_csv,
)
from botocore.config import Config
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]


def _tar(model_dir: Path, dest: Path) -> str:
    with tarfile.open(dest, "w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=path.relative_to(model_dir).as_posix(), recursive=False)
    return dest.as_uri()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, dask_client: Any) -> Iterator[str]:
    """`selfmaker up` whose transform jobs run on the tests' Dask scheduler (SELFMAKER_BATCH_SCHEDULER)."""
    home = tmp_path_factory.mktemp("home")
    port = find_free_port()
    env = {
        **os.environ,
        "SELFMAKER_BATCH_SCHEDULER": dask_client.scheduler.address,
        "SELFMAKER_STOP_GRACE": "5",
    }
    with open(home / "up.out", "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "selfmaker", "up", "--home", str(home), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (home / "up.out").read_text()[-2000:]
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "selfmaker up did not answer /ping"
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.fixture(scope="module")
def sm(platform: str) -> Any:
    return boto3.client(
        "sagemaker",
        endpoint_url=platform,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}),
    )


def _wait(sm: Any, name: str) -> dict[str, Any]:
    """boto3's waiter; a Failed job is returned (the test shows its FailureReason) instead of raised."""
    from botocore.exceptions import WaiterError

    try:
        sm.get_waiter("transform_job_completed_or_stopped").wait(
            TransformJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 180}
        )
    except WaiterError as exc:
        if "terminal failure state" not in str(exc):
            raise
    return sm.describe_transform_job(TransformJobName=name)


def test_transform_job_runs_to_completion_through_boto3(sm: Any, lr_model: Path, tmp_path: Path) -> None:
    sm.create_model(
        ModelName="batch-lr",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
        PrimaryContainer={"ModelDataUrl": _tar(lr_model, tmp_path / "model.tar.gz")},
    )
    rows = np.random.default_rng(61).normal(size=(700, N_FEATURES))
    src = write_csv(tmp_path / "in" / "x.csv", rows)
    req = request(
        src.parent.as_uri(),
        (tmp_path / "out").as_uri(),
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
        TransformJobName="api-job-1",
    )
    req["ModelName"] = "batch-lr"
    arn = sm.create_transform_job(**req)["TransformJobArn"]
    assert arn.endswith(":transform-job/api-job-1")
    described = _wait(sm, "api-job-1")
    assert described["TransformJobStatus"] == "Completed", described.get("FailureReason")
    assert described["ModelName"] == "batch-lr"
    assert described["TransformInput"]["SplitType"] == "Line"
    assert described["TransformEndTime"] >= described["CreationTime"]
    scores = np.array([float(v) for v in (tmp_path / "out" / "x.csv.out").read_text().split()])
    np.testing.assert_allclose(scores, predict(lr_model, read_rows(src)), rtol=1e-5, atol=1e-6)

    names = [
        s["TransformJobName"]
        for s in sm.list_transform_jobs(StatusEquals="Completed")["TransformJobSummaries"]
    ]
    assert "api-job-1" in names
    with pytest.raises(ClientError) as info:
        sm.create_transform_job(**req)
    assert info.value.response["Error"]["Code"] == "ResourceInUse"
    with pytest.raises(ClientError) as info:
        sm.stop_transform_job(TransformJobName="api-job-1")
    assert info.value.response["Error"]["Code"] == "ValidationException"


def test_bad_requests_are_validation_errors(sm: Any, tmp_path: Path) -> None:
    base = request(
        (tmp_path / "in").as_uri(), (tmp_path / "out").as_uri(), SplitType="None", TransformJobName="api-bad"
    )
    with pytest.raises(ClientError) as info:
        sm.create_transform_job(**{**base, "ModelName": "no-such-model"})
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "Could not find model" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        sm.describe_transform_job(TransformJobName="never-created")
    assert info.value.response["Error"]["Code"] == "ValidationException"


def test_stop_transform_job_ends_stopped(sm: Any, tmp_path: Path) -> None:
    model = build_hooks_model(tmp_path / "slow", delay=0.05)
    sm.create_model(
        ModelName="batch-slow",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/x",
        PrimaryContainer={"ModelDataUrl": _tar(model, tmp_path / "slow.tar.gz")},
    )
    write_csv(tmp_path / "in" / "x.csv", np.random.default_rng(62).normal(size=(2000, N_FEATURES)))
    req = request(
        (tmp_path / "in").as_uri(),
        (tmp_path / "out").as_uri(),
        SplitType="Line",
        BatchStrategy="SingleRecord",
        AssembleWith="Line",
        Accept="text/csv",
        TransformJobName="api-stop",
    )
    req["ModelName"] = "batch-slow"
    sm.create_transform_job(**req)
    sm.stop_transform_job(TransformJobName="api-stop")
    assert sm.describe_transform_job(TransformJobName="api-stop")["TransformJobStatus"] in (
        "Stopping",
        "Stopped",
    )
    described = _wait(sm, "api-stop")
    assert described["TransformJobStatus"] == "Stopped"
    assert not (tmp_path / "out" / "x.csv.out").exists()

"""A processing job running when the platform stops: a graceful stop ends its script and fails it; after a
crash (SIGKILL) the next start kills the script the crashed run left behind and fails the job."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from platform_helpers import PlatformProcess

from selfmaker.jobs.processing import RESTART_REASON, SHUTDOWN_REASON

# starts its own platform three times: as long as the other restart tests, so `make test-fast` leaves it out
pytestmark = pytest.mark.slow


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_for(check: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def _start_sleeper(sm: Any, tmp_path: Path, name: str) -> int:
    """A job whose script writes its PID next to it and sleeps; the PID once it runs."""
    code = tmp_path / name
    code.mkdir()
    pid_file = tmp_path / f"{name}.pid"
    (code / "sleep.py").write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n"
    )
    sm.create_processing_job(
        ProcessingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/selfmaker",
        ProcessingResources={
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}
        },
        AppSpecification={
            "ImageUri": "selfmaker",
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/code/sleep.py"],
        },
        ProcessingInputs=[
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": code.as_uri(),
                    "LocalPath": "/opt/ml/processing/code",
                    "S3DataType": "S3Prefix",
                },
            }
        ],
    )
    _wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), f"{name} never started")
    return int(pid_file.read_text())


def test_a_running_job_fails_on_stop_and_its_orphan_is_killed_after_a_crash(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"SELFMAKER_TRAINING_STOP_GRACE": "2"}
    server = PlatformProcess(home, env=env).start()
    try:
        pid = _start_sleeper(server.sagemaker(), tmp_path, "graceful")
    finally:
        server.stop()  # SIGTERM: the platform stops the job before it exits
    assert _gone(pid)

    server = PlatformProcess(home, env=env).start()
    try:
        job = server.sagemaker().describe_processing_job(ProcessingJobName="graceful")
        assert (job["ProcessingJobStatus"], job["FailureReason"]) == ("Failed", SHUTDOWN_REASON)
        pid = _start_sleeper(server.sagemaker(), tmp_path, "crashed")
    finally:
        server.stop(signal.SIGKILL)
    assert not _gone(pid)  # a crashed platform cannot stop its jobs …

    server = PlatformProcess(home, env=env).start()
    try:
        _wait_for(lambda: _gone(pid), "the orphaned script still runs")  # … the next start does
        job = server.sagemaker().describe_processing_job(ProcessingJobName="crashed")
        assert (job["ProcessingJobStatus"], job["FailureReason"]) == ("Failed", RESTART_REASON)
        assert "_Processes" not in job
        assert not (home / "work" / "processing-jobs" / "crashed").exists()
    finally:
        server.stop()

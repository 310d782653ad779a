"""The runner's attempts and warm starts: RetryStrategy, a simulated spot interruption, MaxWaitTimeInSeconds,
CheckpointConfig.LocalPath, standby interpreters and the input cache (training/warm.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from testkit import wait_until
from training_helpers import SELFMAKER_IMAGE, channel, extract_model, request, run_job

from training.runner import TrainingJobRunner
from training.warm import Standby, WarmStart

#: a script-mode program whose behaviour the hyperparameters choose: ``steps`` × ``pause`` seconds of work
#: checkpointed in CheckpointConfig.LocalPath (read from checkpointconfig.json, as the SDK's scripts do),
#: ``die_once`` (a file path) kills the whole host by SIGKILL the first time, ``user_error`` fails as a
#: user error (the toolkit writes output/failure).
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
steps = int(hps.get("steps", 1))
for step in range(start, steps):
    time.sleep(float(hps.get("pause", 0)))
    if ckpt is not None:
        (ckpt / "step.tmp").write_text(str(step + 1))
        os.replace(ckpt / "step.tmp", ckpt / "step.txt")
    print(f"step {step + 1}", flush=True)
data = sorted(os.listdir(os.environ["SM_CHANNEL_TRAIN"]))
Path(os.environ["SM_MODEL_DIR"], "model.json").write_text(json.dumps(
    {"start": start, "ckpt": str(ckpt), "pid": os.getppid(), "data": data,
     "job": os.environ.get("TRAINING_JOB_NAME")}))
"""


def _job(tmp_path: Path, name: str, hps: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(PROGRAM)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    if not (data / "a.csv").exists():  # written once: its modification time is its version
        (data / "a.csv").write_text("1,2\n")
    all_hps = {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps(code.as_uri()),
    }
    all_hps.update({k: json.dumps(v) for k, v in (hps or {}).items()})
    req = request(
        name, SELFMAKER_IMAGE, all_hps, [channel("train", data.as_uri())], (tmp_path / "out").as_uri()
    )
    req.update(extra)
    return req


def _model(tmp_path: Path, state: Any) -> dict[str, Any]:
    path = Path(state.model_artifacts[len("file://") :])
    text = (extract_model(path, tmp_path / f"m-{os.urandom(3).hex()}") / "model.json").read_text()
    model: dict[str, Any] = json.loads(text)
    return model


def _statuses(state: Any) -> list[str]:
    return [t["Status"] for t in state.transitions]


def test_an_internal_failure_is_retried_and_a_user_error_is_not(tmp_path: Path) -> None:
    once = tmp_path / "died-once"
    req = _job(tmp_path, "retry-ok", {"die_once": str(once)}, RetryStrategy={"MaximumRetryAttempts": 2})
    state, lines = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    assert once.exists() and state.attempts == 2
    assert _statuses(state) == [
        "Starting", "Downloading", "Training", "Restarting", "Downloading", "Training", "Uploading",
        "Completed",
    ]  # fmt: skip
    restarting = state.transitions[3]["StatusMessage"]
    assert "internal error (attempt 2 of 2)" in restarting and "exited with code -9" in restarting
    assert any("retrying (0 retries left)" in line for line in lines)

    # without retries left, the same death fails the job with its reason
    once.unlink()
    state, _ = run_job(_job(tmp_path, "retry-none", {"die_once": str(once)}), tmp_path / "job2")
    assert state.status == "Failed" and state.attempts == 1
    assert "exited with code -9" in (state.failure_reason or "")

    # a user error (the toolkit wrote output/failure) is final, whatever the retry budget
    req = _job(tmp_path, "user-error", {"user_error": True}, RetryStrategy={"MaximumRetryAttempts": 5})
    state, _ = run_job(req, tmp_path / "job3")
    assert state.status == "Failed" and state.attempts == 1
    assert "Restarting" not in _statuses(state)
    assert "bad hyperparameter: user_error" in (state.failure_reason or "")


def test_a_spot_interruption_resumes_from_the_checkpoints_at_local_path(tmp_path: Path) -> None:
    ckpt_uri = (tmp_path / "ckpt").as_uri()
    req = _job(
        tmp_path,
        "spot",
        {"steps": 24, "pause": 0.25},
        EnableManagedSpotTraining=True,
        CheckpointConfig={"S3Uri": ckpt_uri, "LocalPath": "/opt/ml/my-checkpoints"},
        StoppingCondition={"MaxRuntimeInSeconds": 300, "MaxWaitTimeInSeconds": 600},
    )
    state, lines = run_job(
        req, tmp_path / "job", spot_interrupt_after=3.0, stop_grace_seconds=5, checkpoint_sync_interval=0.5
    )
    assert state.status == "Completed", state.failure_reason
    assert _statuses(state) == [
        "Starting", "Downloading", "Training", "Interrupted", "Starting", "Downloading", "Training",
        "Uploading", "Completed",
    ]  # fmt: skip
    model = _model(tmp_path, state)
    assert 0 < model["start"] < 24  # resumed from the synced checkpoint, not from scratch
    assert model["ckpt"] == str(tmp_path / "job/hosts/algo-1/my-checkpoints")  # LocalPath in the host's tree
    assert (tmp_path / "ckpt/step.txt").read_text() == "24"  # synced during and after the job
    assert any(line.endswith(f"start step {model['start']}") for line in lines)
    fields = state.describe_fields()
    assert fields["BillableTimeInSeconds"] < fields["TrainingTimeInSeconds"]
    assert any("Managed Spot Training savings: " in line for line in lines)


def test_checkpoints_are_restored_into_local_path_at_start(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt/step.txt").write_text("5")
    req = _job(
        tmp_path,
        "restore",
        {"steps": 6},
        CheckpointConfig={"S3Uri": (tmp_path / "ckpt").as_uri(), "LocalPath": "/opt/ml/checkpoints/deep"},
    )
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    model = _model(tmp_path, state)
    assert model["start"] == 5 and model["ckpt"].endswith("hosts/algo-1/checkpoints/deep")
    assert (tmp_path / "ckpt/step.txt").read_text() == "6"
    bad = _job(
        tmp_path, "bad-local", CheckpointConfig={"S3Uri": (tmp_path / "c").as_uri(), "LocalPath": "rel"}
    )
    state, _ = run_job(bad, tmp_path / "job2")
    assert state.status == "Failed" and "CheckpointConfig.LocalPath 'rel'" in (state.failure_reason or "")


def test_max_wait_time_stops_a_spot_job(tmp_path: Path) -> None:
    req = _job(
        tmp_path,
        "max-wait",
        {"steps": 200, "pause": 0.1},
        EnableManagedSpotTraining=True,
        StoppingCondition={"MaxRuntimeInSeconds": 2, "MaxWaitTimeInSeconds": 3},
    )
    # the interruption after 1 s costs the job its first attempt; MaxWait (3 s, wall time) ends the second
    state, _ = run_job(req, tmp_path / "job", spot_interrupt_after=1.0, stop_grace_seconds=2)
    assert state.status == "Stopped"
    assert state.secondary_status in ("MaxWaitTimeExceeded", "MaxRuntimeExceeded")
    assert "Interrupted" in _statuses(state)


def test_a_warm_start_runs_the_host_in_the_standby_and_reuses_the_downloaded_input(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    standby = Standby("script")
    warm = WarmStart(standbys={"algo-1": standby}, input_cache=cache)
    pid = standby.pid
    try:
        state, lines = run_job(_job(tmp_path, "warm-1"), tmp_path / "job1", warm=warm)
    finally:
        warm.close()
    assert state.status == "Completed", state.failure_reason
    assert warm.claimed == ["algo-1"]
    model = _model(tmp_path, state)
    assert model["pid"] == pid and model["job"] == "warm-1"  # the trainer ran in the standby interpreter
    cached = [p for p in cache.rglob("*") if p.is_file()]
    assert len(cached) == 1 and cached[0].read_text() == "1,2\n"

    # the next job takes the input from the cache; a changed object is downloaded again
    cached[0].write_text("cached")  # what only the cache holds proves where the copy came from
    runner = TrainingJobRunner(_job(tmp_path, "warm-2"), tmp_path / "job2", warm=WarmStart(input_cache=cache))
    assert runner.run().status == "Completed"
    assert (tmp_path / "job2/hosts/algo-1/input/data/train/a.csv").read_text() == "cached"
    (tmp_path / "data/a.csv").write_text("3,4\n")
    runner = TrainingJobRunner(_job(tmp_path, "warm-3"), tmp_path / "job3", warm=WarmStart(input_cache=cache))
    assert runner.run().status == "Completed"
    assert (tmp_path / "job3/hosts/algo-1/input/data/train/a.csv").read_text() == "3,4\n"
    assert lines  # the standby's output reached the job's log


def test_a_standby_gets_a_childs_environment_not_the_parents(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like a cold host (common.childenv): the platform's secrets and credentials stay with the platform."""
    monkeypatch.setenv("PLATFORM_ONLY_SECRET", "s3cr3t")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-children")
    standby = Standby("script")
    environ: list[bytes] = []
    try:
        # /proc/PID/environ reads empty for a moment after the exec, before the new image's memory is set
        # up (seen on a loaded machine): read it until it has something (bounded).
        def read() -> bool:
            environ[:] = Path(f"/proc/{standby.pid}/environ").read_bytes().split(b"\0")
            return any(environ)

        wait_until(read, 30, "the standby's environment")
    finally:
        standby.close()
    names = {item.split(b"=", 1)[0] for item in environ if item}
    assert b"PLATFORM_ONLY_SECRET" not in names and b"AWS_SECRET_ACCESS_KEY" not in names
    assert b"PATH" in names and b"PYTHONUNBUFFERED=1" in environ


def test_a_released_standby_exits(tmp_path: Path) -> None:
    standby = Standby("script")
    pid = standby.pid
    assert pid is not None and standby.alive()
    standby.close()
    assert not standby.alive()
    try:
        os.kill(pid, 0)
        gone = False
    except ProcessLookupError:
        gone = True
    assert gone


def test_a_warm_pool_keeps_the_unpacked_submit_archive(tmp_path: Path) -> None:
    from training_helpers import tar_gz

    archive = tmp_path / "sourcedir.tar.gz"
    archive.write_bytes(tar_gz({"train.py": PROGRAM}))
    cache = tmp_path / "cache"

    def job(name: str) -> dict[str, Any]:
        req = _job(tmp_path, name)
        req["HyperParameters"]["sagemaker_submit_directory"] = json.dumps(archive.as_uri())
        return req

    state, lines = run_job(job("code-1"), tmp_path / "job1", warm=WarmStart(input_cache=cache))
    assert state.status == "Completed", state.failure_reason
    assert not any("unpacked by a previous job" in line for line in lines)
    state, lines = run_job(job("code-2"), tmp_path / "job2", warm=WarmStart(input_cache=cache))
    assert state.status == "Completed", state.failure_reason
    assert any("unpacked by a previous job of the warm pool" in line for line in lines)
    # a changed archive is unpacked again
    archive.write_bytes(tar_gz({"train.py": PROGRAM + "\nprint('version 2')\n"}))
    state, lines = run_job(job("code-3"), tmp_path / "job3", warm=WarmStart(input_cache=cache))
    assert state.status == "Completed", state.failure_reason
    assert any(line.endswith("version 2") for line in lines)
    assert not any("unpacked by a previous job" in line for line in lines)


def test_hosts_that_cannot_start_are_retried_until_the_attempts_run_out(tmp_path: Path) -> None:
    from training.executors.process import ProcessExecutor

    req = _job(tmp_path, "no-start", RetryStrategy={"MaximumRetryAttempts": 3})
    executor = ProcessExecutor(python=str(tmp_path / "no-such-python"))
    state, _ = run_job(req, tmp_path / "job", executors={"process": executor})
    assert state.status == "Failed" and state.attempts == 3
    assert [t["Status"] for t in state.transitions].count("Restarting") == 2
    assert "cannot start the training process" in (state.failure_reason or "")

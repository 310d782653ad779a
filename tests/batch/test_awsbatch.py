"""Batch transform as an AWS Batch array job, for real without AWS: submitted to moto's Batch, each child run
as a local process given the environment AWS Batch sets (``AWS_BATCH_JOB_ARRAY_INDEX``), against moto S3.

The outputs must be byte for byte those of the local ``selfmaker transform``; a child killed mid-share and a
re-submission must give the full output with nothing duplicated.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from aws_batch_kit import batch_env, create_stack, kill_container, start_container
from batch_helpers import N_FEATURES, build_hooks_model, hooks_expected, request, write_csv
from hypothesis import given
from hypothesis import strategies as st

from batch import storage
from batch.awsbatch import balance
from batch.cli import main as local_transform
from batch.plan import JobPlan, plan_uri
from selfmaker.jobs.aws_batch import BatchJobs, submit_transform

CHILD_TIMEOUT = 240


@given(
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=60), st.integers(min_value=1, max_value=12)
)
def test_balance_is_contiguous_complete_and_bounded(sizes: list[int], count: int) -> None:
    groups = balance(sizes, count)
    assert [i for g in groups for i in g] == list(range(len(sizes)))  # every item once, in order
    assert all(groups) and len(groups) <= min(count, len(sizes))
    if sizes and sum(sizes) and count <= len(sizes):
        biggest = max(sum(sizes[i] for i in g) for g in groups)
        assert biggest <= sum(sizes) / len(groups) + max(sizes)  # no share more than one item over the mean


@pytest.fixture
def s3(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)  # boto3 in this process (Batch, S3) talks to moto
    storage.configure_s3(moto_server)
    try:
        yield boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    finally:
        storage.configure_s3(None)


def _upload_model(s3: Any, bucket: str, model_dir: Path) -> str:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(model_dir.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(model_dir)), recursive=False)
    s3.put_object(Bucket=bucket, Key="models/model.tar.gz", Body=buf.getvalue())
    return f"s3://{bucket}/models/model.tar.gz"


def _dataset(s3: Any, tmp_path: Path, bucket: str) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    files = {
        "in/big.csv": write_csv(tmp_path / "big.csv", rng.normal(size=(2400, N_FEATURES))),
        "in/mid.csv": write_csv(tmp_path / "mid.csv", rng.normal(size=(700, N_FEATURES))),
        "in/sub/small.csv": write_csv(tmp_path / "small.csv", rng.normal(size=(90, N_FEATURES))),
    }
    for key, path in files.items():
        s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
    return files


def _outputs(s3: Any, bucket: str, prefix: str) -> dict[str, bytes]:
    found = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix) :]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in found}


def _local_reference(
    req: dict[str, Any], model_dir: Path, tmp_path: Path, dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    req_file = tmp_path / "local.json"
    req_file.write_text(json.dumps(req))
    monkeypatch.setenv("SELFMAKER_HOME", str(tmp_path / "home"))
    code = local_transform(
        [
            str(req_file),
            "--scheduler",
            dask_client.scheduler.address,
            "--model-dir",
            str(model_dir),
            "--quiet",
            "--part-mb",
            "0.02",
        ]
    )
    assert code == 0


def _run_children(moto_server: str, state: str, size: int, tmp_path: Path, tag: str) -> list[int]:
    procs = [
        start_container(
            ["transform-share", "--state", state],
            batch_env(moto_server, {"AWS_BATCH_JOB_ARRAY_INDEX": str(i)} if size > 1 else {}),
            tmp_path / f"{tag}-{i}.log",
        )
        for i in range(size)
    ]
    try:
        return [p.wait(timeout=CHILD_TIMEOUT) for p in procs]
    finally:
        for p in procs:
            kill_container(p)


def _submitted(moto_server: str, job_id: str) -> dict[str, Any]:
    batch = boto3.client("batch", endpoint_url=moto_server, region_name="us-east-1")
    return batch.describe_jobs(jobs=[job_id])["jobs"][0]


def test_three_children_write_what_the_local_command_writes(
    s3: Any, moto_server: str, tmp_path: Path, dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.create_bucket(Bucket="tf-data")
    s3.create_bucket(Bucket="tf-out")
    model_dir = build_hooks_model(tmp_path / "model")
    model = _upload_model(s3, "tf-data", model_dir)
    files = _dataset(s3, tmp_path, "tf-data")
    common = {
        "SplitType": "Line",
        "BatchStrategy": "MultiRecord",
        "AssembleWith": "Line",
        "Accept": "text/csv",
        "MaxPayloadInMB": 1,
    }
    _local_reference(
        request("s3://tf-data/in/", "s3://tf-out/local/", TransformJobName="ref", **common),
        model_dir,
        tmp_path,
        dask_client,
        monkeypatch,
    )
    local = _outputs(s3, "tf-out", "local/")
    assert sorted(local) == ["big.csv.out", "mid.csv.out", "sub/small.csv.out"]
    assert local["big.csv.out"] == hooks_expected(files["in/big.csv"])

    stack = create_stack(moto_server)
    req = request("s3://tf-data/in/", "s3://tf-out/batch/", TransformJobName="tf-three", **common)
    submitted = submit_transform(
        BatchJobs(),
        req,
        stack.queues["on-demand"],
        model=model,
        model_environment={},
        children=3,
        part_mb=0.02,
    )
    job = _submitted(moto_server, submitted.job_id)
    assert job["arrayProperties"]["size"] == 3 == submitted.shares
    assert job["parameters"] == {"state": "s3://tf-out/selfmaker-jobs/transform/tf-three/"}
    assert job["jobDefinition"].endswith(f"job-definition/{stack.definitions['transform']}:1")

    codes = _run_children(moto_server, submitted.state, 3, tmp_path, "child")
    logs = {i: (tmp_path / f"child-{i}.log").read_text() for i in range(3)}
    assert codes == [0, 0, 0], logs
    assert all("parts run" in text for text in logs.values())
    assert _outputs(s3, "tf-out", "batch/") == local  # byte for byte, and nothing else in the output prefix


def test_a_killed_child_is_rerun_by_a_resubmit_without_duplicates(
    s3: Any, moto_server: str, tmp_path: Path, dask_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3.create_bucket(Bucket="tk-data")
    s3.create_bucket(Bucket="tk-out")
    model_dir = build_hooks_model(tmp_path / "model", delay=0.4)
    model = _upload_model(s3, "tk-data", model_dir)
    files = _dataset(s3, tmp_path, "tk-data")
    common = {
        "SplitType": "Line",
        "BatchStrategy": "MultiRecord",
        "AssembleWith": "Line",
        "Accept": "text/csv",
        "MaxPayloadInMB": 1,
    }
    stack = create_stack(moto_server, prefix="sm-kill")
    req = request("s3://tk-data/in/", "s3://tk-out/batch/", TransformJobName="tf-kill", **common)
    jobs = BatchJobs()
    first = submit_transform(
        jobs, req, stack.queues["on-demand"], model=model, model_environment={}, children=3, part_mb=0.01
    )
    assert first.shares == 3
    env = {i: batch_env(moto_server, {"AWS_BATCH_JOB_ARRAY_INDEX": str(i)}) for i in range(3)}
    victim = start_container(["transform-share", "--state", first.state], env[1], tmp_path / "victim.log")
    try:
        # kill share 1 once it has recorded a part and before it finishes (spot reclaim, host failure)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while time.monotonic() < deadline and victim.poll() is None:
            names = storage.list_names(first.state)
            if any(n.startswith("parts/") and n.endswith(".json") for n in names):
                break
            time.sleep(0.1)
        assert victim.poll() is None, (tmp_path / "victim.log").read_text()
    finally:
        kill_container(victim)
    others = [
        start_container(["transform-share", "--state", first.state], env[i], tmp_path / f"first-{i}.log")
        for i in (0, 2)
    ]
    try:
        assert [p.wait(timeout=CHILD_TIMEOUT) for p in others] == [0, 0]
    finally:
        for p in others:
            kill_container(p)
    partial = _outputs(s3, "tk-out", "batch/")
    assert len(partial) < 3  # share 1's part of the data is missing

    again = submit_transform(
        jobs, req, stack.queues["on-demand"], model=model, model_environment={}, children=3, part_mb=0.01
    )
    assert 1 <= again.shares <= 3
    job = _submitted(moto_server, again.job_id)
    assert (job.get("arrayProperties") or {}).get("size", 1) == again.shares  # one share: a plain job
    plan = JobPlan.from_json(storage.read_bytes(plan_uri(again.state)))
    shares = json.loads(storage.read_bytes(storage.join_uri(again.state, "shares.json")))["shares"]
    rerun = {tuple(item) for share in shares for item in share}
    assert len(rerun) < len(plan.parts)  # only what share 1 did not finish (and its objects' assemblies)
    assert _run_children(moto_server, again.state, again.shares, tmp_path, "again") == [0] * again.shares

    outputs = _outputs(s3, "tk-out", "batch/")
    assert sorted(outputs) == ["big.csv.out", "mid.csv.out", "sub/small.csv.out"]
    for key, path in files.items():
        assert outputs[key[len("in/") :] + ".out"] == hooks_expected(path)  # every record once, in order

    # nothing left to do: a third submission submits nothing
    assert submit_transform(
        jobs, req, stack.queues["on-demand"], model=model, model_environment={}, children=3, part_mb=0.01
    ).nothing_to_do

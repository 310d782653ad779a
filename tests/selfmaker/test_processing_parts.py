"""The parts of processing jobs on their own: request checks, the restart rule on a real store, the local
process executor with and without a mount namespace."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from selfmaker.errors import ValidationException
from selfmaker.jobs.processing import (
    KIND,
    RESTART_REASON,
    LocalProcessExecutor,
    ProcessingJobs,
    local_path,
    namespace_command,
    parse_request,
)
from selfmaker.settings import PlatformSettings
from selfmaker.state import Record, StateStore
from training.executors.base import HostSpec


def _request(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "ProcessingJobName": "p",
        "RoleArn": "arn:aws:iam::123456789012:role/r",
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 3, "VolumeSizeInGB": 5}},
        "AppSpecification": {"ImageUri": "selfmaker", "ContainerEntrypoint": ["python3", "x.py"]},
    }
    request.update(overrides)
    return request


def test_a_plan_has_sorted_hosts_defaults_and_relative_local_paths() -> None:
    plan = parse_request(
        _request(
            ProcessingInputs=[
                {"InputName": "d", "S3Input": {"S3Uri": "s3://b/k", "LocalPath": "/opt/ml/processing/in/"}},
                {
                    "InputName": "app",
                    "AppManaged": True,
                    "S3Input": {"S3Uri": "s3://b/a", "S3DataType": "S3Prefix"},
                },
                {
                    "InputName": "app2",
                    "AppManaged": True,
                    "S3Input": {
                        "S3Uri": "s3://b/a",
                        "LocalPath": "/opt/ml/processing/app",
                        "S3DataType": "S3Prefix",
                    },
                },
            ],
            ProcessingOutputConfig={
                "Outputs": [
                    {
                        "OutputName": "mine",
                        "AppManaged": True,
                        "S3Output": {"S3Uri": "s3://b/m", "S3UploadMode": "EndOfJob"},
                    },
                    {
                        "OutputName": "o",
                        "S3Output": {"S3Uri": "s3://b/o", "LocalPath": "/opt/ml/processing/o"},
                    },
                ]
            },
        )
    )
    assert plan.hosts == ("algo-1", "algo-2", "algo-3")
    assert [(i.name, i.local, i.mode, i.distribution) for i in plan.inputs] == [
        ("d", "processing/in", "File", "FullyReplicated")
    ]
    assert [(o.local, o.upload_mode) for o in plan.outputs] == [("processing/o", "EndOfJob")]
    assert plan.max_runtime == 86400


@given(st.lists(st.sampled_from(["opt", "ml", "processing", "..", ".", "", "x", "etc"]), max_size=6))
def test_a_local_path_is_accepted_only_strictly_below_opt_ml_processing(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    try:
        relative = local_path(path, "P")
    except ValidationException as exc:
        assert "must be an absolute path below /opt/ml/processing/" in exc.message
        return
    assert relative.startswith("processing/") and ".." not in relative.split("/")
    assert ".." not in path.split("/")


def test_a_job_left_running_is_failed_on_start(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        for name, status in (("running", "InProgress"), ("stopping", "Stopping"), ("done", "Completed")):
            store.insert(
                Record(
                    kind=KIND, name=name, arn=f"arn:{name}", status=status, created=1.0, modified=1.0, doc={}
                )
            )
        ProcessingJobs(PlatformSettings(home=tmp_path), store).recover()
        for name in ("running", "stopping"):
            record = store.get(KIND, name)
            assert record is not None and record.status == "Failed"
            assert record.doc["FailureReason"] == RESTART_REASON and record.doc["ProcessingEndTime"] > 1
        done = store.get(KIND, "done")
        assert done is not None and done.status == "Completed" and "FailureReason" not in done.doc
    finally:
        store.close()


SCRIPT = """\
import json, os, socket, sys
from pathlib import Path
data = Path(sys.argv[1]).read_text()
try:
    peer = socket.gethostbyname("algo-2")
except OSError:
    peer = None
seen = {"data": data, "exe": sys.executable, "name": socket.gethostname(), "peer": peer}
Path(os.environ["OUT"]).write_text(json.dumps(seen))
"""


@pytest.mark.parametrize("isolated", [True, False], ids=["mount-namespace", "no-namespace"])
def test_the_local_executor_runs_the_entrypoint_against_the_tree(tmp_path: Path, isolated: bool) -> None:
    namespace = namespace_command()
    if isolated and not namespace:
        pytest.skip("this machine gives processes no mount namespace (unshare); the fallback is tested")
    tree = tmp_path / "hosts" / "algo-1"
    (tree / "processing" / "code").mkdir(parents=True)
    (tree / "processing" / "code" / "s.py").write_text(SCRIPT)
    (tree / "processing" / "data.txt").write_text("rows")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    spec = HostSpec(
        job_name="p",
        host="algo-1",
        hosts=("algo-1", "algo-2"),
        image="selfmaker",
        ml_root=tree,
        env={"OUT": "/opt/ml/processing/out.json"},
        arguments=("/opt/ml/processing/data.txt",),
        entrypoint=("python3", "/opt/ml/processing/code/s.py"),
        work_dir=scratch,
        kind="processing",
    )
    handle = LocalProcessExecutor(sys.executable, namespace if isolated else []).start(spec)
    try:
        output = handle.stream.read().decode()
    finally:
        handle.stream.close()
    assert handle.wait(60) == 0, output
    seen = json.loads((tree / "processing" / "out.json").read_text())
    assert seen["data"] == "rows"
    assert Path(seen["exe"]).resolve() == Path(sys.executable).resolve()
    assert not Path("/opt/ml/processing/out.json").exists()  # nothing was written to the machine's /opt
    # hosts find each other by name; the host name is algo-N where the kernel gives a UTS namespace
    if isolated:
        assert seen["peer"] == "127.0.0.1"
        assert seen["name"] == ("algo-1" if "--uts" in namespace else socket.gethostname())

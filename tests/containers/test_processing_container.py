"""A processing job with a foreign image runs in a container (as training's BYOC does): the host's tree is
mounted at /opt/ml, ContainerEntrypoint + ContainerArguments run, two hosts each get their resourceconfig."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from containers_helpers import load_platform_helpers

SCRIPT = """\
import json, socket, sys
from pathlib import Path

resources = json.loads(Path("/opt/ml/config/resourceconfig.json").read_text())
config = json.loads(Path("/opt/ml/config/processingjobconfig.json").read_text())
rows = Path("/opt/ml/processing/input/data/rows.txt").read_text().split()
host = resources["current_host"]
Path(f"/opt/ml/processing/output/{host}.json").write_text(json.dumps({
    "hostname": socket.gethostname(),
    "resources": resources,
    "job": config["ProcessingJobName"],
    "rows": len(rows),
    "args": sys.argv[1:],
}))
print("container host", host, "done", flush=True)
"""


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[Any]:
    helpers = load_platform_helpers()
    server = helpers.PlatformProcess(
        tmp_path_factory.mktemp("home"), env={"SELFMAKER_CONTAINER_ENGINE": engine}
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_foreign_image_runs_each_host_in_a_container(
    platform: Any, byoc_image: str, tmp_path: Path
) -> None:
    helpers = load_platform_helpers()
    sm = platform.sagemaker()
    name = f"proc-byoc-{uuid.uuid4().hex[:6]}"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "script.py").write_text(SCRIPT)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rows.txt").write_text("1 2 3\n")
    out = tmp_path / "out"

    def s3_input(input_name: str, directory: Path, local: str) -> dict[str, Any]:
        return {
            "InputName": input_name,
            "S3Input": {"S3Uri": directory.as_uri(), "LocalPath": local, "S3DataType": "S3Prefix"},
        }

    sm.create_processing_job(
        ProcessingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/selfmaker",
        ProcessingResources={
            "ClusterConfig": {"InstanceCount": 2, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}
        },
        AppSpecification={
            "ImageUri": byoc_image,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/script.py"],
            "ContainerArguments": ["--mode", "container"],
        },
        ProcessingInputs=[
            s3_input("code", tmp_path / "code", "/opt/ml/processing/input/code"),
            s3_input("data", tmp_path / "data", "/opt/ml/processing/input/data"),
        ],
        ProcessingOutputConfig={
            "Outputs": [
                {
                    "OutputName": "out",
                    "S3Output": {
                        "S3Uri": out.as_uri(),
                        "LocalPath": "/opt/ml/processing/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )
    sm.get_waiter("processing_job_completed_or_stopped").wait(
        ProcessingJobName=name, WaiterConfig=helpers.WAIT
    )
    job = sm.describe_processing_job(ProcessingJobName=name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    for host in ("algo-1", "algo-2"):
        seen = json.loads((out / f"{host}.json").read_text())
        assert seen["hostname"] == host  # a container per host, named as SageMaker names them
        assert seen["resources"] == {"current_host": host, "hosts": ["algo-1", "algo-2"]}
        assert (seen["job"], seen["rows"], seen["args"]) == (name, 3, ["--mode", "container"])
    log = (platform.home / "logs" / "processing-jobs" / f"{name}.log").read_text()
    assert "[algo-1] container host algo-1 done" in log and "[algo-2] container host algo-2 done" in log

"""Processing jobs against a running `selfmaker up`: boto3 for the API, moto's S3 for inputs and outputs,
the job's scripts run for real as local processes that see their tree as /opt/ml."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from botocore.exceptions import ClientError, WaiterError
from platform_helpers import WAIT, PlatformProcess, client, moto_env, running

ROLE = "arn:aws:iam::123456789012:role/selfmaker"
XGBOOST = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
BUCKET = "processing-tests"


@pytest.fixture(scope="module")
def s3(moto_server: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture(scope="module")
def platform(
    moto_server: str, s3: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PlatformProcess]:
    """A platform whose S3 is the moto server; Continuous outputs upload every 0.3 s."""
    env = moto_env(
        moto_server,
        SELFMAKER_PROCESSING_UPLOAD_INTERVAL="0.3",
        SELFMAKER_TRAINING_STOP_GRACE="5",
        SELFMAKER_MAX_INSTANCES="4",
        OPERATOR_SECRET="not-for-jobs",
    )
    with running(tmp_path_factory.mktemp("processing-home"), env=env) as server:
        yield server


@pytest.fixture(scope="module")
def sm(platform: PlatformProcess) -> Any:
    return platform.sagemaker()


def _put(s3: Any, key: str, body: bytes | str) -> str:
    s3.put_object(Bucket=BUCKET, Key=key, Body=body.encode() if isinstance(body, str) else body)
    return f"s3://{BUCKET}/{key}"


def _read(s3: Any, key: str) -> str:
    return str(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode())


def _keys(s3: Any, prefix: str) -> list[str]:
    found = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix) :] for o in found)


def _code(s3: Any, prefix: str, source: str) -> dict[str, Any]:
    """The SDK's code input: the script under s3://…/<prefix>/code/, at /opt/ml/processing/input/code."""
    uri = _put(s3, f"{prefix}/code/script.py", textwrap.dedent(source))
    return {
        "InputName": "code",
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": "/opt/ml/processing/input/code",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated",
            "S3CompressionType": "None",
        },
    }


def _request(name: str, inputs: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "ProcessingJobName": name,
        "RoleArn": ROLE,
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 5}
        },
        "AppSpecification": {
            "ImageUri": XGBOOST,
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/script.py"],
        },
        "ProcessingInputs": inputs,
        "StoppingCondition": {"MaxRuntimeInSeconds": 300},
    }
    request.update(overrides)
    return request


def _output(prefix: str, local: str = "/opt/ml/processing/output", mode: str = "EndOfJob") -> dict[str, Any]:
    return {
        "OutputName": "out",
        "S3Output": {"S3Uri": f"s3://{BUCKET}/{prefix}", "LocalPath": local, "S3UploadMode": mode},
    }


def _wait(sm: Any, name: str) -> dict[str, Any]:
    try:
        sm.get_waiter("processing_job_completed_or_stopped").wait(ProcessingJobName=name, WaiterConfig=WAIT)
    except WaiterError:
        pass  # a Failed job ends the waiter with an error: the caller checks the status
    return dict(sm.describe_processing_job(ProcessingJobName=name))


def _unique(stem: str) -> str:
    return f"{stem}-{uuid.uuid4().hex[:8]}"


SCRIPT = """
    import json, os, sys
    from pathlib import Path

    base = Path("/opt/ml/processing/input/data")
    rows = []
    for path in sorted(base.rglob("*.csv")):
        rows += [float(x) for x in path.read_text().split()]
    config = json.loads(Path("/opt/ml/config/processingjobconfig.json").read_text())
    resources = json.loads(Path("/opt/ml/config/resourceconfig.json").read_text())
    out = Path("/opt/ml/processing/output")
    (out / "nested").mkdir(parents=True, exist_ok=True)
    (out / "nested" / "summary.json").write_text(json.dumps({
        "sum": sum(rows),
        "count": len(rows),
        "args": sys.argv[1:],
        "env": os.environ.get("GREETING"),
        "job": config["ProcessingJobName"],
        "arn": config["ProcessingJobArn"],
        "inputs": [i["InputName"] for i in config["ProcessingInputs"]],
        "resources": resources,
        "python": sys.executable,
        "secret": os.environ.get("OPERATOR_SECRET"),
        "credentials": "AWS_SECRET_ACCESS_KEY" in os.environ,
    }))
    print("processed", len(rows), "rows", flush=True)
"""


def test_a_script_reads_its_s3_input_and_writes_its_output_to_s3(
    sm: Any, s3: Any, platform: PlatformProcess
) -> None:
    name = _unique("proc-basic")
    data = _put(s3, f"{name}/data/a.csv", "1\n2\n3\n")
    _put(s3, f"{name}/data/sub/b.csv", "4\n5\n")
    inputs = [
        _code(s3, name, SCRIPT),
        {
            "InputName": "data",
            "S3Input": {
                "S3Uri": data.rsplit("/", 1)[0],
                "LocalPath": "/opt/ml/processing/input/data",
                "S3DataType": "S3Prefix",
                "S3InputMode": "File",
            },
        },
    ]
    request = _request(
        name,
        inputs,
        ProcessingOutputConfig={"Outputs": [_output(f"{name}/out")]},
        Environment={"GREETING": "hello"},
        Tags=[{"Key": "team", "Value": "ml"}],
    )
    request["AppSpecification"]["ContainerArguments"] = ["--alpha", "1"]
    arn = sm.create_processing_job(**request)["ProcessingJobArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:processing-job/{name}"

    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["ProcessingJobArn"] == arn
    assert job["ProcessingStartTime"] <= job["ProcessingEndTime"]
    assert job["AppSpecification"]["ContainerArguments"] == ["--alpha", "1"]
    assert job["ProcessingInputs"][1] == {  # the request's members, with SageMaker's defaults filled in
        "InputName": "data",
        "AppManaged": False,
        "S3Input": {
            "S3Uri": data.rsplit("/", 1)[0],
            "LocalPath": "/opt/ml/processing/input/data",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated",
            "S3CompressionType": "None",
        },
    }
    summary = json.loads(_read(s3, f"{name}/out/nested/summary.json"))
    assert summary["sum"] == 15.0 and summary["count"] == 5
    assert summary["args"] == ["--alpha", "1"]
    assert summary["env"] == "hello"
    # an explicit environment (common.childenv): the platform's credentials for a job on S3, no other secret
    assert (summary["secret"], summary["credentials"]) == (None, True)
    assert (summary["job"], summary["arn"], summary["inputs"]) == (name, arn, ["code", "data"])
    assert summary["resources"] == {"current_host": "algo-1", "hosts": ["algo-1"]}
    # the job's python3 is the platform's interpreter (the image's Python; the platform runs with ours)
    assert Path(summary["python"]).resolve() == Path(sys.executable).resolve()

    log = (platform.home / "logs" / "processing-jobs" / f"{name}.log").read_text()
    assert "[algo-1] processed 5 rows" in log
    assert not (platform.home / "work" / "processing-jobs" / name).exists()  # the input copies are gone
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "team", "Value": "ml"}]
    listed = sm.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"]
    assert [(j["ProcessingJobName"], j["ProcessingJobStatus"]) for j in listed] == [(name, "Completed")]
    status = subprocess.run(
        [sys.executable, "-m", "selfmaker", "status", "--home", str(platform.home), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert {"Name": name, "Status": "Completed"} in json.loads(status.stdout)["processing-job"]
    logs = subprocess.run(
        [sys.executable, "-m", "selfmaker", "logs", name, "--home", str(platform.home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "[algo-1] processed 5 rows" in logs.stdout


def test_instances_get_their_shards_and_resource_config(sm: Any, s3: Any, platform: PlatformProcess) -> None:
    name = _unique("proc-shards")
    for i in range(4):
        _put(s3, f"{name}/data/part-{i}.csv", f"{i}\n")
    script = """
        import json, socket
        from pathlib import Path

        resources = json.loads(Path("/opt/ml/config/resourceconfig.json").read_text())
        host = resources["current_host"]
        parts = sorted(p.name for p in Path("/opt/ml/processing/input/data").iterdir())
        out = Path("/opt/ml/processing/output") / f"{host}.json"
        peers = {h: socket.gethostbyname(h) for h in resources["hosts"]}
        seen = {"parts": parts, "resources": resources, "peers": peers, "name": socket.gethostname()}
        out.write_text(json.dumps(seen))
        print(f"{host} has {len(parts)} parts", flush=True)
    """
    inputs = [
        _code(s3, name, script),
        {
            "InputName": "data",
            "S3Input": {
                "S3Uri": f"s3://{BUCKET}/{name}/data/",
                "LocalPath": "/opt/ml/processing/input/data",
                "S3DataType": "S3Prefix",
                "S3DataDistributionType": "ShardedByS3Key",
            },
        },
    ]
    request = _request(name, inputs, ProcessingOutputConfig={"Outputs": [_output(f"{name}/out")]})
    request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = 2
    sm.create_processing_job(**request)
    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    seen = {h: json.loads(_read(s3, f"{name}/out/{h}.json")) for h in ("algo-1", "algo-2")}
    assert seen["algo-1"]["parts"] == ["part-0.csv", "part-2.csv"]
    assert seen["algo-2"]["parts"] == ["part-1.csv", "part-3.csv"]
    assert seen["algo-2"]["resources"] == {"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}
    # the hosts reach each other by name, and each is called by its own (this machine allows namespaces)
    assert seen["algo-1"]["peers"] == {"algo-1": "127.0.0.1", "algo-2": "127.0.0.1"}
    assert [seen[h]["name"] for h in ("algo-1", "algo-2")] == ["algo-1", "algo-2"]
    # the Logs API: one stream per host, <job>/algo-N-<epoch>, each with that host's lines
    logs = client("logs", platform.url)
    group = "/aws/sagemaker/ProcessingJobs"
    streams = logs.describe_log_streams(logGroupName=group, logStreamNamePrefix=f"{name}/")["logStreams"]
    epoch = int(job["CreationTime"].timestamp())
    names = [s["logStreamName"] for s in streams]
    assert names == [f"{name}/algo-1-{epoch}", f"{name}/algo-2-{epoch}"]
    for host, stream in zip(("algo-1", "algo-2"), names, strict=True):
        events = logs.get_log_events(logGroupName=group, logStreamName=stream, startFromHead=True)["events"]
        assert [e["message"] for e in events] == [f"{host} has 2 parts"]


def test_pipe_mode_streams_gzip_objects_through_a_fifo(sm: Any, s3: Any) -> None:
    name = _unique("proc-pipe")
    _put(s3, f"{name}/data/a.csv.gz", gzip.compress(b"1\n2\n"))
    _put(s3, f"{name}/data/b.csv.gz", gzip.compress(b"3\n"))
    script = """
        import os, stat
        from pathlib import Path

        fifo = Path("/opt/ml/processing/input/data_0")
        assert stat.S_ISFIFO(os.stat(fifo).st_mode), "not a FIFO"
        with open(fifo) as f:
            values = [int(x) for x in f.read().split()]
        again = Path("/opt/ml/processing/input/data_1")  # a second pass, as training's Pipe epochs
        import time
        deadline = time.monotonic() + 30
        while not again.exists():
            assert time.monotonic() < deadline, "no second pass"
            time.sleep(0.05)
        with open(again) as f:
            assert [int(x) for x in f.read().split()] == values
        Path("/opt/ml/processing/output/values.txt").write_text(" ".join(map(str, values)))
    """
    inputs = [
        _code(s3, name, script),
        {
            "InputName": "data",
            "S3Input": {
                "S3Uri": f"s3://{BUCKET}/{name}/data/",
                "LocalPath": "/opt/ml/processing/input/data",
                "S3DataType": "S3Prefix",
                "S3InputMode": "Pipe",
                "S3CompressionType": "Gzip",
            },
        },
    ]
    sm.create_processing_job(
        **_request(name, inputs, ProcessingOutputConfig={"Outputs": [_output(f"{name}/out")]})
    )
    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert _read(s3, f"{name}/out/values.txt") == "1 2 3"


def test_continuous_outputs_reach_s3_while_the_job_runs(sm: Any, s3: Any, moto_server: str) -> None:
    name = _unique("proc-continuous")
    # the script waits (bounded) until its first file shows up in S3: only a Continuous upload gets it there
    script = f"""
        import time
        from pathlib import Path
        import boto3

        out = Path("/opt/ml/processing/output")
        (out / "first.txt").write_text("early")
        s3 = boto3.client("s3", endpoint_url={moto_server!r}, region_name="us-east-1")
        deadline = time.monotonic() + 60
        while "Contents" not in s3.list_objects_v2(Bucket={BUCKET!r}, Prefix="{name}/out/first.txt"):
            if time.monotonic() > deadline:
                raise SystemExit("first.txt never reached S3")
            time.sleep(0.2)
        (out / "second.txt").write_text("late")
    """
    sm.create_processing_job(
        **_request(
            name,
            [_code(s3, name, script)],
            ProcessingOutputConfig={"Outputs": [_output(f"{name}/out", mode="Continuous")]},
        )
    )
    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert _keys(s3, f"{name}/out/") == ["first.txt", "second.txt"]


def test_a_failing_script_reports_its_message_or_exit_code(sm: Any, s3: Any) -> None:
    with_message = _unique("proc-message")
    script = """
        from pathlib import Path

        Path("/opt/ml/output/message").write_text("bad column 'x' in input\\nmore detail")
        raise SystemExit(3)
    """
    sm.create_processing_job(**_request(with_message, [_code(s3, with_message, script)]))
    bare = _unique("proc-exitcode")
    sm.create_processing_job(**_request(bare, [_code(s3, bare, "raise SystemExit(7)\n")]))

    job = _wait(sm, with_message)
    assert job["ProcessingJobStatus"] == "Failed"
    assert job["FailureReason"] == "AlgorithmError: bad column 'x' in input\nmore detail"
    assert job["ExitMessage"] == "bad column 'x' in input\nmore detail"
    job = _wait(sm, bare)
    assert job["ProcessingJobStatus"] == "Failed"
    assert job["FailureReason"].startswith("AlgorithmError: algo-1 exited with code 7")
    assert "ExitMessage" not in job
    with pytest.raises(WaiterError, match="Failed"):
        sm.get_waiter("processing_job_completed_or_stopped").wait(ProcessingJobName=bare, WaiterConfig=WAIT)


def test_max_runtime_and_stop_processing_job_stop_the_script(sm: Any, s3: Any) -> None:
    sleeper = "import time\nprint('sleeping', flush=True)\ntime.sleep(600)\n"
    timed = _unique("proc-timeout")
    sm.create_processing_job(
        **_request(timed, [_code(s3, timed, sleeper)], StoppingCondition={"MaxRuntimeInSeconds": 2})
    )
    stopped = _unique("proc-stop")
    sm.create_processing_job(**_request(stopped, [_code(s3, stopped, sleeper)]))
    sm.stop_processing_job(ProcessingJobName=stopped)
    assert sm.describe_processing_job(ProcessingJobName=stopped)["ProcessingJobStatus"] in (
        "Stopping",
        "Stopped",
    )

    job = _wait(sm, timed)
    assert job["ProcessingJobStatus"] == "Stopped"
    assert job["FailureReason"].startswith("MaxRuntimeExceeded")
    job = _wait(sm, stopped)
    assert job["ProcessingJobStatus"] == "Stopped"
    with pytest.raises(ClientError, match="ValidationException"):
        sm.stop_processing_job(ProcessingJobName=stopped)


def _error(call: Any, **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    error = info.value.response["Error"]
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return str(error["Code"]), str(error["Message"])


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (
            lambda r: r["ProcessingInputs"][0]["S3Input"].update(LocalPath="/tmp/code"),
            "ProcessingInputs[0].S3Input.LocalPath '/tmp/code' is invalid",
        ),
        (
            lambda r: r["ProcessingInputs"][0]["S3Input"].update(LocalPath="/opt/ml/processing/../../etc"),
            "below /opt/ml/processing/",
        ),
        (
            lambda r: r["ProcessingInputs"][0]["S3Input"].update(LocalPath="/opt/ml/processing"),
            "is invalid",
        ),
        (
            lambda r: r["ProcessingInputs"][0]["S3Input"].update(S3CompressionType="Gzip"),
            "Gzip is only supported with S3InputMode Pipe",
        ),
        (
            lambda r: r["ProcessingInputs"].append(
                {
                    "InputName": "athena",
                    "DatasetDefinition": {
                        "AthenaDatasetDefinition": {
                            "Catalog": "c",
                            "Database": "d",
                            "QueryString": "select 1",
                            "OutputS3Uri": "s3://b/q",
                            "OutputFormat": "PARQUET",
                        },
                        "LocalPath": "/opt/ml/processing/athena",
                    },
                }
            ),
            "ProcessingInputs[1].DatasetDefinition is not supported",
        ),
        (
            lambda r: r.update(
                ProcessingOutputConfig={
                    "Outputs": [{"OutputName": "fs", "FeatureStoreOutput": {"FeatureGroupName": "g"}}]
                }
            ),
            "FeatureStoreOutput is not supported",
        ),
        (
            lambda r: r.update(ProcessingOutputConfig={"Outputs": [_output("o", local="/opt/ml/model")]}),
            "Outputs[0].S3Output.LocalPath '/opt/ml/model' is invalid",
        ),
        (
            lambda r: r["ProcessingInputs"].append(dict(r["ProcessingInputs"][0])),
            "InputName 'code' is used by another input",
        ),
        (
            lambda r: r.update(
                ProcessingOutputConfig={"Outputs": [_output("o", local="/opt/ml/processing/input/code")]}
            ),
            "LocalPath /opt/ml/processing/input/code is the LocalPath of input 'code' too",
        ),
        (
            lambda r: r["ProcessingInputs"][0]["S3Input"].update(S3Uri="https://example.com/x"),
            "must be an s3:// (or file://) URI",
        ),
        (
            lambda r: r["AppSpecification"].pop("ContainerEntrypoint"),
            "ContainerEntrypoint is required with image",
        ),
    ],
)
def test_bad_requests_get_a_validation_exception_naming_the_fault(
    sm: Any, change: Any, fragment: str
) -> None:
    name = _unique("proc-bad")
    request = _request(name, [dict(_code_input_shape())])
    request["ProcessingInputs"][0] = json.loads(json.dumps(request["ProcessingInputs"][0]))
    change(request)
    code, message = _error(sm.create_processing_job, **request)
    assert code == "ValidationException"
    assert fragment in message
    assert sm.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"] == []  # nothing recorded


def _code_input_shape() -> dict[str, Any]:
    return {
        "InputName": "code",
        "S3Input": {
            "S3Uri": f"s3://{BUCKET}/nowhere/code/script.py",
            "LocalPath": "/opt/ml/processing/input/code",
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
        },
    }


def test_names_limits_and_unknown_jobs(sm: Any, s3: Any) -> None:
    name = _unique("proc-dup")
    sm.create_processing_job(**_request(name, [_code(s3, name, "print('hi')\n")]))
    code, _ = _error(sm.create_processing_job, **_request(name, [_code_input_shape()]))
    assert code == "ResourceInUse"
    many = _request(_unique("proc-many"), [_code_input_shape()])
    many["ProcessingResources"]["ClusterConfig"]["InstanceCount"] = 50
    code, message = _error(sm.create_processing_job, **many)
    assert code == "ResourceLimitExceeded" and "50 instances" in message
    code, message = _error(sm.describe_processing_job, ProcessingJobName="no-such-processing-job")
    assert (code, message) == (
        "ValidationException",
        "Could not find requested job with name no-such-processing-job",
    )
    code, _ = _error(sm.stop_processing_job, ProcessingJobName="no-such-processing-job")
    assert code == "ValidationException"
    with pytest.raises(WaiterError):
        sm.get_waiter("processing_job_completed_or_stopped").wait(
            ProcessingJobName="no-such-processing-job", WaiterConfig=WAIT
        )
    assert _wait(sm, name)["ProcessingJobStatus"] == "Completed"


def test_list_filters_sorts_and_pages(sm: Any, s3: Any) -> None:
    stem = _unique("proc-list")
    names = [f"{stem}-{i}" for i in range(3)]
    for name in names:
        sm.create_processing_job(**_request(name, [_code(s3, name, "print('hi')\n")]))
    for name in names:
        assert _wait(sm, name)["ProcessingJobStatus"] == "Completed"
    paginator = sm.get_paginator("list_processing_jobs")
    pages = list(
        paginator.paginate(
            NameContains=stem, SortBy="Name", SortOrder="Ascending", PaginationConfig={"PageSize": 2}
        )
    )
    assert [len(p["ProcessingJobSummaries"]) for p in pages] == [2, 1]
    assert [s["ProcessingJobName"] for p in pages for s in p["ProcessingJobSummaries"]] == names
    oldest = sm.list_processing_jobs(NameContains=stem, MaxResults=1)["ProcessingJobSummaries"]
    assert oldest[0]["ProcessingJobName"] == names[0]  # CreationTime, Ascending by default (botocore's doc)
    newest = sm.list_processing_jobs(NameContains=stem, SortOrder="Descending")["ProcessingJobSummaries"]
    assert [s["ProcessingJobName"] for s in newest] == names[::-1]
    assert sm.list_processing_jobs(NameContains=stem, StatusEquals="Failed")["ProcessingJobSummaries"] == []


def test_file_uris_work_as_inputs_and_outputs(sm: Any, tmp_path: Path) -> None:
    name = _unique("proc-file")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "script.py").write_text(
        "from pathlib import Path\n"
        "text = Path('/opt/ml/processing/input/code/script.py').read_text()\n"
        "Path('/opt/ml/processing/output/copy.py').write_text(text)\n"
    )
    request = _request(
        name,
        [
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": (tmp_path / "code").as_uri(),
                    "LocalPath": "/opt/ml/processing/input/code",
                    "S3DataType": "S3Prefix",
                },
            }
        ],
        ProcessingOutputConfig={
            "Outputs": [
                {
                    "OutputName": "out",
                    "S3Output": {
                        "S3Uri": (tmp_path / "out").as_uri(),
                        "LocalPath": "/opt/ml/processing/output",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
    )
    sm.create_processing_job(**request)
    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert (tmp_path / "out" / "copy.py").read_text() == (tmp_path / "code" / "script.py").read_text()


def test_a_manifest_file_names_the_objects_of_an_input(sm: Any, s3: Any) -> None:
    name = _unique("proc-manifest")
    for key in ("x/one.csv", "x/two.csv", "x/skipped.csv"):
        _put(s3, f"{name}/{key}", key)
    listing = [{"prefix": f"s3://{BUCKET}/{name}/x/"}, "one.csv", "two.csv"]
    manifest = _put(s3, f"{name}/manifest.json", json.dumps(listing))
    script = """
        from pathlib import Path

        names = sorted(p.name for p in Path("/opt/ml/processing/input/listed").iterdir())
        Path("/opt/ml/processing/output/names.txt").write_text(",".join(names))
    """
    inputs = [
        _code(s3, name, script),
        {
            "InputName": "listed",
            "S3Input": {
                "S3Uri": manifest,
                "LocalPath": "/opt/ml/processing/input/listed",
                "S3DataType": "ManifestFile",
            },
        },
    ]
    sm.create_processing_job(
        **_request(name, inputs, ProcessingOutputConfig={"Outputs": [_output(f"{name}/out")]})
    )
    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert _read(s3, f"{name}/out/names.txt") == "one.csv,two.csv"


def test_an_input_that_cannot_be_fetched_fails_the_job_with_a_client_error(sm: Any, s3: Any) -> None:
    name = _unique("proc-missing")
    inputs = [
        _code(s3, name, "print('never runs')\n"),
        {
            "InputName": "data",
            "S3Input": {
                "S3Uri": f"s3://{BUCKET}/{name}/nothing-here/",
                "LocalPath": "/opt/ml/processing/input/data",
                "S3DataType": "S3Prefix",
            },
        },
    ]
    sm.create_processing_job(**_request(name, inputs))
    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Failed"
    assert job["FailureReason"] == (
        f"ClientError: input 'data': no objects under s3://{BUCKET}/{name}/nothing-here/"
    )


def test_what_a_script_leaves_running_ends_with_the_job(sm: Any, s3: Any) -> None:
    name = _unique("proc-background")
    script = """
        import subprocess, sys
        from pathlib import Path

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path("/opt/ml/processing/output/child.pid").write_text(str(child.pid))
        print("leaving a child behind", flush=True)
    """
    sm.create_processing_job(
        **_request(
            name, [_code(s3, name, script)], ProcessingOutputConfig={"Outputs": [_output(f"{name}/out")]}
        )
    )
    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    child = int(_read(s3, f"{name}/out/child.pid"))
    deadline = time.monotonic() + 30
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the script's child outlived the job"
        time.sleep(0.1)


def test_network_isolation_cuts_a_local_script_off(sm: Any, s3: Any, moto_server: str) -> None:
    from selfmaker.jobs.processing import namespace_command  # the platform probes the same machine

    if not namespace_command():
        pytest.skip("this machine gives processes no namespaces (unshare): a local job cannot be isolated")
    name = _unique("proc-isolated")
    port = int(moto_server.rsplit(":", 1)[1])
    script = f"""
        import os, socket
        from pathlib import Path

        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
            reached = True
        except OSError:
            reached = False
        seen = f"reached={{reached}} credentials={{'AWS_SECRET_ACCESS_KEY' in os.environ}}"
        Path("/opt/ml/processing/output/network.txt").write_text(seen)
    """
    sm.create_processing_job(
        **_request(
            name,
            [_code(s3, name, script)],
            ProcessingOutputConfig={"Outputs": [_output(f"{name}/out")]},
            NetworkConfig={"EnableNetworkIsolation": True},
        )
    )
    job = _wait(sm, name)
    assert job["ProcessingJobStatus"] == "Completed", job.get("FailureReason")
    assert job["NetworkConfig"] == {"EnableNetworkIsolation": True}
    # inputs and outputs still move (the platform moves them); the script reaches nothing, has no keys
    assert _read(s3, f"{name}/out/network.txt") == "reached=False credentials=False"

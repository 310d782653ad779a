"""Least privilege by default and the fuzz findings of issue #26, through a running `selfmaker up`.

* children (a model server process, a serverless server forked from the template, a training job) get an
  explicit environment: no unrelated secret of the platform's, no credentials where they do not use S3;
* the home, state.db and the logs are owner-only;
* ``file://`` locations never reach system directories nor the home, and stay inside SELFMAKER_FILE_ROOTS;
* a foreign ``Host`` header is refused (DNS rebinding), loopback names with the port served are not;
* header values that are not UTF-8 and requests aiohttp cannot parse get 400 in the API's JSON shape and
  one log line; a body over the limit is refused with ``Connection: close``;
* a model that fails to load fails its endpoint with the server's reason; an archive above the unpacking
  limit fails it with the limit's reason.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, WaiterError
from platform_helpers import (
    WAIT,
    PlatformProcess,
    build_classifier_tar,
    deploy,
    invoke_variant,
    make_model,
    running,
    variant,
)

from selfmaker.api.app import HostCheck
from selfmaker.commands.status import collect

SECRET = f"hunter2-{uuid.uuid4().hex}"
AWS_SECRET = f"platform-secret-{uuid.uuid4().hex}"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one directory SELFMAKER_FILE_ROOTS allows on the strict platform."""
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, roots: Path) -> Iterator[PlatformProcess]:
    """A platform whose environment holds secrets, with allowed roots, an allowed proxy name and a small
    unpacking limit."""
    env = {
        "DB_PASSWORD_H26": SECRET,
        "AWS_ACCESS_KEY_ID": "platform-key",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": "eu-west-1",
        "H26_PASSED_TOKEN": "passed-on-purpose",
        "SELFMAKER_CHILD_ENV": "H26_PASSED_*",
        "SELFMAKER_FILE_ROOTS": str(roots),
        "SELFMAKER_ALLOWED_HOSTS": "proxy.example, pinned.example:8443",
        "SELFMAKER_MAX_UNPACKED_BYTES": "200000",
    }
    with running(tmp_path_factory.mktemp("strict-home") / "home", env=env) as server:
        yield server


def log_since(server: PlatformProcess, offset: int) -> str:
    """What the (shared) platform logged since ``offset`` characters: other tests' lines are theirs."""
    return server.log()[offset:]


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def instance_pids(home: Path, endpoint: str) -> list[int]:
    data = collect(home)
    return [i["Pid"] for i in data["instances"] if i["EndpointName"] == endpoint and i["Pid"]]


def assert_explicit(env: dict[str, str], *, credentials: bool) -> None:
    text = json.dumps(env)
    assert SECRET not in text and "DB_PASSWORD_H26" not in env
    assert ("AWS_SECRET_ACCESS_KEY" in env) is credentials
    if not credentials:
        assert AWS_SECRET not in text
    assert env.get("AWS_DEFAULT_REGION") == "eu-west-1"  # the AWS settings a model needs do go along
    assert env.get("H26_PASSED_TOKEN") == "passed-on-purpose"  # SELFMAKER_CHILD_ENV
    assert "PATH" in env


def test_model_servers_get_an_explicit_environment(strict: PlatformProcess, roots: Path) -> None:
    sm, smr = strict.sagemaker(), strict.runtime()
    model_uri = build_classifier_tar(roots / "model").as_uri()
    model, endpoint, serverless = _name("envm"), _name("envep"), _name("envsl")
    sm.create_model(
        ModelName=model,
        PrimaryContainer={
            "Image": "selfmaker",
            "ModelDataUrl": model_uri,
            "Environment": {"MODEL_SETTING": "on"},
        },
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    deploy(sm, endpoint, [variant("AllTraffic", model)])
    sm.create_endpoint_config(
        EndpointConfigName=f"{serverless}-cfg",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": model,
                "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1},
            }
        ],
    )
    sm.create_endpoint(EndpointName=serverless, EndpointConfigName=f"{serverless}-cfg")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=serverless, WaiterConfig=WAIT)
    assert invoke_variant(smr, serverless) == "AllTraffic"  # the cold start forks a server
    try:
        for name in (endpoint, serverless):
            pids = instance_pids(strict.home, name)
            assert pids, name
            for pid in pids:
                env = environ_of(pid)
                if name == endpoint:
                    assert env.get("MODEL_SETTING") == "on", name  # the Model's Environment
                    assert env.get("SAGEMAKER_BIND_TO_PORT"), name  # the contract
                # a forked server's /proc environ is the template's (what it adds after the fork is in its
                # memory only): explicit as well
                assert_explicit(env, credentials=False)
        platform_env = environ_of(strict.proc.pid)  # type: ignore[union-attr]
        assert platform_env["DB_PASSWORD_H26"] == SECRET  # the secret was there to leak
    finally:
        for name in (endpoint, serverless):
            sm.delete_endpoint(EndpointName=name)


TRAIN_SCRIPT = """
import json, os
with open("/proc/self/environ", "rb") as f:  # what the job's process was started with
    pairs = [item.split(b"=", 1) for item in f.read().split(b"\\0") if b"=" in item]
with open(os.path.join(os.environ["SM_MODEL_DIR"], "env.json"), "w") as f:
    json.dump({k.decode(): v.decode(errors="replace") for k, v in pairs}, f)
"""


def _sourcedir(dest: Path) -> str:
    archive = dest / "sourcedir.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = TRAIN_SCRIPT.encode()
        info = tarfile.TarInfo("train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return archive.as_uri()


def test_training_jobs_get_an_explicit_environment(strict: PlatformProcess, roots: Path) -> None:
    sm = strict.sagemaker()
    data = roots / "train-data"
    data.mkdir()
    (data / "a.csv").write_text("1,2\n3,4\n")
    name = _name("envjob")
    sm.create_training_job(
        TrainingJobName=name,
        RoleArn="arn:aws:iam::123456789012:role/selfmaker",
        AlgorithmSpecification={"TrainingImage": "selfmaker", "TrainingInputMode": "File"},
        HyperParameters={
            "sagemaker_program": json.dumps("train.py"),
            "sagemaker_submit_directory": json.dumps(_sourcedir(roots)),
        },
        InputDataConfig=[
            {
                "ChannelName": "train",
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}},
            }
        ],
        OutputDataConfig={"S3OutputPath": (roots / "out").as_uri()},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 300},
        Environment={"JOB_SETTING": "on"},
    )
    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName=name, WaiterConfig=WAIT)
    desc = sm.describe_training_job(TrainingJobName=name)
    assert desc["TrainingJobStatus"] == "Completed", desc.get("FailureReason")
    artifact = Path(desc["ModelArtifacts"]["S3ModelArtifacts"].removeprefix("file://"))
    with tarfile.open(artifact) as tar:
        member = tar.extractfile("env.json")
        assert member is not None
        env = json.loads(member.read())
    assert env["JOB_SETTING"] == "on" and env["TRAINING_JOB_NAME"] == name and "SM_MODEL_DIR" in env
    assert_explicit(env, credentials=False)  # file:// data only: the job gets no credentials


def test_home_state_and_logs_are_owner_only(strict: PlatformProcess) -> None:
    home = strict.home  # created 0755 by the test's helper before the platform started: left, with a warning
    assert stat.S_IMODE((home / "logs").stat().st_mode) == 0o700
    for path in (home / "state.db", home / "logs" / "selfmaker.log"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    if stat.S_IMODE(home.stat().st_mode) & 0o077:
        assert f"{home} is open to other users" in strict.log() and f"`chmod 700 {home}`" in strict.log()


def test_private_directories_are_created_owner_only_and_others_left_alone(tmp_path: Path) -> None:
    from selfmaker.commands.up import private_directories

    new = tmp_path / "a" / "home"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    warnings = private_directories(new, new / "logs", shared)
    assert stat.S_IMODE(new.stat().st_mode) == 0o700 and stat.S_IMODE((new / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755  # never chmod a directory the platform did not make
    assert warnings == [f"{shared} is open to other users (mode 755): `chmod 700 {shared}` closes it"]


def _refused(info: pytest.ExceptionInfo[ClientError]) -> str:
    error = info.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    return str(error["Message"])


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "file:///etc/shadow",
        "file:///proc/self/environ",
        "file:///tmp/..",
        "file:///var",
        "file://localhost/usr/lib",
    ],
)
def test_file_locations_never_reach_system_directories(sm: Any, uri: str) -> None:
    with pytest.raises(ClientError) as info:
        make_model(sm, _name("sys"), uri)
    message = _refused(info)
    assert uri in message and "SELFMAKER_FILE_ROOTS" in message and "system directory" in message


def test_a_framework_models_submit_directory_is_a_checked_location(sm: Any, onnx_model_tar: str) -> None:
    """SAGEMAKER_SUBMIT_DIRECTORY is the one Environment variable the platform reads (it fetches the code);
    the others stay the caller's own strings."""
    container = {"Image": "sagemaker-xgboost:1.7-1", "ModelDataUrl": onnx_model_tar}
    with pytest.raises(ClientError) as info:
        sm.create_model(
            ModelName=_name("submit"),
            PrimaryContainer={**container, "Environment": {"SAGEMAKER_SUBMIT_DIRECTORY": "file:///etc"}},
            ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
        )
    message = _refused(info)
    assert "file:///etc" in message and "primaryContainer.environment.SAGEMAKER_SUBMIT_DIRECTORY" in message
    sm.create_model(
        ModelName=_name("envfile"),
        PrimaryContainer={**container, "Environment": {"SOME_SETTING": "file:///etc/hosts"}},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )


def test_outputs_and_symlinks_into_system_directories_are_refused(
    sm: Any, platform_server: PlatformProcess, tmp_path: Path
) -> None:
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    with pytest.raises(ClientError) as info:
        make_model(sm, _name("link"), (link / "passwd").as_uri())
    assert "/etc/passwd" in _refused(info)
    with pytest.raises(ClientError) as info:  # the platform's own home (state.db, keys)
        make_model(sm, _name("home"), (platform_server.home / "state.db").as_uri())
    assert "platform's own directory" in _refused(info)
    with pytest.raises(ClientError) as info:
        sm.create_training_job(
            TrainingJobName=_name("out"),
            RoleArn="arn:aws:iam::123456789012:role/selfmaker",
            AlgorithmSpecification={"TrainingImage": "sagemaker-xgboost:1.7-1", "TrainingInputMode": "File"},
            HyperParameters={"num_round": "2"},
            InputDataConfig=[
                {
                    "ChannelName": "train",
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": tmp_path.as_uri()}},
                }
            ],
            OutputDataConfig={"S3OutputPath": "file:///etc/cron.d"},
            ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
            StoppingCondition={"MaxRuntimeInSeconds": 60},
        )
    message = _refused(info)
    assert "file:///etc/cron.d" in message and "outputDataConfig.s3OutputPath" in message
    assert not Path("/etc/cron.d").joinpath("model.tar.gz").exists()


def test_file_locations_stay_inside_the_allowed_roots(
    strict: PlatformProcess, roots: Path, tmp_path: Path
) -> None:
    sm = strict.sagemaker()
    outside = build_classifier_tar(tmp_path / "outside").as_uri()
    with pytest.raises(ClientError) as info:
        make_model(sm, _name("out"), outside)
    message = _refused(info)
    assert outside in message and f"SELFMAKER_FILE_ROOTS allows ({roots.resolve()})" in message
    inside = build_classifier_tar(roots / "inside").as_uri()
    name = _name("in")
    make_model(sm, name, inside)
    assert sm.describe_model(ModelName=name)["PrimaryContainer"]["ModelDataUrl"] == inside


def raw_request(
    url: str, request: bytes, timeout: float = 10.0, linger: float = 0.5
) -> tuple[int, dict[str, str], bytes, bool]:
    """One raw HTTP/1.1 exchange: (status, lower-cased headers, body, True when the server closed the
    connection within ``linger`` seconds after its answer). Anything sent after the answer fails."""
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head, sep, rest = data.partition(b"\r\n\r\n")
            length = None
            if sep:
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
            if length is not None and len(rest) >= length:
                sock.settimeout(linger)
                try:
                    extra = sock.recv(65536)
                    closed = extra == b""
                    assert not extra, f"more after the answer: {extra!r}"
                except (TimeoutError, ConnectionResetError):
                    pass
                break
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split(" ", 2)[1]), headers, body, closed


def control_request(
    url: str, host: str, target: bytes = b"SageMaker.ListModels", extra: bytes = b""
) -> bytes:
    return (
        b"POST / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nX-Amz-Target: " + target + b"\r\n"
        b"Content-Type: application/x-amz-json-1.1\r\n" + extra + b"Content-Length: 2\r\n\r\n{}"
    )


def test_host_header_must_name_this_platform(
    platform_server: PlatformProcess, strict: PlatformProcess
) -> None:
    url = platform_server.url
    port = url.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        status, _, body, _ = raw_request(url, control_request(url, host))
        assert status == 200 and "Models" in json.loads(body), host
    for host in (f"evil.example:{port}", "evil.example", f"localhost:{int(port) + 1}", "127.0.0.1", "a:b:c"):
        status, headers, body, _ = raw_request(url, control_request(url, host))
        assert status == 403, host
        assert headers["content-type"] == "application/x-amz-json-1.1"
        answer = json.loads(body)
        assert answer["__type"] == "AccessDeniedException" and "SELFMAKER_ALLOWED_HOSTS" in answer["message"]
    invoke = (
        b"POST /endpoints/any/invocations HTTP/1.1\r\nHost: rebound.example:" + port.encode() + b"\r\n"
        b"Content-Type: text/csv\r\nContent-Length: 1\r\n\r\n1"
    )
    status, headers, body, _ = raw_request(url, invoke)
    assert status == 403 and headers["x-amzn-errortype"] == "AccessDeniedException"
    # the operator's names: any port for a bare name, the exact port otherwise
    strict_url = strict.url
    for host, expected in (
        ("proxy.example", 200),
        ("proxy.example:443", 200),
        ("pinned.example:8443", 200),
        ("pinned.example:8444", 403),
    ):
        status, _, _, _ = raw_request(strict_url, control_request(strict_url, host))
        assert status == expected, host


def test_headers_that_are_not_utf8_get_400_in_the_api_shape(platform_server: PlatformProcess) -> None:
    url = platform_server.url
    host = url.removeprefix("http://")
    offset = len(platform_server.log())
    status, headers, body, _ = raw_request(
        url, control_request(url, host, target=b"SageMaker.List\xffModels")
    )
    assert status == 400 and headers["content-type"] == "application/x-amz-json-1.1"
    assert json.loads(body) == {
        "__type": "ValidationException",
        "message": "The value of header X-Amz-Target is not valid UTF-8.",
    }
    for header in (
        b"X-Amzn-SageMaker-Custom-Attributes",
        b"Content-Type",
        b"Accept",
        b"X-Amzn-SageMaker-Target-Variant",
    ):
        request = (
            b"POST /endpoints/any/invocations HTTP/1.1\r\nHost: "
            + host.encode()
            + b"\r\n"
            + header
            + b": \xe9t\xe9\xff\r\nContent-Length: 1\r\n\r\n1"
        )
        status, headers, body, _ = raw_request(url, request)
        assert status == 400, header
        assert headers["x-amzn-errortype"] == "ValidationError"
        assert json.loads(body)["Message"] == f"The value of header {header.decode()} is not valid UTF-8."
    assert "Traceback" not in log_since(platform_server, offset)


@pytest.mark.parametrize(
    ("request_bytes", "shape"),
    [
        (b"GARBAGE\r\n\r\n", "control"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", "control"),
        (
            b"POST /endpoints/e/invocations HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "either",  # the body's parser fails: aiohttp no longer says which path it was for
        ),
        (b"POST /\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", "control"),
    ],
)
def test_unparsable_requests_get_json_400_and_one_log_line(
    platform_server: PlatformProcess, request_bytes: bytes, shape: str
) -> None:
    offset = len(platform_server.log())
    status, headers, body, closed = raw_request(platform_server.url, request_bytes)
    assert status == 400 and closed
    answer = json.loads(body)
    assert answer["message"].startswith("The request could not be parsed: ")
    if shape == "either":
        assert answer["__type"] in ("ValidationError", "ValidationException")
    else:
        assert headers["content-type"] == "application/x-amz-json-1.1"
        assert answer["__type"] == "ValidationException"
    log = log_since(platform_server, offset)
    assert "Traceback" not in log and "Error handling request" not in log
    assert (
        f"bad request from 127.0.0.1: {answer['message'].removeprefix('The request could not be parsed: ')}"
        in log
    )


def test_bodies_over_the_limit_close_the_connection(platform_server: PlatformProcess) -> None:
    url = platform_server.url
    host = url.removeprefix("http://").encode()
    smuggled = b"GET /ping HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    invoke = (
        b"POST /endpoints/any/invocations HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: text/csv\r\n"
        b"Content-Length: 7000000\r\n\r\n" + smuggled
    )
    # aiohttp reads and drops what a closing connection still sends for a while (its lingering close, 10 s)
    # before closing it: the smuggled request must never be answered meanwhile
    status, headers, body, closed = raw_request(url, invoke, timeout=30, linger=20)
    assert status == 400 and closed and headers.get("connection", "").lower() == "close"
    assert "Request payload is too large" in json.loads(body)["Message"]
    control = (
        b"POST / HTTP/1.1\r\nHost: " + host + b"\r\nX-Amz-Target: SageMaker.ListModels\r\n"
        b"Content-Length: 70000000\r\n\r\n" + smuggled
    )
    status, headers, body, closed = raw_request(url, control, timeout=30, linger=20)
    assert status == 400 and closed and headers.get("connection", "").lower() == "close"
    assert json.loads(body)["__type"] == "ValidationException"


def test_a_model_that_fails_to_load_fails_its_endpoint_with_the_servers_reason(
    sm: Any, broken_model_tar: str
) -> None:
    model, endpoint = _name("broken"), _name("brokenep")
    make_model(sm, model, broken_model_tar)
    deploy(sm, endpoint, [variant("AllTraffic", model)], wait=False)
    with pytest.raises(WaiterError):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName=endpoint)
    assert desc["EndpointStatus"] == "Failed"
    reason = desc["FailureReason"]
    # the server's own words, not the start-up timeout's (SELFMAKER_STARTUP_TIMEOUT is 20 s here)
    assert "The model server says: model failed to load:" in reason, reason
    assert "did not answer within" not in reason
    sm.delete_endpoint(EndpointName=endpoint)


def test_an_archive_above_the_unpacking_limit_fails_its_endpoint(
    strict: PlatformProcess, roots: Path
) -> None:
    sm = strict.sagemaker()
    archive = roots / "bomb" / "model.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:  # 300 kB of zeros: a tiny archive, above the 200 kB limit
        data = b"\0" * 300_000
        info = tarfile.TarInfo("weights.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    model, endpoint = _name("bomb"), _name("bombep")
    make_model(sm, model, archive.as_uri())
    deploy(sm, endpoint, [variant("AllTraffic", model)], wait=False)
    with pytest.raises(WaiterError):
        sm.get_waiter("endpoint_in_service").wait(EndpointName=endpoint, WaiterConfig=WAIT)
    desc = sm.describe_endpoint(EndpointName=endpoint)
    assert desc["EndpointStatus"] == "Failed"
    reason = desc["FailureReason"]
    assert "would unpack to 300000 bytes, more than the limit of 200000 bytes" in reason, reason
    assert "SELFMAKER_MAX_UNPACKED_BYTES" in reason
    assert not list(strict.home.rglob("weights.bin"))  # nothing was written
    sm.delete_endpoint(EndpointName=endpoint)
    assert os.path.exists(archive)


def test_host_check_rules() -> None:
    check = HostCheck("127.0.0.1", 7070, frozenset({"proxy.example", "pinned.example:8443"}))
    assert check.accepts("127.0.0.1:7070") and check.accepts("LocalHost:7070") and check.accepts("[::1]:7070")
    assert (
        not check.accepts("127.0.0.1") and not check.accepts("localhost:7071") and not check.accepts("[::1")
    )
    assert check.accepts("proxy.example") and check.accepts("proxy.example:1")
    assert check.accepts("pinned.example:8443") and not check.accepts("pinned.example")
    assert not check.accepts("evil.example:7070") and not check.accepts("127.0.0.1:x")
    everywhere = HostCheck("0.0.0.0", 7070, frozenset())
    # bound to every interface: the address the connection arrived on, with the port served
    assert everywhere.accepts("192.0.2.5:7070", "192.0.2.5") and not everywhere.accepts(
        "192.0.2.6:7070", "192.0.2.5"
    )
    assert not everywhere.accepts("rebound.example:7070", "192.0.2.5")
    assert HostCheck("127.0.0.1", 7070, frozenset({"*"})).everything


def test_a_client_that_leaves_mid_body_is_not_an_error(platform_server: PlatformProcess) -> None:
    url = platform_server.url
    port = int(url.rsplit(":", 1)[1])
    host = url.removeprefix("http://").encode()
    offset = len(platform_server.log())
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: " + host + b"\r\nX-Amz-Target: SageMaker.ListModels\r\n"
            b'Content-Length: 400\r\n\r\n{"MaxResults": '
        )
    # the platform still answers, and logged no traceback for the half request
    assert "Models" in platform_server.sagemaker().list_models()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "Traceback" not in log_since(platform_server, offset):
        time.sleep(0.1)
    assert "Traceback" not in log_since(platform_server, offset)


ENV_HOOKS = """
import json

def model_fn(model_dir, context=None):
    return None

def input_fn(input_data, content_type, context=None):
    return input_data

def predict_fn(data, model, context=None):
    with open("/proc/self/environ", "rb") as f:  # what this model server was started with
        pairs = [item.split(b"=", 1) for item in f.read().split(b"\\0") if b"=" in item]
    return {k.decode(): v.decode(errors="replace") for k, v in pairs}

def output_fn(prediction, accept, context=None):
    return json.dumps(prediction), "application/json"
"""


def test_transform_model_servers_get_an_explicit_environment(strict: PlatformProcess, roots: Path) -> None:
    sm = strict.sagemaker()
    model_dir = roots / "env-model"
    (model_dir / "code").mkdir(parents=True)
    (model_dir / "code" / "inference.py").write_text(ENV_HOOKS)
    archive = roots / "env-model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model_dir / "code", arcname="code")
    model, job = _name("envtm"), _name("envtj")
    sm.create_model(
        ModelName=model,
        PrimaryContainer={
            "Image": "selfmaker",
            "ModelDataUrl": archive.as_uri(),
            "Environment": {"TM_SETTING": "on"},
        },
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    (roots / "tin").mkdir()
    (roots / "tin" / "x.csv").write_text("1,2\n")
    sm.create_transform_job(
        TransformJobName=job,
        ModelName=model,
        TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": (roots / "tin").as_uri()}},
            "ContentType": "text/csv",
        },
        TransformOutput={"S3OutputPath": (roots / "tout").as_uri()},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1},
    )
    sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName=job, WaiterConfig=WAIT)
    desc = sm.describe_transform_job(TransformJobName=job)
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    env = json.loads((roots / "tout" / "x.csv.out").read_text())
    assert env["TM_SETTING"] == "on"
    assert_explicit(env, credentials=False)

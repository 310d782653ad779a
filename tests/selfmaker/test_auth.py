"""A `selfmaker up` with access keys, through real boto3 and raw HTTP: boto3 with the key works unchanged
(control plane, the three invoke operations), everything else is refused in AWS's shapes, allow-lists
hold, keys made or deleted while it runs take effect, its sockets stay on loopback, its children hold no
key, and no secret reaches any log."""

from __future__ import annotations

import datetime as dt
import http.client
import ipaddress
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import botocore.exceptions
import psutil
import pytest
import requests
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from platform_helpers import PlatformProcess, client, create_key, deploy, make_model, running, variant
from testkit import wait_until

from selfmaker.logrotate import rotated_parts

JSON11 = "application/x-amz-json-1.1"


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    """(code, HTTP status, message) of the ClientError ``call(**kwargs)`` raises."""
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call(**kwargs)
    err = caught.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"], err["Error"].get("Message", "")


def signed_headers(
    server: PlatformProcess,
    method: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    key: tuple[str, str],
) -> dict[str, str]:
    """``headers`` plus the X-Amz-Date and Authorization botocore's signer adds for ``key``."""
    host = server.url.split("://", 1)[1]
    request = AWSRequest(method=method, url=server.url + path, data=body, headers={"Host": host, **headers})
    SigV4Auth(Credentials(*key), "sagemaker", "us-east-1").add_auth(request)
    return {k: v for k, v in request.headers.items()}


def raw(
    server: PlatformProcess, method: str, path: str, body: bytes, headers: list[tuple[str, str | bytes]]
) -> Any:
    """One request with exactly these header lines (repeats, raw bytes); (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def endpoint(keyed_platform: PlatformProcess, onnx_model_tar: str) -> str:
    """An InService endpoint deployed through the keyed platform with boto3 signing with the key."""
    sm = keyed_platform.sagemaker()
    model, name = _name("m"), _name("auth")
    make_model(sm, model, onnx_model_tar)
    deploy(sm, name, [variant("Only", model)])
    return name


def test_boto3_with_the_key_works_unchanged(keyed_platform: PlatformProcess, endpoint: str) -> None:
    sm, smr = keyed_platform.sagemaker(), keyed_platform.runtime()
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"
    answer = smr.invoke_endpoint(EndpointName=endpoint, Body=b"1.0,2.0,0.5,0.1", ContentType="text/csv")
    assert answer["InvokedProductionVariant"] == "Only" and answer["Body"].read()
    stream = smr.invoke_endpoint_with_response_stream(
        EndpointName=endpoint, Body=b"1.0,2.0,0.5,0.1", ContentType="text/csv"
    )
    assert b"".join(e["PayloadPart"]["Bytes"] for e in stream["Body"] if "PayloadPart" in e)
    # InvokeEndpointAsync passes the signature check and reaches the endpoint (which has no async config)
    code, status, message = error_of(
        smr.invoke_endpoint_async, EndpointName=endpoint, InputLocation="s3://bucket/input.csv"
    )
    assert (code, status) == ("ValidationError", 400) and "asynchronous inference" in message


def test_cloudwatch_logs_is_signed_as_logs(keyed_platform: PlatformProcess, endpoint: str) -> None:
    """The CloudWatch Logs API on the same port: boto3's logs client (signing name ``logs``) with the key
    works; a signature scoped to ``sagemaker`` is refused; a key allowed only ``logs:Describe*`` reads the
    groups and nothing of SageMaker."""
    logs = client("logs", keyed_platform.url, key=keyed_platform.key)
    groups = [g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]]
    assert f"/aws/sagemaker/Endpoints/{endpoint}" in groups
    assert keyed_platform.key is not None
    host = keyed_platform.url.split("://", 1)[1]
    request = AWSRequest(
        method="POST",
        url=keyed_platform.url + "/",
        data=b"{}",
        headers={"Host": host, "X-Amz-Target": "Logs_20140328.DescribeLogGroups", "Content-Type": JSON11},
    )
    SigV4Auth(Credentials(*keyed_platform.key), "sagemaker", "us-east-1").add_auth(request)
    refused = requests.post(request.url, data=b"{}", headers=dict(request.headers.items()), timeout=30)
    assert refused.status_code == 403 and "correct service: 'logs'" in refused.json()["message"]
    reader = create_key(keyed_platform.home, "", "logs:Describe*")
    reader_logs = client("logs", keyed_platform.url, key=reader)
    wait_until(lambda: _accepted(reader_logs.describe_log_groups), timeout=15, what="the reader key")
    code, _, message = error_of(client("sagemaker", keyed_platform.url, key=reader).list_models)
    assert code == "AccessDeniedException" and message.endswith("sagemaker:ListModels")


def test_cloudwatch_is_signed_as_monitoring(keyed_platform: PlatformProcess) -> None:
    """boto3's cloudwatch client (smithy-rpc-v2-cbor, signing name ``monitoring``) with the key works; without
    a key, or with a key allowed only ``cloudwatch:ListMetrics``, it gets AWS's refusals in CBOR."""
    assert keyed_platform.key is not None
    cloudwatch = client("cloudwatch", keyed_platform.url, key=keyed_platform.key)
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []
    code, status, _ = error_of(client("cloudwatch", keyed_platform.url).list_metrics)
    assert (code, status) == ("UnrecognizedClientException", 403)
    lister = create_key(keyed_platform.home, "", "cloudwatch:ListMetrics")
    lister_cw = client("cloudwatch", keyed_platform.url, key=lister)
    wait_until(lambda: _accepted(lister_cw.list_metrics), timeout=15, what="the lister key")
    code, _, message = error_of(lister_cw.describe_alarms)
    assert code == "AccessDeniedException" and message.endswith("cloudwatch:DescribeAlarms")


def _accepted(call: Any) -> bool:
    try:
        call()
        return True
    except botocore.exceptions.ClientError as exc:
        assert exc.response["Error"]["Code"] == "UnrecognizedClientException"
        return False


def test_wrong_keys_are_refused_in_aws_shapes(keyed_platform: PlatformProcess, endpoint: str) -> None:
    key_id, secret = keyed_platform.key or ("", "")
    url = keyed_platform.url
    for service, call, kwargs in (
        ("sagemaker", "list_models", {}),
        ("sagemaker-runtime", "invoke_endpoint", {"EndpointName": endpoint, "Body": b"1,2,3,4"}),
    ):
        wrong_secret = getattr(client(service, url, key=(key_id, secret[:-1] + "x")), call)
        code, status, message = error_of(wrong_secret, **kwargs)
        assert (code, status) == ("InvalidSignatureException", 403)
        assert "signature we calculated does not match" in message
        unknown = getattr(client(service, url, key=("SMAKUNKNOWNKEY000000", secret)), call)
        assert error_of(unknown, **kwargs)[:2] == ("UnrecognizedClientException", 403)
        dummy = getattr(client(service, url), call)  # what the tests of a keyless platform sign with
        assert error_of(dummy, **kwargs)[:2] == ("UnrecognizedClientException", 403)
    # a refused call changes nothing
    name = _name("refused")
    wrong = client("sagemaker", url, key=(key_id, secret[:-1] + "x"))
    error_of(
        wrong.create_model,
        ModelName=name,
        PrimaryContainer={"Image": "selfmaker", "ModelDataUrl": "file:///nowhere/model.tar.gz"},
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
    )
    models = keyed_platform.sagemaker().list_models(NameContains=name)["Models"]
    assert models == []


def test_unsigned_calls_and_open_routes(keyed_platform: PlatformProcess, endpoint: str) -> None:
    control = requests.post(
        keyed_platform.url + "/",
        data=b"{}",
        headers={"X-Amz-Target": "SageMaker.ListModels", "Content-Type": JSON11},
        timeout=30,
    )
    assert control.status_code == 403
    assert control.json() == {
        "__type": "MissingAuthenticationToken",
        "message": "Missing Authentication Token",
    }
    for route in ("invocations", "invocations-response-stream", "async-invocations"):
        resp = requests.post(
            f"{keyed_platform.url}/endpoints/{endpoint}/{route}", data=b"1,2,3,4", timeout=30
        )
        assert resp.status_code == 403 and resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationToken"
        assert "Traceback" not in resp.text
    # health checks stay open; the metrics are the platform's business
    assert requests.get(keyed_platform.url + "/ping", timeout=30).status_code == 200
    assert requests.get(keyed_platform.url + "/metrics", timeout=30).status_code == 403
    assert keyed_platform.key is not None
    signed = signed_headers(keyed_platform, "GET", "/metrics", b"", {}, keyed_platform.key)
    metrics = requests.get(keyed_platform.url + "/metrics", headers=signed, timeout=30)
    assert metrics.status_code == 200, metrics.text
    # a route that does not exist: unsigned is refused, signed is aiohttp's 404 (not a 500)
    assert requests.get(keyed_platform.url + "/nowhere", timeout=30).status_code == 403
    signed = signed_headers(keyed_platform, "GET", "/nowhere", b"", {}, keyed_platform.key)
    assert requests.get(keyed_platform.url + "/nowhere", headers=signed, timeout=30).status_code == 404


def test_without_keys_nothing_changes(tmp_path: Path) -> None:
    """Loopback and no key: unsigned calls and any key are accepted, unknown routes are 404."""
    with running(tmp_path / "home") as server:
        listed = requests.post(
            server.url + "/",
            data=b"{}",
            headers={"X-Amz-Target": "SageMaker.ListModels", "Content-Type": JSON11},
            timeout=30,
        )
        assert listed.status_code == 200 and listed.json() == {"Models": []}
        assert server.sagemaker().list_models()["Models"] == []  # boto3 with a key the platform never made
        assert requests.get(server.url + "/nowhere", timeout=30).status_code == 404
        assert requests.get(server.url + "/metrics", timeout=30).status_code == 200


def test_bad_signatures_over_the_wire(keyed_platform: PlatformProcess) -> None:
    key = keyed_platform.key
    assert key is not None
    base = {"X-Amz-Target": "SageMaker.ListModels", "Content-Type": JSON11}
    good = signed_headers(keyed_platform, "POST", "/", b"{}", base, key)
    assert raw(keyed_platform, "POST", "/", b"{}", list(good.items()))[0] == 200

    doubled = [*good.items(), ("Authorization", good["Authorization"])]
    status, headers, body = raw(keyed_platform, "POST", "/", b"{}", doubled)
    assert status == 400 and b'"__type":"IncompleteSignature"' in body and b"2 Authorization headers" in body

    late = {**good, "X-Amz-Target": "SageMaker.DeleteModel"}  # the operation changed after signing
    status, _, body = raw(keyed_platform, "POST", "/", b"{}", list(late.items()))
    assert status == 403 and b"InvalidSignatureException" in body

    unsigned_extra = [*good.items(), ("X-Amz-Security-Token", "abc")]
    status, _, body = raw(keyed_platform, "POST", "/", b"{}", unsigned_extra)
    assert status == 400 and b"x-amz-security-token header was sent but not signed" in body

    old = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=10)
    skewed = {**good, "X-Amz-Date": old.strftime("%Y%m%dT%H%M%SZ")}
    status, _, body = raw(keyed_platform, "POST", "/", b"{}", list(skewed.items()))
    assert status == 403 and b"InvalidSignatureException" in body

    # non-ASCII (UTF-8 bytes on the wire) in a signed header: refused, not a 500
    runtime = signed_headers(
        keyed_platform,
        "POST",
        "/endpoints/x/invocations",
        b"1",
        {"X-Amzn-SageMaker-Custom-Attributes": "a"},
        key,
    )
    lines: list[tuple[str, str | bytes]] = [
        (k, v) for k, v in runtime.items() if k != "X-Amzn-SageMaker-Custom-Attributes"
    ]
    lines.append(("X-Amzn-SageMaker-Custom-Attributes", "café".encode()))
    status, headers, body = raw(keyed_platform, "POST", "/endpoints/x/invocations", b"1", lines)
    assert status == 400 and headers["x-amzn-ErrorType"] == "IncompleteSignature", body
    assert b"outside printable ASCII" in body


def test_strangers_are_refused_before_their_body_is_read(keyed_platform: PlatformProcess) -> None:
    """A call that announces 50 MB and sends none of it gets its refusal at once: the headers decide, the
    platform never waits for (or buffers) a stranger's body."""
    for headers in (
        b"",  # unsigned
        b"Authorization: AWS4-HMAC-SHA256 Credential=SMAKNOTOURS00000000/20260101/us-east-1/sagemaker/"
        b"aws4_request, SignedHeaders=host;x-amz-date, Signature="
        + b"0" * 64
        + b"\r\nX-Amz-Date: 20260101T000000Z\r\n",
    ):
        with socket.create_connection(("127.0.0.1", keyed_platform.port), timeout=20) as conn:
            conn.sendall(
                b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Amz-Target: SageMaker.ListModels\r\n"
                b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 50000000\r\n"
                + headers.rstrip(b"\r\n")
                + (b"\r\n" if headers else b"")
                + b"\r\n"
            )
            status_line = conn.recv(4096).split(b"\r\n", 1)[0]  # times out (failing) if the body is awaited
        assert status_line.startswith(b"HTTP/1.1 403"), status_line


def test_a_presigned_url_over_the_wire(keyed_platform: PlatformProcess) -> None:
    assert keyed_platform.key is not None
    host = keyed_platform.url.split("://", 1)[1]
    headers = {"Host": host, "X-Amz-Target": "SageMaker.ListModels", "Content-Type": JSON11}
    request = AWSRequest(method="POST", url=keyed_platform.url + "/", data=b"", headers=headers)
    SigV4QueryAuth(Credentials(*keyed_platform.key), "sagemaker", "us-east-1", expires=60).add_auth(request)
    answer = requests.post(request.url, headers=headers, timeout=30)
    assert answer.status_code == 200 and "Models" in answer.json(), answer.text
    tampered = request.url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")
    refused = requests.post(tampered, headers=headers, timeout=30)
    assert refused.status_code == 403 and refused.json()["__type"] == "InvalidSignatureException"


def test_allow_lists_and_keys_made_while_running(keyed_platform: PlatformProcess, endpoint: str) -> None:
    limited = create_key(
        keyed_platform.home, "invoke-only", "sagemaker:InvokeEndpoint", "sagemaker:Describe*"
    )
    sm = client("sagemaker", keyed_platform.url, key=limited)
    smr = client("sagemaker-runtime", keyed_platform.url, key=limited)

    def accepted() -> bool:
        try:
            sm.describe_endpoint(EndpointName=endpoint)
            return True
        except botocore.exceptions.ClientError as exc:
            assert exc.response["Error"]["Code"] == "UnrecognizedClientException"
            return False

    wait_until(accepted, timeout=15, what="the platform accepts a key made while it runs")
    assert smr.invoke_endpoint(EndpointName=endpoint, Body=b"1,2,3,4", ContentType="text/csv")["Body"].read()
    code, status, message = error_of(sm.list_models)
    assert (code, status) == ("AccessDeniedException", 403)
    assert message == f"Key {limited[0]} is not authorized to perform: sagemaker:ListModels"
    code, _, message = error_of(
        smr.invoke_endpoint_with_response_stream,
        EndpointName=endpoint,
        Body=b"1,2,3,4",
        ContentType="text/csv",
    )
    assert code == "AccessDeniedException" and "sagemaker:InvokeEndpointWithResponseStream" in message

    subprocess.run(
        [
            sys.executable,
            "-m",
            "selfmaker",
            "keys",
            "--home",
            str(keyed_platform.home),
            "delete",
            "invoke-only",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wait_until(lambda: not accepted(), timeout=15, what="a deleted key stops working")


def _tree(server: PlatformProcess) -> list[psutil.Process]:
    assert server.proc is not None
    root = psutil.Process(server.proc.pid)
    return [root, *root.children(recursive=True)]


def test_async_inference_with_a_key(
    keyed_platform: PlatformProcess, onnx_model_tar: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """InvokeEndpointAsync with an inline body, signed: the body the check read (and hashed) is the one
    the request is queued with, and its answer lands in the output location. The endpoint stays: its
    worker is among the children the next tests look at."""
    out = tmp_path_factory.mktemp("async-out")
    sm, smr = keyed_platform.sagemaker(), keyed_platform.runtime()
    model, name = _name("m"), _name("async")
    make_model(sm, model, onnx_model_tar)
    sm.create_endpoint_config(
        EndpointConfigName=f"{name}-cfg",
        ProductionVariants=[variant("AllTraffic", model)],
        AsyncInferenceConfig={"OutputConfig": {"S3OutputPath": out.as_uri()}},
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-cfg")
    sm.get_waiter("endpoint_in_service").wait(
        EndpointName=name, WaiterConfig={"Delay": 0.25, "MaxAttempts": 400}
    )
    rows = b"0.5,1.0,-0.2,0.3\n-1.5,-0.3,0.1,0.0\n2.0,2.0,0.0,0.0\n"
    accepted = smr.invoke_endpoint_async(
        EndpointName=name, Body=rows, ContentType="text/csv", Accept="text/csv"
    )
    location = Path(accepted["OutputLocation"].removeprefix("file://"))
    wait_until(location.exists, timeout=60, what="the async answer")
    wait_until(lambda: len(location.read_bytes().splitlines()) == 3, timeout=30, what="the whole answer")
    assert all(line.strip() for line in location.read_bytes().splitlines())  # one answer per row sent


def test_every_listening_socket_is_on_loopback(keyed_platform: PlatformProcess, endpoint: str) -> None:
    listening = []
    for proc in _tree(keyed_platform):
        try:
            listening += [
                c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
            ]
        except psutil.NoSuchProcess:
            continue
    assert len(listening) >= 2, listening  # the platform and the endpoint's model server at least
    assert all(ipaddress.ip_address(addr.ip).is_loopback for addr in listening), listening


def test_children_hold_no_access_key(keyed_platform: PlatformProcess, endpoint: str) -> None:
    assert keyed_platform.key is not None
    children = _tree(keyed_platform)[1:]
    assert children
    for proc in children:
        try:
            environ = proc.environ()
        except psutil.NoSuchProcess:
            continue
        values = "\n".join(environ.values())
        assert keyed_platform.key[1] not in values and keyed_platform.key[0] not in values, proc.cmdline()


def test_no_secret_reaches_any_log(keyed_platform: PlatformProcess, endpoint: str, tmp_path: Path) -> None:
    """After authenticated traffic of every kind (and refused calls), no secret is in any file the
    platform wrote but the credentials file itself."""
    assert keyed_platform.key is not None
    second = create_key(keyed_platform.home, "log-check")
    sm = client("sagemaker", keyed_platform.url, key=second)
    wait_until(lambda: _lists(sm), timeout=15, what="the second key is accepted")
    smr = keyed_platform.runtime()
    for _ in range(5):
        smr.invoke_endpoint(EndpointName=endpoint, Body=b"1,2,3,4", ContentType="text/csv")
        error_of(client("sagemaker", keyed_platform.url, key=(second[0], second[1] + "x")).list_models)
        error_of(client("sagemaker", keyed_platform.url, key=(keyed_platform.key[0], second[1])).list_models)
    secrets = [keyed_platform.key[1], second[1]]
    scanned = 0
    for path in keyed_platform.home.rglob("*"):
        if not path.is_file() or path.name.startswith("credentials"):
            continue
        data = path.read_bytes()
        scanned += 1
        for secret in secrets:
            assert secret.encode() not in data, f"a secret is in {path}"
    platform_log = keyed_platform.home / "logs" / "selfmaker.log"
    assert scanned >= 3 and platform_log.exists()
    logged = "".join(p.read_text() for p in [*rotated_parts(platform_log), platform_log])
    assert "refused POST '/': InvalidSignatureException" in logged


def test_logs_rotate_by_size(keyed_platform: PlatformProcess, endpoint: str) -> None:
    """The platform's log and the model server's (written by the child) rotate past 2 KiB, 2 parts kept;
    `selfmaker logs` prints the rotated parts before the live file."""
    logs = keyed_platform.home / "logs"
    server_log = next((logs / "endpoints" / endpoint).glob("*.log"))
    for _ in range(30):  # refused calls: one warning line each in the platform's log
        requests.post(keyed_platform.url + "/", data=b"{}", timeout=30)
    wait_until(lambda: rotated_parts(server_log), timeout=30, what="the model server's log is rotated")
    for live in (logs / "selfmaker.log", server_log):
        parts = rotated_parts(live)
        assert 1 <= len(parts) <= 2, parts
        assert all(p.stat().st_size > 0 and p.stat().st_mode & 0o777 == 0o600 for p in parts)
    assert (logs / "selfmaker.log").stat().st_mode & 0o777 == 0o600  # also when made by a rollover
    assert (logs / "selfmaker.log").stat().st_size <= 2048
    first_line = rotated_parts(server_log)[0].read_text().splitlines()[0]
    shown = subprocess.run(
        [sys.executable, "-m", "selfmaker", "logs", endpoint, "--home", str(keyed_platform.home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert first_line in shown


def _lists(sm: Any) -> bool:
    try:
        sm.list_models()
        return True
    except botocore.exceptions.ClientError:
        return False

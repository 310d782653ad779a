"""The SigV4 check (selfmaker.api.auth.Authenticator) on requests signed by botocore's own signers, and every
"bad input" of issue #26 in isolation: wrong keys, skewed dates, unsigned or duplicated headers, non-ASCII,
tampered bodies, presigned URLs, allow-lists. Over HTTP, against a running platform: test_auth.py."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from testkit import wait_until

from selfmaker.api.auth import Authenticator, called_action, is_loopback
from selfmaker.credentials import AccessKey, CredentialsError, CredentialStore, action_matches
from selfmaker.errors import (
    AccessDenied,
    AuthError,
    IncompleteSignature,
    InvalidSignature,
    MissingAuthenticationToken,
    UnrecognizedClient,
)

HOST = "127.0.0.1:7070"
JSON11 = "application/x-amz-json-1.1"


class Signed:
    """A request as botocore signs it, and what the server receives of it."""

    def __init__(self, request: AWSRequest, body: bytes) -> None:
        self.method = request.method
        url = request.url
        self.raw_path = url[url.index(HOST) + len(HOST) :]
        self.headers: CIMultiDict[str] = CIMultiDict(
            (k, v if isinstance(v, str) else v.decode()) for k, v in request.headers.items()
        )
        self.headers.setdefault("Host", HOST)
        self.body = body

    def check(
        self, auth: Authenticator, *, now: dt.datetime | None = None, secure: bool = False
    ) -> AccessKey:
        return auth.check(
            method=self.method,
            raw_path=self.raw_path,
            headers=CIMultiDictProxy(self.headers),
            body=self.body,
            secure=secure,
            now=now,
        )


def sign(
    key: AccessKey | tuple[str, str],
    *,
    target: str = "SageMaker.ListModels",
    path: str = "/",
    body: bytes = b"{}",
    service: str = "sagemaker",
    region: str = "us-east-1",
    headers: dict[str, str] | None = None,
) -> Signed:
    """A request signed the way boto3 signs it (SigV4Auth.add_auth, the current time)."""
    key_id, secret = (key.key_id, key.secret) if isinstance(key, AccessKey) else key
    all_headers = {"Host": HOST, **({"X-Amz-Target": target, "Content-Type": JSON11} if path == "/" else {})}
    request = AWSRequest(
        method="POST", url=f"http://{HOST}{path}", data=body, headers={**all_headers, **(headers or {})}
    )
    SigV4Auth(Credentials(key_id, secret), service, region).add_auth(request)
    return Signed(request, body)


@pytest.fixture
def store(tmp_path: Path) -> CredentialStore:
    return CredentialStore(tmp_path)


@pytest.fixture
def key(store: CredentialStore) -> AccessKey:
    return store.create("tester")


@pytest.fixture
def auth(store: CredentialStore, key: AccessKey) -> Authenticator:
    return Authenticator(store, "us-east-1", required=False)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_a_request_signed_by_botocore_passes(auth: Authenticator, key: AccessKey) -> None:
    assert sign(key).check(auth) == key
    runtime = sign(
        key, path="/endpoints/my-endpoint/invocations", body=b"1,2,3", headers={"Content-Type": "text/csv"}
    )
    assert runtime.check(auth) == key


def test_wrong_secret_unknown_key_and_no_signature(auth: Authenticator, key: AccessKey) -> None:
    with pytest.raises(InvalidSignature, match="does not match the signature you provided"):
        sign((key.key_id, key.secret + "x")).check(auth)
    with pytest.raises(UnrecognizedClient, match="security token included in the request is invalid"):
        sign(("SMAKNOTAKEY0000000", key.secret)).check(auth)
    unsigned = sign(key)
    del unsigned.headers["Authorization"]
    with pytest.raises(MissingAuthenticationToken):
        unsigned.check(auth)


def test_the_clock_allows_five_minutes_either_way(auth: Authenticator, key: AccessKey) -> None:
    request = sign(key)
    for minutes in (-4, 4):
        assert request.check(auth, now=now() + dt.timedelta(minutes=minutes)) == key
    with pytest.raises(InvalidSignature, match="Signature expired: .* is now earlier than"):
        request.check(auth, now=now() + dt.timedelta(minutes=6))
    with pytest.raises(InvalidSignature, match="Signature not yet current: .* is still later than"):
        request.check(auth, now=now() - dt.timedelta(minutes=6))


def test_a_date_that_is_not_a_date_or_disagrees_with_the_scope(auth: Authenticator, key: AccessKey) -> None:
    request = sign(key)
    request.headers["X-Amz-Date"] = "yesterday"
    with pytest.raises(AuthError) as caught:
        request.check(auth)
    assert caught.value.code in {"IncompleteSignature", "InvalidSignatureException"}
    request = sign(key)
    request.headers["X-Amz-Date"] = "20200101T000000Z"  # the scope still says today
    with pytest.raises(InvalidSignature, match="Date in Credential scope does not match"):
        request.check(auth)


def test_a_date_header_instead_of_x_amz_date(auth: Authenticator, key: AccessKey) -> None:
    """botocore signs with the HTTP Date header when the request has one (no X-Amz-Date)."""
    request = sign(key, headers={"Date": "Mon, 01 Jan 2024 00:00:00 GMT"})
    assert "X-Amz-Date" not in request.headers and "date" in request.headers["Authorization"]
    assert request.check(auth) == key
    request.headers["Date"] = "not a date"
    with pytest.raises(IncompleteSignature, match="not an HTTP date"):
        request.check(auth)
    request.headers.add("Date", "Mon, 01 Jan 2024 00:00:00 GMT")
    with pytest.raises(IncompleteSignature, match="2 Date headers"):
        request.check(auth)


def test_region_and_service_must_fit_the_api(auth: Authenticator, key: AccessKey) -> None:
    with pytest.raises(InvalidSignature, match="valid region: this platform is 'us-east-1', not 'eu-west-1'"):
        sign(key, region="eu-west-1").check(auth)
    with pytest.raises(InvalidSignature, match="correct service: 'sagemaker'"):
        sign(key, service="logs").check(auth)
    # the runtime is signed with botocore's signingName of sagemaker-runtime: "sagemaker"
    with pytest.raises(InvalidSignature, match="correct service: 'sagemaker'"):
        sign(key, path="/endpoints/e/invocations", service="sagemaker-runtime").check(auth)
    # the APIs other branches add beside the control plane: CloudWatch Logs and CloudWatch (monitoring)
    assert sign(key, target="Logs_20140328.DescribeLogGroups", service="logs").check(auth) == key
    with pytest.raises(InvalidSignature, match="correct service: 'logs'"):
        sign(key, target="Logs_20140328.DescribeLogGroups").check(auth)
    cloudwatch = sign(key, target="GraniteServiceVersion20100801.ListMetrics", service="monitoring")
    assert cloudwatch.check(auth) == key


def test_what_a_request_calls() -> None:
    assert (
        called_action("POST", "/", {"X-Amz-Target": "SageMaker.CreateModel"}, b"")[1]
        == "sagemaker:CreateModel"
    )
    assert (
        called_action("POST", "/endpoints/e/async-invocations", {}, b"")[1] == "sagemaker:InvokeEndpointAsync"
    )
    stream = called_action("POST", "/endpoints/e/invocations-response-stream", {}, b"")
    assert stream[0].signing_name == "sagemaker" and stream[1] == "sagemaker:InvokeEndpointWithResponseStream"
    query = called_action("POST", "/", {}, b"Action=PutMetricData&Version=2010-08-01&Namespace=x")
    assert query[0].signing_name == "monitoring" and query[1] == "cloudwatch:PutMetricData"
    cbor = called_action("POST", "/service/GraniteServiceVersion20100801/operation/GetMetricData", {}, b"")
    assert cbor[1] == "cloudwatch:GetMetricData"
    assert called_action("GET", "/metrics", {}, b"")[1] == "selfmaker:GetMetrics"


def test_tampered_body_or_header(auth: Authenticator, key: AccessKey) -> None:
    request = sign(key, target="SageMaker.DescribeModel", body=b'{"ModelName": "a"}')
    request.body = b'{"ModelName": "b"}'
    with pytest.raises(InvalidSignature):
        request.check(auth)
    request = sign(key, target="SageMaker.DescribeModel")
    request.headers["X-Amz-Target"] = "SageMaker.DeleteModel"
    with pytest.raises(InvalidSignature):
        request.check(auth)


def test_headers_that_must_be_signed(auth: Authenticator, key: AccessKey) -> None:
    request = sign(key, path="/endpoints/e/invocations", body=b"1")
    request.headers["X-Amzn-SageMaker-Target-Variant"] = "other"  # added after signing: it picks the variant
    with pytest.raises(
        IncompleteSignature, match="x-amzn-sagemaker-target-variant header was sent but not signed"
    ):
        request.check(auth)
    request = sign(key)
    request.headers["X-Amz-Security-Token"] = "x"
    with pytest.raises(IncompleteSignature, match="x-amz-security-token header was sent but not signed"):
        request.check(auth)
    request = sign(key)
    request.headers["Authorization"] = request.headers["Authorization"].replace("host;", "")
    with pytest.raises(IncompleteSignature, match="host header must be signed"):
        request.check(auth)
    request = sign(key)
    del request.headers["X-Amz-Target"]  # signed but gone
    with pytest.raises(IncompleteSignature, match="signed header 'x-amz-target' is not in the request"):
        request.check(auth)


def test_duplicated_authentication(auth: Authenticator, key: AccessKey) -> None:
    request = sign(key)
    request.headers.add("Authorization", request.headers["Authorization"])
    with pytest.raises(IncompleteSignature, match="2 Authorization headers"):
        request.check(auth)
    request = sign(key)
    request.headers.add("X-Amz-Date", request.headers["X-Amz-Date"])
    with pytest.raises(IncompleteSignature, match="2 X-Amz-Date headers"):
        request.check(auth)
    request = sign(key)
    request.raw_path += "?X-Amz-Signature=" + "0" * 64
    with pytest.raises(IncompleteSignature, match="signed twice"):
        request.check(auth)
    request = sign(key)
    auth_header = request.headers["Authorization"]
    request.headers["Authorization"] = auth_header + ", Signature=" + "0" * 64
    with pytest.raises(IncompleteSignature, match="holds Signature twice"):
        request.check(auth)


@pytest.mark.parametrize(
    "header",
    [
        "AWS4-HMAC-SHA256",
        "AWS4-HMAC-SHA256 Credential=SMAKX/20260101/us-east-1/sagemaker/aws4_request",
        "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=XYZ",
        "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=Host;X-Amz-Date, Signature="
        + "0" * 64,
        "AWS4-HMAC-SHA256 garbage",
    ],
)
def test_malformed_authorization_is_incomplete(auth: Authenticator, key: AccessKey, header: str) -> None:
    request = sign(key)
    request.headers["Authorization"] = header
    with pytest.raises(IncompleteSignature):
        request.check(auth)


def test_non_ascii_in_a_signed_header(auth: Authenticator, key: AccessKey) -> None:
    request = sign(
        key, path="/endpoints/e/invocations", body=b"1", headers={"X-Amzn-SageMaker-Custom-Attributes": "ok"}
    )
    request.headers["X-Amzn-SageMaker-Custom-Attributes"] = "caf\u00e9"
    with pytest.raises(IncompleteSignature, match="outside printable ASCII"):
        request.check(auth)
    request.headers["X-Amzn-SageMaker-Custom-Attributes"] = (
        "bad\udcffbyte"  # how aiohttp passes a non-UTF-8 byte
    )
    with pytest.raises(IncompleteSignature, match="outside printable ASCII"):
        request.check(auth)


def test_declared_payload_hash(auth: Authenticator, key: AccessKey) -> None:
    request = sign(key, headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    with pytest.raises(IncompleteSignature, match="does not match the request body"):
        request.check(auth)  # an unsigned body only under TLS, as AWS
    assert request.check(auth, secure=True) == key
    request = sign(key, headers={"X-Amz-Content-SHA256": "0" * 64})
    with pytest.raises(IncompleteSignature, match="does not match the request body"):
        request.check(auth)


def presign(key: AccessKey, expires: int = 60) -> Signed:
    request = AWSRequest(
        method="POST",
        url=f"http://{HOST}/",
        data=b"",
        headers={"Host": HOST, "X-Amz-Target": "SageMaker.ListModels", "Content-Type": JSON11},
    )
    SigV4QueryAuth(Credentials(key.key_id, key.secret), "sagemaker", "us-east-1", expires=expires).add_auth(
        request
    )
    assert "X-Amz-Signature=" in request.url
    return Signed(request, b"")


def test_presigned_urls(auth: Authenticator, key: AccessKey) -> None:
    request = presign(key, expires=60)
    assert request.check(auth) == key
    assert request.check(auth, now=now() + dt.timedelta(seconds=50)) == key
    with pytest.raises(InvalidSignature, match="Request has expired"):
        request.check(auth, now=now() + dt.timedelta(seconds=120))
    tampered = presign(key, expires=60)
    tampered.raw_path = tampered.raw_path.replace("X-Amz-Expires=60", "X-Amz-Expires=600")
    with pytest.raises(InvalidSignature, match="does not match"):
        tampered.check(auth)
    too_long = presign(key, expires=60)
    too_long.raw_path = too_long.raw_path.replace("X-Amz-Expires=60", "X-Amz-Expires=999999")
    with pytest.raises(IncompleteSignature, match="X-Amz-Expires must be between"):
        too_long.check(auth)
    doubled = presign(key)
    doubled.raw_path += "&X-Amz-Credential=x"
    with pytest.raises(IncompleteSignature, match="2 X-Amz-Credential"):
        doubled.check(auth)


def test_allow_lists_in_iam_syntax(store: CredentialStore, auth: Authenticator) -> None:
    limited = store.create("limited", ["sagemaker:InvokeEndpoint", "sagemaker:Describe*"])
    wait_until(lambda: limited.key_id in store.keys(max_age=1.0), timeout=10, what="the new key is read")
    assert sign(limited, target="SageMaker.DescribeEndpoint").check(auth) == limited
    assert sign(limited, path="/endpoints/e/invocations", body=b"1").check(auth) == limited
    with pytest.raises(
        AccessDenied, match=f"Key {limited.key_id} is not authorized to perform: sagemaker:ListModels"
    ):
        sign(limited).check(auth)
    with pytest.raises(AccessDenied, match="sagemaker:InvokeEndpointWithResponseStream"):
        sign(limited, path="/endpoints/e/invocations-response-stream", body=b"1").check(auth)
    assert action_matches("sagemaker:describe*", "sagemaker:DescribeModel")
    assert action_matches("sagemaker:*", "sagemaker:CreateModel")
    assert action_matches("*", "logs:GetLogEvents")
    assert action_matches("sagemaker:Invoke?ndpoint", "sagemaker:InvokeEndpoint")
    assert not action_matches("sagemaker:Invoke", "sagemaker:InvokeEndpoint")
    assert not action_matches("logs:*", "sagemaker:ListModels")
    assert not action_matches("sagemaker:[A-Z]*", "sagemaker:ListModels")  # no character classes in IAM


def test_keys_come_and_go_while_running(store: CredentialStore, auth: Authenticator, key: AccessKey) -> None:
    late = store.create("late")
    wait_until(lambda: late.key_id in store.keys(max_age=1.0), timeout=10, what="the new key is read")
    assert sign(late).check(auth) == late
    store.delete("late")
    wait_until(lambda: late.key_id not in store.keys(max_age=1.0), timeout=10, what="the deletion is read")
    with pytest.raises(UnrecognizedClient):
        sign(late).check(auth)


def test_a_broken_credentials_file_keeps_the_keys_read_before(
    store: CredentialStore, auth: Authenticator, key: AccessKey, caplog: pytest.LogCaptureFixture
) -> None:
    assert sign(key).check(auth) == key
    store.path.write_text("{ not json")
    wait_until(
        lambda: store.keys(max_age=1.0) and "is not a selfmaker credentials file" in caplog.text,
        timeout=10,
        what="the broken file is read",
    )
    assert sign(key).check(auth) == key  # neither open nor locked: the last good keys hold
    with pytest.raises(CredentialsError):
        CredentialStore(store.path.parent).keys()  # the `keys` command says so


def test_when_signatures_are_required(tmp_path: Path) -> None:
    empty = CredentialStore(tmp_path / "empty")
    assert not Authenticator(empty, "us-east-1", required=False).active()  # loopback, no keys: as before
    assert Authenticator(empty, "us-east-1", required=True).active()  # beyond loopback: always
    assert not Authenticator(empty, "us-east-1", required=True, enabled=False).active()  # --no-auth
    with_key = CredentialStore(tmp_path / "keyed")
    with_key.create()
    assert Authenticator(with_key, "us-east-1", required=False).active()
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com", ""))


def test_the_credentials_file(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "new-home")
    first = store.create("a", ["sagemaker:InvokeEndpoint"])
    second = store.create()
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert (store.path.parent.stat().st_mode & 0o777) == 0o700  # a home made by `keys create`
    assert first.key_id.startswith("SMAK") and len(first.key_id) == 20 and len(first.secret) == 40
    assert first.key_id != second.key_id and first.secret != second.secret
    again = CredentialStore(tmp_path / "new-home").keys()
    assert again[first.key_id] == first and again[second.key_id].actions is None
    assert json.loads(store.path.read_text())["keys"][0]["actions"] == ["sagemaker:InvokeEndpoint"]
    assert store.delete("a") == first and set(CredentialStore(tmp_path / "new-home").keys()) == {
        second.key_id
    }
    assert "secret" not in repr(second) and second.secret not in repr(second)
    assert "SecretAccessKey" not in json.dumps(second.public()) and second.secret not in json.dumps(
        second.public()
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    authorization=st.one_of(
        st.text(max_size=300),
        st.builds(
            lambda cred, names, sig: (
                f"AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={names}, Signature={sig}"
            ),
            st.text(max_size=80),
            st.text(max_size=60),
            st.text(alphabet="0123456789abcdef", min_size=60, max_size=66),
        ),
    ),
    path=st.text(max_size=80).map(lambda p: "/" + p),
    date=st.text(max_size=20),
    extra=st.dictionaries(st.text("abcdefxyz-", min_size=1, max_size=12), st.text(max_size=30), max_size=4),
    body=st.binary(max_size=64),
)
def test_anything_malformed_is_an_auth_error_never_a_crash(
    auth: Authenticator, authorization: str, path: str, date: str, extra: dict[str, str], body: bytes
) -> None:
    headers = CIMultiDict({"Host": HOST, "X-Amz-Date": date, "Authorization": authorization, **extra})
    with pytest.raises(AuthError):
        auth.check(method="POST", raw_path=path, headers=CIMultiDictProxy(headers), body=body, secure=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.text(max_size=200), body=st.binary(max_size=32))
def test_malformed_presigned_queries_are_auth_errors(auth: Authenticator, query: str, body: bytes) -> None:
    raw_path = "/?X-Amz-Algorithm=AWS4-HMAC-SHA256&" + query
    with pytest.raises(AuthError):
        auth.check(
            method="POST",
            raw_path=raw_path,
            headers=CIMultiDictProxy(CIMultiDict({"Host": HOST})),
            body=body,
            secure=False,
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(
        st.sampled_from(
            ["host", "x-amz-date", "x-amz-target", "content-type", "date", "x-amz-content-sha256", "x"]
        ),
        max_size=5,
    ),
    values=st.dictionaries(
        st.sampled_from(["X-Amz-Target", "Content-Type", "Date", "X-Amz-Content-SHA256", "X", "X-Amz-Meta"]),
        st.text(max_size=20),
        max_size=4,
    ),
    path=st.text(max_size=40).map(lambda p: "/" + p),
    skew=st.integers(min_value=-900, max_value=900),
    body=st.binary(max_size=32),
)
def test_deep_malformed_signatures_of_a_real_key_are_auth_errors(
    auth: Authenticator,
    key: AccessKey,
    names: list[str],
    values: dict[str, str],
    path: str,
    skew: int,
    body: bytes,
) -> None:
    """With a real key id and a current scope the check goes all the way to the signature: still only
    AuthErrors (a random signature never matches)."""
    when = now() + dt.timedelta(seconds=skew)
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    authorization = (
        f"AWS4-HMAC-SHA256 Credential={key.key_id}/{stamp[:8]}/us-east-1/sagemaker/aws4_request, "
        f"SignedHeaders={';'.join(names)}, Signature={'ab' * 32}"
    )
    headers = CIMultiDict({"Host": HOST, "X-Amz-Date": stamp, "Authorization": authorization, **values})
    with pytest.raises(AuthError):
        auth.check(method="POST", raw_path=path, headers=CIMultiDictProxy(headers), body=body, secure=False)

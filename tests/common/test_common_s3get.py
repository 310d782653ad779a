"""The standard-library S3 download of the Lambda mode: signatures equal botocore's, objects arrive whole,
failures name the object."""

from __future__ import annotations

import datetime
from pathlib import Path
from unittest import mock

import boto3
import botocore.auth
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from hypothesis import given, settings
from hypothesis import strategies as st

from common import s3get

NOW = datetime.datetime(2026, 12, 7, 18, 30, 5, tzinfo=datetime.timezone.utc)


def botocore_headers(url: str, region: str, creds: s3get.Credentials) -> dict[str, str]:
    request = AWSRequest(method="GET", url=url, headers={"X-Amz-Content-SHA256": s3get.EMPTY_SHA256})
    signer = S3SigV4Auth(BotoCredentials(creds.access_key, creds.secret_key, creds.token), "s3", region)
    with mock.patch.object(botocore.auth, "get_current_datetime", lambda: NOW):  # sign at our fixed time
        signer.add_auth(request)
    return dict(request.headers.items())


_KEY = st.text(st.sampled_from("abcXYZ019-_.~/ +=%&?#é"), min_size=1, max_size=40).filter(
    lambda k: not k.startswith("/") and "//" not in k
)


@settings(max_examples=60)
@given(
    key=_KEY,
    token=st.one_of(st.none(), st.text("abcdef0123456789/+=", min_size=8, max_size=40)),
    endpoint=st.sampled_from([None, "http://127.0.0.1:5000"]),
    region=st.sampled_from(["us-east-1", "eu-west-3"]),
)
def test_signature_equals_botocores(key: str, token: str | None, endpoint: str | None, region: str) -> None:
    creds = s3get.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    url = s3get.object_url("models-bucket", key, region, endpoint)
    ours = s3get.sign_get(url, region, creds, NOW)
    theirs = botocore_headers(url, region, creds)
    assert ours["Authorization"] == theirs["Authorization"]
    assert ours["X-Amz-Date"] == theirs["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == theirs.get("X-Amz-Security-Token")


def test_fetch_downloads_the_object_whole(moto_server: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    s3.create_bucket(Bucket="s3get-test")
    payload = bytes(range(256)) * 4099
    s3.put_object(Bucket="s3get-test", Key="models/a b/model.tar.gz", Body=payload)
    creds = s3get.credentials_from_env({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    assert creds is not None
    dest = s3get.fetch(
        "s3://s3get-test/models/a b/model.tar.gz",
        tmp_path / "dl" / "model.tar.gz",
        credentials=creds,
        region="us-east-1",
        endpoint=moto_server,
    )
    assert dest.read_bytes() == payload
    assert not list(tmp_path.glob("dl/*.part"))


def test_missing_object_and_bad_uri_name_the_object(moto_server: str, tmp_path: Path) -> None:
    creds = s3get.Credentials("testing", "testing")
    with pytest.raises(s3get.S3GetError, match=r"s3://s3get-test/nothing.tar.gz: HTTP 404 NoSuchKey"):
        s3get.fetch(
            "s3://s3get-test/nothing.tar.gz",
            tmp_path / "x",
            credentials=creds,
            region="us-east-1",
            endpoint=moto_server,
        )
    with pytest.raises(s3get.S3GetError, match="expected s3://bucket/key"):
        s3get.fetch("s3://only-bucket", tmp_path / "x", credentials=creds, region="us-east-1")
    assert s3get.credentials_from_env({}) is None

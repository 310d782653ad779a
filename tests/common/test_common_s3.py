"""common.s3: the one S3 client factory, against moto's server, honouring the endpoint variables."""

from __future__ import annotations

import pytest

from common import s3

DEAD = "http://127.0.0.1:9"  # the discard port: nothing answers S3 there


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in s3.ENDPOINT_ENVS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _round_trip(client: object, bucket: str) -> bytes:
    client.create_bucket(Bucket=bucket)  # type: ignore[attr-defined]
    client.put_object(Bucket=bucket, Key="a?b#c", Body=b"payload")  # type: ignore[attr-defined]
    return client.get_object(Bucket=bucket, Key="a?b#c")["Body"].read()  # type: ignore[attr-defined,no-any-return]


def test_the_s3_specific_variable_wins(moto_server: str, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", DEAD)
    clean_env.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    assert s3.endpoint_url() == moto_server
    client = s3.client()
    assert client.meta.endpoint_url == moto_server
    assert _round_trip(client, "common-s3-specific") == b"payload"


def test_the_general_variable_is_used_alone(moto_server: str, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL", moto_server)
    assert _round_trip(s3.client(), "common-s3-general") == b"payload"


def test_an_explicit_endpoint_beats_the_variables(moto_server: str, clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL_S3", DEAD)
    clean_env.setenv("AWS_ENDPOINT_URL", DEAD)
    assert s3.endpoint_url(moto_server) == moto_server
    assert _round_trip(s3.client(moto_server), "common-s3-explicit") == b"payload"


def test_without_any_endpoint_boto3_resolves_aws(clean_env: pytest.MonkeyPatch) -> None:
    assert s3.endpoint_url() is None
    assert "amazonaws.com" in s3.client(region="eu-west-1").meta.endpoint_url


def test_the_variables_are_read_when_the_client_is_built(
    moto_server: str, clean_env: pytest.MonkeyPatch
) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL_S3", DEAD)
    first = s3.client()
    clean_env.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    assert first.meta.endpoint_url == DEAD and s3.client().meta.endpoint_url == moto_server


def test_an_explicit_environment_mapping_is_read_instead_of_the_process_one(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("AWS_ENDPOINT_URL_S3", DEAD)
    assert s3.endpoint_url(env={"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}) == "http://127.0.0.1:1"
    assert s3.endpoint_url(env={}) is None

"""common.uris: s3:// and file:// parsing, as properties over generated URIs and paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.uris import (
    UriError,
    file_path,
    is_s3,
    is_uri,
    join,
    local_path,
    split_s3,
    split_s3_location,
    to_uri,
)

buckets = st.from_regex(r"\A[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
# S3 keys are any UTF-8; "?", "#", "%" and spaces are the characters a URL parser would mangle
keys = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=60)
path_parts = st.lists(
    st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"),
        min_size=1,
        max_size=12,
    ).filter(lambda p: p not in (".", "..")),
    min_size=1,
    max_size=5,
)


@given(buckets, keys)
def test_split_s3_returns_bucket_and_verbatim_key(bucket: str, key: str) -> None:
    assert split_s3(f"s3://{bucket}/{key}") == (bucket, key.lstrip("/"))
    assert is_s3(f"s3://{bucket}/{key}") and is_uri(f"s3://{bucket}/{key}")


@given(buckets)
def test_a_bucket_alone_has_an_empty_key(bucket: str) -> None:
    assert split_s3(f"s3://{bucket}") == (bucket, "")


@pytest.mark.parametrize(
    "uri", ["s3://", "s3:///key", "file:///x", "/plain/path", "S3://b/k", "https://b.s3.amazonaws.com/k"]
)
def test_split_s3_refuses_what_is_not_an_s3_uri(uri: str) -> None:
    with pytest.raises(UriError, match="not an S3 URI"):
        split_s3(uri)


@given(path_parts)
def test_file_uris_round_trip_to_paths(parts: list[str]) -> None:
    path = Path("/", *parts)
    assert file_path(path.as_uri()) == path
    assert local_path(to_uri(path)) == path.resolve()
    assert local_path(str(path)) == path


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:///abs/model.tar.gz", "/abs/model.tar.gz"),
        ("file://localhost/abs/m", "/abs/m"),
        ("file://dir/model.tar.gz", "dir/model.tar.gz"),  # the SageMaker SDK's local mode: host + path
        ("file:///with%20space/a%23b", "/with space/a#b"),
    ],
)
def test_file_uri_rules(uri: str, path: str) -> None:
    assert file_path(uri) == Path(path)


@pytest.mark.parametrize("uri", ["ftp://host/x", "http://127.0.0.1/x", "s3://b/k"])
def test_local_path_refuses_other_schemes(uri: str) -> None:
    with pytest.raises(UriError):
        local_path(uri)


def test_file_path_needs_a_file_uri_with_a_path() -> None:
    for uri in ("/x", "file://", "file://localhost"):
        with pytest.raises(UriError):
            file_path(uri)


@given(
    st.sampled_from(["s3://b", "s3://b/", "file:///d/"]),
    st.lists(st.from_regex(r"\A/?[a-z]{1,5}/?\Z"), max_size=4),
)
def test_join_has_single_slashes(base: str, parts: list[str]) -> None:
    joined = join(base, *parts)
    assert "//" not in joined.split("://", 1)[1].lstrip("/")
    assert joined.startswith(base.rstrip("/"))
    assert [p.strip("/") for p in parts] == (joined[len(base.rstrip("/")) + 1 :].split("/") if parts else [])


def test_a_package_gets_its_own_error_class() -> None:
    class StoreError(Exception):
        pass

    for call in (
        lambda: split_s3("s3://", error=StoreError),
        lambda: file_path("/x", error=StoreError),
        lambda: local_path("ftp://h/x", error=StoreError),
        lambda: local_path("file://", error=StoreError),
    ):
        with pytest.raises(StoreError):
            call()


@given(buckets, keys)
def test_s3_locations_read_s3_uris_and_both_https_styles(bucket: str, key: str) -> None:
    key = key.lstrip("/")
    for location in (
        f"s3://{bucket}/{key}",
        f"https://{bucket}.s3.amazonaws.com/{key}",
        f"https://{bucket}.s3.eu-west-1.amazonaws.com/{key}",
        f"https://s3.amazonaws.com/{bucket}/{key}",
        f"https://s3.us-east-2.amazonaws.com/{bucket}/{key}",
    ):
        assert split_s3_location(location) == (bucket, key), location


@pytest.mark.parametrize(
    "location", ["https://s3.amazonaws.com/", "https://", "s3://", "http://b.s3.amazonaws.com/k", "file:///x"]
)
def test_s3_locations_without_a_bucket_are_refused(location: str) -> None:
    with pytest.raises(UriError, match="not an S3"):
        split_s3_location(location)

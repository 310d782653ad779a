"""``s3://`` and ``file://`` URIs and plain paths: the one parser every package uses.

Rules (the SageMaker Python SDK's local mode reads ``file://`` the same way):

- ``s3://bucket/key`` → ``("bucket", "key")``; the key is taken verbatim (``?``, ``#``, ``%`` and inner
  slashes are part of it, as in the S3 console's URIs) and may be empty (a whole bucket); a URI without a
  bucket is an error.
- ``file:///abs/path`` and ``file://localhost/abs/path`` → ``/abs/path``; ``file://dir/x`` (a host part
  that is not ``localhost``) → the relative path ``dir/x``. Percent-escapes are decoded.
- a plain path (no ``scheme://``) is itself; any other scheme is an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, unquote

S3 = "s3://"
FILE = "file://"


class UriError(ValueError):
    """A URI that is not of the expected kind; the message names it."""


def is_s3(uri: str) -> bool:
    """Whether ``uri`` is an ``s3://`` URI."""
    return uri.startswith(S3)


def is_file(uri: str) -> bool:
    """Whether ``uri`` is a ``file://`` URI."""
    return uri.startswith(FILE)


def is_uri(value: str) -> bool:
    """Whether ``value`` is an ``s3://`` or ``file://`` URI (not a plain path)."""
    return value.startswith((S3, FILE))


def split_s3(uri: str, *, error: type[Exception] = UriError) -> tuple[str, str]:
    """``s3://bucket/key`` → ``(bucket, key)`` (the key without its leading slash; may be empty).

    ``error``: the exception class raised for anything else (a package passes its own).
    """
    # not urlparse: it would cut a key at "?" or "#"
    bucket, _, key = uri[len(S3) :].partition("/") if uri.startswith(S3) else ("", "", "")
    if not bucket:
        raise error(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    return bucket, key.lstrip("/")


def split_s3_location(location: str, *, error: type[Exception] = UriError) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` URI or of an S3 ``https://`` URL, virtual-hosted
    (``https://bucket.s3[.region].amazonaws.com/key``) or path-style
    (``https://s3[.region].amazonaws.com/bucket/key``).

    ``error`` as for :func:`split_s3`.
    """
    if is_s3(location):
        return split_s3(location, error=error)
    host, _, path = (
        location[len("https://") :].partition("/") if location.startswith("https://") else ("", "", "")
    )
    if ".s3" in host:
        bucket, key = host.split(".s3", 1)[0], path
    else:
        bucket, _, key = path.partition("/")
    if not bucket:
        raise error(f"not an S3 location: {location!r} (expected s3://bucket/key or an S3 https:// URL)")
    return bucket, key.lstrip("/")


def file_path(uri: str, *, error: type[Exception] = UriError) -> Path:
    """The filesystem path of a ``file://`` URI (the module's rules); ``error`` as for :func:`split_s3`."""
    if not uri.startswith(FILE):
        raise error(f"not a file:// URI: {uri!r}")
    host, slash, path = uri[len(FILE) :].partition("/")
    if host == "localhost":
        host = ""
    if not host + path:
        raise error(f"file:// URI without a path: {uri!r}")
    return Path(unquote(host + slash + path))


def local_path(location: str, *, error: type[Exception] = UriError) -> Path:
    """A ``file://`` URI or a plain path as a path; any other scheme raises ``error`` (:class:`UriError`)."""
    if location.startswith(FILE):
        return file_path(location, error=error)
    if "://" in location:
        raise error(f"unsupported URI scheme: {location!r} (use s3:// or file://)")
    return Path(location)


def to_uri(location: str | os.PathLike[str]) -> str:
    """A URI unchanged, a local path as an absolute ``file://`` URI."""
    text = os.fspath(location)
    if is_uri(text):
        return text
    return FILE + quote(str(Path(text).resolve()))


def join(base: str, *parts: str) -> str:
    """``base`` and ``parts`` joined with single slashes (``join("s3://b/p/", "/x", "y")`` → ``s3://b/p/x/y``)."""
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out

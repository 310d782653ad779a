"""Object storage by URI: ``s3://bucket/key``, ``file:///path`` and plain paths.

URIs are read by :mod:`common.uris`; the ``s3://`` client is :func:`common.s3.client`, which honours
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (moto's server in tests, MinIO, real S3); an explicit
``endpoint_url`` wins.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from common import s3, uris


class StorageError(Exception):
    """A URI cannot be read or written; the message names it."""


@dataclass(frozen=True)
class ObjectRef:
    """One object under a prefix: its full URI and its path relative to the prefix."""

    uri: str
    relative: str
    size: int = 0
    #: what changes when the content does: the S3 ETag, a file's modification time in ns ("" if unknown)
    version: str = ""


is_s3 = uris.is_s3
join = uris.join
#: ``s3://bucket/key`` → (``bucket``, ``key``); :class:`StorageError` for anything else
split_s3 = partial(uris.split_s3, error=StorageError)
#: ``file:///x`` or ``/x`` → ``Path('/x')``; :class:`StorageError` for other schemes
local_path = partial(uris.local_path, error=StorageError)


class Storage:
    """Reads and writes objects by URI; one boto3 client, created on first S3 use."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._client: Any = None

    @property
    def s3(self) -> Any:
        """The boto3 S3 client (lazily created)."""
        if self._client is None:
            self._client = s3.client(self.endpoint_url)
        return self._client

    # -- listing -------------------------------------------------------------------------------
    def list(self, prefix: str) -> list[ObjectRef]:
        """Every object whose key starts with ``prefix`` (S3) or every file under a path, sorted by URI.

        An S3 prefix that names one object exactly yields that object with its base name as relative path.
        """
        if is_s3(prefix):
            bucket, key = split_s3(prefix)
            out: list[ObjectRef] = []
            try:
                paginator = self.s3.get_paginator("list_objects_v2")
                for page in paginator.paginate(Bucket=bucket, Prefix=key):
                    for obj in page.get("Contents", []):
                        k = obj["Key"]
                        if k.endswith("/"):
                            continue
                        rel = k.rsplit("/", 1)[-1] if k == key else _rel_from_prefix(key, k)
                        out.append(
                            ObjectRef(
                                f"s3://{bucket}/{k}", rel, int(obj.get("Size", 0)), str(obj.get("ETag", ""))
                            )
                        )
            except Exception as exc:  # botocore errors carry the code; keep the URI in the message
                raise StorageError(f"cannot list {prefix}: {exc}") from exc
            return sorted(out, key=lambda r: r.uri)
        path = local_path(prefix)
        if path.is_file():
            st = path.stat()
            return [ObjectRef(path.as_uri(), path.name, st.st_size, str(st.st_mtime_ns))]
        if not path.is_dir():
            raise StorageError(f"no such file or directory: {prefix}")
        return sorted(
            (_file_ref(p, p.relative_to(path).as_posix()) for p in path.rglob("*") if p.is_file()),
            key=lambda r: r.uri,
        )

    # -- reading -------------------------------------------------------------------------------
    def download(self, uri: str, dest: Path) -> None:
        """Copy one object to ``dest`` (parents created)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.s3.download_file(bucket, key, str(dest))
            except Exception as exc:
                raise StorageError(f"cannot download {uri}: {exc}") from exc
            return
        src = local_path(uri)
        try:
            shutil.copyfile(src, dest)
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc

    def read_bytes(self, uri: str) -> bytes:
        """The whole content of one object."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except Exception as exc:
                raise StorageError(f"cannot read {uri}: {exc}") from exc
        try:
            return local_path(uri).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc

    def open_stream(self, uri: str) -> Any:
        """A binary file-like object streaming one object (caller closes it)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                return self.s3.get_object(Bucket=bucket, Key=key)["Body"]
            except Exception as exc:
                raise StorageError(f"cannot read {uri}: {exc}") from exc
        try:
            return open(local_path(uri), "rb")
        except OSError as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from exc

    # -- writing -------------------------------------------------------------------------------
    def upload(self, src: Path, uri: str) -> None:
        """Copy a local file to ``uri``."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.s3.upload_file(str(src), bucket, key)
            except Exception as exc:
                raise StorageError(f"cannot upload to {uri}: {exc}") from exc
            return
        dest = local_path(uri)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".partial")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except OSError as exc:
            raise StorageError(f"cannot write {uri}: {exc}") from exc

    def delete(self, uri: str) -> None:
        """Delete one object (missing is fine)."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            try:
                self.s3.delete_object(Bucket=bucket, Key=key)
            except Exception as exc:
                raise StorageError(f"cannot delete {uri}: {exc}") from exc
            return
        try:
            local_path(uri).unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot delete {uri}: {exc}") from exc


def _file_ref(path: Path, relative: str) -> ObjectRef:
    st = path.stat()
    return ObjectRef(path.as_uri(), relative, st.st_size, str(st.st_mtime_ns))


def _rel_from_prefix(prefix: str, key: str) -> str:
    """Relative path of ``key`` under ``prefix`` as SageMaker lays it out in the channel directory.

    ``data/train`` + ``data/train/a.csv`` → ``a.csv``; ``data/tr`` + ``data/train.csv`` → ``train.csv``.
    """
    rest = key[len(prefix) :]
    if prefix.endswith("/") or rest.startswith("/"):
        return rest.lstrip("/")
    # prefix ends mid-name: keep the partial component's full name
    head = prefix.rsplit("/", 1)[-1]
    return head + rest

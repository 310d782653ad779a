"""Object storage by URI: ``file://`` paths and ``s3://`` objects (boto3).

Everything streams: byte-range readers, and writers that buffer at most one multipart part. Writes are
atomic: a local file is written under a temporary name in the same directory and renamed; an S3 object
is a multipart upload completed only when the writer closes cleanly (a small one is a single PUT), so a
crash never leaves a half-written object under the final name.

URIs are read by :mod:`common.uris`; ``s3://`` clients come from :func:`common.s3.client`, which honours
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; an explicit endpoint can be passed too (:func:`configure_s3`).
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from batch.errors import InputError, OutputError
from common import s3, uris

#: multipart part size of S3 writes (S3's minimum is 5 MiB)
S3_PART_BYTES = 8 * 1024 * 1024
TMP_MARK = ".selfmaker-tmp-"

_clients: dict[str | None, Any] = {}
_clients_lock = threading.Lock()
_s3_endpoint: list[str | None] = [None]


def configure_s3(endpoint_url: str | None) -> None:
    """Use ``endpoint_url`` for every S3 client of this process (None: boto3's own resolution)."""
    with _clients_lock:
        _s3_endpoint[0] = endpoint_url or None


def s3_client() -> Any:
    """A thread-safe boto3 S3 client for this process, created on first use."""
    endpoint = _s3_endpoint[0]
    with _clients_lock:
        client = _clients.get(endpoint)
        if client is None:
            client = _clients[endpoint] = s3.client(endpoint, max_pool_connections=32)
        return client


@dataclass(frozen=True)
class ObjectInfo:
    """One input object: its URI, its key relative to the input prefix, size and version tag."""

    uri: str
    rel: str
    size: int
    version: str


is_uri = uris.is_uri
to_uri = uris.to_uri
local_path = uris.local_path
split_s3 = uris.split_s3
join_uri = uris.join


def _rel_to_prefix(key: str, prefix: str) -> str:
    """The key relative to a prefix that may be a directory, a partial name, or the key itself."""
    if key == prefix:
        return key.rsplit("/", 1)[-1]
    if prefix.endswith("/") or not prefix:
        return key[len(prefix) :]
    if key.startswith(prefix + "/"):
        return key[len(prefix) + 1 :]
    directory = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    return key[len(directory) + 1 :] if directory else key


class Writer(Protocol):
    """A streaming, atomic writer (see :func:`open_writer`)."""

    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


# -- listing ---------------------------------------------------------------------------------------


def list_prefix(uri: str) -> list[ObjectInfo]:
    """Every object under an S3Prefix-style ``uri``, sorted by key (directory markers skipped)."""
    if uri.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, prefix = split_s3(uri)
        found: list[ObjectInfo] = []
        try:
            paginator = s3_client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"]
                    if key.endswith("/"):
                        continue
                    found.append(
                        ObjectInfo(
                            f"s3://{bucket}/{key}",
                            _rel_to_prefix(key, prefix),
                            int(obj["Size"]),
                            str(obj.get("ETag", "")).strip('"'),
                        )
                    )
        except (BotoCoreError, ClientError) as exc:
            raise InputError(f"cannot list {uri}: {exc}") from None
        return sorted(found, key=lambda o: o.uri)
    path = local_path(uri)
    prefix_text = str(path)
    files: list[Path]
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        base = path
    elif path.is_file():
        files = [path]
        base = path.parent
    else:
        parent = path.parent
        files = (
            [p for p in parent.rglob("*") if p.is_file() and str(p).startswith(prefix_text)]
            if parent.is_dir()
            else []
        )
        base = parent
    infos = []
    for file in sorted(files):
        stat = file.stat()
        infos.append(
            ObjectInfo(
                to_uri(file),
                file.relative_to(base).as_posix(),
                stat.st_size,
                f"{stat.st_size}-{stat.st_mtime_ns}",
            )
        )
    return infos


def stat(uri: str) -> ObjectInfo:
    """Size and version of one object (InputError when it does not exist)."""
    if uri.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        try:
            head = s3_client().head_object(Bucket=bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise InputError(f"cannot read {uri}: {exc}") from None
        return ObjectInfo(
            uri, key.rsplit("/", 1)[-1], int(head["ContentLength"]), str(head.get("ETag", "")).strip('"')
        )
    path = local_path(uri)
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read {uri}: {exc.strerror or exc}") from None
    if not path.is_file():
        raise InputError(f"{uri} is not a file")
    return ObjectInfo(uri, path.name, st.st_size, f"{st.st_size}-{st.st_mtime_ns}")


# -- reading ---------------------------------------------------------------------------------------


def open_range(uri: str, start: int = 0, end: int | None = None) -> BinaryIO:
    """A binary stream of bytes ``[start, end)`` of ``uri`` (``end=None``: to the end). Close it."""
    if uri.startswith("s3://"):
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = split_s3(uri)
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if start or end is not None:
            if end is not None and end <= start:
                return _EmptyStream()  # type: ignore[return-value]
            kwargs["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        try:
            return s3_client().get_object(**kwargs)["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise InputError(f"cannot read {uri}: {exc}") from None
    try:
        handle = open(local_path(uri), "rb")  # noqa: SIM115 - the caller closes it
    except OSError as exc:
        raise InputError(f"cannot read {uri}: {exc.strerror or exc}") from None
    handle.seek(start)
    if end is None:
        return handle
    return _Bounded(handle, end - start)  # type: ignore[return-value]


class _EmptyStream:
    def read(self, n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _Bounded:
    """A file handle limited to ``remaining`` bytes."""

    def __init__(self, handle: BinaryIO, remaining: int) -> None:
        self._handle = handle
        self._remaining = max(0, remaining)

    def read(self, n: int = -1) -> bytes:
        if self._remaining <= 0:
            return b""
        n = self._remaining if n is None or n < 0 else min(n, self._remaining)
        data = self._handle.read(n)
        self._remaining -= len(data)
        return data

    def close(self) -> None:
        self._handle.close()


def read_bytes(uri: str) -> bytes:
    """The whole of a small object (manifests, state files)."""
    stream = open_range(uri)
    try:
        return stream.read()
    finally:
        stream.close()


def exists(uri: str) -> bool:
    """True when the object exists."""
    if uri.startswith("s3://"):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
        except ClientError:
            return False
        return True
    return local_path(uri).is_file()


def iter_chunks(uri: str, chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """The object's bytes in chunks of at most ``chunk`` bytes."""
    stream = open_range(uri)
    try:
        while True:
            data = stream.read(chunk)
            if not data:
                return
            yield data
    finally:
        stream.close()


# -- writing ---------------------------------------------------------------------------------------


class _FileWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.tmp = path.with_name(f".{path.name}{TMP_MARK}{uuid.uuid4().hex[:12]}")
            self._handle: BinaryIO | None = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit/abort
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None

    def write(self, data: bytes) -> None:
        assert self._handle is not None
        try:
            self._handle.write(data)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def commit(self) -> None:
        assert self._handle is not None
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self.tmp.unlink(missing_ok=True)


class _S3Writer:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.bucket, self.key = split_s3(uri)
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _call(self, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(s3_client(), method)(Bucket=self.bucket, Key=self.key, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise OutputError(f"cannot write {self.uri}: {exc}") from None

    def _flush_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self._call("create_multipart_upload")["UploadId"]
        number = len(self._parts) + 1
        answer = self._call(
            "upload_part", UploadId=self._upload_id, PartNumber=number, Body=bytes(self._buffer)
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        self._buffer.clear()

    def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= S3_PART_BYTES:
            try:
                self._flush_part()
            except OutputError:
                self.abort()
                raise

    def commit(self) -> None:
        try:
            if self._upload_id is None:
                self._call("put_object", Body=bytes(self._buffer))
                return
            if self._buffer:
                self._flush_part()
            self._call(
                "complete_multipart_upload", UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
            self._upload_id = None
        except OutputError:
            self.abort()
            raise

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self._call("abort_multipart_upload", UploadId=upload_id)
            except OutputError:
                pass  # best effort: a lifecycle rule cleans stale uploads


def open_writer(uri: str) -> Writer:
    """An atomic streaming writer for ``uri``: ``write()`` then ``commit()`` (or ``abort()``)."""
    if uri.startswith("s3://"):
        return _S3Writer(uri)
    return _FileWriter(local_path(uri))


def put_bytes(uri: str, data: bytes) -> None:
    """Write a small object atomically."""
    writer = open_writer(uri)
    try:
        writer.write(data)
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def move_or_copy(src: str, dst: str) -> None:
    """Put the object ``src`` at ``dst`` atomically (a rename for local files), then delete ``src``."""
    if src.startswith("file://") and dst.startswith("file://"):
        source, target = local_path(src), local_path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
            return
        except OSError:
            pass  # another filesystem: copy below
    writer = open_writer(dst)
    try:
        for chunk in iter_chunks(src, S3_PART_BYTES):
            writer.write(chunk)
    except BaseException:
        writer.abort()
        raise
    writer.commit()
    delete(src)


def delete(uri: str) -> None:
    """Delete one object if it exists."""
    if uri.startswith("s3://"):
        bucket, key = split_s3(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    local_path(uri).unlink(missing_ok=True)


def delete_prefix(uri: str) -> None:
    """Delete everything under a directory-like ``uri``."""
    if uri.startswith("s3://"):
        bucket, prefix = split_s3(uri.rstrip("/") + "/")
        client = s3_client()
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        return
    shutil.rmtree(local_path(uri), ignore_errors=True)


def list_names(uri: str) -> list[str]:
    """Names (relative keys) of the objects under a directory-like ``uri``."""
    if uri.startswith("s3://"):
        bucket, prefix = split_s3(uri.rstrip("/") + "/")
        names: list[str] = []
        paginator = s3_client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            names += [obj["Key"][len(prefix) :] for obj in page.get("Contents", [])]
        return names
    root = local_path(uri)
    if not root.is_dir():
        return []
    return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and TMP_MARK not in p.name]


def cleanup_tmp(uri: str) -> None:
    """Remove temporary files a crashed writer of ``uri`` left behind (local files only)."""
    if not uri.startswith("file://"):
        return  # an unfinished S3 multipart upload is invisible
    path = local_path(uri)
    if path.parent.is_dir():
        for stale in path.parent.glob(f".{path.name}{TMP_MARK}*"):
            stale.unlink(missing_ok=True)

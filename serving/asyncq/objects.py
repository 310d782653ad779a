"""Streaming reads and atomic, idempotent writes of ``s3://`` and ``file://`` objects.

Atomic: a reader sees the whole object or none (S3 PUT / CompleteMultipartUpload; ``os.replace`` of a
fsynced temporary file). Idempotent: writing the same key again replaces it whole, so a request
processed twice still leaves exactly one object.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from common import s3, uris

#: S3 user metadata must be printable ASCII and the whole set ≤ 2 KB.
_META_UNSAFE = re.compile(r"[^\x20-\x7e]")
_META_MAX = 1024


#: S3 error codes worth another attempt (throttling, server side); anything else is the request's fault
_TRANSIENT = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "500", "503"}


class ObjectError(Exception):
    """An object could not be read or written; ``str()`` is a reason fit for a failure object.
    ``transient``: a later attempt may succeed (throttling, a connection error)."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD tells: size, type, user metadata."""

    size: int
    content_type: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)


def meta_value(text: str) -> str:
    """``text`` made safe for an S3 metadata value (printable ASCII, bounded)."""
    return _META_UNSAFE.sub("?", text)[:_META_MAX]


#: ``s3://bucket/key`` → ``(bucket, key)``; :class:`ObjectError` for anything else
split_s3 = partial(uris.split_s3, error=ObjectError)
#: ``file:///abs/path`` → ``Path('/abs/path')``; :class:`ObjectError` for anything else
file_path = partial(uris.file_path, error=ObjectError)


class InputStream:
    """A readable input object with a known length when the store tells it."""

    def __init__(self, raw: IO[bytes] | Any, length: int | None) -> None:
        self._raw = raw
        self.length = length

    def read(self, size: int = -1) -> bytes:
        """Read up to ``size`` bytes (the whole rest with -1)."""
        data: bytes = self._raw.read(size) if size >= 0 else self._raw.read()
        return data

    def close(self) -> None:
        """Close the underlying stream / connection."""
        self._raw.close()

    def __enter__(self) -> InputStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _remaining(source: IO[bytes]) -> int | None:
    """Bytes left in a seekable stream (None when it cannot tell)."""
    try:
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(here)
    except (OSError, ValueError, AttributeError):
        return None
    return int(end - here)


class ObjectStore:
    """s3:// (:func:`common.s3.client`) and file:// objects."""

    def __init__(self, s3_client: Any = None, *, multipart_threshold: int = 64 * 1024 * 1024) -> None:
        self._s3 = s3_client
        self._multipart_threshold = multipart_threshold

    @property
    def s3(self) -> Any:
        """The S3 client, created on first use."""
        if self._s3 is None:
            self._s3 = s3.client(max_pool_connections=64)
        return self._s3

    # ----------------------------------------------------------------- reads

    def open(self, uri: str) -> InputStream:
        """Open ``uri`` for streaming; :class:`ObjectError` naming the URI when it cannot be read."""
        scheme = urlparse(uri).scheme
        if scheme == "s3":
            bucket, key = split_s3(uri)
            try:
                obj = self.s3.get_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", "Error"))
                raise ObjectError(
                    f"could not read input {uri}: {code}", transient=code in _TRANSIENT
                ) from exc
            except BotoCoreError as exc:
                raise ObjectError(f"could not read input {uri}: {exc}", transient=True) from exc
            return InputStream(
                obj["Body"], int(obj.get("ContentLength", 0)) if "ContentLength" in obj else None
            )
        if scheme == "file":
            path = file_path(uri)
            try:
                handle = path.open("rb")
                size = os.fstat(handle.fileno()).st_size
            except OSError as exc:
                raise ObjectError(f"could not read input {uri}: {exc.strerror or exc}") from exc
            return InputStream(handle, size)
        raise ObjectError(f"unsupported input location {uri} (expected s3:// or file://)")

    def head(self, uri: str) -> ObjectInfo | None:
        """Size/type/metadata of an object, or None when it does not exist."""
        scheme = urlparse(uri).scheme
        if scheme == "s3":
            bucket, key = split_s3(uri)
            try:
                resp = self.s3.head_object(Bucket=bucket, Key=key)
            except ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey", "NotFound"}:
                    return None
                raise
            return ObjectInfo(
                int(resp.get("ContentLength", 0)), resp.get("ContentType"), dict(resp.get("Metadata", {}))
            )
        path = file_path(uri)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return None
        return ObjectInfo(size, None, {})

    def read_bytes(self, uri: str, limit: int) -> bytes:
        """The first ``limit`` bytes of an object."""
        with self.open(uri) as stream:
            return stream.read(limit)

    # ----------------------------------------------------------------- writes

    def write(
        self,
        uri: str,
        source: IO[bytes],
        *,
        content_type: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        """Write ``source`` (seekable, at 0) to ``uri`` atomically, replacing any earlier object."""
        scheme = urlparse(uri).scheme
        if scheme == "s3":
            from boto3.s3.transfer import TransferConfig

            bucket, key = split_s3(uri)
            extra: dict[str, Any] = {}
            if content_type:
                extra["ContentType"] = content_type
            if metadata:
                extra["Metadata"] = {k: meta_value(v) for k, v in metadata.items()}
            size = _remaining(source)
            try:
                if size is not None and size < self._multipart_threshold:
                    # one PUT; a transfer manager per call costs more than the request itself
                    self.s3.put_object(Bucket=bucket, Key=key, Body=source, **extra)
                else:
                    config = TransferConfig(multipart_threshold=self._multipart_threshold, use_threads=False)
                    self.s3.upload_fileobj(source, bucket, key, ExtraArgs=extra, Config=config)
            except (ClientError, BotoCoreError) as exc:
                raise ObjectError(f"could not write {uri}: {exc}") from exc
            return
        if scheme == "file":
            path = file_path(uri)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{path.name}.", suffix=f".{uuid.uuid4().hex[:8]}.tmp", dir=path.parent
                )
                try:
                    with os.fdopen(fd, "wb") as out:
                        while chunk := source.read(1 << 20):
                            out.write(chunk)
                        out.flush()
                        os.fsync(out.fileno())
                    os.replace(tmp, path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                dir_fd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError as exc:
                raise ObjectError(f"could not write {uri}: {exc.strerror or exc}") from exc
            return
        raise ObjectError(f"unsupported output location {uri} (expected s3:// or file://)")

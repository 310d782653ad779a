"""Model data to a local model directory: the one fetcher of the model server and the platform.

:func:`fetch_model_data` follows these rules (``dest`` is a work directory the caller owns):

- **A local directory** (a plain path or ``file://`` URI, read by :func:`common.uris.local_path`) is the
  model directory itself: nothing is copied.
- **A local file** that is a tar archive (compressed or not) is unpacked safely into ``dest/model``
  (:func:`common.archives.safe_extract`); any other file is copied into ``dest/model`` under its name
  (SageMaker's uncompressed ``ModelDataSource`` of one object).
- **An** ``s3://`` **URI** is an archive when ``compressed`` says so (``ModelDataUrl``, a ``Gzip``
  ``ModelDataSource``, the model server's ``--model-data``), or, when ``compressed`` is None, when its key
  ends in ``.tar.gz``, ``.tgz`` or ``.tar``: it is downloaded and unpacked into ``dest/model``. Otherwise it
  is a prefix: every object under it is downloaded into ``dest/model`` at its path relative to the prefix
  (keys that would land outside are skipped). The S3 client is :func:`common.s3.client`.
- A missing source, an empty prefix or any other scheme is a :class:`ModelDataError`.

Errors: :class:`ModelDataError` (fetching) and :class:`common.archives.ArchiveError` /
:class:`~common.archives.UnsafeArchiveError` (unpacking), all with user-facing messages.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from common import archives, s3, uris

#: key suffixes that mark an S3 object as an archive when the caller does not say
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ModelDataError(Exception):
    """Model data cannot be fetched (the message is user-facing)."""


def fetch_model_data(
    uri: str,
    dest: Path,
    *,
    compressed: bool | None = None,
    client: Any = None,
    max_unpacked_bytes: int | None = None,
) -> Path:
    """The local model directory of ``uri`` (see the module's rules); blocking.

    ``client``: an S3 client to use instead of a new :func:`common.s3.client`; ``max_unpacked_bytes``: a
    fixed unpacking limit instead of :func:`common.archives.unpack_limit`'s default.
    """
    model_dir = dest / "model"
    if uris.is_s3(uri):
        return _fetch_s3(uri, dest, model_dir, compressed, client, max_unpacked_bytes)
    try:
        path = uris.local_path(uri)
    except uris.UriError as exc:
        raise ModelDataError(f"unsupported model data {uri!r}: use a path, file:// or s3://") from exc
    if path.is_dir():
        return path
    if not path.is_file():
        raise ModelDataError(f"model data {uri} does not exist")
    if archives.is_archive(path):
        return archives.safe_extract(path, model_dir, max_bytes=max_unpacked_bytes)
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, model_dir / path.name)
    return model_dir


def _fetch_s3(
    uri: str,
    dest: Path,
    model_dir: Path,
    compressed: bool | None,
    client: Any,
    max_unpacked_bytes: int | None,
) -> Path:
    # botocore only for s3:// sources: a model server that serves a local directory never loads it
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        bucket, key = uris.split_s3(uri)
    except uris.UriError as exc:
        raise ModelDataError(str(exc)) from exc
    if compressed is None:
        compressed = key.endswith(ARCHIVE_SUFFIXES)
    if compressed and (not key or key.endswith("/")):
        raise ModelDataError(f"bad S3 URI {uri!r}: an archive needs s3://bucket/key")
    client = client or s3.client()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if compressed:
            archive = dest / "model.tar.gz"
            try:
                client.download_file(bucket, key, str(archive))
            except (BotoCoreError, ClientError) as exc:
                raise ModelDataError(f"cannot download {uri}: {exc}") from exc
            try:
                return archives.safe_extract(archive, model_dir, max_bytes=max_unpacked_bytes)
            finally:
                archive.unlink(missing_ok=True)
        model_dir.mkdir(parents=True, exist_ok=True)
        root = model_dir.resolve()
        found = False
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                name = obj["Key"]
                if name.endswith("/"):
                    continue  # a "directory" marker
                target = (model_dir / (name[len(key) :].lstrip("/") or Path(name).name)).resolve()
                if not target.is_relative_to(root):
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, name, str(target))
                found = True
    except (BotoCoreError, ClientError) as exc:
        raise ModelDataError(f"cannot download model data {uri}: {exc}") from exc
    if not found:
        raise ModelDataError(f"no model data under {uri}")
    return model_dir


def add_code(
    uri: str, model_dir: Path, dest: Path, *, client: Any = None, max_unpacked_bytes: int | None = None
) -> Path:
    """``model_dir`` with the code at ``uri`` (a ``sourcedir.tar.gz``, an S3 prefix or a local directory,
    by :func:`fetch_model_data`'s rules) added to its ``code/``; returns the model directory, which is a
    copy under ``dest`` when ``model_dir`` is a directory served in place (outside ``dest``: the user's
    directory is never written to). Files of ``uri`` replace the model's own ``code/`` files of the same
    name. What SageMaker's framework containers do with an ``s3://`` ``SAGEMAKER_SUBMIT_DIRECTORY``.

    Errors: :class:`ModelDataError` (fetching or copying), :class:`common.archives.ArchiveError`.
    """
    staging = dest / "submit"
    try:
        code = fetch_model_data(uri, staging, client=client, max_unpacked_bytes=max_unpacked_bytes)
        if not model_dir.resolve().is_relative_to(dest.resolve()):
            private = dest / "model-with-code"
            shutil.rmtree(private, ignore_errors=True)
            shutil.copytree(model_dir, private, symlinks=True)
            model_dir = private
        shutil.copytree(code, model_dir / "code", symlinks=True, dirs_exist_ok=True)
    except OSError as exc:
        raise ModelDataError(f"could not add the code of {uri} to the model: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir

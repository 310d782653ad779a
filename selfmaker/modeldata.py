"""Fetch and unpack model data (``ModelDataUrl`` / ``ModelDataSource``) into a local directory.

``file://`` and ``s3://`` URIs are supported; ``s3://`` goes through boto3, which honours
``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` (so moto or any S3-compatible store works). A ``.tar.gz``
object is extracted (safely: no absolute paths, no links out of the tree); an uncompressed prefix or a
local directory is copied / used as is.
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse


class ModelDataError(Exception):
    """Model data cannot be fetched or unpacked (message is user-facing)."""


def model_data_uri(container: dict[str, Any]) -> tuple[str | None, bool]:
    """``(uri, compressed)`` of a ContainerDefinition's model data (None when it has none)."""
    if container.get("ModelDataUrl"):
        return container["ModelDataUrl"], True
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    if source:
        return source["S3Uri"], source.get("CompressionType", "None") == "Gzip"
    return None, False


def _extract(archive: Path, dest: Path) -> None:
    """The model server's safe unpacking (member checks on every Python, not only those with tar filters)."""
    from serving.errors import ModelSourceError
    from serving.modelsource import safe_extract

    try:
        safe_extract(archive, dest)
    except ModelSourceError as exc:
        raise ModelDataError(f"could not extract model data {archive.name}: {exc.message}") from exc


def _s3_client() -> Any:
    import boto3

    return boto3.client("s3")


def fetch_model_data(container: dict[str, Any], dest: Path) -> Path:
    """Materialize the model data of ``container`` under ``dest`` and return the model directory.

    Blocking (run it in a thread). ``dest`` is created; a local uncompressed directory is returned as is.
    """
    dest.mkdir(parents=True, exist_ok=True)
    model_dir = dest / "model"
    uri, compressed = model_data_uri(container)
    if uri is None:
        model_dir.mkdir(exist_ok=True)
        return model_dir
    parsed = urlparse(uri)
    if parsed.scheme in {"file", ""}:
        path = Path(unquote(parsed.path if parsed.scheme == "file" else uri))
        if parsed.scheme == "file" and parsed.netloc:
            path = Path(unquote(parsed.netloc + parsed.path))
        if not path.exists():
            raise ModelDataError(f"model data {uri} does not exist")
        if path.is_dir():
            return path
        if tarfile.is_tarfile(path):
            model_dir.mkdir(exist_ok=True)
            _extract(path, model_dir)
            return model_dir
        model_dir.mkdir(exist_ok=True)
        shutil.copy2(path, model_dir / path.name)
        return model_dir
    if parsed.scheme == "s3":
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        client = _s3_client()
        model_dir.mkdir(exist_ok=True)
        try:
            if compressed or key.endswith((".tar.gz", ".tgz", ".tar")):
                archive = dest / "model.tar.gz"
                client.download_file(bucket, key, str(archive))
                _extract(archive, model_dir)
                archive.unlink(missing_ok=True)
                return model_dir
            paginator = client.get_paginator("list_objects_v2")
            found = False
            for page in paginator.paginate(Bucket=bucket, Prefix=key):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(key):].lstrip("/") or Path(obj["Key"]).name
                    target = (model_dir / rel).resolve()
                    if not target.is_relative_to(model_dir.resolve()):
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(bucket, obj["Key"], str(target))
                    found = True
            if not found:
                raise ModelDataError(f"no model data under {uri}")
        except (BotoCoreError, ClientError) as exc:
            raise ModelDataError(f"could not download model data {uri}: {exc}") from exc
        return model_dir
    raise ModelDataError(f"unsupported model data URI {uri} (use file:// or s3://)")

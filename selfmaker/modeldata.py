"""Fetch and unpack model data (``ModelDataUrl`` / ``ModelDataSource``) into a local directory.

The fetching rules (``file://``, ``s3://``, directories, archives, prefixes) are
:mod:`common.modeldata`'s, shared with the model server; this module reads the ContainerDefinition and
turns the errors into the platform's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import archives, modeldata


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


def fetch_model_data(container: dict[str, Any], dest: Path, *, max_unpacked_bytes: int | None = None) -> Path:
    """Materialize the model data of ``container`` under ``dest`` and return the model directory.

    The rules are :func:`common.modeldata.fetch_model_data`'s (``ModelDataUrl`` is an archive; an
    uncompressed ``ModelDataSource`` is an archive only when its key ends in ``.tar.gz``/``.tgz``/``.tar``).
    Blocking (run it in a thread). ``dest`` is created; a container without model data gets an empty
    ``dest/model``. ``max_unpacked_bytes``: the platform's fixed unpacking limit (default: the archive rule
    of :func:`common.archives.unpack_limit`).
    """
    dest.mkdir(parents=True, exist_ok=True)
    uri, compressed = model_data_uri(container)
    if uri is None:
        model_dir = dest / "model"
        model_dir.mkdir(exist_ok=True)
        return model_dir
    try:
        return modeldata.fetch_model_data(
            uri, dest, compressed=True if compressed else None, max_unpacked_bytes=max_unpacked_bytes
        )
    except archives.ArchiveError as exc:
        raise ModelDataError(f"could not extract model data {uri}: {exc}") from exc
    except modeldata.ModelDataError as exc:
        raise ModelDataError(str(exc)) from exc

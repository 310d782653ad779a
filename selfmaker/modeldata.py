"""Fetch and unpack model data (``ModelDataUrl`` / ``ModelDataSource``) into a local directory.

The fetching rules (``file://``, ``s3://``, directories, archives, prefixes) are
:mod:`common.modeldata`'s, shared with the model server; this module reads the ContainerDefinition and
turns the errors into the platform's.

A container whose ``SAGEMAKER_SUBMIT_DIRECTORY`` is an ``s3://`` or ``file://`` URI (what the SageMaker SDK
sets for a framework model it does not repack, e.g. ``sagemaker.xgboost.XGBoostModel``: the script stays in
the ``sourcedir.tar.gz`` training uploaded) gets that code unpacked into the model's ``code/``, where the
model server looks for ``SAGEMAKER_PROGRAM`` — what SageMaker's framework containers download at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common import archives, modeldata, uris

#: the container variable naming where a framework model's code is (a URI, or a path in the container)
SUBMIT_DIRECTORY_ENV = "SAGEMAKER_SUBMIT_DIRECTORY"


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
    else:
        try:
            model_dir = modeldata.fetch_model_data(
                uri, dest, compressed=True if compressed else None, max_unpacked_bytes=max_unpacked_bytes
            )
        except archives.ArchiveError as exc:
            raise ModelDataError(f"could not extract model data {uri}: {exc}") from exc
        except modeldata.ModelDataError as exc:
            raise ModelDataError(str(exc)) from exc
    return add_submit_directory(container, model_dir, dest, max_unpacked_bytes=max_unpacked_bytes)


def add_submit_directory(
    container: dict[str, Any], model_dir: Path, dest: Path, *, max_unpacked_bytes: int | None = None
) -> Path:
    """The model directory with the code of ``SAGEMAKER_SUBMIT_DIRECTORY`` in its ``code/`` when that is
    an ``s3://`` / ``file://`` URI (an archive, an S3 prefix or a local directory); ``model_dir`` unchanged
    otherwise (no variable, or a path inside the container such as ``/opt/ml/model/code``).

    A model directory served in place (a local directory outside ``dest``) is copied under ``dest`` first:
    the user's directory is never written to. Files of the submit directory replace the model's own
    ``code/`` files of the same name. Blocking.
    """
    uri = str((container.get("Environment") or {}).get(SUBMIT_DIRECTORY_ENV) or "").strip()
    if not uris.is_uri(uri):
        return model_dir
    try:
        return modeldata.add_code(uri, model_dir, dest, max_unpacked_bytes=max_unpacked_bytes)
    except archives.ArchiveError as exc:
        raise ModelDataError(f"could not extract {SUBMIT_DIRECTORY_ENV} {uri}: {exc}") from exc
    except modeldata.ModelDataError as exc:
        raise ModelDataError(f"{SUBMIT_DIRECTORY_ENV}: {exc}") from exc


#: SageMaker's limit on the containers of one model (an inference pipeline or a multi-container endpoint)
MAX_CONTAINERS = 15


def default_hostname(position: int) -> str:
    """The ContainerHostname a pipeline container without one gets, from its 0-based ``position``."""
    return f"container-{position + 1}"


def model_containers(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(hostname, ContainerDefinition)`` of every container of a model document, in pipeline order.

    A model with a PrimaryContainer (or a one-entry Containers) has one container, named ``primary`` as
    SageMaker names it in its errors; pipeline containers keep their ContainerHostname, or get
    :func:`default_hostname`.
    """
    containers = doc.get("Containers") or []
    if doc.get("PrimaryContainer") or len(containers) <= 1:
        return [("primary", doc.get("PrimaryContainer") or (containers or [{}])[0])]
    return [(c.get("ContainerHostname") or default_hostname(i), c) for i, c in enumerate(containers)]


def execution_mode(doc: dict[str, Any]) -> str | None:
    """``Serial`` or ``Direct`` for a model of several containers (Serial by default); None for one."""
    if len(model_containers(doc)) == 1:
        return None
    return str((doc.get("InferenceExecutionConfig") or {}).get("Mode") or "Serial")

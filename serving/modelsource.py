"""Where the model comes from: a directory, or a ``model.tar.gz`` as a path, ``file://`` or ``s3://`` URI.

:func:`prepare_model` turns the source into a ready model directory exactly once per server, even with
several worker processes: the first worker takes a file lock, downloads/unpacks and installs
``code/requirements.txt``; the others wait for the lock and reuse the recorded result (or failure).

Fetching and unpacking follow :mod:`common.modeldata` and :mod:`common.archives` (refused archive members
are named in the error); this module turns their errors into the model server's.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import logging
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

from common import archives, modeldata, uris
from common import proc as common_proc
from serving import contract
from serving.errors import ModelSourceError, UnsafeArchiveError

log = logging.getLogger(__name__)

_RESULT_FILE = "prepared.json"
_LOCK_FILE = "prepare.lock"


def safe_extract(archive_path: Path, target: Path) -> Path:
    """Unpack a (gzipped) tar into ``target`` with :func:`common.archives.safe_extract`'s member checks."""
    try:
        return archives.safe_extract(archive_path, target)
    except archives.UnsafeArchiveError as exc:
        raise UnsafeArchiveError(str(exc)) from exc
    except archives.ArchiveError as exc:
        raise ModelSourceError(str(exc)) from exc


def resolve_source(source: str, work_dir: Path, *, max_unpacked_bytes: int | None = None) -> Path:
    """A model directory for ``source`` (dir path, archive path, ``file://`` or ``s3://`` archive URI).

    The rules are :func:`common.modeldata.fetch_model_data`'s; an ``s3://`` source is always an archive,
    unpacked up to ``max_unpacked_bytes`` (default: :func:`common.archives.unpack_limit`'s rule).
    """
    try:
        return modeldata.fetch_model_data(
            source, work_dir, compressed=True, max_unpacked_bytes=max_unpacked_bytes
        )
    except archives.UnsafeArchiveError as exc:
        raise UnsafeArchiveError(str(exc)) from exc
    except (archives.ArchiveError, modeldata.ModelDataError) as exc:
        raise ModelSourceError(str(exc)) from exc


def add_submit_directory(uri: str, model_dir: Path, work_dir: Path, max_unpacked_bytes: int | None) -> Path:
    """The model directory with the framework code at ``uri`` in its ``code/``, unless it has one."""
    if (model_dir / contract.CODE_DIR).is_dir():
        return model_dir  # repacked with its code, or already added by the platform
    try:
        return modeldata.add_code(uri, model_dir, work_dir, max_unpacked_bytes=max_unpacked_bytes)
    except archives.UnsafeArchiveError as exc:
        raise UnsafeArchiveError(f"SAGEMAKER_SUBMIT_DIRECTORY {uri}: {exc}") from exc
    except (archives.ArchiveError, modeldata.ModelDataError) as exc:
        raise ModelSourceError(f"SAGEMAKER_SUBMIT_DIRECTORY: {exc}") from exc


def pip_command(pip_wheel: str | None, *, pip_installed: bool | None = None) -> list[str]:
    """:func:`common.proc.pip_command` for ``code/requirements.txt``; :class:`ModelSourceError` without
    pip."""
    try:
        return common_proc.pip_command(
            pip_wheel, pip_installed=pip_installed, needed_by="code/requirements.txt"
        )
    except common_proc.PipUnavailableError as exc:
        raise ModelSourceError(str(exc)) from exc


def install_requirements(model_dir: Path, pip_wheel: str | None = None, *, target: str | None = None) -> None:
    """``pip install -r code/requirements.txt`` into this interpreter's environment, if the file exists.

    pip: :func:`pip_command` (``pip_wheel`` is the ``SELFMAKER_PIP_WHEEL`` setting). ``target``: install
    into that directory instead (``pip --target``; a read-only environment such as AWS Lambda's).
    """
    requirements = model_dir / contract.CODE_DIR / contract.REQUIREMENTS_FILE
    if not requirements.is_file():
        return
    log.info("installing %s", requirements)
    command = [
        *pip_command(pip_wheel),
        "install",
        "--no-input",
        "--disable-pip-version-check",
        "-q",
        "-r",
        str(requirements),
    ]
    if target:
        # a read-only environment (Lambda) has no writable home for pip's cache either
        command += ["--target", target, "--no-cache-dir"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=str(requirements.parent), timeout=1800)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        site = target or sysconfig.get_paths()["purelib"]
        # e.g. a server that dropped root in an image whose environment root owns
        hint = "" if os.access(site, os.W_OK) else f" ({site} is not writable by this user)"
        raise ModelSourceError(f"pip install -r code/requirements.txt failed: {' '.join(tail)}{hint}")
    # the path finders cached the directories' contents before pip wrote to them (a --target directory
    # may not even have existed yet)
    importlib.invalidate_caches()


def prepare_model(
    source: str,
    state_dir: Path,
    *,
    install: bool = True,
    pip_wheel: str | None = None,
    pip_target: str | None = None,
    max_unpacked_bytes: int | None = None,
    submit_directory: str | None = None,
) -> Path:
    """Resolve ``source`` and install its requirements once per ``state_dir``; return the model dir.

    ``pip_wheel``: see :func:`pip_command`; ``pip_target``: see :func:`install_requirements`;
    ``max_unpacked_bytes``: a fixed unpacking limit (see :func:`resolve_source`); ``submit_directory``:
    ``SAGEMAKER_SUBMIT_DIRECTORY`` — an ``s3://`` / ``file://`` URI of a framework model's code, added to a
    model that has no ``code/`` yet (:func:`common.modeldata.add_code`; ``selfmaker up`` adds it before
    the server starts, so only a server that fetches its own model data, as on AWS, does it here).

    Safe to call from every worker: a file lock serialises the work and the first result (directory
    or error message) is recorded in ``state_dir`` and replayed to the others.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / _LOCK_FILE, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            result_path = state_dir / _RESULT_FILE
            if result_path.is_file():
                result = json.loads(result_path.read_text())
                if result.get("error"):
                    raise ModelSourceError(result["error"])
                return Path(result["model_dir"])
            try:
                model_dir = resolve_source(source, state_dir, max_unpacked_bytes=max_unpacked_bytes)
                if submit_directory and uris.is_uri(submit_directory.strip()):
                    model_dir = add_submit_directory(
                        submit_directory.strip(), model_dir, state_dir, max_unpacked_bytes
                    )
                if install:
                    install_requirements(model_dir, pip_wheel, target=pip_target)
            except ModelSourceError as exc:
                result_path.write_text(json.dumps({"error": exc.message}))
                raise
            result_path.write_text(json.dumps({"model_dir": str(model_dir)}))
            return model_dir
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def cleanup(state_dir: Path) -> None:
    """Remove what :func:`prepare_model` unpacked (the state dir belongs to the server)."""
    shutil.rmtree(state_dir, ignore_errors=True)

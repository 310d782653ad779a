"""Where the model comes from: a directory, or a ``model.tar.gz`` as a path, ``file://`` or ``s3://`` URI.

:func:`prepare_model` turns the source into a ready model directory exactly once per server, even with
several worker processes: the first worker takes a file lock, downloads/unpacks and installs
``code/requirements.txt``; the others wait for the lock and reuse the recorded result (or failure).

:func:`safe_extract` refuses archive members that would land outside the target (absolute paths,
``..``, links pointing outside) and anything that is not a regular file, directory or contained link;
the error names the member.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import posixpath
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path
from urllib.parse import unquote, urlparse

from serving import contract
from serving.errors import ModelSourceError, UnsafeArchiveError

log = logging.getLogger(__name__)

#: the setting (ServingSettings.pip_wheel) named in the "no pip" error
PIP_WHEEL_ENV = "SELFMAKER_PIP_WHEEL"
_RESULT_FILE = "prepared.json"
_LOCK_FILE = "prepare.lock"


def _member_target(root: Path, name: str) -> Path:
    if not name or name.startswith("/") or (len(name) > 1 and name[1] == ":") or name.startswith("\\"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeArchiveError(f"archive member {name!r} contains '..'")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"archive member {name!r} resolves outside the model directory")
    return target


def check_members(archive: tarfile.TarFile, root: Path) -> list[tarfile.TarInfo]:
    """Validate every member of ``archive`` for extraction under ``root`` (raises on the first bad one)."""
    root = root.resolve()
    members = archive.getmembers()
    for member in members:
        _member_target(root, member.name)
        if member.isdev() or member.isfifo() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise UnsafeArchiveError(f"archive member {member.name!r} is a device, FIFO or special file")
        if member.issym():
            link = member.linkname
            if link.startswith("/"):
                raise UnsafeArchiveError(f"archive member {member.name!r} is a symlink to an absolute path {link!r}")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), link))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchiveError(f"archive member {member.name!r} links outside the model directory ({link!r})")
            _member_target(root, resolved)
        elif member.islnk():
            link = member.linkname
            if link.startswith("/") or ".." in link.split("/"):
                raise UnsafeArchiveError(f"archive member {member.name!r} hard-links outside the model directory ({link!r})")
            _member_target(root, link)
    return members


def safe_extract(archive_path: Path, target: Path) -> Path:
    """Unpack a (gzipped) tar into ``target`` after :func:`check_members` accepted every member."""
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = check_members(archive, target)
            for member in members:
                # never restore owners or permissions beyond the user's own
                member.mode = (member.mode | 0o600) & 0o755 if member.isfile() else 0o755
                member.uid = member.gid = os.getuid()
                member.uname = member.gname = ""
            if hasattr(tarfile, "data_filter"):
                archive.extractall(target, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.10.12
                archive.extractall(target, members=members)
    except UnsafeArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        filter_error = getattr(tarfile, "FilterError", None)  # absent before Python 3.10.12 / 3.11.4
        if filter_error is not None and isinstance(exc, filter_error):
            raise UnsafeArchiveError(f"archive member {getattr(exc, 'tarinfo', None) and exc.tarinfo.name!r} refused: {exc}") from exc
        raise ModelSourceError(f"cannot unpack {archive_path.name}: {exc}") from exc
    return target


def _download_s3(uri: str, dest: Path) -> Path:
    import boto3

    parsed = urlparse(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise ModelSourceError(f"bad S3 URI {uri!r}; expected s3://bucket/key")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    client = boto3.client("s3", endpoint_url=endpoint)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        client.download_file(bucket, key, str(dest))
    except Exception as exc:  # botocore ClientError, EndpointConnectionError, ...
        raise ModelSourceError(f"cannot download {uri}: {exc}") from exc
    return dest


def resolve_source(source: str, work_dir: Path) -> Path:
    """A model directory for ``source`` (dir path, archive path, ``file://`` or ``s3://`` URI)."""
    if source.startswith("s3://"):
        archive = _download_s3(source, work_dir / "download" / "model.tar.gz")
        return safe_extract(archive, work_dir / "model")
    if source.startswith("file://"):
        source = unquote(urlparse(source).path)
    elif "://" in source:
        raise ModelSourceError(f"unsupported model source {source!r}; use a path, file:// or s3://")
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file():
        return safe_extract(path, work_dir / "model")
    raise ModelSourceError(f"model source {source} does not exist")


def pip_command(pip_wheel: str | None, *, pip_installed: bool | None = None) -> list[str]:
    """The command that runs pip for this interpreter: ``-m pip`` when pip is installed, else pip from its wheel.

    ``pip_installed`` defaults to whether this interpreter can import pip.  selfmaker's image has no pip
    module but ships pip's wheel (``SELFMAKER_PIP_WHEEL``), and pip runs from a wheel as
    ``python <wheel>/pip``.  Raises :class:`ModelSourceError` when neither is available.
    (training/script_mode.py has the same function: serving and training import nothing of each other.)
    """
    python = sys.executable
    if pip_installed is None:
        pip_installed = importlib.util.find_spec("pip") is not None
    if pip_installed:
        return [python, "-m", "pip"]
    if pip_wheel and Path(pip_wheel).is_file():
        return [python, f"{pip_wheel}/pip"]
    why = f"{PIP_WHEEL_ENV}={pip_wheel} does not exist" if pip_wheel else f"{PIP_WHEEL_ENV} is not set"
    raise ModelSourceError(f"code/requirements.txt needs pip, which is not available: {python} has no pip module "
                           f"and {why}. Install pip into that environment or set {PIP_WHEEL_ENV} to a pip wheel "
                           "(pip-*.whl)")


def install_requirements(model_dir: Path, pip_wheel: str | None = None, *, target: str | None = None) -> None:
    """``pip install -r code/requirements.txt`` into this interpreter's environment, if the file exists.

    pip: :func:`pip_command` (``pip_wheel`` is the ``SELFMAKER_PIP_WHEEL`` setting). ``target``: install
    into that directory instead (``pip --target``; a read-only environment such as AWS Lambda's).
    """
    requirements = model_dir / contract.CODE_DIR / contract.REQUIREMENTS_FILE
    if not requirements.is_file():
        return
    log.info("installing %s", requirements)
    command = [*pip_command(pip_wheel), "install", "--no-input", "--disable-pip-version-check", "-q", "-r", str(requirements)]
    if target:
        command += ["--target", target]
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


def prepare_model(source: str, state_dir: Path, *, install: bool = True, pip_wheel: str | None = None,
                  pip_target: str | None = None) -> Path:
    """Resolve ``source`` and install its requirements once per ``state_dir``; return the model dir.

    ``pip_wheel``: see :func:`pip_command`; ``pip_target``: see :func:`install_requirements`.

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
                model_dir = resolve_source(source, state_dir)
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

"""Safe tar extraction: every member is checked before anything is written.

:func:`safe_extract` refuses (naming the member) absolute paths, ``..`` components, symlinks and hard
links whose target leaves the tree, devices, FIFOs and any other special file; nothing is extracted from
a refused archive. Owners and special mode bits are never restored (files become at most ``0o755``, owned
by the current user). On Pythons with tar extraction filters the ``data`` filter runs too.

Unpacking also stops at a size limit before anything is written (:class:`ArchiveTooLargeError`): the sum
of the file sizes the members declare (what extraction writes, exactly) may not exceed ``max_bytes``
when the caller sets one (the platform's ``SELFMAKER_MAX_UNPACKED_BYTES``), else :data:`UNPACK_RATIO`
times the archive's own size, and never less than :data:`UNPACK_FLOOR` — a 2.6 MB archive of zeros
that would unpack to 2.5 GiB is refused, a model that compresses 10:1 is not.

An entry for the archive's root directory itself is accepted and skipped (the target is the root): the
SageMaker Python SDK's ``repack_model`` (every model deployed with an ``entry_point``) writes one named
``''`` (``tar.add(dir, arcname="/")``), and ``tar -C dir -czf x .`` one named ``./`` (its members then
start with ``./``, which is fine).
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path


class ArchiveError(Exception):
    """An archive cannot be read or unpacked (the message is user-facing)."""


#: the default limit of what an archive unpacks to: this many times its own size ...
UNPACK_RATIO = 100
#: ... and at least this many bytes
UNPACK_FLOOR = 1 << 30
#: the setting that replaces the default limit with a fixed one (named in the refusal)
LIMIT_SETTING = "SELFMAKER_MAX_UNPACKED_BYTES"


class ArchiveTooLargeError(ArchiveError):
    """An archive would unpack to more than the limit (nothing was written)."""


def unpack_limit(archive_size: int, max_bytes: int | None = None) -> int:
    """The most bytes an archive of ``archive_size`` bytes may unpack to: ``max_bytes`` when set, else
    :data:`UNPACK_RATIO` times the archive's size and at least :data:`UNPACK_FLOOR`."""
    if max_bytes:
        return max_bytes
    return max(UNPACK_RATIO * archive_size, UNPACK_FLOOR)


class UnsafeArchiveError(ArchiveError):
    """An archive member would land outside the target, or is not a file, directory or contained link."""


def _is_root_entry(member: tarfile.TarInfo) -> bool:
    """A directory entry naming the archive's root (``''``, ``.``, ``./``)."""
    return member.isdir() and member.name.strip("/") in ("", ".")


def _member_target(root: Path, name: str, what: str) -> Path:
    if not name:
        raise UnsafeArchiveError("an archive member with an empty name is not the root directory")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or name.startswith("\\"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise UnsafeArchiveError(f"archive member {name!r} contains '..'")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafeArchiveError(f"archive member {name!r} resolves outside the {what}")
    return target


def check_members(
    archive: tarfile.TarFile, root: Path, *, what: str = "model directory"
) -> list[tarfile.TarInfo]:
    """Every member of ``archive`` but a root directory entry, each checked for extraction under ``root``
    (raises on the first bad one).

    ``what`` names the target in messages (``"... links outside the model directory"``).
    """
    root = root.resolve()
    members = [member for member in archive.getmembers() if not _is_root_entry(member)]
    for member in members:
        _member_target(root, member.name, what)
        if (
            member.isdev()
            or member.isfifo()
            or not (member.isfile() or member.isdir() or member.issym() or member.islnk())
        ):
            raise UnsafeArchiveError(f"archive member {member.name!r} is a device, FIFO or special file")
        if member.issym():
            link = member.linkname
            if link.startswith("/"):
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} is a symlink to an absolute path {link!r}"
                )
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(member.name), link))
            if resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} links outside the {what} ({link!r})"
                )
            _member_target(root, resolved, what)
        elif member.islnk():
            link = member.linkname
            if link.startswith("/") or ".." in link.split("/"):
                raise UnsafeArchiveError(
                    f"archive member {member.name!r} hard-links outside the {what} ({link!r})"
                )
            _member_target(root, link, what)
    return members


def safe_extract(
    archive_path: Path, target: Path, *, what: str = "model directory", max_bytes: int | None = None
) -> Path:
    """Unpack a (compressed) tar into ``target`` (created) after :func:`check_members` accepted every member
    and their sizes fit :func:`unpack_limit` (``max_bytes``: a fixed limit instead of the default).

    Raises :class:`UnsafeArchiveError` for a refused member, :class:`ArchiveTooLargeError` above the
    limit, :class:`ArchiveError` for an archive that cannot be read.
    """
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = check_members(archive, target, what=what)
            declared = sum(member.size for member in members if member.isfile())
            limit = unpack_limit(archive_path.stat().st_size, max_bytes)
            if declared > limit:
                default = f"{UNPACK_RATIO} times its size, at least {UNPACK_FLOOR} bytes"
                rule = LIMIT_SETTING if max_bytes else f"{default}; {LIMIT_SETTING} sets it"
                raise ArchiveTooLargeError(
                    f"{archive_path.name} would unpack to {declared} bytes, more than the limit of "
                    f"{limit} bytes ({rule})"
                )
            for member in members:
                # never restore owners or permissions beyond the user's own
                member.mode = (member.mode | 0o600) & 0o755 if member.isfile() else 0o755
                member.uid, member.gid = os.getuid(), os.getgid()
                member.uname = member.gname = ""
            if hasattr(tarfile, "data_filter"):
                archive.extractall(target, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.10.12 (the checks above already hold)
                archive.extractall(target, members=members)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        filter_error = getattr(tarfile, "FilterError", None)  # absent before Python 3.10.12 / 3.11.4
        if filter_error is not None and isinstance(exc, filter_error):
            name = getattr(getattr(exc, "tarinfo", None), "name", "?")
            raise UnsafeArchiveError(f"archive member {name!r} refused: {exc}") from exc
        raise ArchiveError(f"cannot unpack {archive_path.name}: {exc}") from exc
    return target


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a readable tar file (compressed or not)."""
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False

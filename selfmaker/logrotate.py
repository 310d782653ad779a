"""Size-based rotation of the logs that child processes write (model servers, jobs, templates).

A model server writes its log through a file descriptor it inherited (opened with ``O_APPEND``), so the
platform cannot rename the file under it and reopen: it copies and truncates instead (logrotate's
``copytruncate``). The writer's next line lands at the start of the emptied file. ``name.log.1`` is the
most recent rotated part, ``name.log.N`` the oldest; beyond ``keep`` parts the oldest is dropped. The
platform's own log (``selfmaker.log``) is rotated by its logging handler, the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: bytes copied at a time
_CHUNK = 1024 * 1024


def rotated_parts(path: Path) -> list[Path]:
    """The rotated parts of the log at ``path`` that exist, oldest first (``.N`` … ``.1``)."""
    parts = []
    for candidate in path.parent.glob(path.name + ".*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            parts.append((int(suffix), candidate))
    return [p for _, p in sorted(parts, reverse=True)]


def rotate(path: Path, keep: int) -> None:
    """Move the content of ``path`` into ``path.1`` (older parts shift up, beyond ``keep`` dropped) and
    empty ``path`` in place, so a process appending to it keeps writing to the live log."""
    for index, part in reversed(list(enumerate(reversed(rotated_parts(path)), start=1))):
        if index >= keep:
            part.unlink(missing_ok=True)
        else:
            os.replace(part, path.with_name(f"{path.name}.{index + 1}"))
    if keep <= 0:
        os.truncate(path, 0)
        return
    target = path.with_name(f"{path.name}.1")
    # owner-only like the rest of the logs; the copy is what a reader of the old lines opens
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(path, "rb") as source, os.fdopen(fd, "wb") as out:
        while chunk := source.read(_CHUNK):
            out.write(chunk)
        # right after the last read: a line written in between is lost (copytruncate's known window)
        os.truncate(path, 0)
    with contextlib.suppress(OSError):
        os.chmod(target, 0o600)


def sweep(logs_dir: Path, max_bytes: int, keep: int, skip: frozenset[str] = frozenset()) -> list[Path]:
    """Rotate every ``*.log`` under ``logs_dir`` larger than ``max_bytes`` (but the names in ``skip``);
    the rotated paths. ``max_bytes`` 0 rotates nothing."""
    if max_bytes <= 0 or not logs_dir.is_dir():
        return []
    rotated = []
    for path in logs_dir.rglob("*.log"):
        if path.name in skip:
            continue
        try:
            if path.is_file() and path.stat().st_size > max_bytes:
                rotate(path, keep)
                rotated.append(path)
        except OSError as exc:  # a log that vanished or cannot be copied: the next sweep tries again
            log.warning("cannot rotate %s: %s", path, exc.strerror or exc)
    return rotated

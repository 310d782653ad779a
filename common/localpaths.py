"""Where ``file://`` locations may point: THE list of system directories, and the allowed-roots check.

A request's ``file://`` location (model data, training channels, outputs, checkpoints, transform data,
async outputs) is read or written by the platform with the platform user's rights, so it must never reach
the system's directories (:data:`SYSTEM_DIRS`: neither inside one nor an ancestor of one, such as ``/`` or
``/var``) nor the places the caller names as off-limits (the platform's home: its state and keys); when
the operator lists allowed roots (``SELFMAKER_FILE_ROOTS``), it must stay inside one of them. Paths are
resolved first, so a symbolic link into ``/etc`` is refused like ``/etc`` itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

#: directories no ``file://`` location may reach (nor be an ancestor of)
SYSTEM_DIRS: tuple[Path, ...] = tuple(
    Path(p)
    for p in (
        "/etc",
        "/proc",
        "/sys",
        "/dev",
        "/boot",
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/libx32",
        "/var/lib",
        "/var/log",
        "/var/run",
        "/var/spool",
        "/var/cache",
        "/run",
        "/root",
        "/snap",
        "/srv",
        "/efi",
    )
)
#: the setting that lists the allowed roots (named in refusals)
ROOTS_SETTING = "SELFMAKER_FILE_ROOTS"


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def location_problem(path: Path, *, roots: Iterable[Path] = (), forbidden: Iterable[Path] = ()) -> str | None:
    """Why ``path`` may not be used as a ``file://`` location (None when it may).

    ``roots``: the operator's allowed directories (empty: anywhere but the forbidden ones);
    ``forbidden``: more directories to refuse besides :data:`SYSTEM_DIRS` (e.g. the platform's home).
    """
    resolved = path.expanduser().resolve()
    for special in (*SYSTEM_DIRS, *(Path(p).resolve() for p in forbidden)):
        if _within(resolved, special) or _within(special, resolved):
            where = "a system directory" if special in SYSTEM_DIRS else "the platform's own directory"
            return (
                f"{resolved} reaches {special}, {where}; file:// locations must stay out of it "
                f"({ROOTS_SETTING} lists the directories they may use)"
            )
    allowed = [Path(r).resolve() for r in roots]
    if allowed and not any(_within(resolved, root) for root in allowed):
        listed = ":".join(str(root) for root in allowed)
        return f"{resolved} is outside the directories {ROOTS_SETTING} allows ({listed})"
    return None

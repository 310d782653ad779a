"""common.localpaths: file:// locations stay out of system directories and inside the allowed roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.localpaths import SYSTEM_DIRS, location_problem


@pytest.mark.parametrize(
    "path", ["/etc/passwd", "/proc/1/environ", "/", "/var", "/var/lib/x", "/usr/lib", "/root/.ssh", "/tmp/.."]
)
def test_system_directories_and_their_ancestors_are_refused(path: str) -> None:
    problem = location_problem(Path(path))
    assert problem is not None and "SELFMAKER_FILE_ROOTS" in problem


def test_links_forbidden_places_and_roots(tmp_path: Path) -> None:
    assert location_problem(tmp_path / "data") is None
    (tmp_path / "link").symlink_to("/etc")
    assert "/etc/hosts reaches /etc" in str(location_problem(tmp_path / "link" / "hosts"))
    home = tmp_path / "home"
    assert "platform's own directory" in str(location_problem(home / "state.db", forbidden=[home]))
    assert location_problem(tmp_path, forbidden=[home]) is not None  # an ancestor of the home
    allowed = tmp_path / "allowed"
    assert location_problem(allowed / "x", roots=[allowed]) is None
    assert "outside the directories SELFMAKER_FILE_ROOTS allows" in str(
        location_problem(tmp_path / "other", roots=[allowed])
    )
    assert location_problem(allowed / ".." / "other", roots=[allowed]) is not None


def test_the_list_is_absolute() -> None:
    assert all(path.is_absolute() for path in SYSTEM_DIRS)
    assert Path("/etc") in SYSTEM_DIRS and Path("/proc") in SYSTEM_DIRS

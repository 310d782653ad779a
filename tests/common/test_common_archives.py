"""common.archives: safe extraction refuses traversal, absolute paths, links out of the tree and devices."""

from __future__ import annotations

import io
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.archives import ArchiveError, UnsafeArchiveError, is_archive, safe_extract


def _archive(path: Path, *members: tuple[str, int, str, bytes, int]) -> Path:
    """A model.tar.gz holding ``model.onnx`` plus ``members`` = (name, type, link target, data, mode)."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind, link, data, mode in (("model.onnx", tarfile.REGTYPE, "", b"onnx", 0o644), *members):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.size = kind, link, mode, len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return path


def _member(
    name: str, kind: int = tarfile.REGTYPE, link: str = "", data: bytes = b"x", mode: int = 0o644
) -> tuple[str, int, str, bytes, int]:
    return name, kind, link, data if kind == tarfile.REGTYPE else b"", mode


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("/etc/evil"), "'/etc/evil' has an absolute path"),
        (_member("../evil"), "'../evil' contains '..'"),
        (_member("code/../../evil"), "contains '..'"),
        (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "'link' is a symlink to an absolute path"),
        (
            _member("code/link", tarfile.SYMTYPE, "../../outside"),
            "'code/link' links outside the model directory",
        ),
        (_member("hard", tarfile.LNKTYPE, "../outside"), "'hard' hard-links outside"),
        (_member("hard2", tarfile.LNKTYPE, "/etc/passwd"), "'hard2' hard-links outside"),
        (_member("dev", tarfile.CHRTYPE), "'dev' is a device"),
        (_member("fifo", tarfile.FIFOTYPE), "'fifo' is a device, FIFO"),
    ],
)
def test_unsafe_members_are_refused_and_nothing_is_extracted(
    tmp_path: Path, member: tuple, message: str
) -> None:
    archive = _archive(tmp_path / "model.tar.gz", member)
    target = tmp_path / "out" / "model"
    with pytest.raises(UnsafeArchiveError, match=message):
        safe_extract(archive, target)
    assert not any((tmp_path / name).exists() for name in ("evil", "outside", "out/evil"))
    assert not (target / "model.onnx").exists(), "nothing is extracted from a refused archive"


@given(st.lists(st.sampled_from(["a", "b", "..", "."]), min_size=1, max_size=5).filter(lambda p: ".." in p))
def test_any_dotdot_component_is_refused(tmp_path_factory: pytest.TempPathFactory, parts: list[str]) -> None:
    tmp = tmp_path_factory.mktemp("dotdot")
    archive = _archive(tmp / "m.tar.gz", _member("/".join(parts)))
    with pytest.raises(UnsafeArchiveError, match="contains '..'"):
        safe_extract(archive, tmp / "out")


def test_the_target_is_named_in_messages(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "m.tar.gz", _member("l", tarfile.SYMTYPE, "../x"))
    with pytest.raises(UnsafeArchiveError, match="links outside the code directory"):
        safe_extract(archive, tmp_path / "code", what="code directory")


def test_contained_links_are_extracted_and_modes_clamped(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "model.tar.gz",
        _member("code/inference.py", data=b"# hooks", mode=0o4777),
        _member("alias.onnx", tarfile.SYMTYPE, "model.onnx"),
        _member("code/up", tarfile.SYMTYPE, "../model.onnx"),
        _member("hard.onnx", tarfile.LNKTYPE, "model.onnx"),
    )
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "alias.onnx").read_bytes() == b"onnx" and (out / "code" / "up").read_bytes() == b"onnx"
    assert (out / "hard.onnx").read_bytes() == b"onnx"
    mode = stat.S_IMODE((out / "code" / "inference.py").stat().st_mode)
    assert mode & (stat.S_ISUID | stat.S_IWGRP | stat.S_IWOTH) == 0, oct(mode)


def test_a_corrupt_archive_is_an_archive_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    assert not is_archive(bad)
    with pytest.raises(ArchiveError, match="cannot unpack model.tar.gz") as info:
        safe_extract(bad, tmp_path / "out")
    assert not isinstance(info.value, UnsafeArchiveError)
    assert is_archive(_archive(tmp_path / "good.tar.gz")) and not is_archive(tmp_path / "missing.tar.gz")


def test_unpack_limit_default_and_fixed() -> None:
    from common.archives import UNPACK_FLOOR, UNPACK_RATIO, unpack_limit

    assert unpack_limit(2_600_000) == UNPACK_FLOOR  # the 2.6 MB archive of the issue: at most 1 GiB
    assert unpack_limit(50 * 1024**2) == UNPACK_RATIO * 50 * 1024**2  # a big model: 100 times its size
    assert unpack_limit(50 * 1024**2, max_bytes=1000) == 1000  # the operator's fixed limit wins


def test_an_archive_above_the_limit_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from common.archives import ArchiveTooLargeError

    archive = _archive(tmp_path / "model.tar.gz", _member("weights.bin", data=b"\0" * 5000))
    with pytest.raises(
        ArchiveTooLargeError, match=r"would unpack to 5004 bytes, more than the limit of 4096 bytes"
    ):
        safe_extract(archive, tmp_path / "out", max_bytes=4096)
    assert list((tmp_path / "out").iterdir()) == []
    assert (safe_extract(archive, tmp_path / "ok", max_bytes=5004) / "weights.bin").stat().st_size == 5000


@pytest.mark.parametrize("root_name", ["", ".", "./"])
def test_a_root_directory_entry_is_accepted(tmp_path: Path, root_name: str) -> None:
    """The SDK's repack_model writes a root entry named '' (tar.add(dir, arcname="/")); `tar -C d .` one
    named './' with './'-prefixed members: both unpack, and the checks still see every other member."""
    prefix = "./" if root_name.startswith(".") else ""
    archive = _archive(
        tmp_path / "model.tar.gz",
        _member(root_name, tarfile.DIRTYPE),
        _member(f"{prefix}code", tarfile.DIRTYPE),
        _member(f"{prefix}code/inference.py", data=b"def model_fn(d): ..."),
    )
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "code" / "inference.py").read_bytes() == b"def model_fn(d): ..."
    assert (out / "model.onnx").read_bytes() == b"onnx"
    bad = _archive(tmp_path / "bad.tar.gz", _member(root_name, tarfile.DIRTYPE), _member("../evil"))
    with pytest.raises(UnsafeArchiveError, match="contains '..'"):
        safe_extract(bad, tmp_path / "bad")
    assert not (tmp_path / "evil").exists()


def test_an_empty_name_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "model.tar.gz", _member(""))
    with pytest.raises(UnsafeArchiveError, match="empty name is not the root directory"):
        safe_extract(archive, tmp_path / "out")

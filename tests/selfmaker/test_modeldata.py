"""Model data fetch/unpack for the platform: file:// archives, directories, and unsafe archives refused."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from selfmaker.modeldata import ModelDataError, fetch_model_data


def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def test_archive_is_unpacked(tmp_path: Path) -> None:
    archive = _tar(
        tmp_path / "model.tar.gz",
        {"model.onnx": b"graph", "code/inference.py": b"x = 1\n"},
        links={"code/alias.py": "inference.py"},
    )
    model_dir = fetch_model_data({"ModelDataUrl": archive.as_uri()}, tmp_path / "dest")
    assert (model_dir / "model.onnx").read_bytes() == b"graph"
    assert (model_dir / "code" / "alias.py").read_text() == "x = 1\n"


def test_directory_is_used_as_is_and_a_plain_file_is_copied(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    assert (
        fetch_model_data({"ModelDataUrl": (tmp_path / "dir").as_uri()}, tmp_path / "d1") == tmp_path / "dir"
    )
    (tmp_path / "weights.bin").write_bytes(b"w")
    model_dir = fetch_model_data({"ModelDataUrl": (tmp_path / "weights.bin").as_uri()}, tmp_path / "d2")
    assert (model_dir / "weights.bin").read_bytes() == b"w"


@pytest.mark.parametrize(
    ("members", "links", "reason"),
    [
        ({"../evil.txt": b"x"}, None, "contains '..'"),
        ({"/etc/evil": b"x"}, None, "absolute path"),
        ({}, {"escape": "../../outside"}, "links outside"),
    ],
)
def test_unsafe_archives_are_refused(
    tmp_path: Path, members: dict[str, bytes], links: dict[str, str] | None, reason: str
) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", members, links)
    with pytest.raises(ModelDataError, match=reason):
        fetch_model_data({"ModelDataUrl": archive.as_uri()}, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "dest" / "escape").exists()


def test_missing_model_data(tmp_path: Path) -> None:
    with pytest.raises(ModelDataError, match="does not exist"):
        fetch_model_data({"ModelDataUrl": (tmp_path / "nope.tar.gz").as_uri()}, tmp_path / "dest")

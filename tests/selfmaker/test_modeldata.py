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


def _framework(model_data: str, submit: str) -> dict[str, object]:
    """A container as the SDK's XGBoostModel writes it when it does not repack: the code stays in the
    training job's sourcedir.tar.gz."""
    return {
        "ModelDataUrl": model_data,
        "Environment": {"SAGEMAKER_PROGRAM": "train.py", "SAGEMAKER_SUBMIT_DIRECTORY": submit},
    }


def test_a_submit_directory_uri_brings_the_code_into_the_model(tmp_path: Path) -> None:
    model = _tar(tmp_path / "model.tar.gz", {"xgboost-model": b"booster", "code/old.py": b"old\n"})
    source = _tar(tmp_path / "sourcedir.tar.gz", {"train.py": b"def model_fn(d): ...\n", "lib/u.py": b""})
    model_dir = fetch_model_data(_framework(model.as_uri(), source.as_uri()), tmp_path / "dest")
    assert (model_dir / "xgboost-model").read_bytes() == b"booster"
    assert (model_dir / "code" / "train.py").read_text() == "def model_fn(d): ...\n"
    assert (model_dir / "code" / "lib" / "u.py").is_file() and (model_dir / "code" / "old.py").is_file()
    assert not (tmp_path / "dest" / "submit").exists()  # the staging copy is gone


def test_a_model_directory_served_in_place_is_never_written_to(tmp_path: Path) -> None:
    user_dir = tmp_path / "mine"
    user_dir.mkdir()
    (user_dir / "xgboost-model").write_bytes(b"booster")
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("x = 1\n")
    model_dir = fetch_model_data(_framework(user_dir.as_uri(), code.as_uri()), tmp_path / "dest")
    assert model_dir != user_dir and model_dir.is_relative_to(tmp_path / "dest")
    assert (model_dir / "code" / "train.py").read_text() == "x = 1\n"
    assert sorted(p.name for p in user_dir.iterdir()) == ["xgboost-model"]


@pytest.mark.parametrize("submit", ["/opt/ml/model/code", "", "code"])
def test_a_submit_directory_inside_the_container_is_left_alone(tmp_path: Path, submit: str) -> None:
    model = _tar(tmp_path / "model.tar.gz", {"model.onnx": b"graph", "code/inference.py": b""})
    model_dir = fetch_model_data(_framework(model.as_uri(), submit), tmp_path / "dest")
    assert sorted(p.name for p in (model_dir / "code").iterdir()) == ["inference.py"]


def test_a_missing_submit_directory_names_the_variable(tmp_path: Path) -> None:
    model = _tar(tmp_path / "model.tar.gz", {"xgboost-model": b"booster"})
    missing = (tmp_path / "nope" / "sourcedir.tar.gz").as_uri()
    with pytest.raises(ModelDataError, match=f"SAGEMAKER_SUBMIT_DIRECTORY: model data {missing} does not"):
        fetch_model_data(_framework(model.as_uri(), missing), tmp_path / "dest")
    unsafe = _tar(tmp_path / "evil.tar.gz", {"../evil.py": b"x"})
    with pytest.raises(ModelDataError, match="could not extract SAGEMAKER_SUBMIT_DIRECTORY"):
        fetch_model_data(_framework(model.as_uri(), unsafe.as_uri()), tmp_path / "dest2")

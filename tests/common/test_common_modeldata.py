"""common.modeldata: the one model-data fetcher's rules (local directory/archive/file, S3 archive/prefix)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import boto3
import pytest

from common.archives import UnsafeArchiveError
from common.modeldata import ModelDataError, fetch_model_data


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_local_directory_is_used_as_is(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    for uri in (str(tmp_path / "dir"), (tmp_path / "dir").as_uri(), f"file://localhost{tmp_path}/dir"):
        assert fetch_model_data(uri, tmp_path / "w") == tmp_path / "dir"


def test_a_local_archive_is_unpacked_and_a_plain_file_copied(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "model.tar.gz", {"model.onnx": b"graph", "code/inference.py": b"x = 1\n"})
    for n, uri in enumerate((str(archive), archive.as_uri())):
        model_dir = fetch_model_data(uri, tmp_path / f"w{n}")
        assert model_dir == tmp_path / f"w{n}" / "model"
        assert (model_dir / "code" / "inference.py").read_bytes() == b"x = 1\n"
    (tmp_path / "weights.bin").write_bytes(b"w")
    assert (
        fetch_model_data(str(tmp_path / "weights.bin"), tmp_path / "w3") / "weights.bin"
    ).read_bytes() == b"w"


def test_an_unsafe_archive_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "bad.tar.gz", {"../evil": b"x"})
    with pytest.raises(UnsafeArchiveError, match="contains '..'"):
        fetch_model_data(archive.as_uri(), tmp_path / "w")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "w" / "evil").exists()


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("/does/not/exist.tar.gz", "does not exist"),
        ("ftp://host/model.tar.gz", "unsupported model data"),
        ("s3://", "not an S3 URI"),
    ],
)
def test_bad_sources(tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(ModelDataError, match=message):
        fetch_model_data(uri, tmp_path / "w")


def test_s3_archives_and_prefixes_through_moto(
    tmp_path: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="common-models")
    archive = _tar(tmp_path / "model.tar.gz", {"model.onnx": b"graph"})
    s3.upload_file(str(archive), "common-models", "job/output/model.tar.gz")
    s3.put_object(Bucket="common-models", Key="raw/model.onnx", Body=b"raw")
    s3.put_object(Bucket="common-models", Key="raw/code/inference.py", Body=b"hooks")
    s3.put_object(Bucket="common-models", Key="raw/code/", Body=b"")  # a "directory" marker is skipped

    by_suffix = fetch_model_data("s3://common-models/job/output/model.tar.gz", tmp_path / "a")
    assert (by_suffix / "model.onnx").read_bytes() == b"graph"
    assert not (tmp_path / "a" / "model.tar.gz").exists(), "the download is removed once unpacked"

    prefix = fetch_model_data("s3://common-models/raw/", tmp_path / "b")
    assert sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*") if p.is_file()) == [
        "code/inference.py",
        "model.onnx",
    ]
    one = fetch_model_data("s3://common-models/raw/model.onnx", tmp_path / "c", compressed=False)
    assert (one / "model.onnx").read_bytes() == b"raw"

    with pytest.raises(ModelDataError, match="cannot download s3://common-models/missing.tar.gz"):
        fetch_model_data("s3://common-models/missing.tar.gz", tmp_path / "d")
    with pytest.raises(ModelDataError, match="no model data under s3://common-models/empty/"):
        fetch_model_data("s3://common-models/empty/", tmp_path / "e")
    with pytest.raises(ModelDataError, match="an archive needs s3://bucket/key"):
        fetch_model_data("s3://common-models", tmp_path / "f", compressed=True)

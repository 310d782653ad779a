"""Model sources: directories, archives (path, file://, s3:// through moto), and tar-slip refusal."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import boto3
import pytest
from serving_helpers import add_member, tar_dir

from serving.errors import ModelSourceError, UnsafeArchiveError
from serving.modelsource import pip_command, prepare_model, resolve_source, safe_extract
from serving.settings import ServingSettings


def _archive(tmp_path: Path, *members: dict) -> Path:
    path = tmp_path / "model.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_member(tar, "model.onnx", data=b"onnx")
        for member in members:
            add_member(tar, **member)
    return path


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ({"name": "/etc/evil"}, "'/etc/evil' has an absolute path"),
        ({"name": "../evil"}, "'../evil' contains '..'"),
        ({"name": "code/../../evil"}, "contains '..'"),
        (
            {"name": "link", "kind": tarfile.SYMTYPE, "link": "/etc/passwd"},
            "'link' is a symlink to an absolute path",
        ),
        (
            {"name": "code/link", "kind": tarfile.SYMTYPE, "link": "../../outside"},
            "'code/link' links outside",
        ),
        ({"name": "hard", "kind": tarfile.LNKTYPE, "link": "../outside"}, "'hard' hard-links outside"),
        ({"name": "hard2", "kind": tarfile.LNKTYPE, "link": "/etc/passwd"}, "'hard2' hard-links outside"),
        ({"name": "dev", "kind": tarfile.CHRTYPE}, "'dev' is a device"),
        ({"name": "blk", "kind": tarfile.BLKTYPE}, "'blk' is a device"),
        ({"name": "fifo", "kind": tarfile.FIFOTYPE}, "'fifo' is a device, FIFO"),
    ],
)
def test_unsafe_members_are_refused_and_named(tmp_path: Path, member: dict, message: str) -> None:
    archive = _archive(tmp_path, member)
    target = tmp_path / "out"
    with pytest.raises(UnsafeArchiveError, match=message.replace("(", r"\(")):
        safe_extract(archive, target)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "outside").exists()
    assert not (target / "model.onnx").exists(), "nothing is extracted from a refused archive"


def test_contained_links_are_allowed(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path,
        {"name": "code/inference.py", "data": b"# hooks"},
        {"name": "alias.onnx", "kind": tarfile.SYMTYPE, "link": "model.onnx"},
        {"name": "code/up", "kind": tarfile.SYMTYPE, "link": "../model.onnx"},
    )
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "alias.onnx").read_bytes() == b"onnx"
    assert (out / "code" / "up").read_bytes() == b"onnx"


def test_corrupt_archive_is_a_source_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ModelSourceError, match="cannot unpack model.tar.gz"):
        safe_extract(bad, tmp_path / "out")


def test_resolve_directory_path_and_file_uri(tmp_path: Path, binary_model: Path) -> None:
    assert resolve_source(str(binary_model), tmp_path / "a") == binary_model
    archive = tar_dir(binary_model, tmp_path / "model.tar.gz")
    for source, work in ((str(archive), "b"), (archive.as_uri(), "c")):
        out = resolve_source(source, tmp_path / work)
        assert (out / "model.onnx").read_bytes() == (binary_model / "model.onnx").read_bytes()


@pytest.mark.parametrize("source", ["/does/not/exist", "ftp://host/model.tar.gz", "s3://bucket-only"])
def test_bad_sources(tmp_path: Path, source: str) -> None:
    with pytest.raises(ModelSourceError):
        resolve_source(source, tmp_path)


def test_s3_source_through_moto(
    tmp_path: Path, binary_model: Path, moto_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_server)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="models-src")
    archive = tar_dir(binary_model, tmp_path / "model.tar.gz")
    s3.upload_file(str(archive), "models-src", "job/output/model.tar.gz")
    out = resolve_source("s3://models-src/job/output/model.tar.gz", tmp_path / "w")
    assert (out / "model.onnx").read_bytes() == (binary_model / "model.onnx").read_bytes()
    with pytest.raises(ModelSourceError, match="cannot download s3://models-src/missing.tar.gz"):
        resolve_source("s3://models-src/missing.tar.gz", tmp_path / "w2")


def test_prepare_runs_once_and_replays_the_result(tmp_path: Path, binary_model: Path) -> None:
    archive = tar_dir(binary_model, tmp_path / "model.tar.gz")
    state = tmp_path / "state"
    first = prepare_model(str(archive), state)
    archive.unlink()  # a second worker must not need the source again
    assert prepare_model(str(archive), state) == first
    broken_state = tmp_path / "broken"
    with pytest.raises(ModelSourceError, match="does not exist"):
        prepare_model(str(tmp_path / "nope.tar.gz"), broken_state)
    with pytest.raises(ModelSourceError, match="does not exist"):  # replayed, not retried
        prepare_model(str(archive), broken_state)


def test_requirements_install_failure_is_reported(tmp_path: Path, binary_model: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes((binary_model / "model.onnx").read_bytes())
    (model / "code").mkdir()
    (model / "code" / "requirements.txt").write_text("./no-such-local-package-dir\n")
    with pytest.raises(ModelSourceError, match="pip install -r code/requirements.txt failed"):
        prepare_model(str(model), tmp_path / "state")


# -- pip for code/requirements.txt: installed pip, else pip's wheel (SELFMAKER_PIP_WHEEL), else a clear error


def test_pip_command_prefers_the_installed_pip(tmp_path: Path) -> None:
    wheel = tmp_path / "pip.whl"
    wheel.write_bytes(b"PK")
    assert pip_command(str(wheel), pip_installed=True) == [sys.executable, "-m", "pip"]
    assert pip_command(None) == [sys.executable, "-m", "pip"], "this test environment has pip"


def test_pip_command_runs_pip_from_its_wheel_when_pip_is_not_installed(tmp_path: Path) -> None:
    wheel = tmp_path / "pip-26.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    assert pip_command(str(wheel), pip_installed=False) == [sys.executable, f"{wheel}/pip"]


@pytest.mark.parametrize(
    ("configured", "why"),
    [
        (None, "SELFMAKER_PIP_WHEEL is not set"),
        ("/nowhere/pip.whl", "SELFMAKER_PIP_WHEEL=/nowhere/pip.whl does not exist"),
    ],
)
def test_pip_command_without_any_pip_says_how_to_fix_it(configured: str | None, why: str) -> None:
    with pytest.raises(ModelSourceError) as info:
        pip_command(configured, pip_installed=False)
    assert "code/requirements.txt needs pip, which is not available" in info.value.message
    assert why in info.value.message and "set SELFMAKER_PIP_WHEEL to a pip wheel" in info.value.message


def test_pip_wheel_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ServingSettings().pip_wheel is None
    monkeypatch.setenv("SELFMAKER_PIP_WHEEL", "/opt/selfmaker/pip.whl")
    assert ServingSettings().pip_wheel == "/opt/selfmaker/pip.whl"

"""Input and output on S3 (moto's server on 127.0.0.1): listing, byte ranges, multipart output."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from batch_helpers import N_FEATURES, predict, read_rows, request, write_csv

from batch import storage


@pytest.fixture
def s3(moto_server: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    storage.configure_s3(moto_server)
    try:
        yield client
    finally:
        storage.configure_s3(None)


def _floats(body: bytes) -> np.ndarray:
    return np.array([float(line) for line in body.decode().splitlines() if line.strip()])


def test_s3_prefix_in_and_out_with_split_parts(
    run_job: Any, s3: Any, moto_server: str, lr_model: Path, tmp_path: Path
) -> None:
    s3.create_bucket(Bucket="batch-in")
    s3.create_bucket(Bucket="batch-out")
    rng = np.random.default_rng(21)
    files = {
        "data/part-1.csv": write_csv(tmp_path / "p1.csv", rng.normal(size=(2000, N_FEATURES))),
        "data/sub/part-2.csv": write_csv(tmp_path / "p2.csv", rng.normal(size=(700, N_FEATURES))),
    }
    for key, path in files.items():
        s3.put_object(Bucket="batch-in", Key=key, Body=path.read_bytes())
    s3.put_object(Bucket="batch-in", Key="other/ignored.csv", Body=b"1,2,3,4\n")
    req = request(
        "s3://batch-in/data",
        "s3://batch-out/results/",
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
    )
    result = run_job(req, lr_model, part_mb=0.02)
    assert result.status == "Completed", result.failure_reason
    assert result.parts_total > 2
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="batch-out")["Contents"])
    assert keys == ["results/part-1.csv.out", "results/sub/part-2.csv.out"]
    for key, path in files.items():
        out_key = "results/" + key[len("data/") :] + ".out"
        body = s3.get_object(Bucket="batch-out", Key=out_key)["Body"].read()
        np.testing.assert_allclose(_floats(body), predict(lr_model, read_rows(path)), rtol=1e-5, atol=1e-6)


def test_s3_large_output_is_a_multipart_upload(
    run_job: Any, s3: Any, lr_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # moto runs in this process: lower its 5 MB minimum part size so a small output needs several parts
    monkeypatch.setattr("moto.s3.models.S3_UPLOAD_PART_MIN_SIZE", 1024)
    monkeypatch.setattr(storage, "S3_PART_BYTES", 64 * 1024)
    s3.create_bucket(Bucket="big-in")
    s3.create_bucket(Bucket="big-out")
    rows = np.random.default_rng(22).normal(size=(6_000, N_FEATURES))
    src = write_csv(tmp_path / "big.csv", rows, ids=True)
    s3.put_object(Bucket="big-in", Key="big.csv", Body=src.read_bytes())
    req = request(
        "s3://big-in/big.csv",
        "s3://big-out/",
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input"},
    )
    result = run_job(req, lr_model, part_mb=0.05)
    assert result.status == "Completed", result.failure_reason
    head = s3.head_object(Bucket="big-out", Key="big.csv.out")
    assert head["ContentLength"] > 3 * 64 * 1024
    assert "-" in head["ETag"]  # multipart ETags end in -<parts>
    body = s3.get_object(Bucket="big-out", Key="big.csv.out")["Body"].read().decode().splitlines()
    assert [line.rsplit(",", 1)[0] for line in body] == src.read_text().splitlines()
    np.testing.assert_allclose(
        [float(line.rsplit(",", 1)[1]) for line in body],
        predict(lr_model, read_rows(src, skip_cols=1)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_s3_gzip_and_manifest(run_job: Any, s3: Any, lr_model: Path, tmp_path: Path) -> None:
    s3.create_bucket(Bucket="gz-in")
    rows = np.random.default_rng(23).normal(size=(400, N_FEATURES))
    src = write_csv(tmp_path / "x.csv", rows)
    s3.put_object(Bucket="gz-in", Key="in/x.csv.gz", Body=gzip.compress(src.read_bytes()))
    s3.put_object(Bucket="gz-in", Key="in/y.csv.gz", Body=gzip.compress(b"9,9,9,9\n"))
    s3.put_object(Bucket="gz-in", Key="m.manifest", Body=b'[{"prefix": "s3://gz-in/in/"}, "x.csv.gz"]')
    req = request(
        "s3://gz-in/m.manifest",
        "s3://gz-in/out",
        S3DataType="ManifestFile",
        SplitType="Line",
        CompressionType="Gzip",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
    )
    result = run_job(req, lr_model)
    assert result.status == "Completed", result.failure_reason
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="gz-in", Prefix="out")["Contents"])
    assert keys == ["out/x.csv.gz.out"]
    body = s3.get_object(Bucket="gz-in", Key="out/x.csv.gz.out")["Body"].read()
    np.testing.assert_allclose(_floats(body), predict(lr_model, read_rows(src)), rtol=1e-5, atol=1e-6)

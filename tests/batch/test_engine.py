"""The transform engine end to end on a shared in-process Dask cluster, outputs checked against
onnxruntime."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batch_helpers import N_FEATURES, predict, read_rows, request, write_csv

from batch.errors import TransformRequestError


def _uri(path: Path) -> str:
    return path.as_uri()


def _floats(text: str) -> np.ndarray:
    return np.array([float(line) for line in text.splitlines() if line.strip()])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three CSV objects (one nested) of different sizes."""
    base = tmp_path_factory.mktemp("data") / "in"
    rng = np.random.default_rng(3)
    write_csv(base / "a.csv", rng.normal(size=(300, N_FEATURES)))
    write_csv(base / "b.csv", rng.normal(size=(1200, N_FEATURES)))
    write_csv(base / "nested" / "c.csv", rng.normal(size=(50, N_FEATURES)))
    return base


# -- option combinations --------------------------------------------------------------------------------

COMBOS = [
    # (SplitType, BatchStrategy, AssembleWith, MaxPayloadInMB, MaxConcurrentTransforms, part_mb)
    ("Line", "MultiRecord", "Line", 1, 1, 0.01),
    ("Line", "MultiRecord", "None", 1, 3, 32),
    ("Line", "SingleRecord", "Line", 1, 4, 0.01),
    ("Line", "SingleRecord", "None", 6, 1, 32),
    ("None", "MultiRecord", "Line", 6, 2, 32),
    ("None", "SingleRecord", "None", 6, 1, 32),
]


@pytest.mark.parametrize(("split", "strategy", "assemble", "payload", "concurrent", "part_mb"), COMBOS)
def test_option_combinations_match_direct_predictions(
    run_job: Any,
    lr_model: Path,
    dataset: Path,
    tmp_path: Path,
    split: str,
    strategy: str,
    assemble: str,
    payload: int,
    concurrent: int,
    part_mb: float,
) -> None:
    out = tmp_path / "out"
    req = request(
        _uri(dataset),
        _uri(out),
        SplitType=split,
        BatchStrategy=strategy,
        AssembleWith=assemble,
        MaxPayloadInMB=payload,
        MaxConcurrentTransforms=concurrent,
        Accept="text/csv",
    )
    result = run_job(req, lr_model, part_mb=part_mb)
    assert result.status == "Completed", result.failure_reason
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a.csv.out",
        "b.csv.out",
        "nested/c.csv.out",
    ]
    for name in ("a.csv", "b.csv", "nested/c.csv"):
        text = (out / f"{name}.out").read_text()
        expected = predict(lr_model, read_rows(dataset / name))
        if split == "Line" and strategy == "SingleRecord" and assemble == "None":
            # bodies concatenated as they come: each single-record answer already ends in a newline
            assert text.count("\n") == len(expected)
        np.testing.assert_allclose(_floats(text), expected, rtol=1e-5, atol=1e-6)
    assert result.records == (1550 if split == "Line" else 3)
    if part_mb < 1:
        assert result.parts_total > result.files_total  # large objects were split into byte ranges


def test_multi_record_mini_batches_respect_max_payload(run_job: Any, lr_model: Path, tmp_path: Path) -> None:
    rows = np.random.default_rng(5).normal(
        size=(40000, N_FEATURES)
    )  # ~1.6 MB: two 1 MB mini-batches at least
    src = write_csv(tmp_path / "in" / "big.csv", rows)
    req = request(
        _uri(src.parent),
        _uri(tmp_path / "out"),
        SplitType="Line",
        BatchStrategy="MultiRecord",
        MaxPayloadInMB=1,
        AssembleWith="Line",
        Accept="text/csv",
    )
    result = run_job(req, lr_model)
    assert result.status == "Completed", result.failure_reason
    np.testing.assert_allclose(
        _floats((tmp_path / "out" / "big.csv.out").read_text()),
        predict(lr_model, read_rows(src)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_json_lines_input_and_accept(run_job: Any, lr_model: Path, tmp_path: Path) -> None:
    rows = np.random.default_rng(9).normal(size=(120, N_FEATURES))
    src = tmp_path / "in" / "x.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps([round(v, 5) for v in row]) + "\n" for row in rows))
    req = request(
        _uri(src.parent),
        _uri(tmp_path / "out"),
        ContentType="application/jsonlines",
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="application/jsonlines",
    )
    result = run_job(req, lr_model)
    assert result.status == "Completed", result.failure_reason
    lines = (tmp_path / "out" / "x.jsonl.out").read_text().splitlines()
    scores = np.array([json.loads(line)["score"] for line in lines])
    np.testing.assert_allclose(scores, predict(lr_model, np.round(rows, 5)), rtol=1e-5, atol=1e-6)


# -- compression, manifest -----------------------------------------------------------------------------------


def test_gzip_input_is_decompressed(run_job: Any, lr_model: Path, dataset: Path, tmp_path: Path) -> None:
    src = tmp_path / "in" / "b.csv.gz"
    src.parent.mkdir(parents=True)
    # two gzip members, as `cat x.gz y.gz` produces
    text = (dataset / "b.csv").read_bytes()
    half = text.index(b"\n", len(text) // 2) + 1
    src.write_bytes(gzip.compress(text[:half]) + gzip.compress(text[half:]))
    req = request(
        _uri(src.parent),
        _uri(tmp_path / "out"),
        SplitType="Line",
        CompressionType="Gzip",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
    )
    result = run_job(req, lr_model, part_mb=0.01)
    assert result.status == "Completed", result.failure_reason
    assert result.parts_total == 1  # a gzip object is never cut
    np.testing.assert_allclose(
        _floats((tmp_path / "out" / "b.csv.gz.out").read_text()),
        predict(lr_model, read_rows(dataset / "b.csv")),
        rtol=1e-5,
        atol=1e-6,
    )


def test_manifest_file_lists_the_objects(run_job: Any, lr_model: Path, dataset: Path, tmp_path: Path) -> None:
    manifest = tmp_path / "input.manifest"
    manifest.write_text(json.dumps([{"prefix": _uri(dataset) + "/"}, "nested/c.csv", "a.csv"]))
    req = request(
        _uri(manifest),
        _uri(tmp_path / "out"),
        S3DataType="ManifestFile",
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
    )
    result = run_job(req, lr_model)
    assert result.status == "Completed", result.failure_reason
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.out"))
    assert written == ["a.csv.out", "nested/c.csv.out"]
    np.testing.assert_allclose(
        _floats((tmp_path / "out" / "nested" / "c.csv.out").read_text()),
        predict(lr_model, read_rows(dataset / "nested" / "c.csv")),
        rtol=1e-5,
        atol=1e-6,
    )


# -- DataProcessing: join and filters ----------------------------------------------------------------------


def test_csv_join_with_input_and_filters(run_job: Any, lr_model: Path, tmp_path: Path) -> None:
    rows = np.random.default_rng(11).normal(size=(500, N_FEATURES))
    src = write_csv(tmp_path / "in" / "ids.csv", rows, ids=True)
    req = request(
        _uri(src.parent),
        _uri(tmp_path / "out"),
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
        MaxPayloadInMB=1,
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"},
    )
    result = run_job(req, lr_model, part_mb=0.005)
    assert result.status == "Completed", result.failure_reason
    lines = (tmp_path / "out" / "ids.csv.out").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == [str(1000 + i) for i in range(len(rows))]
    scores = np.array([float(line.split(",")[1]) for line in lines])
    np.testing.assert_allclose(scores, predict(lr_model, read_rows(src, skip_cols=1)), rtol=1e-5, atol=1e-6)


def test_csv_join_keeps_every_input_column(run_job: Any, lr_model: Path, tmp_path: Path) -> None:
    rows = np.random.default_rng(12).normal(size=(30, N_FEATURES))
    src = write_csv(tmp_path / "in" / "ids.csv", rows, ids=True)
    req = request(
        _uri(src.parent),
        _uri(tmp_path / "out"),
        SplitType="Line",
        BatchStrategy="SingleRecord",
        AssembleWith="Line",
        Accept="text/csv",
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input"},
    )
    result = run_job(req, lr_model)
    assert result.status == "Completed", result.failure_reason
    out_lines = (tmp_path / "out" / "ids.csv.out").read_text().splitlines()
    in_lines = src.read_text().splitlines()
    assert [line.rsplit(",", 1)[0] for line in out_lines] == in_lines
    np.testing.assert_allclose(
        [float(line.rsplit(",", 1)[1]) for line in out_lines],
        predict(lr_model, rows.round(5)),
        rtol=1e-5,
        atol=1e-6,
    )


def test_json_lines_join_under_sagemaker_output(run_job: Any, lr_model: Path, tmp_path: Path) -> None:
    rows = np.random.default_rng(13).normal(size=(80, N_FEATURES)).round(5)
    src = tmp_path / "in" / "recs.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text(
        "".join(json.dumps({"id": f"r{i}", "features": row.tolist()}) + "\n" for i, row in enumerate(rows))
    )
    req = request(
        _uri(src.parent),
        _uri(tmp_path / "out"),
        ContentType="application/jsonlines",
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="application/jsonlines",
        DataProcessing={
            "InputFilter": "$.features",
            "JoinSource": "Input",
            "OutputFilter": "$['id','SageMakerOutput']",
        },
    )
    result = run_job(req, lr_model)
    assert result.status == "Completed", result.failure_reason
    records = [json.loads(line) for line in (tmp_path / "out" / "recs.jsonl.out").read_text().splitlines()]
    assert [sorted(r) for r in records] == [["SageMakerOutput", "id"]] * len(rows)
    assert [r["id"] for r in records] == [f"r{i}" for i in range(len(rows))]
    np.testing.assert_allclose(
        [r["SageMakerOutput"]["score"] for r in records], predict(lr_model, rows), rtol=1e-5, atol=1e-6
    )


def test_json_join_of_non_object_input_wraps_it(run_job: Any, lr_model: Path, tmp_path: Path) -> None:
    rows = np.random.default_rng(14).normal(size=(5, N_FEATURES)).round(5)
    src = tmp_path / "in" / "arr.jsonl"
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps(row.tolist()) + "\n" for row in rows))
    req = request(
        _uri(src.parent),
        _uri(tmp_path / "out"),
        ContentType="application/jsonlines",
        SplitType="Line",
        BatchStrategy="SingleRecord",
        AssembleWith="Line",
        Accept="application/jsonlines",
        DataProcessing={"JoinSource": "Input"},
    )
    result = run_job(req, lr_model)
    assert result.status == "Completed", result.failure_reason
    records = [json.loads(line) for line in (tmp_path / "out" / "arr.jsonl.out").read_text().splitlines()]
    assert [r["SageMakerInput"] for r in records] == rows.tolist()
    assert all(set(r["SageMakerOutput"]) == {"score"} for r in records)


# -- failures ------------------------------------------------------------------------------------------------


def test_malformed_record_fails_the_job_naming_file_and_line(
    run_job: Any, lr_model: Path, dataset: Path, tmp_path: Path
) -> None:
    lines = (dataset / "b.csv").read_text().splitlines()
    lines[736] = "1.0,oops,2.0,3.0"  # line 737
    bad = tmp_path / "in" / "bad.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text("\n".join(lines) + "\n")
    good = tmp_path / "in" / "good.csv"
    good.write_bytes((dataset / "a.csv").read_bytes())
    req = request(
        _uri(bad.parent),
        _uri(tmp_path / "out"),
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
    )
    result = run_job(req, lr_model, part_mb=0.01)
    assert result.status == "Failed"
    assert f"{bad.as_uri()}, line 737" in result.failure_reason
    assert "oops" in result.failure_reason
    # the bad object gets no .out, the other one still finishes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.csv.out"]
    assert result.files_failed == 1 and result.files_done == 1


def test_missing_input_fails_with_reason(run_job: Any, lr_model: Path, tmp_path: Path) -> None:
    req = request(_uri(tmp_path / "nothing-here"), _uri(tmp_path / "out"), SplitType="Line")
    result = run_job(req, lr_model)
    assert result.status == "Failed"
    assert "no input objects found" in result.failure_reason


def test_invalid_request_raises_validation_error(run_job: Any, lr_model: Path, tmp_path: Path) -> None:
    req = request(
        _uri(tmp_path), _uri(tmp_path / "out"), SplitType="None", DataProcessing={"JoinSource": "Input"}
    )
    with pytest.raises(TransformRequestError, match="SplitType 'Line'"):
        run_job(req, lr_model)


def test_unloadable_model_fails_the_job(run_job: Any, dataset: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    req = request(_uri(dataset), _uri(tmp_path / "out"), SplitType="Line")
    result = run_job(req, broken)
    assert result.status == "Failed"
    assert "model" in result.failure_reason.lower()
    assert not (tmp_path / "out").exists()

"""``selfmaker transform``: flags, model resolution, progress bar and summary."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batch_helpers import N_FEATURES, find_free_port, predict, read_rows, request, write_csv

from batch.cli import ProgressBar, main
from batch.engine import Progress


def test_cli_runs_a_job_on_an_existing_scheduler(
    dask_client: Any,
    lr_model: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = np.random.default_rng(51).normal(size=(500, N_FEATURES))
    src = write_csv(tmp_path / "in" / "x.csv", rows)
    req_file = tmp_path / "req.json"
    req_file.write_text(
        json.dumps(
            request(
                src.parent.as_uri(),
                (tmp_path / "out").as_uri(),
                SplitType="Line",
                BatchStrategy="MultiRecord",
                AssembleWith="Line",
                Accept="text/csv",
                TransformJobName="cli-job",
            )
        )
    )
    monkeypatch.setenv("SELFMAKER_HOME", str(tmp_path / "home"))  # the default state dir lives under it
    code = main([str(req_file), "--scheduler", dask_client.scheduler.address, "--model-dir", str(lr_model)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "home" / "transform" / "cli-job").is_dir()
    assert "TransformJobStatus: Completed" in captured.out
    assert "records: 500" in captured.out
    assert "objects: 1/1 written" in captured.out
    assert "records" in captured.err and "ETA" in captured.err  # the progress bar
    scores = np.array([float(v) for v in (tmp_path / "out" / "x.csv.out").read_text().split()])
    np.testing.assert_allclose(scores, predict(lr_model, read_rows(src)), rtol=1e-5, atol=1e-6)

    # a failing job exits 1 with the reason
    src.write_text("1,2,3,4\nnot,a,number,here\n")
    code = main(
        [
            str(req_file),
            "--scheduler",
            dask_client.scheduler.address,
            "--model-dir",
            str(lr_model),
            "--state-dir",
            str(tmp_path / "state"),
            "--quiet",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert f"FailureReason: ClientError: {src.as_uri()}, line 2" in captured.out


def test_model_name_without_a_platform_explains_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req_file = tmp_path / "req.json"
    req_file.write_text(json.dumps(request("file:///nowhere", "file:///nowhere-out", SplitType="Line")))
    code = main([str(req_file), "--endpoint-url", f"http://127.0.0.1:{find_free_port()}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no selfmaker platform answers" in err and "--model-dir" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read the request"),
        ("[1, 2]", "must be a JSON object"),
        (json.dumps(request("file:///in", "file:///out", SplitType="Words")), "ValidationException"),
    ],
)
def test_bad_request_files_exit_2(
    tmp_path: Path, lr_model: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    req_file = tmp_path / "req.json"
    req_file.write_text(content)
    assert main([str(req_file), "--model-dir", str(lr_model)]) == 2
    assert message in capsys.readouterr().err


def test_progress_line_shows_records_bytes_rate_and_eta() -> None:
    bar = ProgressBar(io.StringIO())
    line = bar.line(
        Progress(
            records=12_345,
            bytes_done=50 * 1024 * 1024,
            bytes_total=200 * 1024 * 1024,
            parts_done=3,
            parts_total=12,
            files_done=1,
            files_total=4,
            elapsed=10.0,
        )
    )
    assert "25.0%" in line
    assert "12,345 records" in line
    assert "50.0 MB/200.0 MB" in line
    assert "1,234 rec/s 5.0 MB/s" in line
    assert "ETA 0:30" in line
    assert "parts 3/12" in line and "files 1/4" in line

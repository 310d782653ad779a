"""Where the model runs: model servers (HTTP) or the in-process data plane; 1 or 2 workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batch_helpers import N_FEATURES, hooks_expected, request, write_csv

from batch.invoke import ModelServerProcess


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("modes") / "in"
    rng = np.random.default_rng(31)
    write_csv(base / "one.csv", rng.normal(size=(400, N_FEATURES)), ids=True)
    write_csv(base / "two.csv", rng.normal(size=(120, N_FEATURES)), ids=True)
    return base


def _outputs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


JOBS = {
    "plain": dict(
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
        DataProcessing={"InputFilter": "$[1:]"},
    ),
    "json-join": dict(
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="application/json",
        MaxPayloadInMB=1,
        DataProcessing={"InputFilter": "$[1:]", "JoinSource": "Input"},
    ),
    "single-none": dict(
        SplitType="Line",
        BatchStrategy="SingleRecord",
        AssembleWith="None",
        Accept="application/json",
        DataProcessing={"InputFilter": "$[1:]"},
    ),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_http_model_servers_and_in_process_give_the_same_bytes(
    run_job: Any, lr_model: Path, data: Path, tmp_path: Path, job: str
) -> None:
    results = {}
    for mode in ("http", "inprocess"):
        out = tmp_path / mode
        result = run_job(request(data.as_uri(), out.as_uri(), **JOBS[job]), lr_model, mode=mode, part_mb=0.01)
        assert result.status == "Completed", result.failure_reason
        assert result.mode == mode
        results[mode] = _outputs(out)
    assert sorted(results["http"]) == ["one.csv.out", "two.csv.out"]
    assert results["http"] == results["inprocess"]


def test_byoc_hooks_model_runs_in_model_servers(run_job: Any, hooks_model: Path, tmp_path: Path) -> None:
    rows = np.random.default_rng(32).normal(size=(400, N_FEATURES))
    src = write_csv(tmp_path / "in" / "x.csv", rows)
    req = request(
        src.parent.as_uri(),
        (tmp_path / "out").as_uri(),
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
    )
    result = run_job(req, hooks_model, part_mb=0.005)
    assert result.status == "Completed", result.failure_reason
    assert result.mode == "http"  # user code never runs inside the Dask workers
    assert (tmp_path / "out" / "x.csv.out").read_bytes() == hooks_expected(src)


def test_a_ready_model_server_url(run_job: Any, lr_model: Path, data: Path, tmp_path: Path) -> None:
    server = ModelServerProcess(
        str(lr_model), {"SAGEMAKER_MODEL_SERVER_WORKERS": "1"}, startup_timeout=60
    ).start()
    try:
        via_url = run_job(request(data.as_uri(), (tmp_path / "url").as_uri(), **JOBS["plain"]), server.url)
    finally:
        server.stop()
    assert via_url.status == "Completed", via_url.failure_reason
    assert via_url.mode == "url"
    run_job(request(data.as_uri(), (tmp_path / "local").as_uri(), **JOBS["plain"]), lr_model)
    assert _outputs(tmp_path / "url") == _outputs(tmp_path / "local")
    assert server.proc is not None and server.proc.poll() is not None


def test_one_and_two_workers_give_identical_output(
    run_job: Any, lr_model: Path, data: Path, tmp_path: Path
) -> None:
    from distributed import Client, LocalCluster

    req = dict(JOBS["json-join"])
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as one,
    ):
        single = run_job(
            request(data.as_uri(), (tmp_path / "one").as_uri(), **req), lr_model, part_mb=0.005, client=one
        )
    double = run_job(request(data.as_uri(), (tmp_path / "two").as_uri(), **req), lr_model, part_mb=0.005)
    assert single.status == double.status == "Completed"
    assert single.parts_total == double.parts_total > 2
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "two")
    assert len(_outputs(tmp_path / "one")) == 2


def test_an_archive_with_hooks_also_runs_in_model_servers(
    run_job: Any, hooks_model: Path, tmp_path: Path
) -> None:
    import tarfile

    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(hooks_model.rglob("*")):
            tar.add(path, arcname=path.relative_to(hooks_model).as_posix(), recursive=False)
    src = write_csv(tmp_path / "in" / "x.csv", np.random.default_rng(33).normal(size=(50, N_FEATURES)))
    req = request(
        src.parent.as_uri(),
        (tmp_path / "out").as_uri(),
        SplitType="Line",
        BatchStrategy="MultiRecord",
        AssembleWith="Line",
        Accept="text/csv",
    )
    result = run_job(req, archive.as_uri())
    assert result.status == "Completed", result.failure_reason
    assert result.mode == "http"
    assert (tmp_path / "out" / "x.csv.out").read_bytes() == hooks_expected(src)

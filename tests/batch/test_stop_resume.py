"""Stopping a job, crashing it (SIGKILL of the whole CLI process group), and resuming from its state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from batch_helpers import N_FEATURES, build_hooks_model, hooks_expected, request, write_csv

from batch.storage import TMP_MARK

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hooks model, 30 ms per request."""
    return build_hooks_model(tmp_path_factory.mktemp("slow") / "model", delay=0.03)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stop_mid_job_leaves_only_complete_outputs_then_resume_finishes(
    run_job: Any, slow_model: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(41)
    sources = [
        write_csv(tmp_path / "in" / f"f{i:02d}.csv", rng.normal(size=(40, N_FEATURES))) for i in range(10)
    ]
    out, state = tmp_path / "out", tmp_path / "state"
    req = request(
        (tmp_path / "in").as_uri(),
        out.as_uri(),
        SplitType="Line",
        BatchStrategy="SingleRecord",
        AssembleWith="Line",
        Accept="text/csv",
    )
    stop = threading.Event()
    seen: list[Any] = []

    def on_progress(progress: Any) -> None:
        seen.append(progress)
        if progress.records > 0:  # the first records are through: stop now, mid-job
            stop.set()

    result = run_job(req, slow_model, stop_event=stop, on_progress=on_progress, state_dir=str(state))
    assert result.status == "Stopped"
    assert result.files_done < len(sources)
    written = _files(out) if out.exists() else {}
    for name, body in written.items():
        assert TMP_MARK not in name
        assert body == hooks_expected(tmp_path / "in" / name.removesuffix(".out"))
    assert len(written) == result.files_done
    assert seen and seen[-1].records > 0

    resumed = run_job(req, slow_model, state_dir=str(state), resume=True)
    assert resumed.status == "Completed", resumed.failure_reason
    assert resumed.parts_skipped >= result.files_done
    assert resumed.parts_skipped < len(sources)
    assert _files(out) == {f"{s.name}.out": hooks_expected(s) for s in sources}


def test_crash_then_resume_gives_exactly_the_full_output(
    run_job: Any, slow_model: Path, tmp_path: Path
) -> None:
    rows = np.random.default_rng(42).normal(size=(240, N_FEATURES))
    src = write_csv(tmp_path / "in" / "data.csv", rows)
    out, state = tmp_path / "out", tmp_path / "state"
    req = request(
        (tmp_path / "in").as_uri(),
        out.as_uri(),
        SplitType="Line",
        BatchStrategy="SingleRecord",
        AssembleWith="Line",
        Accept="text/csv",
        TransformJobName="crashy",
    )
    req_file = tmp_path / "request.json"
    req_file.write_text(json.dumps(req))
    cmd = [
        sys.executable,
        "-m",
        "selfmaker",
        "transform",
        str(req_file),
        "--model-dir",
        str(slow_model),
        "--state-dir",
        str(state),
        "--workers",
        "1",
        "--part-mb",
        "0.001",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        done_parts: list[Path] = []
        while time.monotonic() < deadline and proc.poll() is None:
            done_parts = list((state / "parts").glob("*/*.json")) if (state / "parts").is_dir() else []
            if len(done_parts) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the job ended before the crash: {proc.stderr.read().decode()[-2000:]}"
        assert len(done_parts) >= 2, "no part finished in time"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Dask workers and model servers: a crash
        proc.wait(timeout=30)
        proc.stderr.close()
    assert not (out / "data.csv.out").exists()  # killed before the object was assembled

    resumed = run_job(req, slow_model, state_dir=str(state), resume=True, part_mb=0.001)
    assert resumed.status == "Completed", resumed.failure_reason
    assert resumed.parts_skipped >= 2
    assert resumed.parts_total == resumed.parts_done > resumed.parts_skipped
    assert _files(out) == {"data.csv.out": hooks_expected(src)}
    assert resumed.records == len(rows)

"""``selfmaker train-local REQUEST.json`` and ``selfmaker train`` against a prepared /opt/ml tree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from training_helpers import SELFMAKER_IMAGE, channel, request, tar_gz

SCRIPT = (
    "import os\nopen(os.path.join(os.environ['SM_MODEL_DIR'], 'model.txt'), 'w').write('hi')\n"
    "print('loss=0.25')\n"
)


def test_train_local_runs_a_request_and_prints_where_the_model_went(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.csv").write_text("1,2\n")
    (tmp_path / "src.tar.gz").write_bytes(tar_gz({"train.py": SCRIPT}))
    req = request(
        "cli-job",
        SELFMAKER_IMAGE,
        {
            "sagemaker_program": '"train.py"',
            "sagemaker_submit_directory": json.dumps((tmp_path / "src.tar.gz").as_uri()),
        },
        [channel("train", (tmp_path / "data").as_uri())],
        (tmp_path / "out").as_uri(),
        metrics=[{"Name": "loss", "Regex": "loss=([0-9.]+)"}],
    )
    (tmp_path / "req.json").write_text(json.dumps(req))
    # the default, relative work dir (./selfmaker-jobs/<job>): hosts run in their own directories
    proc = subprocess.run(
        [sys.executable, "-m", "selfmaker", "train-local", "req.json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "selfmaker-jobs/cli-job/logs").is_dir()
    out = proc.stdout
    assert "[cli-job] InProgress / Downloading: Downloading input data" in out
    assert "algo-1 | loss=0.25" in out
    assert "[cli-job] metrics: loss=0.25" in out
    assert f"[cli-job] model: {(tmp_path / 'out').as_uri()}/cli-job/output/model.tar.gz" in out
    assert (tmp_path / "out/cli-job/output/model.tar.gz").is_file()


def test_train_local_rejects_a_bad_request_file(tmp_path: Path) -> None:
    (tmp_path / "req.json").write_text("{not json")
    proc = subprocess.run(
        [sys.executable, "-m", "selfmaker", "train-local", str(tmp_path / "req.json")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2 and "cannot read the request" in proc.stderr


def test_train_entry_without_a_program_writes_the_failure_file(tmp_path: Path) -> None:
    cfg = tmp_path / "input/config"
    cfg.mkdir(parents=True)
    (cfg / "hyperparameters.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "selfmaker", "train", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert (tmp_path / "output/failure").read_text().startswith("ClientError: no training program")

"""Script mode and the runner's lifecycle: SM_* contract, failures, MaxRuntime, StopTrainingJob."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from training_helpers import SELFMAKER_IMAGE, channel, extract_model, request, run_job, tar_gz

from training.environment import TrainingEnvironment
from training.errors import UserError
from training.runner import TrainingJobRunner
from training.script_mode import fetch_submit_dir, pip_command

ROOT = Path(__file__).resolve().parents[2]

TOOLKIT_SCRIPT = """
import argparse, json, os, sys
parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int)
parser.add_argument("--learning-rate", type=float)
parser.add_argument("--model-dir", default=os.environ["SM_MODEL_DIR"])
parser.add_argument("--train", default=os.environ["SM_CHANNEL_TRAIN"])
args = parser.parse_args()
rows = []
for name in sorted(os.listdir(args.train)):
    with open(os.path.join(args.train, name)) as f:
        rows += [line.strip() for line in f if line.strip()]
for epoch in range(args.epochs):
    print(f"epoch={epoch}; Train_error={1.0 / (epoch + 1):.3f};", flush=True)
with open(os.path.join(args.model_dir, "model.json"), "w") as f:
    json.dump({"rows": len(rows), "epochs": args.epochs, "lr": args.learning_rate,
               "env": {k: v for k, v in os.environ.items()
                       if k.startswith("SM_") or k in ("TRAINING_JOB_NAME", "MY_SETTING")},
               "cwd": os.getcwd(), "argv": sys.argv[1:]}, f)
with open(os.path.join(os.environ["SM_OUTPUT_DATA_DIR"], "report.txt"), "w") as f:
    f.write("done")
print("warning goes to stderr", file=sys.stderr)
"""


def _submit(tmp_path: Path, files: dict[str, str]) -> str:
    path = tmp_path / "sourcedir.tar.gz"
    path.write_bytes(tar_gz(files))
    return path.as_uri()


def _script_request(
    tmp_path: Path, name: str, script: str, hps: dict[str, object] | None = None, **kwargs: object
) -> dict:  # type: ignore[type-arg]
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "a.csv").write_text("1,2\n3,4\n5,6\n")
    all_hps = {
        "sagemaker_program": json.dumps("train.py"),
        "sagemaker_submit_directory": json.dumps(_submit(tmp_path, {"train.py": script})),
    }
    all_hps.update({k: json.dumps(v) if isinstance(v, str) else str(v) for k, v in (hps or {}).items()})
    return request(
        name,
        SELFMAKER_IMAGE,
        all_hps,
        [channel("train", data.as_uri())],
        (tmp_path / "out").as_uri(),
        **kwargs,
    )  # type: ignore[arg-type]


def test_toolkit_style_script_runs_unchanged(tmp_path: Path) -> None:
    req = _script_request(
        tmp_path,
        "script-ok",
        TOOLKIT_SCRIPT,
        {"epochs": 3, "learning-rate": 0.1},
        metrics=[{"Name": "train:error", "Regex": "Train_error=(.*?);"}],
    )
    req["Environment"] = {"MY_SETTING": "on"}
    updates: list[dict] = []  # type: ignore[type-arg]
    state, lines = run_job(req, tmp_path / "job", on_update=lambda s: updates.append(s.describe_fields()))
    assert state.status == "Completed", state.failure_reason
    model = json.loads(
        (
            extract_model(Path(state.model_artifacts[len("file://") :]), tmp_path / "m") / "model.json"
        ).read_text()
    )  # type: ignore[index]
    assert model["rows"] == 3 and model["epochs"] == 3 and model["lr"] == 0.1
    env = model["env"]
    root = tmp_path / "job/hosts/algo-1"
    assert env["SM_CHANNEL_TRAIN"] == str(root / "input/data/train")
    assert env["SM_MODEL_DIR"] == str(root / "model")
    assert json.loads(env["SM_HPS"]) == {"epochs": 3, "learning-rate": 0.1}
    assert (
        env["SM_HP_EPOCHS"] == "3"
        and env["SM_CURRENT_HOST"] == "algo-1"
        and json.loads(env["SM_HOSTS"]) == ["algo-1"]
    )
    assert env["TRAINING_JOB_NAME"] == "script-ok" and env["MY_SETTING"] == "on"
    assert model["cwd"] == str(root / "code")
    assert model["argv"] == ["--epochs", "3", "--learning-rate", "0.1"]
    assert [m["Value"] for m in state.metrics] == [1.0, 0.5, 0.333]
    assert state.final_metrics["train:error"]["Value"] == 0.333
    # metrics reach DescribeTrainingJob while the job is still running
    assert any(u["TrainingJobStatus"] == "InProgress" and u["FinalMetricDataList"] for u in updates)
    assert updates[-1]["TrainingJobStatus"] == "Completed"
    assert any("warning goes to stderr" in line for line in lines)
    assert (root / "output/success").exists()
    with tarfile.open(tmp_path / "out/script-ok/output/output.tar.gz") as tar:
        assert tar.getnames() == ["report.txt"]
    config = root / "input/config"
    assert json.loads((config / "inputdataconfig.json").read_text())["train"]["TrainingInputMode"] == "File"
    assert json.loads((config / "resourceconfig.json").read_text())["hosts"] == ["algo-1"]


def test_failing_script_reports_the_toolkit_error(tmp_path: Path) -> None:
    script = (
        "import sys\nprint('about to fail')\nsys.stderr.write('ValueError: column 7 is missing\\n')\n"
        "sys.exit(3)\n"
    )
    state, _ = run_job(_script_request(tmp_path, "script-fail", script), tmp_path / "job")
    assert state.status == "Failed"
    reason = state.failure_reason or ""
    assert reason.startswith(
        'AlgorithmError: ExecuteUserScriptError:\nExitCode 3\nErrorMessage "ValueError: column 7 is missing"'
    )
    assert len(reason) <= 1024
    assert state.model_artifacts is None


def test_missing_program_names_the_hyperparameter(tmp_path: Path) -> None:
    req = _script_request(tmp_path, "script-missing", "print('x')")
    req["HyperParameters"]["sagemaker_program"] = json.dumps("nope.py")
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Failed"
    assert "'sagemaker_program'" in (state.failure_reason or "") and "nope.py" in (state.failure_reason or "")


SLEEPER = """
import os, signal, sys, time
def on_term(signum, frame):
    with open(os.path.join(os.environ["SM_MODEL_DIR"], "saved.txt"), "w") as f:
        f.write("saved on SIGTERM")
    print("saved the model", flush=True)
    if os.environ.get("IGNORE_AFTER_SAVE"):
        return
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
for _ in range(600):
    time.sleep(0.1)
"""


def test_max_runtime_stops_a_sleeping_script(tmp_path: Path) -> None:
    req = _script_request(tmp_path, "script-timeout", SLEEPER, max_runtime=2)
    req["Environment"] = {"IGNORE_AFTER_SAVE": "1"}  # so the runner must escalate to SIGKILL
    state, _ = run_job(req, tmp_path / "job", stop_grace_seconds=2.0)
    fields = state.describe_fields()
    assert fields["TrainingJobStatus"] == "Stopped"
    assert fields["SecondaryStatus"] == "MaxRuntimeExceeded"
    assert "MaxRuntimeInSeconds" in fields["FailureReason"]
    assert state.exit_codes["algo-1"] not in (0, None)
    assert 2 <= fields["TrainingTimeInSeconds"] < 60


def test_stop_training_job_lets_the_script_save_its_model(tmp_path: Path) -> None:
    req = _script_request(tmp_path, "script-stop", SLEEPER)
    holder: dict[str, TrainingJobRunner] = {}
    seen: list[str] = []

    def on_log(host: str, line: str) -> None:
        seen.append(line)
        if line == "ready":
            threading.Thread(target=holder["runner"].stop).start()

    runner = TrainingJobRunner(req, tmp_path / "job", on_log=on_log, stop_grace_seconds=30.0)
    holder["runner"] = runner
    state = runner.run()
    assert state.status == "Stopped" and state.secondary_status == "Stopped", state.describe_fields()
    assert "saved the model" in seen
    model = extract_model(Path(state.model_artifacts[len("file://") :]), tmp_path / "m")  # type: ignore[index]
    assert (model / "saved.txt").read_text() == "saved on SIGTERM"
    runner.stop()  # stopping a finished job is a no-op


def test_bad_request_fails_with_the_field_named(tmp_path: Path) -> None:
    req = _script_request(tmp_path, "bad-req", "print(1)")
    req["InputDataConfig"][0]["InputMode"] = "Stream"
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Failed"
    assert "InputDataConfig[0].InputMode" in (state.failure_reason or "")
    req = _script_request(tmp_path, "bad-req-2", "print(1)")
    req["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] = (tmp_path / "nothing-here").as_uri()
    state, _ = run_job(req, tmp_path / "job2")
    assert state.status == "Failed" and "nothing-here" in (state.failure_reason or "")


def test_fastfile_channel_is_readable_in_place(tmp_path: Path) -> None:
    script = (
        "import os\nbase = os.environ['SM_CHANNEL_TRAIN']\n"
        "open(os.path.join(os.environ['SM_MODEL_DIR'], 'seen.txt'), 'w').write(open(os.path.join(base, "
        "'a.csv')).read())\n"
    )
    req = _script_request(tmp_path, "fastfile", script, mode="FastFile")
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    staged = tmp_path / "job/hosts/algo-1/input/data/train/a.csv"
    assert (
        staged.is_symlink() and staged.resolve() == (tmp_path / "data/a.csv").resolve()
    )  # not copied up front
    assert (
        json.loads((tmp_path / "job/hosts/algo-1/input/config/inputdataconfig.json").read_text())["train"][
            "TrainingInputMode"
        ]
        == "File"
    )
    model = extract_model(Path(state.model_artifacts[len("file://") :]), tmp_path / "m")  # type: ignore[index]
    assert (model / "seen.txt").read_text() == "1,2\n3,4\n5,6\n"


def test_failing_requirements_install_is_reported(tmp_path: Path) -> None:
    req = _script_request(tmp_path, "bad-reqs", "print('never runs')")
    (tmp_path / "src").mkdir()
    (tmp_path / "src/train.py").write_text("print('never runs')\n")
    (tmp_path / "src/requirements.txt").write_text("./no-such-local-package\n")
    req["HyperParameters"]["sagemaker_submit_directory"] = json.dumps((tmp_path / "src").as_uri())
    state, lines = run_job(req, tmp_path / "job")
    assert state.status == "Failed"
    assert "InstallRequirementsError" in (state.failure_reason or "")
    assert not any("never runs" in line for line in lines)


def test_xgboost_image_with_an_entry_point_runs_the_script(tmp_path: Path) -> None:
    """SageMaker's XGBoost container in framework mode: sagemaker_program wins over the built-in."""
    script = (
        "import os, xgboost\nopen(os.path.join(os.environ['SM_MODEL_DIR'], 'fw.txt'), "
        "'w').write(xgboost.__version__)\n"
    )
    req = _script_request(tmp_path, "xgb-framework", script)
    req["AlgorithmSpecification"]["TrainingImage"] = (
        "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
    )
    state, _ = run_job(req, tmp_path / "job")
    assert state.status == "Completed", state.failure_reason
    model = extract_model(Path(state.model_artifacts[len("file://") :]), tmp_path / "m")  # type: ignore[index]
    assert (model / "fw.txt").read_text()


# -- pip for requirements.txt: installed pip, else pip's wheel (SELFMAKER_PIP_WHEEL), else a clear error -----


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
    with pytest.raises(UserError) as info:
        pip_command(configured, pip_installed=False)
    message = str(info.value)
    assert "InstallRequirementsError" in message and "pip, which is not available" in message
    assert why in message and "set SELFMAKER_PIP_WHEEL to a pip wheel" in message


def test_environment_reads_the_pip_wheel_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SELFMAKER_PIP_WHEEL", "/opt/selfmaker/pip.whl")
    assert TrainingEnvironment.load(tmp_path).pip_wheel == "/opt/selfmaker/pip.whl"
    monkeypatch.setenv("SELFMAKER_PIP_WHEEL", "")
    assert TrainingEnvironment.load(tmp_path).pip_wheel is None


def _zip_installed_pip(dest: Path) -> Path:
    """This environment's pip package as a zip with ``pip/`` at its top: runnable as ``python <zip>/pip``,
    like pip's wheel (no network needed to get one)."""
    import pip

    package = Path(pip.__file__).parent
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(package.parent).as_posix())
    return dest


def test_requirements_install_with_pip_from_its_wheel_in_an_environment_without_pip(
    tmp_path: Path, make_wheel: Callable[..., Path]
) -> None:
    """What the image does: a venv without pip installs requirements.txt through SELFMAKER_PIP_WHEEL
    (offline)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    assert subprocess.run([python, "-c", "import pip"], capture_output=True, check=False).returncode != 0
    pip_wheel = _zip_installed_pip(tmp_path / "pip.whl")
    code = tmp_path / "code"
    make_wheel(code / "wheels", "smk_tinypkg", "GREETING = 'hello from a wheel'\n")
    (code / "requirements.txt").write_text(f"--no-index\n--find-links {code / 'wheels'}\nsmk_tinypkg\n")
    install = (
        "import sys; from pathlib import Path; from training.script_mode import install_requirements; "
        "install_requirements(Path(sys.argv[1]), sys.argv[2] or None)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    failed = subprocess.run(
        [python, "-c", install, str(code), ""],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert failed.returncode != 0 and "SELFMAKER_PIP_WHEEL is not set" in failed.stderr
    done = subprocess.run(
        [python, "-c", install, str(code), str(pip_wheel)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{pip_wheel}/pip install" in done.stdout
    greeting = subprocess.run(
        [python, "-c", "import smk_tinypkg; print(smk_tinypkg.GREETING)"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert greeting.strip() == "hello from a wheel"


def _tar_with(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(member, io.BytesIO(b"x" * member.size) if member.isfile() else None)
    return path


@pytest.mark.parametrize("filters", [True, False], ids=["data-filter", "python-without-filters"])
def test_submit_archive_members_stay_inside_the_code_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, filters: bool
) -> None:
    """The image's Python (bookworm's 3.11.2) has no tarfile extraction filters: the same members are
    refused."""
    if not filters:
        monkeypatch.delattr(tarfile, "data_filter")
    good = tmp_path / "good.tar.gz"
    good.write_bytes(tar_gz({"train.py": "print('ok')\n", "pkg/util.py": "X = 1\n"}))
    fetch_submit_dir(str(good), tmp_path / "code")
    assert (tmp_path / "code/train.py").read_text() == "print('ok')\n" and (
        tmp_path / "code/pkg/util.py"
    ).is_file()
    escape = tarfile.TarInfo("../evil.py")
    escape.size = 1
    link = tarfile.TarInfo("passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    fifo = tarfile.TarInfo("pipe")
    fifo.type = tarfile.FIFOTYPE
    for number, member in enumerate((escape, link, fifo)):
        archive = _tar_with(tmp_path / f"bad{number}.tar.gz", member)
        with pytest.raises(UserError, match="sagemaker_submit_directory"):
            fetch_submit_dir(str(archive), tmp_path / f"code{number}")
    assert not (tmp_path / "evil.py").exists()

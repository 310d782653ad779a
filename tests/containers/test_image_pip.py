"""requirements.txt in selfmaker's image, which has no pip module but ships pip's wheel (SELFMAKER_PIP_WHEEL):

1. script-mode training (`<image> train`) installs the submitted code's requirements.txt -- a tiny wheel made
   here, installed offline (`--no-index --find-links`) -- and the script imports it;
2. `<image> serve` installs the model's code/requirements.txt the same way before loading its inference.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from containers_helpers import run
from testkit import wait_http

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
PACKAGE = "smk_tinypkg"
GREETING = "hello from an offline wheel"


def _requirements(wheels_in_container: str) -> str:
    # pip resolves a relative --find-links against its working directory: give the in-container path
    return f"--no-index\n--find-links {wheels_in_container}\n{PACKAGE}\n"


def test_script_mode_installs_requirements_with_the_image_pip_wheel(
    engine: str, selfmaker_image: str, tmp_path: Path, make_wheel: Callable[..., Path]
) -> None:
    root = tmp_path / "opt_ml"
    for sub in ("input/config", "model", "output"):
        (root / sub).mkdir(parents=True)
    source = tmp_path / "source"
    make_wheel(source / "wheels", PACKAGE, f"GREETING = {GREETING!r}\n")
    # script mode unpacks the submit directory into /opt/ml/code
    (source / "requirements.txt").write_text(_requirements("/opt/ml/code/wheels"))
    (source / "train.py").write_text(
        "import os\nimport smk_tinypkg\n"
        "with open(os.path.join(os.environ['SM_MODEL_DIR'], 'greeting.txt'), 'w') as f:\n"
        "    f.write(smk_tinypkg.GREETING)\n"
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
    (root / "sourcedir.tar.gz").write_bytes(buffer.getvalue())
    config = root / "input" / "config"
    (config / "hyperparameters.json").write_text(
        json.dumps(
            {
                "sagemaker_program": json.dumps("train.py"),
                "sagemaker_submit_directory": json.dumps("/opt/ml/sourcedir.tar.gz"),
            }
        )
    )
    (config / "inputdataconfig.json").write_text("{}")
    (config / "resourceconfig.json").write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1"]}))
    proc = subprocess.run(
        [
            engine,
            "run",
            "--rm",
            "-v",
            f"{root}:/opt/ml",
            "--label",
            "selfmaker.test=image-pip-train",
            selfmaker_image,
            "train",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "/opt/selfmaker/pip.whl/pip install" in log, "pip ran from the image's pip wheel"
    assert (root / "model" / "greeting.txt").read_text() == GREETING
    assert (root / "output" / "success").exists() and not (root / "output" / "failure").exists()


def test_serve_installs_code_requirements_with_the_image_pip_wheel(
    engine: str,
    selfmaker_image: str,
    tmp_path: Path,
    make_wheel: Callable[..., Path],
    free_port: int,
    cleanup_containers: list[str],
) -> None:
    model = tmp_path / "model"
    code = model / "code"
    make_wheel(code / "wheels", PACKAGE, f"GREETING = {GREETING!r}\n")
    (code / "requirements.txt").write_text(_requirements("/opt/ml/model/code/wheels"))
    (code / "inference.py").write_text(
        "import json\nimport smk_tinypkg\n\n"
        "def model_fn(model_dir):\n    return smk_tinypkg.GREETING\n\n"
        "def transform_fn(model, data, content_type, accept):\n"
        "    return json.dumps({'greeting': model, 'echo': json.loads(data)}), 'application/json'\n"
    )
    name = f"smk-pip-serve-{uuid.uuid4().hex[:6]}"
    cleanup_containers.append(name)
    # the server installs into the image's environment, which root owns: it must not drop to uid 10001
    run(
        [
            engine,
            "run",
            "-d",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{free_port}:8080",
            "-e",
            "SELFMAKER_SERVE_AS_ROOT=true",
            "-v",
            f"{model}:/opt/ml/model:ro",
            selfmaker_image,
            "serve",
        ]
    )
    url = f"http://127.0.0.1:{free_port}"

    def running() -> bool:
        return (
            run([engine, "inspect", "--format", "{{.State.Running}}", name]).stdout.strip().lower() == "true"
        )

    try:
        wait_http(url + "/ping", timeout=180, alive=running)
    except AssertionError:
        logs = subprocess.run([engine, "logs", name], capture_output=True, text=True, check=False, timeout=60)
        raise AssertionError(f"server not ready; its log:\n{(logs.stdout + logs.stderr)[-4000:]}") from None
    resp = requests.post(
        url + "/invocations",
        data=json.dumps([1, 2]),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"greeting": GREETING, "echo": [1, 2]}

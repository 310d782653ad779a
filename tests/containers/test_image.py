"""CI smoke test of selfmaker's CPU image (issue 10), built by scripts/build-images.sh without a registry:

1. `<image> train` with a mounted /opt/ml and the built-in xgboost on a generated dataset;
2. `<image> serve` on the resulting model: /ping, and /invocations from the host give the same predictions
   as the in-process model (onnxruntime on model.onnx, and xgboost on the booster it saved);
3. `selfmaker up` runs an endpoint with this image as a container (not a local process), end to end through
   boto3 -- and a BYOC image trains and serves through boto3 too (issue 6).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from containers_helpers import (
    SELFMAKER_AS_BYOC,
    containers_with_label,
    load_platform_helpers,
    run,
    wait_until,
)
from testkit import wait_http

# the first test also builds the image from nothing (debootstrap, wheelhouse, build: ~6 min on 2 cores)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
WAIT = {"Delay": 0.5, "MaxAttempts": 360}


def _dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = (x @ np.array([1.0, -1.0, 0.5, 0.0, 0.25]) + 0.1 * rng.normal(size=n) > 0).astype(np.float32)
    return x, y


def _opt_ml(root: Path, x: np.ndarray, y: np.ndarray) -> None:
    """An /opt/ml tree as the SageMaker platform prepares it (all hyperparameters are strings)."""
    for sub in ("input/config", "input/data/train", "model", "output"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    np.savetxt(root / "input/data/train/train.csv", np.column_stack([y, x]), delimiter=",", fmt="%.6f")
    config = root / "input/config"
    (config / "hyperparameters.json").write_text(
        json.dumps({"objective": "binary:logistic", "num_round": "20", "max_depth": "3", "eta": "0.3"})
    )
    (config / "inputdataconfig.json").write_text(
        json.dumps(
            {
                "train": {
                    "ContentType": "text/csv",
                    "TrainingInputMode": "File",
                    "S3DistributionType": "FullyReplicated",
                    "RecordWrapperType": "None",
                }
            }
        )
    )
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"})
    )


def _in_process(model_dir: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P(class 1) from model.onnx (onnxruntime) and from the saved booster (xgboost), in this process."""
    import onnxruntime as ort
    import xgboost as xgb

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = dict(
        zip(
            [o.name for o in session.get_outputs()],
            session.run(None, {session.get_inputs()[0].name: x}),
            strict=True,
        )
    )
    booster = xgb.Booster()
    booster.load_model(
        bytearray((model_dir / "xgboost-model").read_bytes())
    )  # a buffer: no file-format guess
    return outputs["probabilities"][:, 1], booster.predict(xgb.DMatrix(x))


def _csv_body(x: np.ndarray) -> str:
    return "\n".join(",".join(f"{v:.6f}" for v in row) for row in x) + "\n"


@pytest.fixture(scope="module")
def trained(engine: str, selfmaker_image: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`<image> train` with the built-in xgboost on a mounted /opt/ml; returns the paths and test data."""
    root = tmp_path_factory.mktemp("opt_ml")
    x, y = _dataset(600, 0)
    _opt_ml(root, x, y)
    proc = subprocess.run(
        [
            engine,
            "run",
            "--rm",
            "-v",
            f"{root}:/opt/ml",
            "-e",
            "SELFMAKER_ALGORITHM=xgboost",
            "--label",
            "selfmaker.test=image-train",
            selfmaker_image,
            "train",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (root / "output" / "success").exists() and not (root / "output" / "failure").exists()
    model_dir = root / "model"
    assert {"model.onnx", "signature.json", "xgboost-model"} <= {p.name for p in model_dir.iterdir()}
    x_test, _ = _dataset(50, 1)
    tar_path = root.parent / f"{root.name}-model.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for item in sorted(model_dir.iterdir()):
            tar.add(item, arcname=item.name)
    return {
        "root": root,
        "model_dir": model_dir,
        "x_test": x_test,
        "tar": tar_path,
        "log": proc.stdout + proc.stderr,
    }


def test_image_labels_and_user(engine: str, selfmaker_image: str) -> None:
    info = json.loads(run([engine, "image", "inspect", selfmaker_image]).stdout)[0]
    config = info.get("Config") or info.get("config") or {}
    labels = config.get("Labels") or {}
    assert labels.get("org.opencontainers.image.version") and labels.get("org.opencontainers.image.source")
    assert config.get("Entrypoint") == ["/usr/local/bin/selfmaker-entrypoint"]
    # no compilers and no installed pip (module or command) in the final image -- only pip's wheel, which
    # runs requirements.txt installs (SELFMAKER_PIP_WHEEL; tests/containers/test_image_pip.py)
    out = run(
        [
            engine,
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            selfmaker_image,
            "-c",
            "command -v gcc cc pip pip3 || true; "
            "/opt/selfmaker/venv/bin/python -m pip --version 2>&1 || true",
        ]
    ).stdout
    assert "gcc" not in out and "/pip" not in out and "No module named pip" in out
    wheel = run(
        [
            engine,
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            selfmaker_image,
            "-c",
            'echo "$SELFMAKER_PIP_WHEEL"; python "$SELFMAKER_PIP_WHEEL/pip" --version',
        ]
    ).stdout.splitlines()
    assert (
        wheel[0] == "/opt/selfmaker/pip.whl"
        and wheel[1].startswith("pip ")
        and "from /opt/selfmaker/pip.whl/pip" in wheel[1]
    )
    size_mb = int(info.get("Size") or info.get("size") or 0) / 1e6
    logging.getLogger(__name__).warning("selfmaker CPU image: %.0f MB", size_mb)  # in the test report


def test_train_then_serve_matches_in_process_model(
    engine: str, selfmaker_image: str, trained: dict[str, Any], free_port: int, cleanup_containers: list[str]
) -> None:
    assert "Running built-in algorithm xgboost" in trained["log"]
    onnx_p1, booster_p1 = _in_process(trained["model_dir"], trained["x_test"])
    np.testing.assert_allclose(onnx_p1, booster_p1, atol=1e-5)
    name = f"smk-serve-test-{uuid.uuid4().hex[:6]}"
    cleanup_containers.append(name)
    run(
        [
            engine,
            "run",
            "-d",
            "--name",
            name,
            "-p",
            f"127.0.0.1:{free_port}:8080",
            "-v",
            f"{trained['model_dir']}:/opt/ml/model:ro",
            selfmaker_image,
            "serve",
        ]
    )
    url = f"http://127.0.0.1:{free_port}"

    def running() -> bool:
        state = run([engine, "inspect", "--format", "{{.State.Running}}", name]).stdout.strip().lower()
        return state == "true"

    wait_http(url + "/ping", timeout=120, alive=running)
    resp = requests.post(
        url + "/invocations",
        data=_csv_body(trained["x_test"]),
        headers={"Content-Type": "text/csv", "Accept": "text/csv"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    served = np.array([float(line) for line in resp.text.split()])
    np.testing.assert_allclose(served, onnx_p1, atol=1e-5)
    # serving dropped root: PID 1 (the model server) belongs to the image's unprivileged user
    assert run([engine, "exec", name, "stat", "-c", "%u", "/proc/1"]).stdout.strip() == "10001"
    bad = requests.post(url + "/invocations", data="1,2\n", headers={"Content-Type": "text/csv"}, timeout=30)
    assert 400 <= bad.status_code < 500, bad.text


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, engine: str) -> Iterator[Any]:
    helpers = load_platform_helpers()
    server = helpers.PlatformProcess(
        tmp_path_factory.mktemp("home"),
        env={"SELFMAKER_STARTUP_TIMEOUT": "180", "SELFMAKER_CONTAINER_ENGINE": engine},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _deploy(sm: Any, name: str, image: str, model_url: str, env: dict[str, str] | None = None) -> None:
    sm.create_model(
        ModelName=name,
        ExecutionRoleArn="arn:aws:iam::123456789012:role/selfmaker",
        PrimaryContainer={"Image": image, "ModelDataUrl": model_url, "Environment": env or {}},
    )
    sm.create_endpoint_config(
        EndpointConfigName=name,
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": name,
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAIT)
    except Exception as exc:
        reason = sm.describe_endpoint(EndpointName=name).get("FailureReason")
        raise AssertionError(f"endpoint {name} did not reach InService: {reason}") from exc


def _undeploy(sm: Any, engine: str, name: str) -> None:
    sm.delete_endpoint(EndpointName=name)
    wait_until(
        lambda: containers_with_label(engine, f"selfmaker.endpoint={name}") == [],
        90,
        f"the containers of endpoint {name} to go",
    )


def test_platform_serves_the_image_as_a_container(
    platform: Any, engine: str, selfmaker_image: str, trained: dict[str, Any]
) -> None:
    sm, smr = platform.sagemaker(), platform.runtime()
    name = f"img-{uuid.uuid4().hex[:8]}"
    _deploy(sm, name, SELFMAKER_AS_BYOC, trained["tar"].as_uri())
    try:
        running = containers_with_label(engine, f"selfmaker.endpoint={name}")
        assert len(running) == 1, "the endpoint must run in a container, not as a local process"
        resp = smr.invoke_endpoint(
            EndpointName=name, ContentType="text/csv", Accept="text/csv", Body=_csv_body(trained["x_test"])
        )
        served = np.array([float(line) for line in resp["Body"].read().decode().split()])
        onnx_p1, _ = _in_process(trained["model_dir"], trained["x_test"])
        np.testing.assert_allclose(served, onnx_p1, atol=1e-5)
    finally:
        _undeploy(sm, engine, name)


def test_byoc_image_trains_and_serves_through_boto3(
    platform: Any, engine: str, byoc_image: str, tmp_path: Path
) -> None:
    sm, smr = platform.sagemaker(), platform.runtime()
    data = tmp_path / "data"
    data.mkdir()
    rows = [(3.0 * a / 7 - 2.0 * b / 5 + 1.0, a / 7, b / 5) for a in range(7) for b in range(5)]
    (data / "train.csv").write_text("".join(f"{y},{p},{q}\n" for y, p, q in rows))
    job = f"byoc-{uuid.uuid4().hex[:8]}"
    sm.create_training_job(
        TrainingJobName=job,
        RoleArn="arn:aws:iam::123456789012:role/selfmaker",
        AlgorithmSpecification={
            "TrainingImage": byoc_image,
            "TrainingInputMode": "File",
            "MetricDefinitions": [{"Name": "train:mse", "Regex": r"train_mse=([0-9.eE+-]+);"}],
        },
        HyperParameters={"epochs": "800", "learning_rate": "0.2"},
        InputDataConfig=[
            {
                "ChannelName": "train",
                "ContentType": "text/csv",
                "DataSource": {
                    "S3DataSource": {
                        "S3DataType": "S3Prefix",
                        "S3Uri": data.as_uri(),
                        "S3DataDistributionType": "FullyReplicated",
                    }
                },
            }
        ],
        OutputDataConfig={"S3OutputPath": (tmp_path / "out").as_uri()},
        ResourceConfig={"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
        StoppingCondition={"MaxRuntimeInSeconds": 600},
    )
    sm.get_waiter("training_job_completed_or_stopped").wait(TrainingJobName=job, WaiterConfig=WAIT)
    desc = sm.describe_training_job(TrainingJobName=job)
    assert desc["TrainingJobStatus"] == "Completed", desc.get("FailureReason")
    artifact = desc["ModelArtifacts"]["S3ModelArtifacts"]
    with tarfile.open(fileobj=io.BytesIO(Path(artifact.removeprefix("file://")).read_bytes())) as tar:
        model = json.load(tar.extractfile("model.json"))  # type: ignore[arg-type]
    name = f"byoc-ep-{uuid.uuid4().hex[:8]}"
    _deploy(sm, name, byoc_image, artifact, env={"BYOC_GREETING": "hi"})
    try:
        assert len(containers_with_label(engine, f"selfmaker.endpoint={name}")) == 1
        resp = smr.invoke_endpoint(EndpointName=name, ContentType="text/csv", Body="0.5,0.5\n1,0\n")
        got = [float(v) for v in resp["Body"].read().decode().split()]
        expected = [
            sum(w * v for w, v in zip(model["weights"], x, strict=True)) + model["bias"]
            for x in ((0.5, 0.5), (1.0, 0.0))
        ]
        assert got == pytest.approx(expected)
        assert got == pytest.approx([3.0 * 0.5 - 2.0 * 0.5 + 1.0, 4.0], abs=0.3)
    finally:
        _undeploy(sm, engine, name)

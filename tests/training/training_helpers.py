"""Helpers for the training tests: generated data sets, CreateTrainingJob requests, running jobs."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from testkit import find_free_port as free_port  # noqa: F401 - the training tests take it from here

from training.runner import TrainingJobRunner, TrainingJobState

XGB_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
LL_IMAGE = "382416733822.dkr.ecr.us-east-1.amazonaws.com/linear-learner:1"
SELFMAKER_IMAGE = "localhost/selfmaker:latest"


def binary_data(n: int, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A linearly separable (with margin) binary problem."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    w = np.linspace(1.0, -1.0, d)
    score = X @ w
    keep = np.abs(score) > 0.2
    X = X[keep]
    return X, (X @ w > 0).astype(np.float32)


def multiclass_data(n: int, d: int = 5, classes: int = 3, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around well separated centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(classes, d))
    y = rng.integers(0, classes, size=n)
    X = centres[y] + rng.normal(size=(n, d))
    return X.astype(np.float32), y.astype(np.float32)


def regression_data(n: int, d: int = 4, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    y = X @ np.arange(1, d + 1) + 5.0 + rng.normal(scale=0.1, size=n)
    return X, y.astype(np.float32)


def write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, np.c_[y, X], delimiter=",", fmt="%.7g")
    return path


def write_libsvm(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row, label in zip(X, y, strict=True):
            f.write(f"{label:g} " + " ".join(f"{j}:{v:.7g}" for j, v in enumerate(row)) + "\n")
    return path


def write_parquet(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = {"label": y} | {f"f{j}": X[:, j] for j in range(X.shape[1])}
    pq.write_table(pa.table(cols), path)
    return path


def write_recordio(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    from training.recordio import write_recordio as _write

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        _write(f, X, y)
    return path


def channel(name: str, uri: str, content_type: str | None = "text/csv", **extra: Any) -> dict[str, Any]:
    src = {
        "S3DataType": extra.pop("data_type", "S3Prefix"),
        "S3Uri": uri,
        "S3DataDistributionType": extra.pop("distribution", "FullyReplicated"),
    }
    ch: dict[str, Any] = {"ChannelName": name, "DataSource": {"S3DataSource": src}}
    if content_type:
        ch["ContentType"] = content_type
    ch.update(extra)
    return ch


def request(
    name: str,
    image: str,
    hps: dict[str, Any],
    channels: list[dict[str, Any]],
    output: str,
    *,
    mode: str = "File",
    count: int = 1,
    max_runtime: int = 600,
    metrics: list[dict[str, str]] | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    req: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": "arn:aws:iam::000000000000:role/test",
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": mode,
            "MetricDefinitions": metrics or [],
        },
        "HyperParameters": {k: str(v) for k, v in hps.items()},
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": output},
        "ResourceConfig": {"InstanceCount": count, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime},
    }
    if checkpoint:
        req["CheckpointConfig"] = {"S3Uri": checkpoint}
    return req


def run_job(req: dict[str, Any], work_dir: Path, **kwargs: Any) -> tuple[TrainingJobState, list[str]]:
    """Run a job; returns the final state and every log line (``host | line``)."""
    lines: list[str] = []
    runner = TrainingJobRunner(
        req, work_dir, on_log=lambda host, line: lines.append(f"{host} | {line}"), **kwargs
    )
    state = runner.run()
    return state, lines


def extract_model(tar_path: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")
    return dest


def local_model(state: TrainingJobState, dest: Path) -> Path:
    """Unpack the job's file:// model.tar.gz into ``dest``."""
    assert state.model_artifacts and state.model_artifacts.startswith("file://"), state.describe_fields()
    return extract_model(Path(state.model_artifacts[len("file://") :]), dest)


def onnx_predict(model_dir: Path, X: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {"input": X.astype(np.float32)})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs, strict=True)}


def signature(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "signature.json").read_text())


def tar_gz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def wait_ping(url: str, alive: Any, timeout: float = 60.0) -> None:
    """Poll ``url`` until 200, failing fast when ``alive()`` turns False."""
    from testkit import wait_http

    wait_http(url, timeout=timeout, alive=alive)

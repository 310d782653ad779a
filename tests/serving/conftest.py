"""Fixtures of the model-server tests: tiny ONNX models built at test time and a real server factory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from serving_helpers import ROOT, Server
from testkit import find_free_port, wait_http

N_FEATURES = 4


def _fit_and_export(kind: str, out_dir: Path, signature: dict[str, Any] | None) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LinearRegression, LogisticRegression

    rng = np.random.default_rng(7)
    X = rng.normal(size=(200, N_FEATURES)).astype(np.float32)
    if kind == "binary":
        y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
        model: Any = LogisticRegression().fit(X, y)
    elif kind == "multiclass":
        y = np.digitize(X[:, 0], [-0.5, 0.5]).astype(np.int64)
        model = LogisticRegression(max_iter=500).fit(X, y)
    else:
        y = X @ np.array([1.0, -2.0, 0.5, 3.0], dtype=np.float32) + 0.25
        model = LinearRegression().fit(X, y)
    options = {id(model): {"zipmap": False}} if kind != "regression" else None
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        options=options,
        target_opset=17,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(onx.SerializeToString())
    if signature is not None:
        (out_dir / "signature.json").write_text(json.dumps(signature))
    return out_dir


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``model_factory(kind, signature=None)`` → a model dir (kind: binary | multiclass | regression)."""
    base = tmp_path_factory.mktemp("models")
    built: dict[str, Path] = {}

    def make(kind: str, signature: dict[str, Any] | None = None, name: str | None = None) -> Path:
        key = name or f"{kind}-{json.dumps(signature, sort_keys=True)}"
        if key not in built:
            built[key] = _fit_and_export(kind, base / f"m{len(built)}", signature)
        return built[key]

    return make


@pytest.fixture(scope="session")
def binary_model(model_factory: Callable[..., Path]) -> Path:
    return model_factory("binary")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """``serve(*args, env=..., expect=200)`` starts the model server on a free 127.0.0.1 port and waits
    until /ping answers ``expect``; every server is stopped (SIGTERM, then SIGKILL) at module end."""
    started: list[subprocess.Popen[bytes]] = []
    logs = tmp_path_factory.mktemp("serve-logs")

    def start(*args: str, env: dict[str, str] | None = None, expect: int = 200, workers: int = 1) -> Server:
        port = find_free_port()
        full_env = dict(os.environ)
        full_env.update(
            SAGEMAKER_MODEL_SERVER_WORKERS=str(workers),
            PYTHONPATH=str(ROOT),
            SELFMAKER_INSTALL_REQUIREMENTS=full_env.get("SELFMAKER_INSTALL_REQUIREMENTS", "true"),
        )
        full_env.update(env or {})
        log_path = logs / f"server-{port}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "serving", *args, "--host", "127.0.0.1", "--port", str(port)],
                cwd=str(ROOT),
                env=full_env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        server = Server(f"http://127.0.0.1:{port}", proc, log_path)
        try:
            wait_http(server.url + "/ping", timeout=60, status=expect, alive=server.alive)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- server log ---\n{server.log()}") from None
        return server

    try:
        yield start
    finally:
        for proc in started:  # SIGTERM all first so the graceful stops overlap
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started:
            _stop(proc)

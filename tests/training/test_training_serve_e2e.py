"""The model directory contract end to end: a built-in's model.tar.gz served by ``python -m serving``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import requests
from training_helpers import (
    LL_IMAGE,
    XGB_IMAGE,
    binary_data,
    channel,
    free_port,
    local_model,
    onnx_predict,
    request,
    run_job,
    wait_ping,
    write_csv,
)


def _serve(model_tar: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving",
                "--model-data",
                model_tar,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def test_built_in_models_are_served_with_their_response_shape(tmp_path: Path) -> None:
    X, y = binary_data(1200)
    write_csv(tmp_path / "data/train.csv", X, y)
    chans = [channel("train", (tmp_path / "data").as_uri())]
    xgb_state, _ = run_job(
        request(
            "serve-xgb",
            XGB_IMAGE,
            {"num_round": 10, "objective": "binary:logistic"},
            chans,
            (tmp_path / "out").as_uri(),
        ),
        tmp_path / "job-xgb",
    )
    ll_state, _ = run_job(
        request(
            "serve-ll",
            LL_IMAGE,
            {"predictor_type": "binary_classifier", "epochs": 5},
            chans,
            (tmp_path / "out").as_uri(),
        ),
        tmp_path / "job-ll",
    )
    assert xgb_state.status == ll_state.status == "Completed", (
        xgb_state.failure_reason,
        ll_state.failure_reason,
    )
    rows = X[:5]
    body = "\n".join(",".join(f"{v:.7g}" for v in row) for row in rows)
    for state, accept in ((xgb_state, "text/csv"), (ll_state, "application/json")):
        expected = onnx_predict(
            local_model(state, tmp_path / f"m-{state.model_artifacts.split('/')[-3]}"), rows
        )  # type: ignore[union-attr]
        port = free_port()
        proc = _serve(state.model_artifacts or "", port, tmp_path / f"serve-{port}.log")
        try:
            wait_ping(f"http://127.0.0.1:{port}/ping", alive=lambda proc=proc: proc.poll() is None)
            resp = requests.post(
                f"http://127.0.0.1:{port}/invocations",
                data=body,
                headers={"Content-Type": "text/csv", "Accept": accept},
                timeout=30,
            )
            assert resp.status_code == 200, resp.text
            if accept == "text/csv":  # xgboost: one P(class 1) per line
                got = np.array([float(v) for v in resp.text.strip().splitlines()])
                np.testing.assert_allclose(got, expected["probabilities"][:, 1], atol=1e-5)
            else:  # linear-learner: {"predictions": [{"score": p, "predicted_label": l}]}
                preds = json.loads(resp.text)["predictions"]
                np.testing.assert_allclose(
                    [p["score"] for p in preds], expected["probabilities"][:, 1], atol=1e-5
                )
                assert [p["predicted_label"] for p in preds] == expected["label"].tolist()
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

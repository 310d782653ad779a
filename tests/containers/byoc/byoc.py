"""BYOC test program: `serve` (flask on $SAGEMAKER_BIND_TO_PORT or 8080) and `train` (/opt/ml contract).

The model is a linear regressor kept as JSON (/opt/ml/model/model.json: weights and bias), fitted by
batch gradient descent on label-first CSV files of the `train` channel. Standard library + flask only.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sys
from pathlib import Path

ML = Path(os.environ.get("BYOC_ML_ROOT", "/opt/ml"))


def _rows(directory: Path) -> list[list[float]]:
    rows: list[list[float]] = []
    for path in sorted(directory.rglob("*.csv")):
        with open(path, newline="") as handle:
            rows += [[float(v) for v in row] for row in csv.reader(handle) if row]
    return rows


def train() -> int:
    hps = json.loads((ML / "input/config/hyperparameters.json").read_text() or "{}")
    epochs = int(hps.get("epochs", "200"))
    rate = float(hps.get("learning_rate", "0.1"))
    print(
        f"byoc train: host {os.environ.get('HOSTNAME', '?')}, job "
        f"{os.environ.get('TRAINING_JOB_NAME', '?')}, "
        f"epochs {epochs}",
        flush=True,
    )
    try:
        rows = _rows(ML / "input/data/train")
        if not rows:
            raise ValueError("no CSV rows in the train channel")
    except (OSError, ValueError) as exc:
        (ML / "output").mkdir(parents=True, exist_ok=True)
        (ML / "output/failure").write_text(f"AlgorithmError: {exc}")
        print(f"byoc train failed: {exc}", file=sys.stderr, flush=True)
        return 1
    dim = len(rows[0]) - 1
    weights, bias = [0.0] * dim, 0.0
    for epoch in range(epochs):
        grad_w, grad_b, loss = [0.0] * dim, 0.0, 0.0
        for row in rows:
            y, x = row[0], row[1:]
            err = sum(w * v for w, v in zip(weights, x, strict=True)) + bias - y
            loss += err * err
            grad_b += err
            for i, v in enumerate(x):
                grad_w[i] += err * v
        weights = [w - rate * g / len(rows) for w, g in zip(weights, grad_w, strict=True)]
        bias -= rate * grad_b / len(rows)
        if epoch % 50 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch}: train_mse={loss / len(rows):.6f};", flush=True)
    (ML / "model").mkdir(parents=True, exist_ok=True)
    (ML / "model/model.json").write_text(json.dumps({"weights": weights, "bias": bias}))
    print("byoc train: saved /opt/ml/model/model.json", flush=True)
    return 0


def serve() -> int:
    from flask import Flask, Response, request

    model = json.loads((ML / "model/model.json").read_text())
    app = Flask("byoc")

    @app.get("/ping")
    def ping() -> Response:
        return Response(status=200)

    @app.post("/invocations")
    def invocations() -> Response:
        if request.content_type != "text/csv":
            return Response(json.dumps({"error": "text/csv only"}), status=415, mimetype="application/json")
        out = []
        for line in request.get_data(as_text=True).strip().splitlines():
            x = [float(v) for v in line.split(",")]
            out.append(sum(w * v for w, v in zip(model["weights"], x, strict=True)) + model["bias"])
        print(
            f"byoc serve: {len(out)} record(s), env BYOC_GREETING={os.environ.get('BYOC_GREETING', '')}",
            flush=True,
        )
        return Response("\n".join(repr(v) for v in out) + "\n", mimetype="text/csv")

    # PID 1 ignores SIGTERM unless it handles it: exit cleanly on `stop`
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    port = int(os.environ.get("SAGEMAKER_BIND_TO_PORT", "8080"))
    print(f"byoc serve: listening on {port}", flush=True)
    app.run(host="0.0.0.0", port=port, threaded=True)
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "serve"
    if command == "train":
        sys.exit(train())
    if command == "serve":
        sys.exit(serve())
    print(f"unknown command {command!r}", file=sys.stderr)
    sys.exit(2)

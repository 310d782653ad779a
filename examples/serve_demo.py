"""Demo of the model server: build a tiny model, serve it with ``python -m serving``, invoke it.

Run: ``.venv/bin/python examples/serve_demo.py``. Everything happens in a temporary directory and on a
free port of 127.0.0.1; the server is stopped (SIGTERM, then SIGKILL) before the script exits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from common.proc import free_port


def build_model(model_dir: Path) -> None:
    """A LogisticRegression on 4 features exported to ONNX (label + probabilities, no ZipMap)."""
    import numpy as np
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=300, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    clf = LogisticRegression().fit(X.astype(np.float32), y)
    onx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, 4]))],
        options={id(clf): {"zipmap": False}},
        target_opset=17,
    )
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "model.onnx").write_bytes(onx.SerializeToString())
    signature = {
        "format": 1,
        "framework": "sklearn",
        "task": "binary_classification",
        "classes": [0, 1],
        "inputs": [{"name": "input", "dtype": "float32", "shape": [None, 4]}],
    }
    (model_dir / "signature.json").write_text(json.dumps(signature))


def request(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes, str]:
    req = urllib.request.Request(
        url, data=body, headers=headers or {}, method="POST" if body is not None else "GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="selfmaker-demo-") as tmp:
        model_dir = Path(tmp) / "model"
        build_model(model_dir)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = dict(os.environ, SAGEMAKER_MODEL_SERVER_WORKERS="1")
        cmd = [
            sys.executable,
            "-m",
            "serving",
            "--model-dir",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        print("$", " ".join(cmd))
        with open(Path(tmp) / "server.log", "wb") as log:  # the server keeps its own copy of the descriptor
            server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    print((Path(tmp) / "server.log").read_text(), file=sys.stderr)
                    raise SystemExit("the model server exited before it was ready")
                try:
                    status, _, _ = request(base + "/ping")
                    if status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the model server was not ready after 60 s")
                time.sleep(0.1)
            print("GET /ping -> 200")
            csv_body = b"0.5,-1.2,0.3,2.0\n-1.0,0.1,0.7,-0.4\n"
            status, out, ctype = request(
                base + "/invocations", csv_body, {"Content-Type": "text/csv", "Accept": "text/csv"}
            )
            print(f"POST text/csv -> {status} {ctype}\n{out.decode()}")
            json_body = json.dumps({"instances": [[0.5, -1.2, 0.3, 2.0]]}).encode()
            status, out, ctype = request(
                base + "/invocations", json_body, {"Content-Type": "application/json"}
            )
            print(f"POST application/json -> {status} {ctype}\n{out.decode()}")
            status, out, _ = request(base + "/invocations", b"1,2", {"Content-Type": "text/csv"})
            print(f"POST a 2-feature row -> {status} {out.decode()}")
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        print("server stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

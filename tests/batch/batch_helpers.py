"""Helpers of the batch-engine tests: tiny models, data files, requests, reference predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from testkit import find_free_port  # noqa: F401 - the batch tests import it from here

N_FEATURES = 4


def build_lr_model(out_dir: Path, *, response_format: str = "xgboost") -> Path:
    """A logistic regression on N_FEATURES float32 features, exported to ONNX with its signature."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, N_FEATURES)).astype(np.float32)
    y = (X[:, 0] - X[:, 2] > 0).astype(np.int64)
    model = LogisticRegression().fit(X, y)
    onx = convert_sklearn(
        model,
        initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.onnx").write_bytes(onx.SerializeToString())
    (out_dir / "signature.json").write_text(
        json.dumps(
            {
                "format": 1,
                "framework": "sklearn",
                "task": "binary_classification",
                "inputs": [{"name": "input", "dtype": "float32", "shape": [None, N_FEATURES]}],
                "classes": [0, 1],
                "response_format": response_format,
            }
        )
    )
    return out_dir


#: a BYOC-style model: sagemaker-inference hooks only, no ONNX; answers "sum of the fields" per line
HOOKS_CODE = """
import time

def model_fn(model_dir):
    with open(model_dir + "/delay.txt") as f:
        return {"delay": float(f.read())}

def transform_fn(model, data, content_type, accept):
    time.sleep(model["delay"])
    lines = [line for line in data.split("\\n") if line.strip()]
    out = [repr(round(sum(float(v) for v in line.split(",")), 6)) for line in lines]
    return "\\n".join(out) + "\\n", "text/csv"
"""


def build_hooks_model(out_dir: Path, delay: float = 0.0) -> Path:
    """A model directory with code/inference.py (runs in a model server subprocess)."""
    (out_dir / "code").mkdir(parents=True, exist_ok=True)
    (out_dir / "code" / "inference.py").write_text(HOOKS_CODE)
    (out_dir / "delay.txt").write_text(str(delay))
    return out_dir


def hooks_expected(path: Path) -> bytes:
    """What the hooks model answers for every line of ``path``, one line each."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            out.append(repr(round(sum(float(v) for v in line.split(",")), 6)))
    return ("\n".join(out) + "\n").encode()


def predict(model_dir: Path, rows: np.ndarray) -> np.ndarray:
    """P(class 1) computed directly with onnxruntime (the reference for every output)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": rows.astype(np.float32)})
    probs = next(o for o in outputs if getattr(o, "ndim", 0) == 2)
    return probs[:, 1]


def write_csv(path: Path, rows: np.ndarray, *, ids: bool = False) -> Path:
    """Rows as CSV (``ids``: a leading integer id column)."""
    lines = []
    for i, row in enumerate(rows):
        fields = [f"{v:.5f}" for v in row]
        if ids:
            fields.insert(0, str(1000 + i))
        lines.append(",".join(fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def read_rows(path: Path, *, skip_cols: int = 0) -> np.ndarray:
    """The numeric rows of a CSV file written by :func:`write_csv`."""
    return np.array(
        [
            [float(v) for v in line.split(",")[skip_cols:]]
            for line in path.read_text().splitlines()
            if line.strip()
        ]
    )


def request(input_uri: str, output_uri: str, **extra: Any) -> dict[str, Any]:
    """A CreateTransformJob request; ``extra`` keys: TransformInput/TransformOutput members or top-level."""
    tin: dict[str, Any] = {
        "DataSource": {
            "S3DataSource": {"S3DataType": extra.pop("S3DataType", "S3Prefix"), "S3Uri": input_uri}
        },
        "ContentType": extra.pop("ContentType", "text/csv"),
    }
    for key in ("SplitType", "CompressionType"):
        if key in extra:
            tin[key] = extra.pop(key)
    tout: dict[str, Any] = {"S3OutputPath": output_uri}
    for key in ("Accept", "AssembleWith"):
        if key in extra:
            tout[key] = extra.pop(key)
    return {
        "TransformJobName": extra.pop("TransformJobName", "test-job"),
        "ModelName": "m",
        "TransformInput": tin,
        "TransformOutput": tout,
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        **extra,
    }

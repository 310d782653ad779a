"""Export the built-ins' models to ONNX as docs/contracts.md §1 describes, and write signature.json.

Classifier graphs: float32 input ``input`` [N, D] → ``label`` (int64 [N]) and ``probabilities``
(float32 [N, C], no ZipMap). Regressor graphs: one float32 output [N, 1].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 15


def write_signature(model_dir: Path, *, framework: str, task: str, n_features: int, response_format: str,
                    classes: list[int] | None = None, threshold: float | None = None, extra: dict[str, Any] | None = None) -> None:
    """Write ``signature.json`` next to ``model.onnx``."""
    sig: dict[str, Any] = {
        "format": 1,
        "framework": framework,
        "task": task,
        "inputs": [{"name": "input", "dtype": "float32", "shape": [None, n_features]}],
        "response_format": response_format,
    }
    if classes is not None:
        sig["classes"] = classes
    if threshold is not None:
        sig["threshold"] = threshold
    if extra:
        sig.update(extra)
    (model_dir / "signature.json").write_text(json.dumps(sig, indent=2))


def save(model: onnx.ModelProto, model_dir: Path) -> Path:
    """Check and write ``model.onnx``."""
    onnx.checker.check_model(model)
    path = model_dir / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


# -- xgboost ------------------------------------------------------------------------------------
def xgboost_to_onnx(booster: Any, n_features: int, objective: str) -> onnx.ModelProto:
    """Convert a trained ``xgboost.Booster`` with onnxmltools (plus a Sigmoid for ``reg:logistic``)."""
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = convert_xgboost(booster, name="selfmaker-xgboost", initial_types=[("input", FloatTensorType([None, n_features]))],
                            target_opset=OPSET)
    if objective == "reg:logistic":
        # onnxmltools emits the raw tree sum plus base_score as given; xgboost adds logit(base_score) to the
        # margin. Measure the offset on a probe and correct it, then apply the logistic link.
        import onnxruntime as ort
        import xgboost as xgb

        probe = np.random.default_rng(0).normal(size=(32, n_features)).astype(np.float32)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        raw_out = sess.run(None, {"input": probe})[0].reshape(-1).astype(np.float64)
        margin = booster.predict(xgb.DMatrix(probe), output_margin=True).reshape(-1).astype(np.float64)
        offset = float(np.median(margin - raw_out))
        graph = model.graph
        old = graph.output[0].name
        raw = old + "_raw"
        for node in graph.node:
            for i, out in enumerate(node.output):
                if out == old:
                    node.output[i] = raw
        graph.initializer.append(numpy_helper.from_array(np.array([offset], dtype=np.float32), "margin_offset"))
        graph.node.append(helper.make_node("Add", [raw, "margin_offset"], [old + "_margin"], name="base_margin"))
        graph.node.append(helper.make_node("Sigmoid", [old + "_margin"], [old], name="logistic"))
    return model


# -- linear models ------------------------------------------------------------------------------
def linear_to_onnx(weights: np.ndarray, bias: np.ndarray, task: str, threshold: float = 0.5) -> onnx.ModelProto:
    """A linear model ``X @ W + b`` as an ONNX graph (MatMul + Add + Sigmoid/Softmax for classifiers)."""
    W = np.asarray(weights, dtype=np.float32)
    if W.ndim == 1:
        W = W[:, None]
    b = np.asarray(bias, dtype=np.float32).reshape(-1)
    n_features, k = W.shape
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")]
    nodes = [helper.make_node("MatMul", ["input", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["margin"])]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])
    if task == "binary_classification":
        inits += [numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
                  numpy_helper.from_array(np.array([threshold], dtype=np.float32), "threshold")]
        nodes += [
            helper.make_node("Sigmoid", ["margin"], ["p1"]),
            helper.make_node("Sub", ["one", "p1"], ["p0"]),
            helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
            helper.make_node("Squeeze", ["p1", "axis1"], ["p1_flat"]),
            helper.make_node("GreaterOrEqual", ["p1_flat", "threshold"], ["is_pos"]),
            helper.make_node("Cast", ["is_pos"], ["label"], to=TensorProto.INT64),
        ]
        outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                   helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])]
    elif task == "multiclass_classification":
        nodes += [helper.make_node("Softmax", ["margin"], ["probabilities"], axis=1),
                  helper.make_node("ArgMax", ["margin"], ["label"], axis=1, keepdims=0)]
        outputs = [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                   helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, k])]
    else:
        nodes[-1] = helper.make_node("Add", ["xw", "B"], ["score"])
        outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])]
    graph = helper.make_graph(nodes, "selfmaker-linear-learner", [inp], outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="selfmaker")
    model.ir_version = 8
    return model

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


def write_signature(
    model_dir: Path,
    *,
    framework: str,
    task: str,
    n_features: int,
    response_format: str,
    classes: list[int] | None = None,
    threshold: float | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
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


# -- classifier heads shared by the built-ins -----------------------------------------------------
def _binary_head(
    threshold: float,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], list[onnx.ValueInfoProto]]:
    """From ``p1`` (P(class 1), float32 [N, 1]): ``probabilities`` [N, 2] and ``label`` = p1 >= threshold."""
    inits = [
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([threshold], dtype=np.float32), "threshold"),
    ]
    nodes = [
        helper.make_node("Sub", ["one", "p1"], ["p0"]),
        helper.make_node("Concat", ["p0", "p1"], ["probabilities"], axis=1),
        helper.make_node("Squeeze", ["p1", "axis1"], ["p1_flat"]),
        helper.make_node("GreaterOrEqual", ["p1_flat", "threshold"], ["is_pos"]),
        helper.make_node("Cast", ["is_pos"], ["label"], to=TensorProto.INT64),
    ]
    return nodes, inits, _classifier_outputs(2)


def _multiclass_head(n_classes: int) -> tuple[list[onnx.NodeProto], list[onnx.ValueInfoProto]]:
    """From ``margin`` [N, C]: ``probabilities`` = Softmax, ``label`` = ArgMax."""
    nodes = [
        helper.make_node("Softmax", ["margin"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["margin"], ["label"], axis=1, keepdims=0),
    ]
    return nodes, _classifier_outputs(n_classes)


def _classifier_outputs(n_classes: int) -> list[onnx.ValueInfoProto]:
    return [
        helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, n_classes]),
    ]


# -- xgboost ------------------------------------------------------------------------------------
ML_OPSET = 3  # ai.onnx.ml: TreeEnsembleRegressor with nodes_missing_value_tracks_true

# How each objective turns the tree margin into xgboost's prediction, and how xgboost (≥ 1.x stores
# base_score in prediction space) turns the saved base_score into the margin it starts from.
_LINKS: dict[str, tuple[str, str]] = {
    "reg:squarederror": ("identity", "identity"),
    "reg:squaredlogerror": ("identity", "identity"),
    "reg:pseudohubererror": ("identity", "identity"),
    "reg:absoluteerror": ("identity", "identity"),
    "reg:linear": ("identity", "identity"),
    "reg:logistic": ("sigmoid", "logit"),
    "binary:logistic": ("sigmoid", "logit"),
    "binary:logitraw": ("sigmoid", "identity"),  # served as probabilities (docs/training.md, Limits)
    "binary:hinge": ("hinge", "identity"),
    "count:poisson": ("exp", "log"),
    "reg:gamma": ("exp", "log"),
    "reg:tweedie": ("exp", "log"),
    "multi:softmax": ("softmax", "identity"),
    "multi:softprob": ("softmax", "identity"),
}
XGBOOST_OBJECTIVES = tuple(_LINKS)


def _base_margin(base_score: str, link: str, n_targets: int) -> np.ndarray:
    """The margin every prediction starts from, per target (xgboost's ``ProbToMargin``, in float32)."""
    values = np.array([float(v) for v in base_score.strip("[]").split(",") if v.strip()], dtype=np.float32)
    if values.size == 1:
        values = np.repeat(values, n_targets)
    if values.size != n_targets:
        raise ValueError(f"xgboost base_score has {values.size} values for {n_targets} targets")
    with np.errstate(divide="ignore"):
        if link == "logit":
            values = -np.log(np.float32(1) / values - np.float32(1))
        elif link == "log":
            values = np.log(values)
    return values.astype(np.float32)


def _tree_arrays(tree: dict[str, Any], tree_id: int, target: int, n_features: int) -> dict[str, np.ndarray]:
    """One xgboost JSON tree as TreeEnsembleRegressor attribute columns (unreachable nodes dropped)."""
    left = np.asarray(tree["left_children"], dtype=np.int64)
    right = np.asarray(tree["right_children"], dtype=np.int64)
    if any(int(t) != 0 for t in tree.get("split_type", ())):
        raise ValueError("the model has categorical splits, which the ONNX export does not support")
    if int(tree.get("tree_param", {}).get("size_leaf_vector", "1")) > 1:
        raise ValueError(
            "the model has multi-output trees (multi_strategy), which the ONNX export does not support"
        )
    # pruned nodes can stay in the arrays; keep only what the root reaches, numbered in visit order
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        order.append(node)
        if left[node] != -1:
            stack += [int(right[node]), int(left[node])]
    idx = np.asarray(order, dtype=np.int64)
    renumber = np.full(left.size, -1, dtype=np.int64)
    renumber[idx] = np.arange(idx.size)
    is_leaf = left[idx] == -1
    features = np.asarray(tree["split_indices"], dtype=np.int64)[idx]
    # xgboost compares float32 feature < float32 split; the JSON holds the float32 values exactly
    conditions = np.asarray(tree["split_conditions"], dtype=np.float32)[idx]
    if np.any(features[~is_leaf] >= n_features) or np.any(features[~is_leaf] < 0):
        raise ValueError(
            f"the model splits on feature {int(features[~is_leaf].max())}, the input has {n_features} "
            "features"
        )
    branch = ~is_leaf
    leaves = np.flatnonzero(is_leaf)
    return {
        "nodes_treeids": np.full(idx.size, tree_id, dtype=np.int64),
        "nodes_nodeids": np.arange(idx.size, dtype=np.int64),
        "nodes_featureids": np.where(branch, features, 0),
        "nodes_values": np.where(branch, conditions, np.float32(0)),
        "nodes_modes": np.where(branch, "BRANCH_LT", "LEAF"),
        "nodes_truenodeids": np.where(branch, renumber[np.where(branch, left[idx], 0)], 0),
        "nodes_falsenodeids": np.where(branch, renumber[np.where(branch, right[idx], 0)], 0),
        "nodes_missing_value_tracks_true": np.where(
            branch, np.asarray(tree["default_left"], dtype=np.int64)[idx], 0
        ),
        "target_treeids": np.full(leaves.size, tree_id, dtype=np.int64),
        "target_nodeids": leaves.astype(np.int64),
        "target_ids": np.full(leaves.size, target, dtype=np.int64),
        "target_weights": conditions[leaves],  # a leaf's split_condition is its value (eta applied)
    }


def xgboost_to_onnx(booster: Any, n_features: int, objective: str) -> onnx.ModelProto:
    """Write a trained ``xgboost.Booster`` (gbtree) as ONNX, straight from its JSON model.

    The trees become one ``ai.onnx.ml`` TreeEnsembleRegressor that computes xgboost's margin
    (``base_values`` = the booster's base margin, one target per class, NaN follows ``default_left``);
    plain ops apply the objective's link: Sigmoid (``binary:logistic``, ``binary:logitraw``,
    ``reg:logistic``), Softmax + ArgMax (``multi:*``), Exp (``count:poisson``, ``reg:gamma``,
    ``reg:tweedie``), margin > 0 (``binary:hinge``, xgboost's 0/1 prediction), identity otherwise.
    """
    if objective not in _LINKS:
        raise ValueError(
            f"objective {objective!r} cannot be exported to ONNX; supported: {', '.join(XGBOOST_OBJECTIVES)}"
        )
    learner = json.loads(bytes(booster.save_raw("json")))["learner"]
    saved = learner["objective"]["name"]
    if saved != objective and {saved, objective} != {"reg:linear", "reg:squarederror"}:
        raise ValueError(f"the booster was trained with objective {saved}, not {objective}")
    gbm = learner["gradient_booster"]
    if gbm["name"] != "gbtree":
        raise ValueError(f"booster {gbm['name']!r} cannot be exported to ONNX; only gbtree")
    params = learner["learner_model_param"]
    if int(params.get("num_target", "1")) > 1:
        raise ValueError("multi-target models cannot be exported to ONNX")
    link, base_link = _LINKS[objective]
    n_targets = max(1, int(params.get("num_class", "0")))
    base = _base_margin(params["base_score"], base_link, n_targets)

    trees = gbm["model"]["trees"]
    tree_info = gbm["model"]["tree_info"]
    parts = [_tree_arrays(tree, i, int(tree_info[i]), n_features) for i, tree in enumerate(trees)]
    if not parts:  # no trees yet: the prediction is the base margin; ONNX needs at least one node
        parts = [
            _tree_arrays(
                {
                    "left_children": [-1],
                    "right_children": [-1],
                    "split_indices": [0],
                    "split_conditions": [0.0],
                    "default_left": [0],
                },
                0,
                0,
                n_features,
            )
        ]
    columns = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    attrs: dict[str, Any] = {key: value.tolist() for key, value in columns.items()}
    regression = not objective.startswith(("binary:", "multi:"))
    margin_name = "variable" if regression and link == "identity" else "margin"
    nodes = [
        helper.make_node(
            "TreeEnsembleRegressor",
            ["input"],
            [margin_name],
            name="trees",
            domain="ai.onnx.ml",
            n_targets=n_targets,
            aggregate_function="SUM",
            post_transform="NONE",
            base_values=base.tolist(),
            **attrs,
        )
    ]
    inits: list[onnx.TensorProto] = []
    if regression:  # one float32 output [N, 1], named like onnxmltools named it
        if link != "identity":
            nodes.append(
                helper.make_node(
                    "Sigmoid" if link == "sigmoid" else "Exp", ["margin"], ["variable"], name="link"
                )
            )
        outputs = [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])]
    elif objective.startswith(
        "multi:"
    ):  # probabilities even for multi:softmax (whose xgboost prediction is the label)
        head, outputs = _multiclass_head(n_targets)
        nodes += head
    else:  # binary classifiers: P(class 1) as the second column, label = P(1) >= 0.5 (signature threshold)
        head, inits, outputs = _binary_head(0.5)
        if link == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", ["margin"], ["p1"], name="link"))
        else:  # hinge: xgboost predicts 1 when the margin is > 0, else 0
            inits.append(numpy_helper.from_array(np.array([0.0], dtype=np.float32), "zero"))
            nodes += [
                helper.make_node("Greater", ["margin", "zero"], ["positive"], name="link"),
                helper.make_node("Cast", ["positive"], ["p1"], to=TensorProto.FLOAT),
            ]
        nodes += head
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])
    graph = helper.make_graph(nodes, "selfmaker-xgboost", [inp], outputs, initializer=inits)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", ML_OPSET)],
        producer_name="selfmaker",
    )
    model.ir_version = 8
    return model


# -- linear models ------------------------------------------------------------------------------
def linear_to_onnx(
    weights: np.ndarray, bias: np.ndarray, task: str, threshold: float = 0.5
) -> onnx.ModelProto:
    """A linear model ``X @ W + b`` as an ONNX graph (MatMul + Add + Sigmoid/Softmax for classifiers)."""
    W = np.asarray(weights, dtype=np.float32)
    if W.ndim == 1:
        W = W[:, None]
    b = np.asarray(bias, dtype=np.float32).reshape(-1)
    n_features, k = W.shape
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "B")]
    nodes = [
        helper.make_node("MatMul", ["input", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["margin"]),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])
    if task == "binary_classification":
        head, head_inits, outputs = _binary_head(threshold)
        nodes += [helper.make_node("Sigmoid", ["margin"], ["p1"]), *head]
        inits += head_inits
    elif task == "multiclass_classification":
        head, outputs = _multiclass_head(k)
        nodes += head
    else:
        nodes[-1] = helper.make_node("Add", ["xw", "B"], ["score"])
        outputs = [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 1])]
    graph = helper.make_graph(nodes, "selfmaker-linear-learner", [inp], outputs, initializer=inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="selfmaker"
    )
    model.ir_version = 8
    return model


def export_xgboost(
    booster: Any, model_dir: Path, *, n_features: int, objective: str, num_class: int = 0
) -> None:
    """Write ``model.onnx`` and ``signature.json`` (response format ``xgboost``) for ``booster`` into
    ``model_dir``, and check that ONNX Runtime predicts what xgboost predicts (missing values included):
    RuntimeError when they disagree, ValueError when the booster cannot be expressed (see
    :func:`xgboost_to_onnx`). The built-in XGBoost's training and the model server's conversion of
    SageMaker's own ``xgboost-model`` artifacts (serving/native.py) both write through here."""
    # imported here: only the xgboost exports need them (the linear learner's do not)
    import onnxruntime as ort
    import xgboost as xgb

    onnx_model = xgboost_to_onnx(booster, n_features, objective)
    save(onnx_model, model_dir)
    if objective.startswith("multi:"):
        task, classes = "multiclass_classification", list(range(int(num_class)))
    elif objective.startswith("binary:"):
        task, classes = "binary_classification", [0, 1]
    else:
        task, classes = "regression", None
    write_signature(
        model_dir,
        framework="xgboost",
        task=task,
        n_features=n_features,
        response_format="xgboost",
        classes=classes,
        threshold=0.5 if task == "binary_classification" else None,
        extra={"objective": objective},
    )
    rng = np.random.default_rng(0)
    probe = rng.normal(size=(16, n_features)).astype(np.float32)
    probe[rng.random(probe.shape) < 0.2] = np.nan  # missing values take the trees' default directions
    sess = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"input": probe})[-1]
    if objective == "multi:softmax":
        ref = booster.predict(xgb.DMatrix(probe, missing=np.nan), output_margin=False, strict_shape=True)
        onnx_out = onnx_out.argmax(axis=1).reshape(ref.shape)
    else:
        ref = booster.predict(xgb.DMatrix(probe, missing=np.nan))
        if task == "binary_classification":
            onnx_out = onnx_out[:, 1]
            if objective == "binary:logitraw":
                ref = 1.0 / (1.0 + np.exp(-ref))
    diff = float(
        np.max(
            np.abs(
                np.asarray(onnx_out, dtype=np.float64).reshape(-1)
                - np.asarray(ref, dtype=np.float64).reshape(-1)
            )
        )
    )
    if diff > 1e-3 * max(1.0, float(np.max(np.abs(ref)))):
        raise RuntimeError(f"ONNX export disagrees with xgboost by {diff:g} (objective {objective})")

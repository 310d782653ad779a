"""Built-in Factorization Machines: a binary classifier or regressor ``w0 + x·w + Σ_{i<j} <v_i, v_j> x_i x_j``
trained with mini-batch Adam in numpy (per-term learning rates and weight decay, as SageMaker's
``bias_lr`` / ``linear_lr`` / ``factors_lr`` and ``*_wd``), exported to ONNX.

Input is ``application/x-recordio-protobuf`` (the default; what the SDK's ``record_set()`` writes) or CSV
with the label first. Binary labels are 0/1. Metric lines follow SageMaker's
``#quality_metric: host=algo-1, epoch=2, train binary_classification_accuracy <score>=0.9`` and, for a
``test`` channel, ``#quality_metric: host=algo-1, test rmse <loss>=0.5`` (regressor) or ``test
binary_classification_accuracy <score>=…``, ``test binary_classification_cross_entropy <loss>=…``,
``test binary_f_beta <score>=…``. The model serves in linear-learner's shapes (``score``,
``predicted_label``), as SageMaker's Factorization Machines answer.
"""

from __future__ import annotations

import io

import numpy as np

from common.onnx_export import fm_to_onnx, save, write_signature
from training.data import Dataset, read_channel
from training.environment import TrainingEnvironment, say
from training.errors import HyperparameterError, UserError
from training.hyperparameters import Hyperparameters

MODEL_FILE = "factorization-machines.npz"
PREDICTOR_TYPES = ("binary_classifier", "regressor")
INIT_METHODS = ("normal", "uniform", "constant")
TERMS = ("bias", "linear", "factors")
IMPLEMENTED = {
    "feature_dim",
    "num_factors",
    "predictor_type",
    "epochs",
    "mini_batch_size",
    "clip_gradient",
    "eps",
    "rescale_grad",
    *(f"{term}_{what}" for term in TERMS for what in ("lr", "wd")),
    *(f"{term}_init_{what}" for term in TERMS for what in ("method", "scale", "sigma", "value")),
}
#: accepted for compatibility with SageMaker jobs, with no effect here
ACCEPTED = {"_kvstore", "_num_gpus", "_num_kv_servers", "_log_level"}
#: SageMaker's defaults: learning rate, weight decay, init method, scale, sigma, value per term
DEFAULTS = {
    "bias": (0.1, 0.01, "normal", 0.01, 0.01, 0.0),
    "linear": (0.001, 0.001, "normal", 0.01, 0.01, 0.0),
    "factors": (0.0001, 0.00001, "normal", 0.01, 0.001, 0.0),
}


class Config:
    """Validated hyperparameters."""

    def __init__(self, hp: Hyperparameters) -> None:
        hp.check_known(IMPLEMENTED | ACCEPTED)
        self.feature_dim = int(hp.int("feature_dim", required=True, minimum=1) or 1)
        self.num_factors = int(hp.int("num_factors", required=True, minimum=1, maximum=1000) or 1)
        self.predictor_type = str(hp.choice("predictor_type", None, PREDICTOR_TYPES, required=True))
        self.epochs = int(hp.int("epochs", 1, minimum=1) or 1)
        self.batch = int(hp.int("mini_batch_size", 1000, minimum=1) or 1000)
        self.clip = hp.float("clip_gradient", None)
        self.eps = float(hp.float("eps", 1e-8, minimum=0, exclusive_min=True) or 1e-8)
        self.rescale = float(hp.float("rescale_grad", 1.0) or 1.0)
        self.lr: dict[str, float] = {}
        self.wd: dict[str, float] = {}
        self.init: dict[str, tuple[str, float, float, float]] = {}
        for term, (lr, wd, method, scale, sigma, value) in DEFAULTS.items():
            self.lr[term] = float(hp.float(f"{term}_lr", lr, minimum=0) or 0.0)
            self.wd[term] = float(hp.float(f"{term}_wd", wd, minimum=0) or 0.0)
            self.init[term] = (
                str(hp.choice(f"{term}_init_method", method, INIT_METHODS)),
                float(hp.float(f"{term}_init_scale", scale, minimum=0) or 0.0),
                float(hp.float(f"{term}_init_sigma", sigma, minimum=0) or 0.0),
                float(hp.float(f"{term}_init_value", value) or 0.0),
            )


def _init(cfg: Config, term: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    method, scale, sigma, value = cfg.init[term]
    if method == "normal":
        return rng.normal(scale=sigma, size=shape)
    if method == "uniform":
        return rng.uniform(-scale, scale, size=shape)
    return np.full(shape, value)


def margin(params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """The factorization machine's output before the link, [N]."""
    V = params["factors"]
    xv = X @ V
    pairs = 0.5 * np.sum(xv * xv - (X * X) @ (V * V), axis=1)
    return np.asarray(params["bias"][0] + X @ params["linear"] + pairs)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * z)))


def _quality(cfg: Config, params: dict[str, np.ndarray], ds: Dataset) -> dict[str, tuple[str, float]]:
    """``{metric: (kind, value)}``, kind ``score`` or ``loss`` as SageMaker prints them."""
    m = margin(params, ds.dense.astype(np.float64))
    y = ds.y.astype(np.float64)
    if cfg.predictor_type == "regressor":
        return {"rmse": ("loss", float(np.sqrt(np.mean((m - y) ** 2))))}
    p = np.clip(_sigmoid(m), 1e-12, 1 - 1e-12)
    pred = (p >= 0.5).astype(float)
    tp = float(np.sum((pred == 1) & (y == 1)))
    precision = tp / max(float(np.sum(pred == 1)), 1.0)
    recall = tp / max(float(np.sum(y == 1)), 1.0)
    return {
        "binary_classification_accuracy": ("score", float(np.mean(pred == y))),
        "binary_classification_cross_entropy": (
            "loss",
            float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        ),
        "binary_f_beta": ("score", 2 * precision * recall / max(precision + recall, 1e-12)),
    }


def _read(env: TrainingEnvironment, cfg: Config, name: str) -> Dataset:
    ds = read_channel(env, name, default="recordio", feature_dim=cfg.feature_dim)
    if ds.dense.shape[1] != cfg.feature_dim:
        raise HyperparameterError(
            "feature_dim",
            f"is {cfg.feature_dim} but channel {name!r} has {ds.dense.shape[1]} feature columns",
        )
    if not np.isfinite(ds.dense).all():
        row = int(np.flatnonzero(~np.isfinite(ds.dense).all(axis=1))[0])
        raise UserError(f"channel {name!r}: record {row + 1} has an empty or non-finite feature value")
    if cfg.predictor_type == "binary_classifier":
        bad = np.setdiff1d(np.unique(ds.y), [0.0, 1.0])
        if bad.size:
            raise UserError(
                f"channel {name!r}: predictor_type=binary_classifier needs labels 0 or 1, "
                f"found {bad[:5].tolist()}"
            )
    return ds


def train(env: TrainingEnvironment) -> None:
    """Train with mini-batch Adam, print the metric lines, export ``model.onnx``."""
    cfg = Config(Hyperparameters(env.hyperparameters))
    if "train" not in env.input_data_config:
        raise UserError("channel 'train' is required")
    train_ds = _read(env, cfg, "train")
    test_ds = _read(env, cfg, "test") if "test" in env.input_data_config else None
    X = train_ds.dense.astype(np.float64)
    y = train_ds.y.astype(np.float64)
    rng = np.random.default_rng(0)
    params = {
        "bias": _init(cfg, "bias", (1,), rng),
        "linear": _init(cfg, "linear", (cfg.feature_dim,), rng),
        "factors": _init(cfg, "factors", (cfg.feature_dim, cfg.num_factors), rng),
    }
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    step = 0
    host = env.current_host
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(X))
        for lo in range(0, len(X), cfg.batch):
            idx = order[lo : lo + cfg.batch]
            xb, yb = X[idx], y[idx]
            m = margin(params, xb)
            # d loss / d margin: logistic (p − y) or squared error (m − y), averaged over the batch
            r = (_sigmoid(m) - yb if cfg.predictor_type == "binary_classifier" else m - yb) / len(idx)
            r = r * cfg.rescale
            V = params["factors"]
            grads = {
                "bias": np.array([r.sum()]),
                "linear": xb.T @ r,
                "factors": xb.T @ (r[:, None] * (xb @ V)) - V * ((xb * xb).T @ r)[:, None],
            }
            step += 1
            for term, g in grads.items():
                g = g + cfg.wd[term] * params[term]
                if cfg.clip is not None and cfg.clip > 0:
                    g = np.clip(g, -cfg.clip, cfg.clip)
                m1, m2 = moments[term]
                m1 *= 0.9
                m1 += 0.1 * g
                m2 *= 0.999
                m2 += 0.001 * g * g
                update = (m1 / (1 - 0.9**step)) / (np.sqrt(m2 / (1 - 0.999**step)) + cfg.eps)
                params[term] = params[term] - cfg.lr[term] * update
        for metric, (kind, value) in _quality(cfg, params, train_ds).items():
            say(f"#quality_metric: host={host}, epoch={epoch}, train {metric} <{kind}>={value:.6f}")
    if test_ds is not None:
        for metric, (kind, value) in _quality(cfg, params, test_ds).items():
            say(f"#quality_metric: host={host}, test {metric} <{kind}>={value:.6f}")
    if env.is_master:
        export(env, cfg, params)


def export(env: TrainingEnvironment, cfg: Config, params: dict[str, np.ndarray]) -> None:
    """Write ``factorization-machines.npz`` (bias, linear [D], factors [D, F]), ``model.onnx`` and
    ``signature.json`` (``response_format: linear-learner``: SageMaker's FM answers in that shape)."""
    buf = io.BytesIO()
    np.savez(
        buf,
        bias=params["bias"],
        linear=params["linear"],
        factors=params["factors"],
        predictor_type=np.array(cfg.predictor_type),
    )
    (env.model_dir / MODEL_FILE).write_bytes(buf.getvalue())
    binary = cfg.predictor_type == "binary_classifier"
    task = "binary_classification" if binary else "regression"
    save(fm_to_onnx(float(params["bias"][0]), params["linear"], params["factors"], task), env.model_dir)
    write_signature(
        env.model_dir,
        framework="factorization-machines",
        task=task,
        n_features=cfg.feature_dim,
        response_format="linear-learner",
        classes=[0, 1] if binary else None,
        threshold=0.5 if binary else None,
        extra={"predictor_type": cfg.predictor_type, "num_factors": cfg.num_factors},
    )
    say(f"Saved {MODEL_FILE}, model.onnx and signature.json to {env.model_dir}")

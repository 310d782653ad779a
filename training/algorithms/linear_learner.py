"""Built-in Linear Learner: binary / multiclass classifier or regressor trained with mini-batch SGD in numpy.

Input is CSV (label first, no header) or ``application/x-recordio-protobuf``. Features (and, for the
regressor, the label) are standardised for training and the scaling is folded into the exported
weights, so ``model.onnx`` takes raw features. Binary classifiers pick their decision threshold by
``binary_classifier_model_selection_criteria`` (accuracy, f_beta, precision_at_target_recall,
recall_at_target_precision, …) on the validation channel (else train). Early stopping watches the
validation loss. Metric lines follow SageMaker's ``#quality_metric: host=algo-1, epoch=3, validation
binary_classification_cross_entropy_objective <loss>=0.2`` format.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.onnx_export import linear_to_onnx, save, write_signature
from training.algorithms.common import atomic_write, previous_model_file
from training.data import Dataset, read_channel
from training.environment import TrainingEnvironment, say
from training.errors import HyperparameterError, UserError
from training.hyperparameters import Hyperparameters

MODEL_FILE = "linear-learner.npz"
CHECKPOINT_FILE = "linear-learner-checkpoint.npz"

PREDICTOR_TYPES = ("binary_classifier", "multiclass_classifier", "regressor")
CRITERIA = (
    "accuracy",
    "f_beta",
    "precision_at_target_recall",
    "recall_at_target_precision",
    "loss_function",
    "cross_entropy_loss",
)
IMPLEMENTED = {
    "predictor_type",
    "feature_dim",
    "num_classes",
    "epochs",
    "mini_batch_size",
    "learning_rate",
    "optimizer",
    "l1",
    "wd",
    "use_bias",
    "normalize_data",
    "normalize_label",
    "balance_multiclass_weights",
    "target_precision",
    "target_recall",
    "binary_classifier_model_selection_criteria",
    "early_stopping_patience",
    "early_stopping_tolerance",
    "loss",
    "positive_example_weight_mult",
    "beta_1",
    "beta_2",
    "f_beta",
    "num_point_for_scaler",
    "momentum",
    "bias_lr_mult",
    "bias_wd_mult",
    "seed",
    "use_lr_scheduler",
    "lr_scheduler_step",
    "lr_scheduler_factor",
    "lr_scheduler_minimum_lr",
    "margin",
    "quantile",
    "loss_insensitivity",
    "huber_delta",
}
#: accepted for compatibility with SageMaker jobs, with no effect: they tune internals this implementation
#: does not have (several models trained in parallel, calibration, initialisation, unbiasing, top-k)
ACCEPTED = {
    "num_models",
    "num_calibration_samples",
    "init_method",
    "init_scale",
    "init_sigma",
    "init_bias",
    "unbias_data",
    "unbias_label",
    "accuracy_top_k",
    "_kvstore",
    "_num_gpus",
    "_num_kv_servers",
    "_log_level",
    "_wd",
    "_learning_rate",
    "_tuning_objective_metric",
}

#: The losses SageMaker's Linear Learner offers for each predictor type (the first is ``auto``'s).
LOSSES = {
    "binary_classifier": ("logistic", "hinge_loss"),
    "multiclass_classifier": ("softmax_loss",),
    "regressor": (
        "squared_loss",
        "absolute_loss",
        "eps_insensitive_squared_loss",
        "eps_insensitive_absolute_loss",
        "quantile_loss",
        "huber_loss",
    ),
}

_TASKS = {
    "binary_classifier": "binary_classification",
    "multiclass_classifier": "multiclass_classification",
    "regressor": "regression",
}


@dataclass
class Config:
    """Validated hyperparameters."""

    predictor_type: str
    task: str
    num_classes: int
    feature_dim: int | None
    epochs: int
    batch: int
    lr: float
    optimizer: str
    l1: float
    wd: float
    use_bias: bool
    normalize_data: bool
    normalize_label: bool
    balance: bool
    criterion: str
    target_precision: float
    target_recall: float
    f_beta: float
    patience: int
    tolerance: float
    loss: str
    pos_weight: float | str
    beta1: float
    beta2: float
    momentum: float
    bias_lr_mult: float
    bias_wd_mult: float
    scaler_points: int
    seed: int
    #: learning-rate schedule: lr × factor every ``lr_step`` updates, never below ``lr_min`` (None: off)
    lr_step: int | None = None
    lr_factor: float = 0.99
    lr_min: float = 1e-5
    margin: float = 1.0
    quantile: float = 0.5
    insensitivity: float = 0.01
    huber_delta: float = 1.0


def parse(hp: Hyperparameters) -> Config:
    """Validate the hyperparameters; errors name the field."""
    hp.check_known(IMPLEMENTED | ACCEPTED)
    ptype = hp.choice("predictor_type", None, PREDICTOR_TYPES, required=True)
    assert ptype is not None
    num_classes = 2
    if ptype == "multiclass_classifier":
        num_classes = int(hp.int("num_classes", required=True, minimum=3, maximum=1_000_000) or 0)
    elif hp.has("num_classes"):
        raise HyperparameterError("num_classes", "is only valid with predictor_type=multiclass_classifier")
    losses = LOSSES[ptype]
    pos = hp.string("positive_example_weight_mult", "1.0")
    pos_weight: float | str
    if pos in ("balanced", "auto"):
        pos_weight = "balanced" if pos == "balanced" else 1.0
    else:
        pos_weight = float(
            hp.float("positive_example_weight_mult", 1.0, minimum=0, exclusive_min=True) or 1.0
        )
    return Config(
        predictor_type=ptype,
        task=_TASKS[ptype],
        num_classes=num_classes,
        feature_dim=hp.int("feature_dim", None, minimum=1),
        epochs=int(hp.int("epochs", 15, minimum=1) or 15),
        batch=int(hp.int("mini_batch_size", 1000, minimum=1) or 1000),
        lr=float(hp.float("learning_rate", 0.05, minimum=0, exclusive_min=True) or 0.05),
        optimizer=str(hp.choice("optimizer", "adam", ("auto", "adam", "sgd", "adagrad", "rmsprop"))).replace(
            "auto", "adam"
        ),
        l1=float(hp.float("l1", 0.0, minimum=0) or 0.0),
        wd=float(hp.float("wd", 0.0, minimum=0) or 0.0),
        use_bias=hp.bool("use_bias", True),
        normalize_data=hp.bool("normalize_data", True),
        normalize_label=hp.bool("normalize_label", ptype == "regressor"),
        balance=hp.bool("balance_multiclass_weights", False),
        criterion=str(hp.choice("binary_classifier_model_selection_criteria", "accuracy", CRITERIA)),
        target_precision=float(
            hp.float("target_precision", 0.8, minimum=0, maximum=1, exclusive_min=True) or 0.8
        ),
        target_recall=float(hp.float("target_recall", 0.8, minimum=0, maximum=1, exclusive_min=True) or 0.8),
        f_beta=float(hp.float("f_beta", 1.0, minimum=0, exclusive_min=True) or 1.0),
        patience=int(hp.int("early_stopping_patience", 3, minimum=1) or 3),
        tolerance=float(hp.float("early_stopping_tolerance", 0.001, minimum=0) or 0.0),
        loss=str(hp.choice("loss", losses[0], ("auto", *losses))).replace("auto", losses[0]),
        pos_weight=pos_weight,
        beta1=float(hp.float("beta_1", 0.9, minimum=0, maximum=1) or 0.9),
        beta2=float(hp.float("beta_2", 0.999, minimum=0, maximum=1) or 0.999),
        momentum=float(hp.float("momentum", 0.0, minimum=0, maximum=1) or 0.0),
        bias_lr_mult=float(hp.float("bias_lr_mult", 10.0, minimum=0, exclusive_min=True) or 10.0),
        bias_wd_mult=float(hp.float("bias_wd_mult", 0.0, minimum=0) or 0.0),
        scaler_points=int(hp.int("num_point_for_scaler", 10000, minimum=1) or 10000),
        seed=int(hp.int("seed", 0) or 0),
        # SageMaker's default is on, with "auto" step/factor/minimum: step = one epoch's updates
        # (set in train() once the data size is known), factor 0.99, minimum 1e-5
        lr_step=hp.int("lr_scheduler_step", 0, minimum=1) if hp.bool("use_lr_scheduler", True) else None,
        lr_factor=float(
            hp.float("lr_scheduler_factor", 0.99, minimum=0, maximum=1, exclusive_min=True) or 0.99
        ),
        lr_min=float(hp.float("lr_scheduler_minimum_lr", 1e-5, minimum=0, exclusive_min=True) or 1e-5),
        margin=float(hp.float("margin", 1.0, minimum=0) or 0.0),
        quantile=float(hp.float("quantile", 0.5, minimum=0, maximum=1, exclusive_min=True) or 0.5),
        insensitivity=float(hp.float("loss_insensitivity", 0.01, minimum=0) or 0.0),
        huber_delta=float(hp.float("huber_delta", 1.0, minimum=0, exclusive_min=True) or 1.0),
    )


# -- maths --------------------------------------------------------------------------------------
def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Model:
    """Weights in the standardised space plus the scaling that maps them back to raw features."""

    def __init__(self, cfg: Config, dim: int) -> None:
        self.cfg = cfg
        self.k = cfg.num_classes if cfg.task == "multiclass_classification" else 1
        self.W = np.zeros((dim, self.k))
        self.b = np.zeros(self.k)
        self.mean = np.zeros(dim)
        self.std = np.ones(dim)
        self.y_mean = 0.0
        self.y_std = 1.0

    def margin(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.std) @ self.W + self.b

    def predict_scores(self, X: np.ndarray) -> np.ndarray:
        """binary: P(1) [N]; multiclass: probabilities [N, C]; regressor: value [N]."""
        m = self.margin(X)
        if self.cfg.task == "binary_classification":
            return _sigmoid(m[:, 0])
        if self.cfg.task == "multiclass_classification":
            return _softmax(m)
        return m[:, 0] * self.y_std + self.y_mean

    def raw_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """Weights/bias for raw features and raw labels (scaling folded in)."""
        W = self.W / self.std[:, None]
        b = self.b - (self.mean / self.std) @ self.W
        if self.cfg.task == "regression":
            W, b = W * self.y_std, b * self.y_std + self.y_mean
        return W, b

    def load_raw(self, W: np.ndarray, b: np.ndarray) -> None:
        """Initialise from raw-space weights (incremental training) under the current scaling."""
        if self.cfg.task == "regression":
            W, b = W / self.y_std, (b - self.y_mean) / self.y_std
        if W.shape != self.W.shape:
            raise UserError(
                f"channel 'model': previous model has weights of shape {list(W.shape)}, this job needs "
                f"{list(self.W.shape)}"
            )
        self.W = W * self.std[:, None]
        self.b = b + (self.mean / self.std) @ W


def _loss(cfg: Config, model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    m = model.margin(X)
    if cfg.task == "binary_classification" and cfg.loss == "hinge_loss":
        per = np.maximum(0.0, cfg.margin - (2 * y - 1) * m[:, 0])
    elif cfg.task == "binary_classification":
        p = np.clip(_sigmoid(m[:, 0]), 1e-12, 1 - 1e-12)
        per = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    elif cfg.task == "multiclass_classification":
        P = np.clip(_softmax(m), 1e-12, 1.0)
        per = -np.log(P[np.arange(len(y)), y.astype(int)])
    else:
        per = _regression_loss(cfg, m[:, 0] - (y - model.y_mean) / model.y_std)[0]
    return float(np.sum(per * w) / max(np.sum(w), 1e-12))


def _regression_loss(cfg: Config, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss, d loss / d prediction) of the residuals ``d`` = prediction − label (in normalised units)."""
    a = np.abs(d)
    if cfg.loss == "squared_loss":
        return d * d, 2 * d
    if cfg.loss == "absolute_loss":
        return a, np.sign(d)
    if cfg.loss == "eps_insensitive_squared_loss":
        over = np.maximum(a - cfg.insensitivity, 0.0)
        return over * over, 2 * over * np.sign(d)
    if cfg.loss == "eps_insensitive_absolute_loss":
        over = np.maximum(a - cfg.insensitivity, 0.0)
        return over, np.sign(d) * (over > 0)
    if cfg.loss == "quantile_loss":  # the pinball loss of quantile q: under-prediction costs q
        q = cfg.quantile
        return np.where(d < 0, -q * d, (1 - q) * d), np.where(d < 0, -q, 1 - q)
    delta = cfg.huber_delta  # huber_loss
    inside = a <= delta
    return np.where(inside, 0.5 * d * d, delta * (a - 0.5 * delta)), np.where(inside, d, delta * np.sign(d))


def _grad(
    cfg: Config, model: Model, Xn: np.ndarray, y: np.ndarray, w: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    m = Xn @ model.W + model.b
    if cfg.task == "binary_classification" and cfg.loss == "hinge_loss":
        signed = 2 * y - 1
        r = (-signed * (signed * m[:, 0] < cfg.margin))[:, None]
    elif cfg.task == "binary_classification":
        r = (_sigmoid(m[:, 0]) - y)[:, None]
    elif cfg.task == "multiclass_classification":
        r = _softmax(m)
        r[np.arange(len(y)), y.astype(int)] -= 1.0
    else:
        r = _regression_loss(cfg, m[:, 0] - y)[1][:, None]
    r = r * w[:, None]
    norm = max(float(np.sum(w)), 1e-12)
    return Xn.T @ r / norm, r.sum(axis=0) / norm


class Optimizer:
    """adam / sgd (with momentum) / adagrad / rmsprop on (W, b)."""

    def __init__(self, cfg: Config, model: Model) -> None:
        self.cfg = cfg
        self.t = 0
        self.state = {
            name: [np.zeros_like(getattr(model, name)), np.zeros_like(getattr(model, name))]
            for name in ("W", "b")
        }

    def step(self, model: Model, gW: np.ndarray, gb: np.ndarray) -> None:
        cfg = self.cfg
        self.t += 1
        gW = gW + cfg.wd * model.W
        gb = gb + cfg.wd * cfg.bias_wd_mult * model.b
        base = cfg.lr
        if cfg.lr_step:  # the scheduler: lr × factor every lr_step updates, never below the minimum
            base = max(cfg.lr * cfg.lr_factor ** ((self.t - 1) // cfg.lr_step), min(cfg.lr_min, cfg.lr))
        for name, g, lr in (("W", gW, base), ("b", gb, base * cfg.bias_lr_mult)):
            if name == "b" and not cfg.use_bias:
                continue
            s0, s1 = self.state[name]
            if cfg.optimizer == "adam":
                s0 *= cfg.beta1
                s0 += (1 - cfg.beta1) * g
                s1 *= cfg.beta2
                s1 += (1 - cfg.beta2) * g * g
                mhat = s0 / (1 - cfg.beta1**self.t)
                vhat = s1 / (1 - cfg.beta2**self.t)
                update = lr * mhat / (np.sqrt(vhat) + 1e-8)
            elif cfg.optimizer == "adagrad":
                s1 += g * g
                update = lr * g / (np.sqrt(s1) + 1e-8)
            elif cfg.optimizer == "rmsprop":
                s1 *= 0.9
                s1 += 0.1 * g * g
                update = lr * g / (np.sqrt(s1) + 1e-8)
            else:
                s0 *= cfg.momentum
                s0 += g
                update = lr * s0
            value = getattr(model, name) - update
            if name == "W" and cfg.l1 > 0:  # proximal step for L1
                value = np.sign(value) * np.maximum(np.abs(value) - lr * cfg.l1, 0.0)
            setattr(model, name, value)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "opt_W0": self.state["W"][0],
            "opt_W1": self.state["W"][1],
            "opt_b0": self.state["b"][0],
            "opt_b1": self.state["b"][1],
            "opt_t": np.array(self.t),
        }

    def load(self, arrays: Any) -> None:
        self.state = {"W": [arrays["opt_W0"], arrays["opt_W1"]], "b": [arrays["opt_b0"], arrays["opt_b1"]]}
        self.t = int(arrays["opt_t"])


def _weights(cfg: Config, y: np.ndarray) -> np.ndarray:
    w = np.ones(len(y))
    if cfg.task == "binary_classification":
        mult = cfg.pos_weight
        if mult == "balanced":
            pos = max(float(np.sum(y == 1)), 1.0)
            mult = float(np.sum(y == 0)) / pos
        w[y == 1] *= float(mult)
    elif cfg.task == "multiclass_classification" and cfg.balance:
        counts = np.bincount(y.astype(int), minlength=cfg.num_classes).astype(float)
        cw = len(y) / (cfg.num_classes * np.maximum(counts, 1.0))
        w = cw[y.astype(int)]
    return w


# -- threshold selection ------------------------------------------------------------------------
def choose_threshold(cfg: Config, scores: np.ndarray, y: np.ndarray) -> float:
    """Pick the binary decision threshold by the model-selection criterion."""
    if cfg.criterion in ("loss_function", "cross_entropy_loss"):
        return 0.5
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], y[order]
    tp = np.cumsum(t == 1)
    fp = np.cumsum(t == 0)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # threshold candidates: each distinct score
    tp, fp, thr = tp[last], fp[last], s[last]
    pos, n = float(np.sum(y == 1)), float(len(y))
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / max(pos, 1.0)
    if cfg.criterion == "accuracy":
        objective = (tp + (n - pos - fp)) / n
    elif cfg.criterion == "f_beta":
        b2 = cfg.f_beta**2
        objective = (1 + b2) * precision * recall / np.maximum(b2 * precision + recall, 1e-12)
    elif cfg.criterion == "precision_at_target_recall":
        objective = np.where(recall >= cfg.target_recall, precision, -1.0)
    else:
        objective = np.where(precision >= cfg.target_precision, recall, -1.0)
    if objective.max() < 0:
        return 0.5
    return float(thr[int(np.argmax(objective))])


def _quality(cfg: Config, model: Model, ds: Dataset, threshold: float) -> dict[str, float]:
    scores = model.predict_scores(ds.dense)
    y = ds.y
    if cfg.task == "binary_classification":
        pred = (scores >= threshold).astype(float)
        tp = float(np.sum((pred == 1) & (y == 1)))
        fp = float(np.sum((pred == 1) & (y == 0)))
        fn = float(np.sum((pred == 0) & (y == 1)))
        precision = tp / max(tp + fp, 1.0)
        recall = tp / max(tp + fn, 1.0)
        return {
            "binary_classification_accuracy": float(np.mean(pred == y)),
            "precision": precision,
            "recall": recall,
            "binary_f_beta": 2 * precision * recall / max(precision + recall, 1e-12),
        }
    if cfg.task == "multiclass_classification":
        return {"multiclass_accuracy": float(np.mean(scores.argmax(axis=1) == y))}
    err = scores - y
    return {
        "mse": float(np.mean(err**2)),
        "absolute_loss": float(np.mean(np.abs(err))),
        "r2": float(1 - np.sum(err**2) / max(float(np.sum((y - y.mean()) ** 2)), 1e-12)),
    }


def _objective_name(cfg: Config) -> str:
    if cfg.loss == "hinge_loss":
        return "hinge_loss_objective"
    return {
        "binary_classification": "binary_classification_cross_entropy_objective",
        "multiclass_classification": "multiclass_cross_entropy_objective",
    }.get(cfg.task, f"{cfg.loss}_objective")


# -- training -----------------------------------------------------------------------------------
def _check(cfg: Config, ds: Dataset, name: str) -> None:
    y = ds.y
    if cfg.task == "binary_classification":
        bad = np.setdiff1d(np.unique(y), [0.0, 1.0])
        if bad.size:
            raise UserError(
                f"channel {name!r}: predictor_type=binary_classifier needs labels 0 or 1, found "
                f"{bad[:5].tolist()}"
            )
    elif cfg.task == "multiclass_classification":
        bad = y[(y < 0) | (y >= cfg.num_classes) | (y != np.round(y))]
        if bad.size:
            raise UserError(
                f"channel {name!r}: labels must be integers in [0, num_classes={cfg.num_classes}), "
                f"found {bad[:5].tolist()}"
            )
    if not np.isfinite(ds.dense).all():
        row = int(np.flatnonzero(~np.isfinite(ds.dense).all(axis=1))[0])
        raise UserError(f"channel {name!r}: record {row + 1} has an empty or non-finite feature value")


def train(env: TrainingEnvironment) -> None:
    """Train, checkpoint each epoch, select the threshold, export ONNX."""
    hp = Hyperparameters(env.hyperparameters)
    cfg = parse(hp)
    if "train" not in env.input_data_config:
        raise UserError("channel 'train' is required")
    host = env.current_host
    train_ds = read_channel(env, "train", default="recordio", feature_dim=cfg.feature_dim)
    valid_ds = (
        read_channel(env, "validation", default="recordio", feature_dim=cfg.feature_dim)
        if "validation" in env.input_data_config
        else None
    )
    test_ds = (
        read_channel(env, "test", default="recordio", feature_dim=cfg.feature_dim)
        if "test" in env.input_data_config
        else None
    )
    X = train_ds.dense.astype(np.float64)
    dim = X.shape[1]
    if cfg.feature_dim is not None and cfg.feature_dim != dim:
        raise HyperparameterError(
            "feature_dim", f"is {cfg.feature_dim} but channel 'train' has {dim} feature columns"
        )
    for name, ds in (("train", train_ds), ("validation", valid_ds), ("test", test_ds)):
        if ds is not None:
            if ds.dense.shape[1] != dim:
                raise UserError(
                    f"channel {name!r} has {ds.dense.shape[1]} feature columns, channel 'train' has {dim}"
                )
            _check(cfg, ds, name)
    y = train_ds.y.astype(np.float64)
    rng = np.random.default_rng(cfg.seed)

    model = Model(cfg, dim)
    sample = X[rng.choice(len(X), size=min(cfg.scaler_points, len(X)), replace=False)]
    if cfg.normalize_data:
        model.mean = sample.mean(axis=0) if cfg.use_bias else np.zeros(dim)
        std = sample.std(axis=0)
        model.std = np.where(std > 1e-12, std, 1.0)
    if cfg.task == "regression" and cfg.normalize_label:
        model.y_mean = float(y.mean()) if cfg.use_bias else 0.0
        model.y_std = float(y.std()) or 1.0
    previous = previous_model_file(env, (MODEL_FILE,))
    if previous is not None:
        arrays = np.load(io.BytesIO(previous))
        model.load_raw(arrays["W"].astype(np.float64), arrays["b"].astype(np.float64))
        say("Incremental training: starting from the weights of the previous model")
    if cfg.lr_step == 0:  # use_lr_scheduler with an "auto" step: one epoch's updates
        cfg.lr_step = max(1, -(-len(X) // cfg.batch))
    opt = Optimizer(cfg, model)
    weights = _weights(cfg, y)
    yn = (y - model.y_mean) / model.y_std if cfg.task == "regression" else y
    Xn = (X - model.mean) / model.std

    start_epoch, best_loss, best, bad_epochs = 0, np.inf, None, 0
    ckpt = env.checkpoint_dir / CHECKPOINT_FILE
    if ckpt.is_file():
        state = np.load(ckpt)
        model.W, model.b = state["W"], state["b"]
        model.mean, model.std, model.y_mean, model.y_std = (
            state["mean"],
            state["std"],
            float(state["y_mean"]),
            float(state["y_std"]),
        )
        opt.load(state)
        start_epoch = int(state["epoch"]) + 1
        best_loss, bad_epochs = float(state["best_loss"]), int(state["bad_epochs"])
        best = (state["best_W"], state["best_b"]) if np.isfinite(best_loss) else None
        Xn = (X - model.mean) / model.std
        yn = (y - model.y_mean) / model.y_std if cfg.task == "regression" else y
        say(f"Resuming from checkpoint: epoch {start_epoch} of {cfg.epochs}")

    objective = _objective_name(cfg)
    n = len(Xn)
    for epoch in range(start_epoch, cfg.epochs):
        order = rng.permutation(n) if epoch == start_epoch else rng.permutation(n)
        for lo in range(0, n, cfg.batch):
            idx = order[lo : lo + cfg.batch]
            gW, gb = _grad(cfg, model, Xn[idx], yn[idx], weights[idx])
            opt.step(model, gW, gb)
        train_loss = _loss(cfg, model, X, y, weights)
        say(f"#quality_metric: host={host}, epoch={epoch}, train {objective} <loss>={train_loss:.6f}")
        stop = False
        if valid_ds is not None:
            vy = valid_ds.y.astype(np.float64)
            val_loss = _loss(cfg, model, valid_ds.dense.astype(np.float64), vy, np.ones(len(vy)))
            say(f"#quality_metric: host={host}, epoch={epoch}, validation {objective} <loss>={val_loss:.6f}")
            if val_loss < best_loss - cfg.tolerance * abs(best_loss if np.isfinite(best_loss) else 0.0):
                best_loss, best, bad_epochs = val_loss, (model.W.copy(), model.b.copy()), 0
            else:
                bad_epochs += 1
                if bad_epochs >= cfg.patience:
                    say(f"Early stopping: validation loss did not improve for {bad_epochs} epochs")
                    stop = True
        if env.is_master:
            buf = io.BytesIO()
            checkpoint: dict[str, Any] = {
                "W": model.W,
                "b": model.b,
                "mean": model.mean,
                "std": model.std,
                "y_mean": model.y_mean,
                "y_std": model.y_std,
                "epoch": epoch,
                "best_loss": best_loss,
                "bad_epochs": bad_epochs,
                "best_W": best[0] if best else model.W,
                "best_b": best[1] if best else model.b,
                **opt.arrays(),
            }
            np.savez(buf, **checkpoint)
            atomic_write(ckpt, buf.getvalue())
        if stop:
            break
    if best is not None:
        model.W, model.b = best

    threshold = 0.5
    if cfg.task == "binary_classification":
        sel = valid_ds if valid_ds is not None else train_ds
        threshold = choose_threshold(cfg, model.predict_scores(sel.dense.astype(np.float64)), sel.y)
        say(f"Selected threshold {threshold:.6f} by {cfg.criterion}")
    for name, ds in (("train", train_ds), ("validation", valid_ds), ("test", test_ds)):
        if ds is None:
            continue
        for metric, value in _quality(cfg, model, ds, threshold).items():
            say(f"#quality_metric: host={host}, {name} {metric} <score>={value:.6f}")
    if env.is_master:
        export(env, model, threshold)


def export(env: TrainingEnvironment, model: Model, threshold: float) -> None:
    """Write ``linear-learner.npz`` (raw-space weights), ``model.onnx`` and ``signature.json``."""
    cfg = model.cfg
    W, b = model.raw_weights()
    buf = io.BytesIO()
    np.savez(buf, W=W, b=b, threshold=threshold, predictor_type=cfg.predictor_type)
    (env.model_dir / MODEL_FILE).write_bytes(buf.getvalue())
    save(linear_to_onnx(W, b, cfg.task, threshold), env.model_dir)
    classes = list(range(cfg.num_classes)) if cfg.task != "regression" else None
    write_signature(
        env.model_dir,
        framework="linear-learner",
        task=cfg.task,
        n_features=W.shape[0],
        response_format="linear-learner",
        classes=classes,
        threshold=threshold if cfg.task == "binary_classification" else None,
        extra={"predictor_type": cfg.predictor_type},
    )
    say(f"Saved {MODEL_FILE}, model.onnx and signature.json to {env.model_dir}")

"""Built-in PCA: principal components by SVD in numpy, exported to ONNX as ``(x − mean) @ components``.

Input is ``application/x-recordio-protobuf`` (labels, if any, ignored) or CSV without a label column.
``algorithm_mode=regular`` takes the exact thin SVD of the (mean-subtracted, with ``subtract_mean``)
data; ``randomized`` a seeded randomized SVD (Halko et al.) with ``extra_components`` oversampling
columns (default max(10, num_components)) and two power iterations. Each component's sign is fixed so
its largest-magnitude entry is positive (runs are reproducible). ``mini_batch_size`` is accepted and
has no effect (the whole channel is decomposed at once).
"""

from __future__ import annotations

import io

import numpy as np

from common.onnx_export import pca_to_onnx, save, write_signature
from training.data import read_channel
from training.environment import TrainingEnvironment, say
from training.errors import HyperparameterError, UserError
from training.hyperparameters import Hyperparameters

MODEL_FILE = "pca.npz"
MODES = ("regular", "randomized")
IMPLEMENTED = {"num_components", "feature_dim", "algorithm_mode", "subtract_mean", "extra_components"}
#: accepted for compatibility with SageMaker jobs, with no effect here
ACCEPTED = {"mini_batch_size", "_kvstore", "_num_gpus", "_num_kv_servers", "_log_level"}


class Config:
    """Validated hyperparameters."""

    def __init__(self, hp: Hyperparameters) -> None:
        hp.check_known(IMPLEMENTED | ACCEPTED)
        self.feature_dim = int(hp.int("feature_dim", required=True, minimum=1) or 1)
        self.num_components = int(
            hp.int("num_components", required=True, minimum=1, maximum=self.feature_dim) or 1
        )
        self.mode = str(hp.choice("algorithm_mode", "regular", MODES))
        self.subtract_mean = hp.bool("subtract_mean", True)
        extra = hp.int("extra_components", -1, minimum=-1)
        extra = -1 if extra is None else extra
        if extra == 0:
            raise HyperparameterError("extra_components", "must be -1 (auto) or positive")
        self.extra = max(10, self.num_components) if extra < 0 else extra
        hp.int("mini_batch_size", 500, minimum=1)


def _fix_signs(V: np.ndarray) -> np.ndarray:
    """Flip each column of V [D, n] so its largest-magnitude entry is positive."""
    rows = np.abs(V).argmax(axis=0)
    signs = np.sign(V[rows, np.arange(V.shape[1])])
    return V * np.where(signs == 0, 1.0, signs)


def components(X: np.ndarray, n: int, mode: str, extra: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The top ``n`` right singular vectors of X as columns [D, n] and their singular values [n]."""
    if mode == "regular" or n + extra >= min(X.shape):
        _, s, vt = np.linalg.svd(X, full_matrices=False)
        return _fix_signs(vt[:n].T), s[:n]
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(X @ rng.normal(size=(X.shape[1], n + extra)))
    for _ in range(2):  # power iterations sharpen the spectrum's top
        Q, _ = np.linalg.qr(X.T @ Q)
        Q, _ = np.linalg.qr(X @ Q)
    _, s, vt = np.linalg.svd(Q.T @ X, full_matrices=False)
    return _fix_signs(vt[:n].T), s[:n]


def train(env: TrainingEnvironment) -> None:
    """Decompose the ``train`` channel, export ``model.onnx``."""
    cfg = Config(Hyperparameters(env.hyperparameters))
    if "train" not in env.input_data_config:
        raise UserError("channel 'train' is required")
    ds = read_channel(env, "train", default="recordio", feature_dim=cfg.feature_dim, labelled=False)
    X = ds.dense.astype(np.float64)
    if X.shape[1] != cfg.feature_dim:
        raise HyperparameterError(
            "feature_dim", f"is {cfg.feature_dim} but channel 'train' has {X.shape[1]} columns"
        )
    if not np.isfinite(X).all():
        row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise UserError(f"channel 'train': record {row + 1} has an empty or non-finite feature value")
    if len(X) < 2:
        raise UserError("channel 'train' needs at least 2 records")
    mean = X.mean(axis=0) if cfg.subtract_mean else np.zeros(X.shape[1])
    V, s = components(X - mean, cfg.num_components, cfg.mode, cfg.extra)
    total = float(np.sum((X - mean) ** 2))
    ratio = float(np.sum(s**2) / total) if total > 0 else 1.0
    say(f"PCA ({cfg.mode}): {cfg.num_components} components explain {ratio:.6f} of the variance")
    if env.is_master:
        export(env, mean, V, s)


def export(env: TrainingEnvironment, mean: np.ndarray, V: np.ndarray, s: np.ndarray) -> None:
    """Write ``pca.npz`` (mean [D], components [D, n], singular values [n]), ``model.onnx`` and
    ``signature.json``."""
    buf = io.BytesIO()
    np.savez(buf, mean=mean.astype(np.float32), components=V.astype(np.float32), singular_values=s)
    (env.model_dir / MODEL_FILE).write_bytes(buf.getvalue())
    save(pca_to_onnx(mean, V), env.model_dir)
    write_signature(
        env.model_dir,
        framework="pca",
        task="dimensionality_reduction",
        n_features=int(V.shape[0]),
        response_format="pca",
        extra={"num_components": int(V.shape[1])},
    )
    say(f"Saved {MODEL_FILE}, model.onnx and signature.json to {env.model_dir}")

"""Built-in KMeans: Lloyd's k-means in numpy, seeded with random or k-means++ centers, exported to ONNX.

Input is ``application/x-recordio-protobuf`` (what the SDK's ``record_set()`` writes; labels, if any, are
ignored) or CSV without a label column (every column is a feature). The stages follow SageMaker's:

1. ``k × extra_center_factor`` candidate centers seeded by ``init_method`` (random rows or k-means++)
   and moved by ``epochs`` Lloyd passes over the whole channel (SageMaker streams mini-batches here);
2. the candidates, weighted by how many records each holds, reduced to ``k`` by a weighted local
   Lloyd's (``local_lloyd_init_method`` seeding, ``local_lloyd_max_iter``, ``local_lloyd_tol``), the
   best of ``local_lloyd_num_trials`` by weighted sum of squared distances;
3. those ``k`` centers refined by Lloyd's iterations on the whole channel.

``mini_batch_size`` and ``half_life_time_size`` tune SageMaker's streaming pass and have no effect
(docs/training.md). Everything is seeded: the same data and hyperparameters give the same centers.
Metric lines follow SageMaker's ``#quality_metric: host=algo-1, test msd <loss>=1.2`` format for each
of ``eval_metrics`` (msd: mean squared distance to the closest center, ssd: their sum) on the train and
test channels.
"""

from __future__ import annotations

import io

import numpy as np

from common.onnx_export import kmeans_to_onnx, save, write_signature
from training.data import Dataset, read_channel
from training.environment import TrainingEnvironment, say
from training.errors import HyperparameterError, UserError
from training.hyperparameters import Hyperparameters

MODEL_FILE = "kmeans.npz"
INIT_METHODS = ("random", "kmeans++")
EVAL_METRICS = ("msd", "ssd")
IMPLEMENTED = {
    "k",
    "feature_dim",
    "epochs",
    "extra_center_factor",
    "center_factor",
    "init_method",
    "local_lloyd_init_method",
    "local_lloyd_max_iter",
    "local_lloyd_tol",
    "local_lloyd_num_trials",
    "eval_metrics",
}
#: accepted for compatibility with SageMaker jobs, with no effect: they tune SageMaker's streaming
#: mini-batch pass (and its GPU/kvstore plumbing), which this implementation does not have
ACCEPTED = {
    "mini_batch_size",
    "half_life_time_size",
    "force_dense",
    "_kvstore",
    "_num_gpus",
    "_num_kv_servers",
    "_log_level",
    "_enable_profiler",
}


class Config:
    """Validated hyperparameters."""

    def __init__(self, hp: Hyperparameters) -> None:
        hp.check_known(IMPLEMENTED | ACCEPTED)
        self.k = int(hp.int("k", required=True, minimum=2) or 2)
        self.feature_dim = int(hp.int("feature_dim", required=True, minimum=1) or 1)
        self.init_method = str(hp.choice("init_method", "random", INIT_METHODS))
        # the seeding of each local Lloyd trial; SageMaker's default is kmeans++
        self.local_init = str(hp.choice("local_lloyd_init_method", "kmeans++", INIT_METHODS))
        self.max_iter = int(hp.int("local_lloyd_max_iter", 300, minimum=1) or 300)
        self.tol = float(hp.float("local_lloyd_tol", 0.0001, minimum=0) or 0.0)
        self.trials = int(hp.int("local_lloyd_num_trials", 1, minimum=1) or 1)
        self.epochs = int(hp.int("epochs", 1, minimum=1) or 1)
        # "auto": SageMaker picks it from k; ~ceil(log2 k) + 2 keeps the candidate set small but varied
        factor = hp.int("extra_center_factor", None, minimum=1) or hp.int("center_factor", None, minimum=1)
        self.extra_center_factor = int(factor or int(np.ceil(np.log2(self.k))) + 2)
        self.eval_metrics = parse_metrics(hp.string("eval_metrics", '["msd"]') or '["msd"]')
        # validated like SageMaker does though they change nothing here
        hp.int("mini_batch_size", 5000, minimum=1)
        hp.int("half_life_time_size", 0, minimum=0)
        hp.bool("force_dense", True)


def parse_metrics(text: str) -> list[str]:
    """``eval_metrics`` as the SDK sends it (``['msd', 'ssd']``) or as JSON (``["msd"]``) or ``msd,ssd``."""
    names = [part.strip().strip("'\"").lower() for part in text.strip().strip("[]").split(",")]
    names = [n for n in names if n]
    if not names:
        raise HyperparameterError("eval_metrics", "lists no metric (msd, ssd)")
    for name in names:
        if name not in EVAL_METRICS:
            raise HyperparameterError("eval_metrics", f"{name!r} is not one of msd, ssd")
    return list(dict.fromkeys(names))


def squared_distances(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[N, k] squared Euclidean distances, computed blockwise so memory stays ≈ 8 MB × D."""
    out = np.empty((len(X), len(centers)))
    step = max(1, 1_000_000 // max(1, len(centers)))
    for lo in range(0, len(X), step):
        diff = X[lo : lo + step, None, :] - centers[None, :, :]
        out[lo : lo + step] = np.einsum("nkd,nkd->nk", diff, diff)
    return out


def seed_centers(
    X: np.ndarray, k: int, method: str, rng: np.random.Generator, weights: np.ndarray | None = None
) -> np.ndarray:
    """``random``: k distinct rows (drawn by weight); ``kmeans++``: D² × weight sampling (Arthur &
    Vassilvitskii)."""
    w = np.ones(len(X)) if weights is None else weights.astype(np.float64)
    if method == "random":
        return X[rng.choice(len(X), size=k, replace=False, p=w / w.sum())].copy()
    centers = [X[int(rng.choice(len(X), p=w / w.sum()))]]
    closest = squared_distances(X, np.asarray(centers))[:, 0]
    for _ in range(1, k):
        score = closest * w
        total = float(score.sum())
        index = int(rng.choice(len(X), p=score / total)) if total > 0 else int(rng.integers(len(X)))
        centers.append(X[index])
        closest = np.minimum(closest, squared_distances(X, X[index : index + 1])[:, 0])
    return np.asarray(centers)


def lloyd(
    X: np.ndarray, centers: np.ndarray, max_iter: int, tol: float, weights: np.ndarray | None = None
) -> tuple[np.ndarray, float]:
    """(Weighted) Lloyd's iterations until the sum of squared distances improves by less than ``tol``
    (relative); an emptied cluster takes the point farthest from its center. Returns (centers, ssd)."""
    w = np.ones(len(X)) if weights is None else weights.astype(np.float64)
    previous = np.inf
    ssd = np.inf
    for _ in range(max_iter):
        d2 = squared_distances(X, centers)
        nearest = d2.argmin(axis=1)
        best = d2[np.arange(len(X)), nearest] * w
        ssd = float(best.sum())
        counts = np.bincount(nearest, weights=w, minlength=len(centers))
        sums = np.zeros_like(centers)
        np.add.at(sums, nearest, X * w[:, None])
        moved = centers.copy()
        filled = counts > 0
        moved[filled] = sums[filled] / counts[filled, None]
        for empty in np.flatnonzero(~filled):
            far = int(best.argmax())
            moved[empty] = X[far]
            best[far] = 0.0
        centers = moved
        if previous - ssd <= tol * max(ssd, 1e-12):
            break
        previous = ssd
    d2 = squared_distances(X, centers)
    return centers, float((d2.min(axis=1) * w).sum())


def cluster(X: np.ndarray, cfg: Config) -> np.ndarray:
    """The three stages of the module docstring; the ``k`` centers [k, D]."""
    rng = np.random.default_rng(0)
    m = min(len(X), cfg.k * cfg.extra_center_factor)
    candidates, _ = lloyd(X, seed_centers(X, m, cfg.init_method, rng), cfg.epochs, 0.0)
    weights = np.bincount(squared_distances(X, candidates).argmin(axis=1), minlength=m).astype(np.float64)
    if np.count_nonzero(weights) < cfg.k:  # duplicate rows: too few distinct candidates, use the records
        candidates, weights = X, np.ones(len(X))
    candidates, weights = candidates[weights > 0], weights[weights > 0]
    say(f"{len(candidates)} candidate centers after {cfg.epochs} pass(es) ({cfg.init_method} seeding)")
    best: tuple[np.ndarray, float] | None = None
    for trial in range(cfg.trials):
        seeds = seed_centers(candidates, cfg.k, cfg.local_init, rng, weights)
        centers, ssd = lloyd(candidates, seeds, cfg.max_iter, cfg.tol, weights)
        say(f"Local Lloyd trial {trial + 1}/{cfg.trials} ({cfg.local_init}): weighted ssd={ssd:.6f}")
        if best is None or ssd < best[1]:
            best = (centers, ssd)
    assert best is not None
    centers, ssd = lloyd(X, best[0], cfg.max_iter, cfg.tol)
    say(f"Refined on all {len(X)} records: ssd={ssd:.6f}")
    return centers


def _metrics(X: np.ndarray, centers: np.ndarray) -> dict[str, float]:
    closest = squared_distances(X, centers).min(axis=1)
    return {"msd": float(closest.mean()), "ssd": float(closest.sum())}


def _check(ds: Dataset, name: str, dim: int) -> np.ndarray:
    X = ds.dense.astype(np.float64)
    if X.shape[1] != dim:
        raise UserError(f"channel {name!r} has {X.shape[1]} feature columns, feature_dim is {dim}")
    if not np.isfinite(X).all():
        row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise UserError(f"channel {name!r}: record {row + 1} has an empty or non-finite feature value")
    return X


def train(env: TrainingEnvironment) -> None:
    """Cluster the ``train`` channel, print the metric lines, export ``model.onnx``."""
    cfg = Config(Hyperparameters(env.hyperparameters))
    if "train" not in env.input_data_config:
        raise UserError("channel 'train' is required")
    train_ds = read_channel(env, "train", default="recordio", feature_dim=cfg.feature_dim, labelled=False)
    if train_ds.dense.shape[1] != cfg.feature_dim:
        raise HyperparameterError(
            "feature_dim", f"is {cfg.feature_dim} but channel 'train' has {train_ds.dense.shape[1]} columns"
        )
    X = _check(train_ds, "train", cfg.feature_dim)
    if len(X) < cfg.k:
        raise HyperparameterError("k", f"is {cfg.k} but channel 'train' has only {len(X)} records")
    test_X = None
    if "test" in env.input_data_config:
        test_ds = read_channel(env, "test", default="recordio", feature_dim=cfg.feature_dim, labelled=False)
        test_X = _check(test_ds, "test", cfg.feature_dim)
    centers = cluster(X, cfg)
    host = env.current_host
    for channel, data in (("train", X), ("test", test_X)):
        if data is None:
            continue
        values = _metrics(data, centers)
        for metric in cfg.eval_metrics:
            say(f"#quality_metric: host={host}, {channel} {metric} <loss>={values[metric]:.6f}")
    if env.is_master:
        export(env, centers)


def export(env: TrainingEnvironment, centers: np.ndarray) -> None:
    """Write ``kmeans.npz`` (the centers, float32 [k, D]), ``model.onnx`` and ``signature.json``."""
    buf = io.BytesIO()
    np.savez(buf, centers=centers.astype(np.float32))
    (env.model_dir / MODEL_FILE).write_bytes(buf.getvalue())
    save(kmeans_to_onnx(centers), env.model_dir)
    write_signature(
        env.model_dir,
        framework="kmeans",
        task="clustering",
        n_features=int(centers.shape[1]),
        response_format="kmeans",
        extra={"k": int(centers.shape[0])},
    )
    say(f"Saved {MODEL_FILE}, model.onnx and signature.json to {env.model_dir}")

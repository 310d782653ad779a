"""Built-in XGBoost (SageMaker algorithm mode): CSV/libsvm/Parquet in, ``xgboost-model`` + ONNX out.

Hyperparameters follow SageMaker's XGBoost algorithm; metric lines are printed like its container
(``[3]#011train-rmse:0.12#011validation-rmse:0.15``) so the usual MetricDefinitions regexes work.
Checkpoints ``xgboost-checkpoint.<round>`` go to the checkpoint dir each round (last 5 kept) and a
restart resumes from the newest; a ``model`` channel with a previous model continues training from it.
With several hosts, training runs over xgboost's collective (rabit tracker on the first host).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import numpy as np

from common.onnx_export import export_xgboost
from training.algorithms.common import atomic_write, numbered_files, previous_model_file
from training.data import Dataset, read_channel
from training.environment import TrainingEnvironment, say
from training.errors import HyperparameterError, UserError
from training.hyperparameters import Hyperparameters

log = logging.getLogger(__name__)

MODEL_FILE = "xgboost-model"
CHECKPOINT_PREFIX = "xgboost-checkpoint."
KEEP_CHECKPOINTS = 5

OBJECTIVES = (
    "reg:squarederror",
    "reg:squaredlogerror",
    "reg:logistic",
    "reg:pseudohubererror",
    "reg:absoluteerror",
    "reg:linear",
    "binary:logistic",
    "binary:logitraw",
    "binary:hinge",
    "count:poisson",
    "reg:gamma",
    "reg:tweedie",
    "multi:softmax",
    "multi:softprob",
)
KNOWN = {
    "num_round",
    "objective",
    "eval_metric",
    "max_depth",
    "eta",
    "gamma",
    "alpha",
    "lambda",
    "subsample",
    "colsample_bytree",
    "colsample_bylevel",
    "colsample_bynode",
    "min_child_weight",
    "scale_pos_weight",
    "early_stopping_rounds",
    "tree_method",
    "num_class",
    "base_score",
    "seed",
    "max_delta_step",
    "max_bin",
    "grow_policy",
    "max_leaves",
    "csv_weights",
    "booster",
    "nthread",
    "verbosity",
    "silent",
    "sketch_eps",
    "lambda_bias",
    "tweedie_variance_power",
    "num_parallel_tree",
    "save_model_on_termination",
    "sampling_method",
    "single_precision_histogram",
    "deterministic_histogram",
    "interaction_constraints",
    "monotone_constraints",
    "refresh_leaf",
    "process_type",
    "updater",
    "max_cat_to_onehot",
    "feature_dim",
    # accepted with no effect: DART's settings (booster=dart is refused: its trees do not export to ONNX)
    # and the GPU images' Dask switch (this platform trains on CPU)
    "normalize_type",
    "one_drop",
    "rate_drop",
    "sample_type",
    "skip_drop",
    "use_dask_gpu_training",
}


def build_params(hp: Hyperparameters, n_hosts: int) -> tuple[dict[str, Any], int, int | None]:
    """Validated xgboost params, num_round and early_stopping_rounds."""
    hp.check_known(KNOWN)
    num_round = hp.int("num_round", required=True, minimum=1)
    objective = hp.choice("objective", "reg:squarederror", OBJECTIVES)
    assert objective is not None and num_round is not None
    if objective == "reg:linear":
        objective = "reg:squarederror"
    params: dict[str, Any] = {
        "objective": objective,
        "max_depth": hp.int("max_depth", 6, minimum=0),
        "eta": hp.float("eta", 0.3, minimum=0, maximum=1),
        "gamma": hp.float("gamma", 0.0, minimum=0),
        "alpha": hp.float("alpha", 0.0, minimum=0),
        "lambda": hp.float("lambda", 1.0, minimum=0),
        "subsample": hp.float("subsample", 1.0, minimum=0, maximum=1, exclusive_min=True),
        "colsample_bytree": hp.float("colsample_bytree", 1.0, minimum=0, maximum=1, exclusive_min=True),
        "colsample_bylevel": hp.float("colsample_bylevel", 1.0, minimum=0, maximum=1, exclusive_min=True),
        "colsample_bynode": hp.float("colsample_bynode", 1.0, minimum=0, maximum=1, exclusive_min=True),
        "min_child_weight": hp.float("min_child_weight", 1.0, minimum=0),
        "scale_pos_weight": hp.float("scale_pos_weight", 1.0, minimum=0, exclusive_min=True),
        "max_delta_step": hp.float("max_delta_step", 0.0, minimum=0),
        "tree_method": hp.choice("tree_method", "auto", ("auto", "exact", "approx", "hist")),
        "booster": hp.choice("booster", "gbtree", ("gbtree",)),
        "seed": hp.int("seed", 0),
        "nthread": hp.int("nthread", os.cpu_count() or 1, minimum=1),
        "verbosity": hp.int("verbosity", 1, minimum=0, maximum=3),
        "max_bin": hp.int("max_bin", 256, minimum=2),
        "grow_policy": hp.choice("grow_policy", "depthwise", ("depthwise", "lossguide")),
        "max_leaves": hp.int("max_leaves", 0, minimum=0),
        "num_parallel_tree": hp.int("num_parallel_tree", 1, minimum=1),
    }
    if hp.has("tweedie_variance_power"):
        params["tweedie_variance_power"] = hp.float("tweedie_variance_power", minimum=1, maximum=2)
    if hp.has("base_score"):
        params["base_score"] = hp.float("base_score")
    if objective.startswith("multi:"):
        params["num_class"] = hp.int("num_class", required=True, minimum=2)
    elif hp.has("num_class"):
        raise HyperparameterError("num_class", f"is only valid with a multi:* objective, not {objective}")
    if hp.has("eval_metric"):
        metrics = [m.strip() for m in str(hp.string("eval_metric")).split(",") if m.strip()]
        if not metrics:
            raise HyperparameterError("eval_metric", "is empty")
        params["eval_metric"] = metrics
    # a tuning job's objective (`validation:auc`) is evaluated even when eval_metric does not name it, as
    # SageMaker's XGBoost container does; the objective's metric line is what the tuner reads
    channel, _, tuned = hp.tuning_objective_metric.partition(":")
    if channel in ("train", "validation") and tuned and tuned not in params.get("eval_metric", []):
        params["eval_metric"] = [*params.get("eval_metric", []), tuned]
    if params["tree_method"] == "exact" and n_hosts > 1:
        raise HyperparameterError(
            "tree_method", "'exact' does not support distributed training; use hist or approx"
        )
    early = hp.int("early_stopping_rounds", None, minimum=1)
    return params, num_round, early


def _dmatrix(ds: Dataset) -> Any:
    import xgboost as xgb

    return xgb.DMatrix(ds.X, label=ds.y, weight=ds.weights, missing=np.nan)


class _Reporter:
    """xgboost callback: SageMaker-style metric lines, checkpoints, SIGTERM-safe model saving."""

    def __init__(
        self, env: TrainingEnvironment, checkpoint: bool, terminate: threading.Event | None = None
    ) -> None:
        import xgboost as xgb

        class Callback(xgb.callback.TrainingCallback):
            def after_iteration(
                cb_self, model: Any, epoch: int, evals_log: xgb.callback.TrainingCallback.EvalsLog
            ) -> bool:
                epoch = model.num_boosted_rounds() - 1  # the callback counts from 0 in every train() call
                parts = [f"[{epoch}]"]
                for data, metrics in evals_log.items():
                    for metric, values in metrics.items():
                        parts.append(f"{data}-{metric}:{values[-1]:.5f}")
                say("#011".join(parts))
                if checkpoint:
                    atomic_write(
                        env.checkpoint_dir / f"{CHECKPOINT_PREFIX}{epoch}", bytes(model.save_raw("ubj"))
                    )
                    for _, old in numbered_files(env.checkpoint_dir, CHECKPOINT_PREFIX)[:-KEEP_CHECKPOINTS]:
                        old.unlink(missing_ok=True)
                if terminate is not None and terminate.is_set():
                    say(
                        f"SIGTERM: stopping after round {epoch} and saving the model "
                        "(save_model_on_termination)"
                    )
                    return True
                return False

        self.callback = Callback()


def _booster_from_bytes(data: bytes, params: dict[str, Any]) -> Any:
    import xgboost as xgb

    booster = xgb.Booster(params={"nthread": params["nthread"]})
    try:
        booster.load_model(bytearray(data))
    except xgb.core.XGBoostError as exc:
        raise UserError(f"cannot load the previous xgboost model: {str(exc).splitlines()[0]}") from None
    return booster


def _import_xgboost() -> Any:
    """Import xgboost without its optional scikit-learn wrapper.

    ``import xgboost`` imports scikit-learn when installed (a dev/test dependency; environments built from
    ``.[dev]`` have it), which costs ≈ 1.4 s per job start; the built-in only needs the Booster API, so
    sklearn is hidden for the duration of that import.
    """
    import sys

    if "xgboost" in sys.modules or "sklearn" in sys.modules:
        import xgboost

        return xgboost
    sys.modules["sklearn"] = None  # type: ignore[assignment]
    try:
        import xgboost
    finally:
        del sys.modules["sklearn"]
    return xgboost


def train(env: TrainingEnvironment) -> None:
    """Train, checkpoint and export; raises :class:`UserError` for bad input."""
    xgb = _import_xgboost()

    hosts = sorted(env.hosts)
    hp = Hyperparameters(env.hyperparameters)
    params, num_round, early = build_params(hp, len(hosts))
    csv_weights = hp.int("csv_weights", 0, minimum=0, maximum=1) == 1
    save_on_term = hp.bool("save_model_on_termination", False)
    if "train" not in env.input_data_config:
        raise UserError("channel 'train' is required")
    started = time.perf_counter()
    train_ds = read_channel(env, "train", default="libsvm", csv_weights=csv_weights)
    valid_ds = (
        read_channel(env, "validation", default="libsvm", csv_weights=csv_weights)
        if "validation" in env.input_data_config
        else None
    )
    say(
        f"Read {train_ds.rows} training rows x {train_ds.X.shape[1]} features"
        + (f" and {valid_ds.rows} validation rows" if valid_ds is not None else "")
        + f" in {time.perf_counter() - started:.2f}s"
    )
    objective = params["objective"]
    if objective.startswith("binary:") or objective == "reg:logistic":
        bad = (
            np.setdiff1d(np.unique(train_ds.y), [0.0, 1.0])
            if objective.startswith("binary:")
            else train_ds.y[(train_ds.y < 0) | (train_ds.y > 1)]
        )
        if bad.size:
            raise UserError(
                f"channel 'train': objective {objective} needs labels in {{0, 1}}"
                + (" / [0, 1]" if objective == "reg:logistic" else "")
                + f", found {bad[:5].tolist()}"
            )
    if objective.startswith("multi:"):
        bad = train_ds.y[
            (train_ds.y < 0) | (train_ds.y >= params["num_class"]) | (train_ds.y != np.round(train_ds.y))
        ]
        if bad.size:
            raise UserError(
                f"channel 'train': labels must be integers in [0, num_class={params['num_class']}), "
                f"found {bad[:5].tolist()}"
            )
    n_features = int(train_ds.X.shape[1])
    if valid_ds is not None and valid_ds.X.shape[1] != n_features and isinstance(valid_ds.X, np.ndarray):
        raise UserError(
            f"channel 'validation' has {valid_ds.X.shape[1]} feature columns, channel 'train' has "
            f"{n_features}"
        )

    dtrain = _dmatrix(train_ds)
    evals = [(dtrain, "train")]
    if valid_ds is not None:
        evals.append((_dmatrix(valid_ds), "validation"))
    if early and valid_ds is None:
        raise HyperparameterError("early_stopping_rounds", "needs a 'validation' channel")

    # where to start: the newest checkpoint, else a previous model from the 'model' channel
    start_model = None
    done_rounds = 0
    checkpoints = numbered_files(env.checkpoint_dir, CHECKPOINT_PREFIX)
    if checkpoints:
        last_round, path = checkpoints[-1]
        start_model = _booster_from_bytes(path.read_bytes(), params)
        done_rounds = last_round + 1
        say(
            f"Resuming from checkpoint {path.name}: {done_rounds} rounds done, "
            f"{max(0, num_round - done_rounds)} to go"
        )
        remaining = num_round - done_rounds
    else:
        previous = previous_model_file(env, (MODEL_FILE, "xgboost-model.json", "xgboost-model.ubj"))
        if previous is not None:
            start_model = _booster_from_bytes(previous, params)
            say(
                f"Incremental training: continuing from a model with {start_model.num_boosted_rounds()} "
                "rounds"
            )
        remaining = num_round

    # like SageMaker's container: checkpoints only when the job has a CheckpointConfig (or a checkpoint dir in
    # use)
    checkpointing = env.is_master and (bool(env.checkpoint_config) or bool(checkpoints))
    terminate: threading.Event | None = None
    if save_on_term and len(hosts) == 1:
        import signal

        terminate = threading.Event()
        signal.signal(signal.SIGTERM, lambda _signum, _frame: terminate.set())
    callbacks: list[Any] = [_Reporter(env, checkpoint=checkpointing, terminate=terminate).callback]
    if early:
        callbacks.append(xgb.callback.EarlyStopping(rounds=early, save_best=False, data_name="validation"))

    def fit(rounds: int) -> Any:
        if rounds <= 0:
            return start_model
        try:
            return xgb.train(
                params,
                dtrain,
                num_boost_round=rounds,
                evals=evals,
                verbose_eval=False,
                callbacks=callbacks,
                xgb_model=start_model,
            )
        except xgb.core.XGBoostError as exc:
            raise UserError(f"xgboost: {str(exc).strip().splitlines()[-1][:500]}") from None

    started = time.perf_counter()
    if len(hosts) > 1:
        booster = _train_distributed(env, hosts, fit, remaining)
    else:
        booster = fit(remaining)
    say(f"Trained {max(remaining, 0)} rounds in {time.perf_counter() - started:.2f}s")
    if booster is None:
        raise UserError("nothing to train: num_round is already reached and no model exists")
    if (
        early
        and getattr(booster, "best_iteration", None) is not None
        and booster.num_boosted_rounds() > booster.best_iteration + 1
    ):
        say(
            f"Early stopping: best round {booster.best_iteration}, keeping {booster.best_iteration + 1} "
            "rounds"
        )
        booster = booster[: booster.best_iteration + 1]
    if env.is_master:
        started = time.perf_counter()
        export(env, booster, n_features, params)
        say(f"Exported the model in {time.perf_counter() - started:.2f}s")


def _train_distributed(env: TrainingEnvironment, hosts: list[str], fit: Any, rounds: int) -> Any:
    from xgboost import collective
    from xgboost.tracker import RabitTracker

    master = hosts[0]
    address = env.host_address(master)
    port = int(os.environ.get("SELFMAKER_TRACKER_PORT") or 9099)
    tracker = None
    if env.is_master:
        tracker = RabitTracker(n_workers=len(hosts), host_ip=address, port=port, sortby="task", timeout=300)
        tracker.start()
        waiter = threading.Thread(target=tracker.wait_for, daemon=True)
        waiter.start()
    # workers that come up before the tracker retry their connection (dmlc_retry)
    args: dict[str, int | str] = {
        "dmlc_tracker_uri": address,
        "dmlc_tracker_port": port,
        "dmlc_task_id": env.current_host,
        "dmlc_retry": 10,
        "dmlc_timeout": 300,
    }
    say(f"Distributed training: {env.current_host} of {len(hosts)} hosts, tracker {address}:{port}")
    with collective.CommunicatorContext(**args):
        booster = fit(rounds)
    if tracker is not None:
        waiter.join(timeout=30)
    return booster


def export(env: TrainingEnvironment, booster: Any, n_features: int, params: dict[str, Any]) -> None:
    """Write ``xgboost-model`` (native UBJSON), ``model.onnx`` and ``signature.json``; check ONNX agrees."""
    model_dir = env.model_dir
    (model_dir / MODEL_FILE).write_bytes(bytes(booster.save_raw("ubj")))
    export_xgboost(
        booster,
        model_dir,
        n_features=n_features,
        objective=params["objective"],
        num_class=int(params.get("num_class") or 0),
    )
    say(f"Saved {MODEL_FILE}, model.onnx and signature.json to {model_dir}")


def preload() -> None:
    """Import what a job of this built-in imports (a warm pool's standby interpreter calls it ahead of the
    job): xgboost (without scikit-learn), pyarrow's CSV reader and onnxruntime for the export check."""
    import onnxruntime  # noqa: F401 - imported for its cost, ahead of the job
    import pyarrow.csv  # noqa: F401 - imported for its cost, ahead of the job

    _import_xgboost()

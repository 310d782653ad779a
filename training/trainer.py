"""The in-container entry: pick script mode or a built-in, run it, turn errors into ``output/failure``."""

from __future__ import annotations

import logging
import os
import traceback

from training.environment import TrainingEnvironment, say
from training.errors import UserError

log = logging.getLogger(__name__)

ALGORITHMS = ("xgboost", "linear-learner", "kmeans", "pca", "factorization-machines")
#: why a job with neither a built-in algorithm nor a script fails (the AWS Batch submitter refuses it with it)
NO_PROGRAM = (
    "no training program: set the sagemaker_program and sagemaker_submit_directory hyperparameters "
    "(script mode) or use a built-in algorithm image (xgboost, linear-learner, kmeans, pca)"
)


def select(env: TrainingEnvironment, algorithm: str | None) -> str:
    """``xgboost`` / ``linear-learner`` / ``kmeans`` / ``pca`` / ``script``: script mode whenever
    ``sagemaker_program`` is set (SageMaker's XGBoost image runs a user script in "framework mode" that
    way), else the built-in named by ``algorithm``."""
    if "sagemaker_program" in env.raw_hyperparameters and algorithm != "script":
        return "script"
    if algorithm and algorithm != "auto":
        if algorithm not in (*ALGORITHMS, "script"):
            raise UserError(f"unknown algorithm {algorithm!r} ({', '.join((*ALGORITHMS, 'script'))})")
        return algorithm
    if "sagemaker_program" in env.raw_hyperparameters or os.environ.get("SAGEMAKER_PROGRAM"):
        return "script"
    raise UserError(NO_PROGRAM)


def _write_failure(env: TrainingEnvironment | None, text: str) -> None:
    if env is None:
        return
    path = env.failure_file
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not (path.exists() and path.stat().st_size > 0):
            path.write_text(text, encoding="utf-8")
    except OSError:
        log.exception("cannot write %s", path)


def run(root: str | None, algorithm: str | None) -> int:
    """Run one training host; returns the process exit code (0 success)."""
    env: TrainingEnvironment | None = None
    try:
        env = TrainingEnvironment.load(root)
        if env.failure_file.exists():
            env.failure_file.unlink()
        kind = select(env, algorithm)
        if kind == "script":
            if "sagemaker_program" not in env.raw_hyperparameters and os.environ.get("SAGEMAKER_PROGRAM"):
                env.raw_hyperparameters["sagemaker_program"] = os.environ["SAGEMAKER_PROGRAM"]
            from training import script_mode

            code = script_mode.run(env)
        else:
            say(f"Running built-in algorithm {kind} on {env.current_host} ({len(env.hosts)} host(s))")
            if kind == "xgboost":
                from training.algorithms import xgboost_algo

                xgboost_algo.train(env)
            elif kind == "kmeans":
                from training.algorithms import kmeans

                kmeans.train(env)
            elif kind == "pca":
                from training.algorithms import pca

                pca.train(env)
            elif kind == "factorization-machines":
                from training.algorithms import factorization_machines

                factorization_machines.train(env)
            else:
                from training.algorithms import linear_learner

                linear_learner.train(env)
            code = 0
    except UserError as exc:
        say(f"ClientError: {exc}")
        _write_failure(env, f"ClientError: {exc}")
        return 1
    except Exception as exc:
        traceback.print_exc()
        _write_failure(env, f"AlgorithmError: {type(exc).__name__}: {exc}")
        return 1
    if code == 0 and env is not None:
        (env.output_dir / "success").touch()
    return code

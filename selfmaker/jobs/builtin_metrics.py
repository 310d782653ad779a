"""The metrics SageMaker's built-in algorithms print, as MetricDefinitions: what SageMaker knows about them
without being told — the tuner's objectives (:mod:`selfmaker.jobs.tuning`) and the values a training job
publishes to CloudWatch (:mod:`selfmaker.jobs.training`)."""

from __future__ import annotations

import re

from training.images import classify_image

#: a number in a metric line (SageMaker's built-in regexes accept the same forms)
NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
#: the evaluation metrics xgboost prints (``[3]#011validation-auc:0.91``), usable as ``<channel>:<metric>``
XGBOOST_METRICS = (
    "rmse", "rmsle", "mae", "mape", "mphe", "logloss", "error", "merror", "mlogloss", "auc", "aucpr",
    "ndcg", "map", "poisson-nloglik", "gamma-nloglik", "cox-nloglik", "gamma-deviance", "tweedie-nloglik",
    "aft-nloglik",
)  # fmt: skip
#: linear learner's final scores (``#quality_metric: host=algo-1, validation recall <score>=0.9``)
LINEAR_LEARNER_SCORES = (
    "binary_classification_accuracy", "precision", "recall", "binary_f_beta", "multiclass_accuracy", "mse",
    "absolute_loss", "r2",
)  # fmt: skip

#: the built-ins whose metrics the tuner knows without MetricDefinitions
BUILTINS_WITH_METRICS = ("xgboost", "linear-learner", "kmeans", "factorization-machines")
#: factorization machines' test-channel metrics (``#quality_metric: host=algo-1, test rmse <loss>=0.5``)
FM_METRICS = (
    "rmse", "binary_classification_accuracy", "binary_classification_cross_entropy", "binary_f_beta",
)  # fmt: skip


def builtin_metric_definitions(image: str) -> list[dict[str, str]]:
    """The metrics a built-in algorithm's image emits, as MetricDefinitions (what SageMaker's tuner knows
    about its built-in algorithms without being told)."""
    kind = classify_image(image)
    out: list[dict[str, str]] = []
    if kind == "xgboost":
        for channel in ("train", "validation"):
            for metric in XGBOOST_METRICS:
                regex = rf".*\[[0-9]+\].*#011{channel}-{re.escape(metric)}:{NUMBER}.*"
                out.append({"Name": f"{channel}:{metric}", "Regex": regex})
    elif kind == "linear-learner":
        for channel in ("train", "validation"):
            regex = rf"#quality_metric: host=\S+, epoch=\S+, {channel} \S+ <loss>={NUMBER}"
            out.append({"Name": f"{channel}:objective_loss", "Regex": regex})
        for channel in ("train", "validation", "test"):
            for metric in LINEAR_LEARNER_SCORES:
                regex = rf"#quality_metric: host=\S+, {channel} {metric} <score>={NUMBER}"
                out.append({"Name": f"{channel}:{metric}", "Regex": regex})
    elif kind == "kmeans":  # ``#quality_metric: host=algo-1, test msd <loss>=1.2``
        for channel in ("train", "test"):
            for metric in ("msd", "ssd"):
                regex = rf"#quality_metric: host=\S+, {channel} {metric} <loss>={NUMBER}"
                out.append({"Name": f"{channel}:{metric}", "Regex": regex})
    elif kind == "factorization-machines":  # ``#quality_metric: host=algo-1, test rmse <loss>=0.5``
        for metric in FM_METRICS:
            regex = rf"#quality_metric: host=\S+, test {metric} <\S+>={NUMBER}"
            out.append({"Name": f"test:{metric}", "Regex": regex})
    return out

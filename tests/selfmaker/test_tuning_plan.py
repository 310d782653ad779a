"""The tuning job's search space and rules without a platform: SageMaker ranges → optuna distributions,
ReverseLogarithmic, Grid sizes, the built-in algorithms' metric regexes on their real metric lines, and the
median early-stopping rule on a study built by hand."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import TrialState

from selfmaker.errors import ValidationException
from selfmaker.jobs.tuning import MedianRule, TuningPlan, builtin_metric_definitions, parse_ranges

XGB = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-xgboost:1.7-1"
LL = "382416733822.dkr.ecr.us-east-1.amazonaws.com/linear-learner:1"


def _request(strategy: str = "Bayesian", **ranges: Any) -> dict[str, Any]:
    return {
        "HyperParameterTuningJobName": "plan",
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:auc"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 50, "MaxParallelTrainingJobs": 2},
            "ParameterRanges": ranges,
        },
        "TrainingJobDefinition": {
            "AlgorithmSpecification": {"TrainingImage": XGB, "TrainingInputMode": "File"},
            "ResourceConfig": {"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 1},
        },
    }


def test_scaling_types_map_to_optuna_distributions() -> None:
    params = {
        p.name: p
        for p in parse_ranges(
            {
                "ContinuousParameterRanges": [
                    {"Name": "lin", "MinValue": "0.1", "MaxValue": "0.9", "ScalingType": "Linear"},
                    {"Name": "log", "MinValue": "1e-4", "MaxValue": "1", "ScalingType": "Logarithmic"},
                    {"Name": "auto_wide", "MinValue": "1e-5", "MaxValue": "0.1"},
                    {"Name": "auto_narrow", "MinValue": "0.1", "MaxValue": "0.5", "ScalingType": "Auto"},
                    {
                        "Name": "rev",
                        "MinValue": "0.9",
                        "MaxValue": "0.999",
                        "ScalingType": "ReverseLogarithmic",
                    },
                ],
                "IntegerParameterRanges": [
                    {"Name": "depth", "MinValue": "1", "MaxValue": "10", "ScalingType": "Linear"},
                    {"Name": "trees", "MinValue": "10", "MaxValue": "10000", "ScalingType": "Logarithmic"},
                ],
                "CategoricalParameterRanges": [{"Name": "booster", "Values": ["gbtree", "dart"]}],
            }
        )
    }
    assert params["lin"].distribution == FloatDistribution(0.1, 0.9)
    assert params["log"].distribution == FloatDistribution(1e-4, 1.0, log=True)
    assert params["auto_wide"].distribution == FloatDistribution(1e-5, 0.1, log=True)
    assert params["auto_narrow"].distribution == FloatDistribution(0.1, 0.5)
    assert params["depth"].distribution == IntDistribution(1, 10)
    assert params["trees"].distribution == IntDistribution(10, 10000, log=True)
    assert (
        params["depth"].to_hyperparameter(7) == "7" and params["booster"].to_hyperparameter("dart") == "dart"
    )
    rev = params["rev"]
    dist = rev.distribution
    assert isinstance(dist, FloatDistribution) and dist.log
    assert math.isclose(dist.low, 0.001) and math.isclose(dist.high, 0.1)
    # ReverseLogarithmic: values close to 1 are sampled densely (half the samples above 0.99 here)
    sampler = optuna.samplers.RandomSampler(seed=0)
    study = optuna.create_study(sampler=sampler)
    values = []
    for _ in range(400):
        trial = study.ask()
        values.append(float(rev.to_hyperparameter(trial.suggest_float("rev", dist.low, dist.high, log=True))))
        study.tell(trial, 0.0)
    assert all(0.9 <= v <= 0.999 for v in values)
    assert 0.4 < sum(v > 0.99 for v in values) / len(values) < 0.6


def test_grid_counts_its_points_and_caps_the_job_budget() -> None:
    request = _request(
        "Grid",
        IntegerParameterRanges=[{"Name": "max_depth", "MinValue": "2", "MaxValue": "4"}],
        CategoricalParameterRanges=[{"Name": "booster", "Values": ["gbtree", "dart"]}],
    )
    assert TuningPlan.from_request(request, "plan").max_jobs == 6
    del request["HyperParameterTuningJobConfig"]["ResourceLimits"]["MaxNumberOfTrainingJobs"]
    assert TuningPlan.from_request(request, "plan").max_jobs == 6
    request["HyperParameterTuningJobConfig"]["ParameterRanges"]["IntegerParameterRanges"][0]["MaxValue"] = (
        "99999"
    )
    with pytest.raises(ValidationException, match="at most 10000"):
        TuningPlan.from_request(request, "plan")


def test_builtin_metric_regexes_read_the_builtins_lines() -> None:
    import re

    xgb = {d["Name"]: re.compile(d["Regex"]) for d in builtin_metric_definitions(XGB)}
    line = "[algo-1] [12]#011train-rmse:0.41000#011validation-auc:0.93125#011validation-rmse:1.5e-02"
    assert float(xgb["validation:auc"].search(line).group(1)) == 0.93125  # type: ignore[union-attr]
    assert float(xgb["validation:rmse"].search(line).group(1)) == 0.015  # type: ignore[union-attr]
    assert xgb["validation:logloss"].search(line) is None
    ll = {d["Name"]: re.compile(d["Regex"]) for d in builtin_metric_definitions(LL)}
    epoch = (
        "#quality_metric: host=algo-1, epoch=3, validation binary_classification_cross_entropy_objective "
        "<loss>=0.25"
    )
    assert float(ll["validation:objective_loss"].search(epoch).group(1)) == 0.25  # type: ignore[union-attr]
    final = "#quality_metric: host=algo-1, test binary_f_beta <score>=0.875000"
    assert float(ll["test:binary_f_beta"].search(final).group(1)) == 0.875  # type: ignore[union-attr]
    assert builtin_metric_definitions("my-registry/my-own-image:1") == []


def test_median_rule_stops_a_job_behind_the_median_of_running_averages() -> None:
    study = optuna.create_study(direction="minimize", pruner=MedianRule())
    for curve in ([5.0, 3.0, 2.0, 1.0], [6.0, 4.0, 3.0, 2.0], [4.0, 3.0, 2.5, 2.0]):
        study.add_trial(
            optuna.trial.create_trial(
                params={}, distributions={}, value=curve[-1], intermediate_values=dict(enumerate(curve))
            )
        )
    # running averages at step 2: 3.33, 4.33, 3.17 → median 3.33
    good = study.ask()
    for step, value in enumerate([5.0, 3.5, 3.0]):
        good.report(value, step)
    assert not good.should_prune()  # 3.0 < 3.33
    study.tell(good, state=TrialState.FAIL)
    bad = study.ask()
    bad.report(9.0, 0)
    bad.report(9.0, 1)
    assert not bad.should_prune()  # the first steps are never judged
    bad.report(3.5, 2)
    assert bad.should_prune()  # 3.5 > 3.33
    lonely = optuna.create_study(direction="minimize", pruner=MedianRule())
    trial = lonely.ask()
    for step in range(5):
        trial.report(100.0, step)
    assert not trial.should_prune()  # no earlier jobs to compare with


def test_builtin_xgboost_evaluates_the_tuning_objective() -> None:
    """SageMaker's XGBoost container evaluates a tuning job's objective (``_tuning_objective_metric``) even
    when eval_metric does not name it: the metric line the tuner reads exists."""
    from training.algorithms.xgboost_algo import build_params
    from training.hyperparameters import Hyperparameters

    def metrics(**hps: str) -> list[str] | None:
        params, _, _ = build_params(
            Hyperparameters({"num_round": "5", "objective": "binary:logistic", **hps}), 1
        )
        return params.get("eval_metric")

    assert metrics() is None
    assert metrics(_tuning_objective_metric="validation:auc") == ["auc"]
    assert metrics(_tuning_objective_metric="validation:auc", eval_metric="logloss") == ["logloss", "auc"]
    assert metrics(_tuning_objective_metric="validation:auc", eval_metric="auc,error") == ["auc", "error"]
    assert metrics(_tuning_objective_metric="my-own-metric") is None


def test_convergence_needs_a_window_without_real_improvement() -> None:
    from selfmaker.jobs.tuning import has_converged

    rising = [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92]
    assert not has_converged(rising, maximize=True, max_jobs=20)  # still improving
    flat = [0.5, 0.9, 0.6, 0.7, 0.8, 0.85, 0.9]
    assert has_converged(flat, maximize=True, max_jobs=20)  # the last 5 never beat 0.9
    assert not has_converged(flat[:5], maximize=True, max_jobs=20)  # too few jobs to tell
    assert has_converged(flat, maximize=False, max_jobs=20)  # minimising: 0.5 (the first) is never beaten
    assert not has_converged([*flat[:-1], 0.1], maximize=False, max_jobs=20)

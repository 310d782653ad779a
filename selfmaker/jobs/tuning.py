"""Hyperparameter tuning jobs: CreateHyperParameterTuningJob requests run by an optuna study in a thread.

:class:`TuningPlan` turns a validated request into an optuna search space (strategies and scaling types
mapped as docs/tuning.md describes), the objective's regex and the training requests of the tuning job's
training jobs. :class:`TuningManager` owns the tuning job records: for each one a thread asks the study for
hyperparameters, creates ordinary training jobs through :class:`selfmaker.jobs.training.TrainingManager`
(the same records, logs, Describe and List; ``TuningJobArn`` set), follows their status and their metric
lines (intermediate values for early stopping and Hyperband), tells the study their objective, and ends
the tuning job when its limits or completion criteria are reached.

Every trial is written to the tuning record (``_Trials``) before its training job starts, so a restart of
the platform resumes a running tuning job: the training jobs that were running are marked replaced (the
training manager marked them Failed), the study is rebuilt from the finished ones and the loop goes on.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import math
import re
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import BasePruner, HyperbandPruner, NopPruner
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from selfmaker.arns import make_arn
from selfmaker.errors import ResourceInUse, ValidationException
from selfmaker.jobs.builtin_metrics import BUILTINS_WITH_METRICS, builtin_metric_definitions
from selfmaker.jobs.training import RESTART_REASON, SHUTDOWN_REASON
from selfmaker.state import Record
from selfmaker.state import now as state_now
from training.images import classify_image

if TYPE_CHECKING:
    from selfmaker.jobs.training import TrainingManager
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

log = logging.getLogger(__name__)

KIND = "hyper-parameter-tuning-job"
RUNNING = ("InProgress", "Stopping")
TERMINAL = ("Completed", "Failed", "Stopped")
#: seconds between two looks at a tuning job's training jobs (their records and metric lines)
POLL_SECONDS = 0.5
#: most training jobs a Grid strategy may enumerate (SageMaker: the grid's size, at most 10 000)
MAX_GRID = 10_000
# ---- the search space ----------------------------------------------------------------------------


def _number(text: Any, what: str, integer: bool) -> float:
    try:
        value = int(str(text)) if integer else float(str(text))
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValidationException(f"The {what} '{text}' is not {kind}.") from None
    if not math.isfinite(value):
        raise ValidationException(f"The {what} '{text}' is not a finite number.")
    return value


@dataclass(frozen=True)
class Param:
    """One tuned hyperparameter: its SageMaker name, optuna name and distribution, and how an optuna value
    becomes the hyperparameter's string."""

    name: str
    key: str
    kind: str  # "Integer" | "Continuous" | "Categorical"
    distribution: BaseDistribution
    #: ReverseLogarithmic: optuna samples ``1 - value`` on a log scale
    reverse: bool = False

    def to_hyperparameter(self, value: Any) -> str:
        """The training job's hyperparameter string of optuna value ``value``."""
        if self.kind == "Integer":
            return str(int(value))
        if self.kind == "Continuous":
            number = 1.0 - float(value) if self.reverse else float(value)
            return repr(number)
        return str(value)


def _scaling(rng: dict[str, Any], low: float, high: float, integer: bool, name: str) -> tuple[bool, bool]:
    """(log, reverse) of a range's ScalingType; Auto is Logarithmic when the range is positive and spans at
    least three orders of magnitude, Linear otherwise."""
    scaling = rng.get("ScalingType") or "Auto"
    if scaling == "Auto":
        return (low > 0 and high / low >= 1000), False
    if scaling == "Linear":
        return False, False
    if scaling == "Logarithmic":
        if low <= 0:
            raise ValidationException(
                f"The hyperparameter '{name}' uses Logarithmic scaling, which requires a MinValue greater "
                f"than 0 (got {rng['MinValue']})."
            )
        return True, False
    if scaling == "ReverseLogarithmic":
        if integer:
            raise ValidationException(
                f"The hyperparameter '{name}' uses ReverseLogarithmic scaling, which is only valid for "
                "continuous hyperparameters."
            )
        if not (low >= 0 and high < 1):
            raise ValidationException(
                f"The hyperparameter '{name}' uses ReverseLogarithmic scaling, which requires "
                f"0 <= MinValue <= MaxValue < 1 (got {rng['MinValue']} and {rng['MaxValue']})."
            )
        return True, True
    raise ValidationException(f"Unknown ScalingType '{scaling}' for hyperparameter '{name}'.")


def parse_ranges(ranges: dict[str, Any], prefix: str = "") -> list[Param]:
    """The tuned hyperparameters of a ParameterRanges (HyperParameterRanges) member, checked."""
    params: list[Param] = []
    seen: set[str] = set()

    def add(param: Param) -> None:
        if param.name in seen:
            raise ValidationException(
                f"The hyperparameter '{param.name}' appears in more than one parameter range."
            )
        seen.add(param.name)
        params.append(param)

    for kind in ("Integer", "Continuous"):
        integer = kind == "Integer"
        for rng in ranges.get(f"{kind}ParameterRanges") or []:
            name = rng["Name"]
            low = _number(rng["MinValue"], f"MinValue of hyperparameter '{name}'", integer)
            high = _number(rng["MaxValue"], f"MaxValue of hyperparameter '{name}'", integer)
            if low > high:
                raise ValidationException(
                    f"The MinValue ({rng['MinValue']}) of hyperparameter '{name}' must be less than or equal "
                    f"to its MaxValue ({rng['MaxValue']})."
                )
            use_log, reverse = _scaling(rng, low, high, integer, name)
            dist: BaseDistribution
            if integer:
                dist = IntDistribution(int(low), int(high), log=use_log)
            elif reverse:
                # 1 - value, log-uniform: values close to 1 are sampled more densely (SageMaker's
                # definition of ReverseLogarithmic); 1 - MaxValue > 0 because MaxValue < 1
                dist = FloatDistribution(1.0 - high, 1.0 - low, log=True)
            else:
                dist = FloatDistribution(low, high, log=use_log)
            add(Param(name, prefix + name, kind, dist, reverse))
    for rng in ranges.get("CategoricalParameterRanges") or []:
        name = rng["Name"]
        values = list(rng["Values"])
        if len(set(values)) != len(values):
            raise ValidationException(f"The categorical hyperparameter '{name}' lists a value twice.")
        add(Param(name, prefix + name, "Categorical", CategoricalDistribution(values)))
    return params


@dataclass
class Definition:
    """One training job definition of a tuning job, checked."""

    name: str | None
    request: dict[str, Any]
    params: list[Param]
    objective_name: str
    objective_type: str
    regex: re.Pattern[str]
    metric_definitions: list[dict[str, str]]


@dataclass
class TuningPlan:
    """What a tuning job runs: its definitions, strategy, objective and limits."""

    strategy: str
    definitions: list[Definition]
    objective_type: str
    max_jobs: int
    max_parallel: int
    max_runtime: float | None
    early_stopping: bool
    seed: int
    hyperband: tuple[int | None, int | None]
    completion: dict[str, Any]

    @property
    def maximize(self) -> bool:
        return self.objective_type == "Maximize"

    @classmethod
    def from_request(cls, request: dict[str, Any], name: str) -> TuningPlan:
        """The plan of a CreateHyperParameterTuningJob request; ValidationException names what is wrong."""
        config = request["HyperParameterTuningJobConfig"]
        if config.get("Autotune") or request.get("Autotune"):
            raise ValidationException("Autotune is not supported by selfmaker; give the ranges and strategy.")
        single = request.get("TrainingJobDefinition")
        several = request.get("TrainingJobDefinitions")
        if bool(single) == bool(several):
            raise ValidationException(
                "Exactly one of TrainingJobDefinition and TrainingJobDefinitions must be provided."
            )
        raw_defs: list[dict[str, Any]] = [single] if single else list(several or [])
        if several:
            names = [d.get("DefinitionName") for d in raw_defs]
            if any(not n for n in names) or len(set(names)) != len(names):
                raise ValidationException(
                    "Every one of TrainingJobDefinitions needs a unique DefinitionName."
                )
        strategy = config["Strategy"]
        default_objective = config.get("HyperParameterTuningJobObjective")
        definitions: list[Definition] = []
        for raw in raw_defs:
            objective = raw.get("TuningObjective") or default_objective
            if not objective:
                raise ValidationException(
                    "HyperParameterTuningJobObjective is required (or a TuningObjective in every training "
                    "job definition)."
                )
            ranges = raw.get("HyperParameterRanges") if several else config.get("ParameterRanges")
            ranges = ranges or raw.get("HyperParameterRanges") or config.get("ParameterRanges") or {}
            prefix = f"{raw['DefinitionName']}/" if several else ""
            params = parse_ranges(ranges, prefix)
            static = raw.get("StaticHyperParameters") or {}
            both = sorted({p.name for p in params} & set(static))
            if both:
                raise ValidationException(
                    f"The hyperparameters {both} are both static and tuned; a hyperparameter is one or the "
                    "other."
                )
            definitions.append(_definition(raw, params, objective))
        types = {d.objective_type for d in definitions}
        if len(types) != 1:
            raise ValidationException("Every training job definition must have the same objective Type.")
        if strategy == "Grid":
            if several:
                raise ValidationException("The Grid strategy supports a single training job definition.")
            continuous = [p.name for p in definitions[0].params if p.kind == "Continuous"]
            if continuous:
                raise ValidationException(
                    "The Grid strategy only supports categorical and integer parameter ranges; "
                    f"continuous ranges given: {continuous}."
                )
            if not definitions[0].params:
                raise ValidationException("The Grid strategy needs at least one parameter range.")
        elif not any(d.params for d in definitions):
            raise ValidationException("ParameterRanges must contain at least one range.")
        limits = config["ResourceLimits"]
        max_parallel = int(limits["MaxParallelTrainingJobs"])
        grid_size = _grid_size(definitions[0].params) if strategy == "Grid" else None
        if grid_size is not None and grid_size > MAX_GRID:
            raise ValidationException(
                f"The Grid strategy's grid has {grid_size} points; at most {MAX_GRID} are supported."
            )
        max_jobs_value = limits.get("MaxNumberOfTrainingJobs")
        if max_jobs_value is None:
            if grid_size is None:
                raise ValidationException(
                    "ResourceLimits.MaxNumberOfTrainingJobs is required unless the strategy is Grid."
                )
            max_jobs = grid_size
        else:
            max_jobs = int(max_jobs_value) if grid_size is None else min(int(max_jobs_value), grid_size)
        if max_jobs_value is not None and max_parallel > int(max_jobs_value):
            raise ValidationException(
                f"MaxParallelTrainingJobs ({max_parallel}) cannot be greater than MaxNumberOfTrainingJobs "
                f"({max_jobs_value})."
            )
        early = (config.get("TrainingJobEarlyStoppingType") or "Off") == "Auto"
        hyperband = (config.get("StrategyConfig") or {}).get("HyperbandStrategyConfig") or {}
        if strategy != "Hyperband" and hyperband:
            raise ValidationException(
                "StrategyConfig.HyperbandStrategyConfig requires the Hyperband strategy."
            )
        if strategy == "Hyperband" and early:
            raise ValidationException(
                "TrainingJobEarlyStoppingType must be Off with the Hyperband strategy, which stops training "
                "jobs itself."
            )
        low, high = hyperband.get("MinResource"), hyperband.get("MaxResource")
        if low is not None and high is not None and low > high:
            raise ValidationException(
                f"HyperbandStrategyConfig.MinResource ({low}) must be less than or equal to MaxResource "
                f"({high})."
            )
        seed = config.get("RandomSeed")
        if seed is None:  # stable per name: a restart continues the same sequence
            seed = int.from_bytes(hashlib.sha256(name.lower().encode()).digest()[:4], "big")
        runtime = limits.get("MaxRuntimeInSeconds")
        return cls(
            strategy=strategy,
            definitions=definitions,
            objective_type=types.pop(),
            max_jobs=max_jobs,
            max_parallel=max_parallel,
            max_runtime=float(runtime) if runtime else None,
            early_stopping=early,
            seed=int(seed),
            hyperband=(low, high),
            completion=config.get("TuningJobCompletionCriteria") or {},
        )

    # -- optuna ----------------------------------------------------------------------------------
    def study(self) -> optuna.Study:
        """A new in-memory study with the strategy's sampler and pruner (both seeded)."""
        sampler: optuna.samplers.BaseSampler
        pruner: BasePruner = NopPruner()
        if self.strategy == "Random":
            sampler = optuna.samplers.RandomSampler(seed=self.seed)
        elif self.strategy == "Grid":
            space = {p.key: _grid_values(p) for p in self.definitions[0].params}
            sampler = optuna.samplers.GridSampler(space, seed=self.seed)
        else:  # Bayesian, Hyperband
            sampler = optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=_startup(self.max_jobs))
        if self.strategy == "Hyperband":
            low, high = self.hyperband
            pruner = HyperbandPruner(min_resource=low or 1, max_resource=high if high else "auto")
        elif self.early_stopping:
            pruner = MedianRule()
        direction = StudyDirection.MAXIMIZE if self.maximize else StudyDirection.MINIMIZE
        return optuna.create_study(direction=direction, sampler=sampler, pruner=pruner)

    def distributions(self, definition: Definition) -> dict[str, BaseDistribution]:
        """The optuna distributions of one definition's trial (plus the definition choice, if several)."""
        out: dict[str, BaseDistribution] = {}
        if len(self.definitions) > 1:
            out["definition"] = CategoricalDistribution([d.name for d in self.definitions])
        out.update({p.key: p.distribution for p in definition.params})
        return out

    def suggest(self, trial: optuna.Trial) -> tuple[Definition, dict[str, str]]:
        """The definition and tuned hyperparameters (strings) of a new trial."""
        definition = self.definitions[0]
        if len(self.definitions) > 1:
            chosen = trial.suggest_categorical("definition", [d.name for d in self.definitions])
            definition = next(d for d in self.definitions if d.name == chosen)
        tuned: dict[str, str] = {}
        for p in definition.params:
            dist = p.distribution
            value: Any
            if self.strategy == "Grid":
                value = trial.suggest_categorical(p.key, _grid_values(p))
            elif isinstance(dist, IntDistribution):
                value = trial.suggest_int(p.key, dist.low, dist.high, log=dist.log)
            elif isinstance(dist, FloatDistribution):
                value = trial.suggest_float(p.key, dist.low, dist.high, log=dist.log)
            else:
                assert isinstance(dist, CategoricalDistribution)
                value = trial.suggest_categorical(p.key, dist.choices)
            tuned[p.name] = p.to_hyperparameter(value)
        return definition, tuned

    def definition(self, name: str | None) -> Definition:
        return next((d for d in self.definitions if d.name == name), self.definitions[0])


def _grid_values(param: Param) -> list[Any]:
    dist = param.distribution
    if isinstance(dist, IntDistribution):
        return list(range(dist.low, dist.high + 1))
    assert isinstance(dist, CategoricalDistribution)
    return list(dist.choices)


def _grid_size(params: Sequence[Param]) -> int:
    size = 1
    for p in params:
        size *= len(_grid_values(p))
        if size > MAX_GRID:
            return size
    return size


def _startup(max_jobs: int) -> int:
    """TPE's random start-up trials: optuna's default 10 leaves no guided trials in a small budget;
    SageMaker's Bayesian strategy starts guiding after a few jobs too."""
    return max(2, min(10, max_jobs // 3))


def _definition(raw: dict[str, Any], params: list[Param], objective: dict[str, Any]) -> Definition:
    metric = objective["MetricName"]
    algo = raw.get("AlgorithmSpecification") or {}
    image = algo.get("TrainingImage") or algo.get("AlgorithmName") or ""
    given = list(algo.get("MetricDefinitions") or [])
    known = given + [
        d for d in builtin_metric_definitions(image) if d["Name"] not in {g["Name"] for g in given}
    ]
    match = next((d for d in known if d["Name"] == metric), None)
    if match is None:
        raise ValidationException(
            f"The objective metric '{metric}' is not defined by the training job definition: it is neither "
            "in AlgorithmSpecification.MetricDefinitions nor a metric of the built-in algorithm."
        )
    try:
        regex = re.compile(match["Regex"])
    except re.error as exc:
        raise ValidationException(f"The MetricDefinitions regex of '{metric}' is invalid: {exc}") from None
    if not raw.get("ResourceConfig") and not raw.get("HyperParameterTuningResourceConfig"):
        raise ValidationException(
            "A training job definition needs ResourceConfig or HyperParameterTuningResourceConfig."
        )
    return Definition(
        name=raw.get("DefinitionName"),
        request=raw,
        params=params,
        objective_name=metric,
        objective_type=objective["Type"],
        regex=regex,
        metric_definitions=known if classify_image(image) in BUILTINS_WITH_METRICS else given,
    )


def resource_config(definition: dict[str, Any]) -> dict[str, Any]:
    """A definition's ResourceConfig; from HyperParameterTuningResourceConfig (its first instance
    configuration) when it has none (the SageMaker SDK sends only that one)."""
    if definition.get("ResourceConfig"):
        return dict(definition["ResourceConfig"])
    tuning = definition["HyperParameterTuningResourceConfig"]
    first = (tuning.get("InstanceConfigs") or [{}])[0]
    return {
        "InstanceType": first.get("InstanceType") or tuning.get("InstanceType") or "ml.m5.large",
        "InstanceCount": first.get("InstanceCount") or tuning.get("InstanceCount") or 1,
        "VolumeSizeInGB": first.get("VolumeSizeInGB") or tuning.get("VolumeSizeInGB") or 1,
    }


def training_request(definition: Definition, job_name: str, tuned: dict[str, str]) -> dict[str, Any]:
    """The CreateTrainingJob request of one of a tuning job's training jobs."""
    raw = definition.request
    algo = dict(raw["AlgorithmSpecification"])
    algo["MetricDefinitions"] = [dict(d) for d in definition.metric_definitions]
    hps = {**(raw.get("StaticHyperParameters") or {}), **tuned}
    hps["_tuning_objective_metric"] = definition.objective_name
    resources = resource_config(raw)
    request: dict[str, Any] = {
        "TrainingJobName": job_name,
        "RoleArn": raw.get("RoleArn"),
        "AlgorithmSpecification": algo,
        "HyperParameters": hps,
        "InputDataConfig": raw.get("InputDataConfig"),
        "OutputDataConfig": raw.get("OutputDataConfig"),
        "ResourceConfig": resources,
        "StoppingCondition": raw.get("StoppingCondition") or {"MaxRuntimeInSeconds": 86400},
    }
    for member in (
        "VpcConfig",
        "EnableNetworkIsolation",
        "EnableInterContainerTrafficEncryption",
        "EnableManagedSpotTraining",
        "CheckpointConfig",
        "RetryStrategy",
        "Environment",
    ):
        if raw.get(member) is not None:
            request[member] = raw[member]
    return {k: v for k, v in request.items() if v is not None}


# ---- early stopping --------------------------------------------------------------------------------


class MedianRule(BasePruner):
    """SageMaker's ``TrainingJobEarlyStoppingType: Auto`` rule as an optuna pruner: at step ``s``, a training
    job is stopped when its objective value is worse than the median of the running averages (over steps
    ``0..s``) of the earlier training jobs that reached step ``s``.

    At least :attr:`MIN_EARLIER` earlier jobs must have reached the step, and the first
    :attr:`WARMUP_STEPS` steps are never judged (a young model is always behind)."""

    MIN_EARLIER = 3
    WARMUP_STEPS = 2

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self.WARMUP_STEPS:
            return False
        value = trial.intermediate_values[step]
        averages: list[float] = []
        for other in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            series = [v for s, v in other.intermediate_values.items() if s <= step and math.isfinite(v)]
            if step in other.intermediate_values and series:
                averages.append(sum(series) / len(series))
        if len(averages) < self.MIN_EARLIER or not math.isfinite(value):
            return False
        median = statistics.median(averages)
        maximize = study.direction == StudyDirection.MAXIMIZE
        return value < median if maximize else value > median


def has_converged(values: Sequence[float], maximize: bool, max_jobs: int) -> bool:
    """``ConvergenceDetected``: the last ``window`` finished jobs (a fifth of the budget, at least 5) improved
    the best objective value by less than 0.1 % of the spread of all values (in finishing order)."""
    window = max(5, max_jobs // 5)
    if len(values) <= window:
        return False
    pick = max if maximize else min
    improvement = abs(pick(values) - pick(values[:-window]))
    return improvement <= 0.001 * (max(values) - min(values))


# ---- the manager -----------------------------------------------------------------------------------


@dataclass
class _Live:
    """A running training job of a tuning job, as the loop follows it."""

    job: str
    trial: optuna.Trial
    log_path: Path
    regex: re.Pattern[str]
    offset: int = 0
    partial: bytes = b""
    steps: int = 0
    pruned: bool = False
    values: list[float] = field(default_factory=list)

    def read_values(self) -> list[float]:
        """Objective values of metric lines written since the last call."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        found: list[float] = []
        for raw in lines:
            if raw.startswith(b"[algo-") and not raw.startswith(b"[algo-1] "):
                continue  # one series per job: the first host's (the others repeat it in distributed jobs)
            m = self.regex.search(raw.decode("utf-8", "replace"))
            if m:
                try:
                    found.append(float(m.group(1) if m.groups() else m.group(0)))
                except ValueError:
                    continue
        self.values.extend(found)
        return found


def objective_of(job: Record | None, metric: str) -> float | None:
    """The final value of ``metric`` in a training job's FinalMetricDataList."""
    if job is None:
        return None
    for point in job.doc.get("FinalMetricDataList") or []:
        if point.get("MetricName") == metric:
            try:
                value = float(point["Value"])
            except (KeyError, TypeError, ValueError):
                return None
            return value if math.isfinite(value) else None
    return None


def _describe_defaults(doc: dict[str, Any], plan: TuningPlan) -> None:
    """Fill in what SageMaker's DescribeHyperParameterTuningJob shows although the request left it out (the
    SDK's ``HyperparameterTuner.attach`` reads these members without checking for them)."""
    config = doc["HyperParameterTuningJobConfig"]
    config.setdefault("TrainingJobEarlyStoppingType", "Off")
    config["ResourceLimits"].setdefault("MaxNumberOfTrainingJobs", plan.max_jobs)
    stored = doc.get("TrainingJobDefinitions") or [doc["TrainingJobDefinition"]]
    for ranges in [config.get("ParameterRanges"), *(d.get("HyperParameterRanges") for d in stored)]:
        if ranges is not None:
            for kind in ("Integer", "Continuous", "Categorical"):
                ranges.setdefault(f"{kind}ParameterRanges", [])
    for definition, planned in zip(stored, plan.definitions, strict=True):
        # the objective among the static hyperparameters, the built-in's metrics among the definitions, a
        # ResourceConfig when only HyperParameterTuningResourceConfig was given: as SageMaker stores them
        static = definition.setdefault("StaticHyperParameters", {})
        static.setdefault("_tuning_objective_metric", planned.objective_name)
        definition["AlgorithmSpecification"]["MetricDefinitions"] = [
            dict(d) for d in planned.metric_definitions
        ]
        definition.setdefault("ResourceConfig", resource_config(definition))


class TuningManager:
    """Runs hyperparameter tuning jobs (one optimiser thread each) and keeps their records current."""

    def __init__(self, settings: PlatformSettings, store: StateStore, training: TrainingManager) -> None:
        self.settings = settings
        self.store = store
        self.training = training
        self._threads: dict[str, threading.Thread] = {}
        self._wake: dict[str, threading.Event] = {}
        #: set by shutdown(): loops end without touching their records (the next start resumes them)
        self.closing = False

    # -- requests ------------------------------------------------------------------------------
    def create(self, params: dict[str, Any], plan: TuningPlan) -> str:
        """Record a validated request (InProgress), tag it and start its optimiser; its ARN.
        ResourceInUse when the name is taken."""
        name = params["HyperParameterTuningJobName"]
        arn = make_arn(self.settings.region, self.settings.account_id, KIND, name)
        now = state_now()
        doc = copy.deepcopy({k: v for k, v in params.items() if k != "Tags"})
        _describe_defaults(doc, plan)
        doc.update(HyperParameterTuningJobArn=arn, _Trials=[])
        record = Record(
            kind=KIND, name=name, arn=arn, status="InProgress", created=now, modified=now, doc=doc
        )
        if not self.store.insert(record):
            raise ResourceInUse(f"Hyperparameter tuning job with name {name} already exists ({arn}).")
        if params.get("Tags"):
            self.store.add_tags(arn, params["Tags"])
        self._start(name)
        return arn

    def stop(self, name: str) -> None:
        """StopHyperParameterTuningJob: InProgress → Stopping (the loop stops the training jobs) → Stopped."""
        record = self.store.get(KIND, name)
        assert record is not None
        if record.status != "InProgress":
            raise ValidationException(
                f"The hyperparameter tuning job {record.name} is in status {record.status} and cannot be "
                "stopped."
            )
        self.store.update(KIND, name, status="Stopping")
        wake = self._wake.get(name.lower())
        if wake is not None:
            wake.set()

    def delete(self, name: str) -> None:
        """DeleteHyperParameterTuningJob: the record and its tags (its training jobs stay)."""
        record = self.store.get(KIND, name)
        assert record is not None
        if record.status in RUNNING:
            raise ValidationException(
                f"The hyperparameter tuning job {record.name} is in status {record.status}; stop it (and "
                "wait for Stopped) before deleting it."
            )
        self.store.delete(KIND, name)

    def log_path(self, name: str) -> Path:
        """The tuning job's own log (what it launched, stopped and measured): ``selfmaker logs NAME``."""
        return self.settings.logs_dir / "hyper-parameter-tuning-jobs" / f"{name}.log"

    def wake_event(self, name: str) -> threading.Event:
        """The event that wakes tuning job ``name``'s loop before its next poll (stop, shutdown)."""
        return self._wake.setdefault(name.lower(), threading.Event())

    # -- start-up and shutdown -------------------------------------------------------------------
    def start_up(self) -> None:
        """Resume the tuning jobs a previous run left running (call after ``training.recover()``, which
        marked their running training jobs Failed: those are replaced)."""
        for record in self.store.list(KIND):
            if record.status not in RUNNING:
                continue
            trials = list(record.doc.get("_Trials") or [])
            changed = False
            for trial in trials:
                if trial.get("Replaced"):
                    continue
                job = self.store.get("training-job", trial["TrainingJobName"])
                if job is None or job.doc.get("FailureReason") in (RESTART_REASON, SHUTDOWN_REASON):
                    trial["Replaced"] = True
                    changed = True
            if changed:
                self.store.update(KIND, record.name, merge={"_Trials": trials})
            log.warning("resuming hyperparameter tuning job %s after a restart", record.name)
            self._start(record.name)

    async def shutdown(self) -> None:
        """Stop the optimiser threads (the tuning jobs stay InProgress: the next start resumes them)."""
        self.closing = True
        for wake in self._wake.values():
            wake.set()
        deadline = time.monotonic() + 30
        for thread in list(self._threads.values()):
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))

    def _start(self, name: str) -> None:
        self.wake_event(name)
        thread = threading.Thread(target=self._run, args=(name,), name=f"tuning:{name}", daemon=True)
        self._threads[name.lower()] = thread
        thread.start()

    # -- the optimiser loop ----------------------------------------------------------------------
    def _run(self, name: str) -> None:
        try:
            _Loop(self, name).run()
        except Exception:  # noqa: BLE001 - the tuning job fails, the platform goes on
            log.exception("hyperparameter tuning job %s crashed", name)
            self.store.update(
                KIND,
                name,
                status="Failed",
                merge={
                    "FailureReason": "internal error while running the hyperparameter tuning job",
                    "HyperParameterTuningEndTime": state_now(),
                },
            )


class _Loop:
    """One tuning job's optimiser loop (runs in the job's thread; every optuna call happens here)."""

    def __init__(self, manager: TuningManager, name: str) -> None:
        self.m = manager
        self.store = manager.store
        self.name = name
        record = self.store.get(KIND, name)
        assert record is not None
        self.arn = record.arn
        self.created = record.created
        self.plan = TuningPlan.from_request(record.doc, name)
        self.study = self.plan.study()
        self.live: dict[str, _Live] = {}
        self.best: float | None = None
        self.not_improving = 0
        self.recent: list[float] = []
        self.converged_at: float | None = None
        self.stopped_children = False
        #: the completion criterion that ended launching (target, not-improving, converged)
        self.reason: str | None = None
        self.optuna_logging_quiet()

    @staticmethod
    def optuna_logging_quiet() -> None:
        # optuna logs every trial at INFO on its own handler; the tuning job's record says it all
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def better(self, a: float, b: float) -> bool:
        return a > b if self.plan.maximize else a < b

    # -- history ---------------------------------------------------------------------------------
    def reload(self, trials: list[dict[str, Any]]) -> None:
        """Finished trials of this job (after a restart) and warm-start parents' trials into the study."""
        for trial in trials:
            if trial.get("Replaced"):
                continue
            job = self.store.get("training-job", trial["TrainingJobName"])
            definition = self.plan.definition(trial.get("DefinitionName"))
            self.add_history(trial, job, definition)
        record = self.store.get(KIND, self.name)
        assert record is not None
        for parent in (record.doc.get("WarmStartConfig") or {}).get("ParentHyperParameterTuningJobs") or []:
            parent_record = self.store.get(KIND, parent["HyperParameterTuningJobName"])
            if parent_record is None:
                continue
            for trial in parent_record.doc.get("_Trials") or []:
                if trial.get("Replaced"):
                    continue
                job = self.store.get("training-job", trial["TrainingJobName"])
                definition = self.plan.definition(trial.get("DefinitionName"))
                self.add_history(trial, job, definition, parent=True)

    def add_history(
        self, trial: dict[str, Any], job: Record | None, definition: Definition, parent: bool = False
    ) -> None:
        if job is None or job.status not in TERMINAL:
            return
        value = objective_of(job, definition.objective_name)
        dists = self.plan.distributions(definition)
        params = {k: v for k, v in (trial.get("Params") or {}).items() if k in dists}
        dists = {k: d for k, d in dists.items() if k in params}
        if not params:
            return
        intermediate = {i: v for i, v in enumerate(trial.get("Intermediate") or []) if math.isfinite(v)}
        if value is None:
            state, value_arg = TrialState.FAIL, None
        elif trial.get("Pruned") or job.status == "Stopped":
            state, value_arg = TrialState.PRUNED, None
        else:
            state, value_arg = TrialState.COMPLETE, value
        try:
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=params,
                    distributions=dists,
                    value=value_arg,
                    state=state,
                    intermediate_values=intermediate,
                )
            )
        except (ValueError, TypeError) as exc:
            log.warning("tuning job %s: could not load trial of %s: %s", self.name, job.name, exc)
            return
        if not parent and value is not None and job.status == "Completed":
            self.track(value)

    def track(self, value: float) -> None:
        """Completion-criteria bookkeeping for one more finished objective value."""
        if self.best is None or self.better(value, self.best):
            self.best = value
            self.not_improving = 0
        else:
            self.not_improving += 1
        self.recent.append(value)

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> None:
        record = self.store.get(KIND, self.name)
        assert record is not None
        trials_before = list(record.doc.get("_Trials") or [])
        self.reload(trials_before)
        self.note(
            f"{'resumed' if trials_before else 'started'}: strategy {self.plan.strategy}, "
            f"seed {self.plan.seed}, "
            f"objective {self.plan.objective_type} {self.plan.definitions[0].objective_name}, "
            f"{self.plan.max_jobs} jobs, {self.plan.max_parallel} in parallel; "
            f"{len(self.study.trials)} earlier trials loaded"
        )
        wake = self.m.wake_event(self.name)
        while not self.m.closing:
            record = self.store.get(KIND, self.name)
            if record is None:
                return
            trials: list[dict[str, Any]] = list(record.doc.get("_Trials") or [])
            self.follow(trials)
            stopping = record.status == "Stopping"
            timed_out = (
                self.plan.max_runtime is not None and time.time() - self.created >= self.plan.max_runtime
            )
            launched = sum(1 for t in trials if not t.get("Replaced"))
            done_reason = self.criteria_met()
            if done_reason and not self.reason:
                self.reason = done_reason
                self.note(f"completion criterion met: {done_reason}; no new training jobs")
            if (stopping or timed_out) and not self.stopped_children:
                self.stopped_children = True
                self.note(
                    "stopping: " + ("StopHyperParameterTuningJob" if stopping else "MaxRuntimeInSeconds")
                )
                for job in list(self.live):
                    self.stop_job(job)
            if not (stopping or timed_out or done_reason) and launched < self.plan.max_jobs:
                while len(self.live) < self.plan.max_parallel and launched < self.plan.max_jobs:
                    if self.m.closing:
                        return
                    self.launch(trials, launched + 1)
                    launched += 1
            elif not self.live:
                self.finish(stopping, trials)
                return
            wake.wait(POLL_SECONDS)
            wake.clear()

    def criteria_met(self) -> str | None:
        criteria = self.plan.completion
        target = criteria.get("TargetObjectiveMetricValue")
        if target is not None and self.best is not None and not self.better(float(target), self.best):
            return "target"
        patience = (criteria.get("BestObjectiveNotImproving") or {}).get(
            "MaxNumberOfTrainingJobsNotImproving"
        )
        if patience and self.not_improving >= int(patience):
            return "not-improving"
        convergence = (criteria.get("ConvergenceDetected") or {}).get("CompleteOnConvergence")
        if convergence == "Enabled" and self.converged():
            return "converged"
        return None

    def converged(self) -> bool:
        if not has_converged(self.recent, self.plan.maximize, self.plan.max_jobs):
            return False
        if self.converged_at is None:
            self.converged_at = state_now()
        return True

    def launch(self, trials: list[dict[str, Any]], index: int) -> None:
        trial = self.study.ask()
        definition, tuned = self.plan.suggest(trial)
        job = f"{self.name}-{index:03d}-{uuid.uuid4().hex[:8]}"
        entry = {
            "TrainingJobName": job,
            "DefinitionName": definition.name,
            "Params": dict(trial.params),
            "Tuned": tuned,
            "Number": index,
        }
        trials.append(entry)
        self.store.update(KIND, self.name, merge={"_Trials": trials})  # recorded before the job starts
        try:
            self.m.training.create(training_request(definition, job, tuned), tuning_job_arn=self.arn)
        except Exception as exc:  # noqa: BLE001 - the trial fails, the tuning job goes on
            log.warning("tuning job %s: training job %s could not start: %s", self.name, job, exc)
            self.note(f"{job} could not start: {exc}")
            entry["StartError"] = str(exc)[:500]
            self.store.update(KIND, self.name, merge={"_Trials": trials})
            self.tell(trial, state=TrialState.FAIL)
            return
        self.live[job] = _Live(job, trial, self.m.training.log_path(job), definition.regex)
        where = f" ({definition.name})" if definition.name else ""
        self.note(f"launched {job}{where}: {json.dumps(tuned, sort_keys=True)}")

    def tell(self, trial: optuna.Trial, value: float | None = None, state: TrialState | None = None) -> None:
        """``study.tell``: optuna's GridSampler calls ``study.stop()`` once its grid is used up, which only
        works inside ``study.optimize``; the trial is stored before that, so the RuntimeError is dropped."""
        try:
            self.study.tell(trial, value, state=state)
        except RuntimeError:
            if self.plan.strategy != "Grid":
                raise

    def stop_job(self, job: str) -> None:
        try:
            self.m.training.stop(job)
        except ValidationException:
            pass  # it ended meanwhile

    def follow(self, trials: list[dict[str, Any]]) -> None:
        """Feed running jobs' new metric values to the study, stop the ones its pruner rejects, and tell it
        the objective of the ones that ended."""
        changed = False
        for job, live in list(self.live.items()):
            record = self.store.get("training-job", job)
            new = live.read_values()
            for value in new:
                if math.isfinite(value):
                    live.trial.report(value, live.steps)
                live.steps += 1
            status = record.status if record is not None else "Failed"
            entry = next(t for t in trials if t["TrainingJobName"] == job)
            judged = new and not live.pruned and status == "InProgress"
            if judged and not isinstance(self.study.pruner, NopPruner) and live.trial.should_prune():
                log.info("tuning job %s: early stopping training job %s", self.name, job)
                self.note(f"early stopping {job} at step {live.steps - 1}: {new[-1]:g}")
                live.pruned = True
                entry["Pruned"] = True
                changed = True
                self.stop_job(job)
            if status not in TERMINAL:
                continue
            live.read_values()  # lines written between the look above and the end
            entry["Intermediate"] = live.values
            changed = True
            definition = self.plan.definition(entry.get("DefinitionName"))
            final = objective_of(record, definition.objective_name)
            if final is None:
                self.tell(live.trial, state=TrialState.FAIL)
            elif live.pruned or status == "Stopped":
                # optuna takes a pruned trial's last reported value as its value
                if not live.values:
                    live.trial.report(final, 0)
                self.tell(live.trial, state=TrialState.PRUNED)
            else:
                self.tell(live.trial, final)
                self.track(final)
            del self.live[job]
            self.note(
                f"{job} ended {status}: {definition.objective_name}={final if final is not None else '-'}"
            )
        if changed:
            self.store.update(KIND, self.name, merge={"_Trials": trials})

    def finish(self, stopping: bool, trials: list[dict[str, Any]]) -> None:
        now = state_now()
        fields: dict[str, Any] = {"HyperParameterTuningEndTime": now}
        status = "Stopped" if stopping else "Completed"
        jobs = [self.store.get("training-job", t["TrainingJobName"]) for t in trials if not t.get("Replaced")]
        if not stopping and jobs and all(j is None or j.status == "Failed" for j in jobs):
            status = "Failed"
            fields["FailureReason"] = "All training jobs failed; see their FailureReason."
        if self.converged_at is not None:
            fields["_ConvergenceDetectedTime"] = self.converged_at
        self.store.update(KIND, self.name, status=status, merge=fields)
        log.info("hyperparameter tuning job %s ended: %s", self.name, status)
        reason = f" ({self.reason})" if self.reason and status == "Completed" else ""
        self.note(f"ended {status}{reason}; best {self.best if self.best is not None else '-'}")

    def note(self, message: str) -> None:
        """One timestamped line in the tuning job's log."""
        path = self.m.log_path(self.name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {message}\n")
        except OSError:
            log.exception("could not write the log of tuning job %s", self.name)


# ---- what Describe and List report ---------------------------------------------------------------


def training_job_summaries(store: StateStore, record: Record) -> list[dict[str, Any]]:
    """HyperParameterTrainingJobSummary of each training job of a tuning job (also those a restart
    replaced: Failed, counted as RetryableError, as SageMaker counts the jobs it retries)."""
    plan_defs = _objectives(record.doc)
    out: list[dict[str, Any]] = []
    for trial in record.doc.get("_Trials") or []:
        job = store.get("training-job", trial["TrainingJobName"])
        metric, kind = plan_defs.get(trial.get("DefinitionName"), next(iter(plan_defs.values())))
        summary: dict[str, Any] = {
            "TrainingJobDefinitionName": trial.get("DefinitionName"),
            "TrainingJobName": trial["TrainingJobName"],
            "TrainingJobArn": job.arn if job else _sibling_arn(record.arn, trial["TrainingJobName"]),
            "TuningJobName": record.name,
            "CreationTime": job.created if job else record.created,
            "TrainingJobStatus": job.status if job else "Failed",
            "TunedHyperParameters": trial.get("Tuned") or {},
        }
        if job is not None:
            summary["TrainingStartTime"] = job.doc.get("TrainingStartTime")
            summary["TrainingEndTime"] = job.doc.get("TrainingEndTime")
            summary["FailureReason"] = job.doc.get("FailureReason")
        else:
            summary["FailureReason"] = trial.get("StartError") or "The training job does not exist."
        value = objective_of(job, metric)
        if value is not None:
            summary["FinalHyperParameterTuningJobObjectiveMetric"] = {
                "Type": kind,
                "MetricName": metric,
                "Value": value,
            }
        if value is not None and summary["TrainingJobStatus"] in TERMINAL:
            summary["ObjectiveStatus"] = "Succeeded"
        elif summary["TrainingJobStatus"] in TERMINAL:
            summary["ObjectiveStatus"] = "Failed"
        else:
            summary["ObjectiveStatus"] = "Pending"
        out.append({k: v for k, v in summary.items() if v is not None})
    return out


def _sibling_arn(tuning_arn: str, job: str) -> str:
    """The ARN training job ``job`` has (or had) in the tuning job's region and account."""
    _, _, _, region, account, _ = tuning_arn.split(":", 5)
    return make_arn(region, account, "training-job", job)


def _objectives(doc: dict[str, Any]) -> dict[str | None, tuple[str, str]]:
    """Definition name → (objective metric, Maximize/Minimize)."""
    default = (doc.get("HyperParameterTuningJobConfig") or {}).get("HyperParameterTuningJobObjective") or {}
    defs = doc.get("TrainingJobDefinitions") or [doc.get("TrainingJobDefinition") or {}]
    out: dict[str | None, tuple[str, str]] = {}
    for d in defs:
        objective = d.get("TuningObjective") or default
        out[d.get("DefinitionName")] = (objective.get("MetricName", ""), objective.get("Type", "Minimize"))
    return out


def best_of(summaries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best summary with an objective value (Completed jobs first, as the model to deploy)."""
    scored = [
        s
        for s in summaries
        if "FinalHyperParameterTuningJobObjectiveMetric" in s
        and s["TrainingJobStatus"] in ("Completed", "Stopped")
    ]
    if not scored:
        return None
    completed = [s for s in scored if s["TrainingJobStatus"] == "Completed"] or scored
    metric = completed[0]["FinalHyperParameterTuningJobObjectiveMetric"]
    sign = -1.0 if metric["Type"] == "Maximize" else 1.0
    return min(completed, key=lambda s: sign * s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"])


def counters(summaries: list[dict[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """TrainingJobStatusCounters and ObjectiveStatusCounters."""
    status = {"Completed": 0, "InProgress": 0, "RetryableError": 0, "NonRetryableError": 0, "Stopped": 0}
    objective = {"Succeeded": 0, "Pending": 0, "Failed": 0}
    for s in summaries:
        state = s["TrainingJobStatus"]
        if state == "Failed":
            reason = s.get("FailureReason") or ""
            internal = "internal error" in reason or reason in (RESTART_REASON, SHUTDOWN_REASON)
            status["RetryableError" if internal else "NonRetryableError"] += 1
        elif state in ("InProgress", "Stopping"):
            status["InProgress"] += 1
        else:
            status[state] += 1
        objective[s["ObjectiveStatus"]] += 1
    return status, objective


def describe(store: StateStore, record: Record) -> dict[str, Any]:
    """DescribeHyperParameterTuningJob's answer for ``record``."""
    doc = {k: v for k, v in record.doc.items() if not k.startswith("_") and v is not None}
    summaries = training_job_summaries(store, record)
    status_counters, objective_counters = counters(summaries)
    best = best_of(summaries)
    end = record.doc.get("HyperParameterTuningEndTime")
    doc.update(
        HyperParameterTuningJobName=record.name,
        HyperParameterTuningJobStatus=record.status,
        CreationTime=record.created,
        LastModifiedTime=record.modified,
        TrainingJobStatusCounters=status_counters,
        ObjectiveStatusCounters=objective_counters,
        ConsumedResources={"RuntimeInSeconds": int((end or time.time()) - record.created)},
    )
    if best is not None:
        doc["BestTrainingJob"] = best
    parents = (record.doc.get("WarmStartConfig") or {}).get("ParentHyperParameterTuningJobs") or []
    if parents:
        everything = list(summaries)
        for parent in parents:
            parent_record = store.get(KIND, parent["HyperParameterTuningJobName"])
            if parent_record is not None:
                everything += training_job_summaries(store, parent_record)
        overall = best_of(everything)
        if overall is not None:
            doc["OverallBestTrainingJob"] = overall
    details: dict[str, Any] = {"NumberOfTrainingJobsObjectiveNotImproving": _not_improving(summaries)}
    if record.doc.get("_ConvergenceDetectedTime"):
        details["ConvergenceDetectedTime"] = record.doc["_ConvergenceDetectedTime"]
    doc["TuningJobCompletionDetails"] = details
    return doc


def _not_improving(summaries: list[dict[str, Any]]) -> int:
    """How many Completed training jobs (by end time) ended since the best objective last improved."""
    done = [
        s
        for s in summaries
        if s["TrainingJobStatus"] == "Completed" and "FinalHyperParameterTuningJobObjectiveMetric" in s
    ]
    done.sort(key=lambda s: s.get("TrainingEndTime") or 0)
    best: float | None = None
    count = 0
    for s in done:
        metric = s["FinalHyperParameterTuningJobObjectiveMetric"]
        value = metric["Value"]
        if best is None or (value > best if metric["Type"] == "Maximize" else value < best):
            best, count = value, 0
        else:
            count += 1
    return count

"""Deployment guardrails: blue/green ``UpdateEndpoint`` with traffic shifting, baking and auto-rollback.

``DeploymentConfig.BlueGreenUpdatePolicy`` as SageMaker defines it:

* ``TrafficRoutingConfiguration.Type``: ``ALL_AT_ONCE`` (everything to the new fleet, then bake),
  ``CANARY`` (``CanarySize`` of the new fleet's capacity, bake ``WaitIntervalInSeconds``, then the rest and a
  final bake) or ``LINEAR`` (``LinearStepSize`` more per step, a bake after each). Sizes are
  ``INSTANCE_COUNT`` (of the new fleet's instances) or ``CAPACITY_PERCENT``. :func:`traffic_steps` turns a
  policy into the list of (share of traffic on the new fleet, bake seconds).
* ``TerminationWaitInSeconds``: the old fleet stays up that long after the shift completed.
* ``MaximumExecutionTimeoutInSeconds``: a deployment still running after that long is rolled back.
* ``AutoRollbackConfiguration.Alarms``: names of alarms; if one fires during a bake, all traffic goes
  back to the old fleet and the new fleet is removed.

The alarms named are CloudWatch alarms made with ``PutMetricAlarm`` on the platform
(:class:`selfmaker.alarms.Alarms`, evaluated on the endpoint's metrics): one in ALARM while baking rolls the
deployment back. Deprecated, for one release: a name no CloudWatch alarm has may be a local rule, written
like ``PutMetricAlarm`` and evaluated on the invocations the router observed during the deployment
(:class:`AlarmRule`)::

    {"Alarms": [{"AlarmName": "new-fleet-5xx", "MetricName": "Invocation5XXErrors", "Statistic": "Average",
                 "ComparisonOperator": "GreaterThanThreshold", "Threshold": 0.05, "Period": 30}]}

Rules come from ``<home>/alarms.json`` (read again at every UpdateEndpoint, so it can be edited while the
platform runs) and from the ``SELFMAKER_ALARMS`` setting (a JSON document or a path to one, read once at
start); a name in both uses the file's rule.

Zero failed requests: while a deployment is in progress, a request the new fleet answers with a 5xx (or
no answer) is counted for the alarms and re-sent to the old fleet (:meth:`TrafficSplit.retry_on_old`), so
callers never see the broken fleet's errors; after a rollback nothing goes to the new fleet at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import operator
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROUTING_TYPES = ("ALL_AT_ONCE", "CANARY", "LINEAR")
CAPACITY_TYPES = ("INSTANCE_COUNT", "CAPACITY_PERCENT")


class GuardrailError(ValueError):
    """A DeploymentConfig or alarm definition that cannot be used; the message names the field."""


# -- the traffic-shifting schedule ---------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """Shift traffic so ``new_fraction`` of it reaches the new fleet, then bake ``bake_seconds``."""

    new_fraction: float
    bake_seconds: float
    #: ``ActivatingTraffic`` label for DescribeEndpoint ("canary", "step 2 of 4", "all traffic")
    label: str = ""


def capacity_fraction(size: dict[str, Any], new_capacity: int, member: str) -> float:
    """The share of the new fleet's capacity that a ``CapacitySize`` names, in (0, 1]."""
    kind, value = size.get("Type"), size.get("Value")
    if kind not in CAPACITY_TYPES:
        raise GuardrailError(f"{member}.Type must be one of {', '.join(CAPACITY_TYPES)}, got {kind!r}")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GuardrailError(f"{member}.Value must be an integer >= 1, got {value!r}")
    if kind == "INSTANCE_COUNT":
        if new_capacity < 1:
            raise GuardrailError(f"{member}: the new fleet has no instances to count")
        if value > new_capacity:
            raise GuardrailError(f"{member}.Value {value} exceeds the new fleet's {new_capacity} instances")
        return value / new_capacity
    if value > 100:
        raise GuardrailError(f"{member}.Value must be a percentage between 1 and 100, got {value}")
    return value / 100.0


def traffic_steps(routing: dict[str, Any], new_capacity: int) -> list[Step]:
    """The schedule of ``TrafficRoutingConfiguration`` for a new fleet of ``new_capacity`` instances.

    Every schedule ends with ``new_fraction == 1.0``; fractions rise strictly; each step bakes
    ``WaitIntervalInSeconds``. CANARY needs a canary of at most half the fleet; LINEAR steps of 10 % to
    50 % (SageMaker's limits).
    """
    member = "DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration"
    kind = routing.get("Type")
    wait = routing.get("WaitIntervalInSeconds")
    if kind not in ROUTING_TYPES:
        raise GuardrailError(f"{member}.Type must be one of {', '.join(ROUTING_TYPES)}, got {kind!r}")
    if not isinstance(wait, int) or isinstance(wait, bool) or not 0 <= wait <= 3600:
        raise GuardrailError(f"{member}.WaitIntervalInSeconds must be between 0 and 3600, got {wait!r}")
    if kind == "ALL_AT_ONCE":
        return [Step(1.0, float(wait), "all traffic")]
    if kind == "CANARY":
        size = routing.get("CanarySize")
        if not isinstance(size, dict):
            raise GuardrailError(f"{member}.CanarySize is required for CANARY")
        canary = capacity_fraction(size, new_capacity, f"{member}.CanarySize")
        if canary > 0.5:
            raise GuardrailError(
                f"{member}.CanarySize must be at most 50% of the new fleet's capacity "
                f"({canary:.0%} requested)"
            )
        return [Step(canary, float(wait), "canary"), Step(1.0, float(wait), "all traffic")]
    size = routing.get("LinearStepSize")
    if not isinstance(size, dict):
        raise GuardrailError(f"{member}.LinearStepSize is required for LINEAR")
    step = capacity_fraction(size, new_capacity, f"{member}.LinearStepSize")
    if not 0.1 - 1e-9 <= step <= 0.5 + 1e-9:
        raise GuardrailError(
            f"{member}.LinearStepSize must be between 10% and 50% of the new fleet's capacity "
            f"({step:.0%} requested)"
        )
    count = math.ceil(1.0 / step - 1e-9)
    fractions = [min(1.0, step * i) for i in range(1, count + 1)]
    fractions[-1] = 1.0
    return [Step(f, float(wait), f"step {i} of {count}") for i, f in enumerate(fractions, 1)]


def validate_deployment_config(config: Any, new_capacity: int = 1) -> list[str]:
    """Problems with a ``DeploymentConfig`` (empty when usable)."""
    if not isinstance(config, dict):
        return ["DeploymentConfig must be a structure"]
    problems: list[str] = []
    if config.get("RollingUpdatePolicy") is not None and config.get("BlueGreenUpdatePolicy") is not None:
        problems.append(
            "DeploymentConfig: specify either BlueGreenUpdatePolicy or RollingUpdatePolicy, not both"
        )
    policy = config.get("BlueGreenUpdatePolicy")
    if policy is not None:
        if not isinstance(policy, dict) or not isinstance(policy.get("TrafficRoutingConfiguration"), dict):
            problems.append("DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration is required")
        else:
            try:
                traffic_steps(policy["TrafficRoutingConfiguration"], new_capacity)
            except GuardrailError as exc:
                problems.append(str(exc))
            term = policy.get("TerminationWaitInSeconds")
            if term is not None and (not isinstance(term, int) or not 0 <= term <= 3600):
                problems.append(
                    "DeploymentConfig.BlueGreenUpdatePolicy.TerminationWaitInSeconds must be between 0 "
                    "and 3600"
                )
            maximum = policy.get("MaximumExecutionTimeoutInSeconds")
            if maximum is not None and (not isinstance(maximum, int) or not 600 <= maximum <= 28800):
                problems.append(
                    "DeploymentConfig.BlueGreenUpdatePolicy.MaximumExecutionTimeoutInSeconds must be "
                    "between 600 and 28800"
                )
    rollback = config.get("AutoRollbackConfiguration")
    if rollback is not None:
        alarms = rollback.get("Alarms") if isinstance(rollback, dict) else None
        if (
            not isinstance(alarms, list)
            or not 1 <= len(alarms) <= 10
            or not all(
                isinstance(a, dict)
                and isinstance(a.get("AlarmName"), str)
                and 1 <= len(a["AlarmName"]) <= 255
                for a in alarms
            )
        ):
            problems.append(
                "DeploymentConfig.AutoRollbackConfiguration.Alarms must list 1 to 10 {AlarmName} entries"
            )
    return problems


# -- alarms --------------------------------------------------------------------------------------
METRICS = ("Invocations", "Invocation4XXErrors", "Invocation5XXErrors", "InvocationErrors", "ModelLatency")
STATISTICS = ("Sum", "Average", "Maximum", "Minimum", "SampleCount")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": operator.gt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}
FLEETS = ("new", "old", "all")


@dataclass(frozen=True)
class AlarmRule:
    """One local alarm, in CloudWatch's terms.

    Every invocation the router sees during a deployment is one datapoint per metric: the error metrics
    are 0 or 1 (so ``Sum`` counts errors and ``Average`` is the error rate), ``Invocations`` is 1,
    ``ModelLatency`` is the latency in microseconds. ``Statistic`` (or ``ExtendedStatistic`` ``p50`` …
    ``p99.9``) is computed over the datapoints of the last ``Period`` seconds from ``Fleet`` (``new``
    by default), and the alarm fires when it compares true with ``Threshold``, once at least
    ``MinimumSamples`` datapoints are in the window.
    """

    name: str
    metric: str
    statistic: str
    comparison: str
    threshold: float
    period: float = 60.0
    fleet: str = "new"
    minimum_samples: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlarmRule:
        """Parse one CloudWatch-style alarm definition; :class:`GuardrailError` names the bad field."""
        if not isinstance(data, dict):
            raise GuardrailError("an alarm must be a JSON object")
        name = data.get("AlarmName")
        if not isinstance(name, str) or not 1 <= len(name) <= 255:
            raise GuardrailError(f"AlarmName must be a string of 1 to 255 characters, got {name!r}")
        metric = data.get("MetricName")
        if metric not in METRICS:
            raise GuardrailError(
                f"alarm {name}: MetricName must be one of {', '.join(METRICS)}, got {metric!r}"
            )
        statistic = data.get("ExtendedStatistic") or data.get("Statistic") or "Average"
        if statistic not in STATISTICS and _percentile(statistic) is None:
            raise GuardrailError(
                f"alarm {name}: Statistic must be one of {', '.join(STATISTICS)} or pNN, got {statistic!r}"
            )
        comparison = data.get("ComparisonOperator", "GreaterThanThreshold")
        if comparison not in COMPARISONS:
            raise GuardrailError(f"alarm {name}: ComparisonOperator must be one of {', '.join(COMPARISONS)}")
        threshold = data.get("Threshold")
        if (
            not isinstance(threshold, (int, float))
            or isinstance(threshold, bool)
            or not math.isfinite(threshold)
        ):
            raise GuardrailError(f"alarm {name}: Threshold must be a number, got {threshold!r}")
        period = data.get("Period", 60)
        if not isinstance(period, (int, float)) or isinstance(period, bool) or period <= 0:
            raise GuardrailError(f"alarm {name}: Period must be a positive number of seconds, got {period!r}")
        fleet = data.get("Fleet", "new")
        if fleet not in FLEETS:
            raise GuardrailError(f"alarm {name}: Fleet must be one of {', '.join(FLEETS)}, got {fleet!r}")
        minimum = data.get("MinimumSamples", 1)
        if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 1:
            raise GuardrailError(f"alarm {name}: MinimumSamples must be an integer >= 1, got {minimum!r}")
        return cls(name, metric, statistic, comparison, float(threshold), float(period), fleet, minimum)

    def describe(self) -> str:
        return (
            f"{self.metric} {self.statistic} {self.comparison} {self.threshold:g} over {self.period:g}s "
            f"on the {self.fleet} fleet"
        )


def _percentile(statistic: str) -> float | None:
    if not isinstance(statistic, str) or not statistic.startswith("p"):
        return None
    try:
        value = float(statistic[1:])
    except ValueError:
        return None
    return value if 0 < value <= 100 else None


def parse_alarms(document: Any, source: str) -> dict[str, AlarmRule]:
    """``{"Alarms": [...]}`` (or a bare list) → rules by name; errors name ``source``."""
    items = document.get("Alarms") if isinstance(document, dict) else document
    if not isinstance(items, list):
        raise GuardrailError(f'{source}: expected {{"Alarms": [...]}}')
    rules: dict[str, AlarmRule] = {}
    for item in items:
        try:
            rule = AlarmRule.from_dict(item)
        except GuardrailError as exc:
            raise GuardrailError(f"{source}: {exc}") from exc
        rules[rule.name] = rule
    return rules


def load_alarm_setting(value: str | None) -> dict[str, AlarmRule]:
    """Rules of the ``SELFMAKER_ALARMS`` setting: a JSON document, or the path of one (empty: none)."""
    if not value or not value.strip():
        return {}
    text = value
    source = "SELFMAKER_ALARMS"
    if not value.lstrip().startswith(("{", "[")):
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise GuardrailError(f"SELFMAKER_ALARMS: cannot read {path}: {exc}") from exc
        source = str(path)
    try:
        return parse_alarms(json.loads(text), source)
    except json.JSONDecodeError as exc:
        raise GuardrailError(f"{source}: not valid JSON: {exc}") from exc


def load_alarms(home: Path | None, setting_rules: dict[str, AlarmRule] | None = None) -> dict[str, AlarmRule]:
    """Every known rule: the setting's, overridden by ``<home>/alarms.json`` (read now)."""
    rules = dict(setting_rules or {})
    if home is not None:
        path = Path(home) / "alarms.json"
        if path.exists():
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise GuardrailError(f"{path}: {exc}") from exc
            rules.update(parse_alarms(document, str(path)))
    return rules


def resolve_alarms(config: dict[str, Any] | None, known: dict[str, AlarmRule]) -> list[AlarmRule]:
    """The rules named by ``AutoRollbackConfiguration.Alarms``; an unknown name is a GuardrailError."""
    if not config:
        return []
    names = [a["AlarmName"] for a in (config.get("AutoRollbackConfiguration") or {}).get("Alarms", [])]
    missing = [n for n in names if n not in known]
    if missing:
        raise GuardrailError(
            "DeploymentConfig.AutoRollbackConfiguration names alarms that are not defined: "
            f"{', '.join(missing)} "
            "(define them in <home>/alarms.json or SELFMAKER_ALARMS)"
        )
    return [known[n] for n in names]


@dataclass(frozen=True)
class Observation:
    at: float
    fleet: str
    status: int
    latency: float


class FleetRecorder:
    """Invocations seen by the router during a deployment: (time, fleet, status, latency)."""

    def __init__(
        self, horizon: float = 3600.0, max_items: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.horizon = horizon
        self._items: deque[Observation] = deque(maxlen=max_items)
        self._clock = clock

    def record(self, fleet: str, status: int, latency: float) -> None:
        """One answer (status 0 = no answer at all) from ``fleet`` (``new`` or ``old``)."""
        self._items.append(Observation(self._clock(), fleet, status, latency))

    def window(self, period: float, fleet: str) -> list[Observation]:
        start = self._clock() - period
        return [o for o in self._items if o.at >= start and (fleet == "all" or o.fleet == fleet)]

    def count(self, fleet: str = "all") -> int:
        return sum(1 for o in self._items if fleet == "all" or o.fleet == fleet)


def _datapoint(metric: str, obs: Observation) -> float:
    if metric == "Invocations":
        return 1.0
    if metric == "Invocation4XXErrors":
        return 1.0 if 400 <= obs.status < 500 else 0.0
    if metric == "Invocation5XXErrors":
        return 1.0 if obs.status >= 500 or obs.status == 0 else 0.0
    if metric == "InvocationErrors":
        return 1.0 if obs.status >= 400 or obs.status == 0 else 0.0
    return obs.latency * 1e6  # ModelLatency, microseconds as in CloudWatch


def statistic_value(statistic: str, values: list[float]) -> float:
    """CloudWatch statistic of ``values`` (non-empty)."""
    if statistic == "Sum":
        return float(sum(values))
    if statistic == "Average":
        return float(sum(values)) / len(values)
    if statistic == "Maximum":
        return float(max(values))
    if statistic == "Minimum":
        return float(min(values))
    if statistic == "SampleCount":
        return float(len(values))
    q = _percentile(statistic)
    if q is None:
        raise GuardrailError(f"unknown statistic {statistic!r}")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))])


def evaluate(rule: AlarmRule, recorder: FleetRecorder) -> tuple[bool, float | None]:
    """Whether ``rule`` fires now, and the statistic's value (None when too few datapoints)."""
    window = recorder.window(rule.period, rule.fleet)
    if len(window) < rule.minimum_samples or not window:
        return False, None
    value = statistic_value(rule.statistic, [_datapoint(rule.metric, o) for o in window])
    return COMPARISONS[rule.comparison](value, rule.threshold), value


# -- the running deployment ----------------------------------------------------------------------
class TrafficSplit:
    """The router's view of a deployment: which share goes to the new fleet, and the safety net."""

    def __init__(self, rng: Callable[[], float] = random.random) -> None:
        self.new_fraction = 0.0
        #: while True, a failed answer of the new fleet is retried on the old fleet
        self.protecting = True
        self._rng = rng

    def pick_new(self) -> bool:
        """Whether this request goes to the new fleet."""
        fraction = self.new_fraction
        return fraction >= 1.0 or (fraction > 0.0 and self._rng() < fraction)

    def retry_on_old(self, status: int) -> bool:
        """Whether a new-fleet answer with ``status`` (0: none) must be re-sent to the old fleet."""
        return self.protecting and (status == 0 or status >= 500)


@dataclass
class DeploymentOutcome:
    """How a blue/green deployment ended."""

    completed: bool
    reason: str | None = None
    alarm: str | None = None


@dataclass
class DeploymentProgress:
    """What DescribeEndpoint shows while the deployment runs."""

    status: str = "Creating"  # VariantStatus of the new fleet: Creating | ActivatingTraffic | Baking
    message: str = ""
    new_fraction: float = 0.0
    started_at: float = field(default_factory=time.time)
    step_started_at: float = field(default_factory=time.time)


async def run_blue_green(
    deployment_config: dict[str, Any] | None,
    *,
    new_capacity: int,
    alarms: list[AlarmRule],
    recorder: FleetRecorder,
    split: TrafficSplit,
    progress: DeploymentProgress,
    on_shift: Callable[[float], Awaitable[None]] | None = None,
    on_progress: Callable[[], None] | None = None,
    check_interval: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
    watched: Callable[[], tuple[str, str] | None] | None = None,
) -> DeploymentOutcome:
    """Shift traffic per the policy, baking and watching ``alarms``; return completed or rolled back.

    The new fleet is already running and healthy. On an alarm or the execution timeout the split goes
    back to 0 (everything on the old fleet) before returning; on completion it is 1. Callers then
    retire the losing fleet (after ``TerminationWaitInSeconds`` for the old one). ``watched`` says which
    CloudWatch alarm (name, StateReason) is in ALARM, if any: it rolls back like a firing rule.
    """
    policy = (deployment_config or {}).get("BlueGreenUpdatePolicy") or {
        "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
    }
    steps = traffic_steps(policy["TrafficRoutingConfiguration"], new_capacity)
    maximum = float(policy.get("MaximumExecutionTimeoutInSeconds") or 28800)
    started = clock()
    split.protecting = True

    async def shift(fraction: float) -> None:
        split.new_fraction = fraction
        progress.new_fraction = fraction
        if on_shift is not None:
            await on_shift(fraction)

    async def roll_back(reason: str, alarm: str | None = None) -> DeploymentOutcome:
        await shift(0.0)
        progress.status, progress.message = "Deleting", reason
        if on_progress is not None:
            on_progress()
        log.warning("deployment rolled back: %s", reason)
        return DeploymentOutcome(False, reason, alarm)

    for index, step in enumerate(steps, 1):
        progress.status, progress.message = (
            "ActivatingTraffic",
            f"shifting {step.new_fraction:.0%} of traffic ({step.label})",
        )
        progress.step_started_at = time.time()
        await shift(step.new_fraction)
        progress.status = "Baking"
        progress.message = (
            f"baking {step.bake_seconds:g}s with {step.new_fraction:.0%} of traffic ({step.label})"
        )
        if on_progress is not None:
            on_progress()
        bake_end = clock() + step.bake_seconds
        while True:
            for rule in alarms:
                firing, value = evaluate(rule, recorder)
                if firing:
                    return await roll_back(
                        f"Alarm {rule.name} fired ({rule.describe()}: value {value:g}) while baking "
                        f"{step.new_fraction:.0%} of traffic ({step.label}, step {index} of {len(steps)}); "
                        "all traffic was rolled back to the previous endpoint configuration.",
                        rule.name,
                    )
            fired = watched() if watched is not None else None
            if fired is not None:
                return await roll_back(
                    f"Alarm {fired[0]} went to ALARM ({fired[1]}) while baking {step.new_fraction:.0%} of "
                    f"traffic ({step.label}, step {index} of {len(steps)}); all traffic was rolled back to "
                    "the previous endpoint configuration.",
                    fired[0],
                )
            now = clock()
            if now - started >= maximum:
                return await roll_back(
                    f"The deployment exceeded MaximumExecutionTimeoutInSeconds={maximum:g}; "
                    "all traffic was rolled back to the previous endpoint configuration."
                )
            if now >= bake_end:
                break
            await asyncio.sleep(min(check_interval, max(0.0, bake_end - now)))
    split.protecting = False
    progress.status, progress.message = "Baking", "deployment complete"
    return DeploymentOutcome(True)

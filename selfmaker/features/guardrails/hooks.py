"""Deployment guardrails inside ``selfmaker up`` (registered in :mod:`selfmaker.features.guardrails`).

The endpoint manager builds the new deployment (every instance answered ``/ping``) and then, instead of
swapping at once, asks its deployment strategy — :class:`DeploymentGuard` — to run the
``BlueGreenUpdatePolicy``:

1. ``check`` (from UpdateEndpoint): validates ``DeploymentConfig`` against the new config's capacity and
   resolves the named alarms (unknown alarm → ValidationException); remembers the effective config
   (``RetainDeploymentConfig`` reuses the previous one).
2. ``run`` (from the manager, old and new deployments both up): installs a dispatcher on the *old*
   deployment, which stays the live one, so each request goes to the new fleet with the schedule's share;
   new-fleet answers are recorded for the alarms, and a 5xx / missing answer from the new fleet is re-sent
   to the old fleet while the deployment is in progress (callers never see it). It then runs
   :func:`selfmaker.features.guardrails.bluegreen.run_blue_green` (shift, bake, watch alarms,
   MaximumExecutionTimeout) and ``TerminationWaitInSeconds``. Returns None when the new fleet won (the
   manager swaps it in) or the rollback reason (the manager retires the new fleet; DescribeEndpoint shows
   InService + FailureReason).

While it runs, DescribeEndpoint has ``PendingDeploymentSummary`` (new config, variants with
``VariantStatus`` ActivatingTraffic/Baking and the traffic share) and ``EndpointStatus`` Updating, then
RollingBack during a rollback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from selfmaker.api.metrics import Metrics, family
from selfmaker.endpoints.invoke import call_variant
from selfmaker.endpoints.runtime import VariantAnswer
from selfmaker.endpoints.stats import SERVER_ERROR
from selfmaker.errors import SageMakerError, ValidationException
from selfmaker.features.guardrails.bluegreen import (
    AlarmRule,
    DeploymentProgress,
    FleetRecorder,
    GuardrailError,
    TrafficSplit,
    load_alarm_setting,
    load_alarms,
    resolve_alarms,
    run_blue_green,
    traffic_steps,
)

if TYPE_CHECKING:
    from selfmaker.endpoints.runtime import EndpointRuntime, InvocationRecord, VariantRuntime
    from selfmaker.services import Services
    from selfmaker.state import Record

log = logging.getLogger(__name__)


def new_capacity(config: dict[str, Any], retain: dict[str, dict[str, Any]] | None = None) -> int:
    """Instances of the new fleet (serverless variants count as one)."""
    total = 0
    for variant in config.get("ProductionVariants") or []:
        kept = (retain or {}).get(variant["VariantName"], {})
        total += int(kept.get("count") or variant.get("InitialInstanceCount") or 1)
    return max(1, total)


@dataclass
class DeploymentView:
    """Counters and progress of the current/last deployment of one endpoint."""

    rollbacks: int = 0
    completed: int = 0
    fallbacks: int = 0
    progress: DeploymentProgress | None = None
    split: TrafficSplit | None = None
    last_outcome: str | None = None

    def snapshot(self) -> dict[str, Any]:
        in_progress = self.progress is not None
        return {
            "in_progress": in_progress,
            "new_fraction": self.split.new_fraction if (in_progress and self.split is not None) else None,
            "status": self.progress.status if self.progress is not None else None,
            "fallbacks": self.fallbacks,
            "rollbacks": self.rollbacks,
            "completed": self.completed,
            "last_outcome": self.last_outcome,
        }


@dataclass
class DeploymentGuard:
    """Blue/green deployments with traffic shifting and auto-rollback for one platform."""

    platform: Services
    setting_rules: dict[str, AlarmRule]
    check_interval: float = 0.2
    views: dict[str, DeploymentView] = field(default_factory=dict)
    _pending: dict[str, dict[str, Any] | None] = field(default_factory=dict)

    def view(self, endpoint: str) -> DeploymentView:
        key = endpoint.lower()
        if key not in self.views:
            self.views[key] = DeploymentView()
        return self.views[key]

    # -- UpdateEndpoint ----------------------------------------------------------------------------
    def check(
        self,
        params: dict[str, Any],
        record: Record,
        config: dict[str, Any],
        retain: dict[str, dict[str, Any]],
    ) -> None:
        """Validate the DeploymentConfig of an UpdateEndpoint request (raises ValidationException)."""
        deployment = params.get("DeploymentConfig")
        if deployment is None and params.get("RetainDeploymentConfig"):
            deployment = record.doc.get("DeploymentConfig")
        if deployment:
            if deployment.get("RollingUpdatePolicy"):
                raise ValidationException(
                    "DeploymentConfig.RollingUpdatePolicy is not supported by selfmaker; use "
                    "BlueGreenUpdatePolicy."
                )
            policy = deployment.get("BlueGreenUpdatePolicy")
            try:
                if policy:
                    traffic_steps(policy["TrafficRoutingConfiguration"], new_capacity(config, retain))
                self.alarms_of(deployment)
            except GuardrailError as exc:
                raise ValidationException(str(exc)) from None
        self._pending[record.name.lower()] = deployment

    def alarms_of(self, deployment: dict[str, Any]) -> tuple[list[AlarmRule], list[str]]:
        """The alarms ``AutoRollbackConfiguration.Alarms`` names: CloudWatch alarms (PutMetricAlarm) by
        name, and the rules of ``<home>/alarms.json`` / ``SELFMAKER_ALARMS`` for the names no CloudWatch
        alarm has (deprecated: a warning says so); GuardrailError names the alarms that exist nowhere."""
        names = [
            a["AlarmName"] for a in (deployment.get("AutoRollbackConfiguration") or {}).get("Alarms", [])
        ]
        if not names:
            return [], []
        watched = [n for n in names if self.platform.alarms.state(n) is not None]
        rest = [n for n in names if n not in watched]
        if not rest:
            return [], watched
        known = load_alarms(self.platform.settings.home, self.setting_rules)
        missing = [n for n in rest if n not in known]
        if missing:
            raise GuardrailError(
                "DeploymentConfig.AutoRollbackConfiguration names alarms that do not exist: "
                f"{', '.join(missing)} (create them with CloudWatch's PutMetricAlarm on this platform)"
            )
        log.warning(
            "DEPRECATED: alarms %s come from <home>/alarms.json or SELFMAKER_ALARMS; create them with "
            "CloudWatch's PutMetricAlarm instead (the file and the setting go away in the next release)",
            ", ".join(rest),
        )
        legacy = {"AutoRollbackConfiguration": {"Alarms": [{"AlarmName": n} for n in rest]}}
        return resolve_alarms(legacy, known), watched

    def firing(self, names: list[str]) -> tuple[str, str] | None:
        """The first of the CloudWatch alarms ``names`` in state ALARM, with its StateReason; None if none."""
        for name in names:
            state = self.platform.alarms.state(name)
            if state is not None and state[0] == "ALARM":
                return name, state[1]
        return None

    # -- the deployment ----------------------------------------------------------------------------
    async def run(
        self, name: str, old: EndpointRuntime, new: EndpointRuntime, config: dict[str, Any]
    ) -> str | None:
        """Shift traffic from ``old`` to ``new`` per the pending DeploymentConfig.

        Returns None when the new fleet won, else the rollback reason.
        """
        deployment = self._pending.pop(name.lower(), None)
        if not deployment or not deployment.get("BlueGreenUpdatePolicy"):
            return None
        policy = deployment["BlueGreenUpdatePolicy"]
        try:
            alarms, watched = self.alarms_of(deployment)
        except GuardrailError as exc:
            return f"Deployment rolled back before any traffic shifted: {exc}"
        view = self.view(name)
        split = TrafficSplit()
        recorder = FleetRecorder()
        progress = DeploymentProgress()
        view.progress, view.split = progress, split
        store = self.platform.store

        async def on_shift(fraction: float) -> None:
            self._publish(name, config, new, progress)

        old.dispatch = _Dispatcher(self.platform, old, new, split, recorder, view).dispatch
        try:
            outcome = await run_blue_green(
                deployment,
                new_capacity=sum(max(1, v.pool.size) for v in new.variants.values()),
                alarms=alarms,
                recorder=recorder,
                split=split,
                progress=progress,
                on_shift=on_shift,
                on_progress=lambda: self._publish(name, config, new, progress),
                check_interval=self.check_interval,
                watched=(lambda: self.firing(watched)) if watched else None,
            )
            if outcome.completed:
                wait = float(policy.get("TerminationWaitInSeconds") or 0)
                if wait > 0:
                    progress.message = f"all traffic on the new fleet; old fleet terminates in {wait:g}s"
                    self._publish(name, config, new, progress)
                    await asyncio.sleep(wait)
                view.completed += 1
                view.last_outcome = "completed"
                log.info("deployment of %s to %s completed", name, config.get("EndpointConfigName"))
                return None
            view.rollbacks += 1
            view.last_outcome = f"rolled back: {outcome.reason}"
            store.update("endpoint", name, status="RollingBack")
            return outcome.reason
        except asyncio.CancelledError:
            # platform shutdown or DeleteEndpoint: the new fleet is not live, so nobody else stops it
            old.dispatch = None
            await asyncio.shield(new.stop())
            raise
        finally:
            old.dispatch = None
            view.progress = None
            store.update("endpoint", name, drop=("PendingDeploymentSummary",), touch=False)

    def _publish(
        self, name: str, config: dict[str, Any], new: EndpointRuntime, progress: DeploymentProgress
    ) -> None:
        variants = []
        for v in new.variants.values():
            summary: dict[str, Any] = {
                "VariantName": v.name,
                "CurrentWeight": v.weight * progress.new_fraction,
                "DesiredWeight": v.weight,
                "VariantStatus": [
                    {
                        "Status": progress.status,
                        "StatusMessage": progress.message[:1024],
                        "StartTime": progress.step_started_at,
                    }
                ],
            }
            if not v.config.get("ServerlessConfig"):
                summary["CurrentInstanceCount"] = v.pool.size
                summary["DesiredInstanceCount"] = v.pool.desired or v.pool.size
                if v.config.get("InstanceType"):
                    summary["InstanceType"] = v.config["InstanceType"]
            variants.append(summary)
        self.platform.store.update(
            "endpoint",
            name,
            touch=False,
            merge={
                "PendingDeploymentSummary": {
                    "EndpointConfigName": config.get("EndpointConfigName"),
                    "ProductionVariants": variants,
                    "StartTime": progress.started_at,
                }
            },
        )


class _Dispatcher:
    """Routes one request of an endpoint under deployment to the old or the new fleet."""

    def __init__(
        self,
        platform: Services,
        old: EndpointRuntime,
        new: EndpointRuntime,
        split: TrafficSplit,
        recorder: FleetRecorder,
        view: DeploymentView,
    ) -> None:
        self.platform, self.old, self.new = platform, old, new
        self.split, self.recorder, self.view = split, recorder, view

    @staticmethod
    def _variant(
        fleet: EndpointRuntime, other: EndpointRuntime, target: str | None
    ) -> tuple[EndpointRuntime, VariantRuntime]:
        if target:
            try:
                return fleet, fleet.route(target)
            except SageMakerError:
                return other, other.route(target)
        return fleet, fleet.route(None)

    async def dispatch(
        self, record: InvocationRecord, body: bytes, headers: dict[str, str]
    ) -> tuple[VariantRuntime, VariantAnswer]:
        use_new = self.split.pick_new()
        fleet, variant = self._variant(
            self.new if use_new else self.old, self.old if use_new else self.new, record.target_variant
        )
        on_new = fleet is self.new
        started = time.perf_counter()
        try:
            result = await call_variant(
                self.platform.endpoints,
                fleet,
                variant,
                body,
                headers,
                target_container=record.target_container,
            )
        except SageMakerError:
            if not on_new or not self.split.retry_on_old(0):
                raise
            self._failed_on_new(variant, time.perf_counter() - started)
        else:
            self.recorder.record("new" if on_new else "old", result[0], time.perf_counter() - started)
            if not (on_new and self.split.retry_on_old(result[0])):
                return variant, result
            self._failed_on_new(variant, time.perf_counter() - started, recorded=True)
        # the new fleet failed while the deployment is in progress: the old fleet answers instead
        self.view.fallbacks += 1
        variant = (
            self.old.route(record.target_variant)
            if record.target_variant
            and record.target_variant.lower() in {n.lower() for n in self.old.variants}
            else self.old.route(None)
        )
        started = time.perf_counter()
        result = await call_variant(
            self.platform.endpoints,
            self.old,
            variant,
            body,
            headers,
            target_container=record.target_container,
        )
        self.recorder.record("old", result[0], time.perf_counter() - started)
        return variant, result

    def _failed_on_new(self, variant: VariantRuntime, seconds: float, *, recorded: bool = False) -> None:
        """A new-fleet request that failed (and goes to the old fleet): counted for the deployment's rules
        and, as an Invocation5XXError of the variant, in the endpoint's metrics (CloudWatch alarms)."""
        if not recorded:
            self.recorder.record("new", 0, seconds)
        self.platform.invocation_stats.record(
            self.new.name, variant.name, SERVER_ERROR, seconds, 0.0, variant.pool.size
        )


class GuardrailSettings(BaseSettings):
    """``SELFMAKER_ALARMS``: alarm rules as a JSON document or the path of one (read once at start)."""

    model_config = SettingsConfigDict(env_prefix="SELFMAKER_", extra="ignore")

    alarms: str | None = None


def install(platform: Services) -> DeploymentGuard:
    """Create the guard (alarm setting read once); the platform keeps it in ``platform.features``."""
    guard = DeploymentGuard(platform, load_alarm_setting(GuardrailSettings().alarms))
    platform.features.put(guard)
    return guard


def snapshots(platform: Services) -> dict[str, dict[str, Any]]:
    """``{endpoint: deployment counters}`` of live endpoints that had a guarded deployment."""
    guard = platform.features.get(DeploymentGuard)
    if guard is None:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for runtime in list(platform.endpoints.live.values()):
        view = guard.views.get(runtime.name.lower())
        if view is not None:
            out[runtime.name] = view.snapshot()
    return out


def metrics(platform: Services) -> Metrics:
    """Counters of guarded deployments (``Deployment`` in ``selfmaker status``)."""
    data = snapshots(platform)
    found = Metrics("Deployment", data)
    rows = [(ep, d) for ep, d in data.items() if d]
    family(
        found.lines,
        "selfmaker_deployment_new_fleet_traffic_ratio",
        "gauge",
        "Share of traffic (0 to 1) on the new fleet of a blue/green deployment in progress.",
        [({"endpoint": ep}, d.get("new_fraction")) for ep, d in rows],
    )
    family(
        found.lines,
        "selfmaker_deployment_fallbacks_total",
        "counter",
        "New-fleet failures re-sent to the old fleet during a deployment.",
        [({"endpoint": ep}, d.get("fallbacks")) for ep, d in rows],
    )
    family(
        found.lines,
        "selfmaker_deployment_rollbacks_total",
        "counter",
        "Deployments rolled back by an alarm or timeout.",
        [({"endpoint": ep}, d.get("rollbacks")) for ep, d in rows],
    )
    return found

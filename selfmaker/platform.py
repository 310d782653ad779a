"""The composition root of ``selfmaker up``: builds the store, executors and managers, hands each one
what it needs, binds the registered feature hooks, and starts and stops everything in order.

Only the entry point (:mod:`selfmaker.commands.up`) imports this module; everything else gets the parts it
uses (handlers and hooks get :class:`selfmaker.services.Services`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator

import psutil
from aiohttp import web

from selfmaker.alarms import Alarms
from selfmaker.api.metrics import publish_loop
from selfmaker.api.registry import Registry
from selfmaker.endpoints.builder import DeploymentHooks
from selfmaker.endpoints.manager import EndpointManager
from selfmaker.endpoints.stats import InvocationStats
from selfmaker.executors import Executors
from selfmaker.jobs.monitoring import MonitoringManager
from selfmaker.jobs.processing import ProcessingJobs
from selfmaker.jobs.training import TrainingManager
from selfmaker.jobs.transform import TransformJobs
from selfmaker.jobs.tuning import TuningManager
from selfmaker.logrotate import sweep
from selfmaker.logstreams import LogStreams
from selfmaker.metricstore import MetricStore
from selfmaker.services import Services
from selfmaker.settings import PlatformSettings
from selfmaker.state import StateStore

log = logging.getLogger(__name__)


class Platform:
    """One ``selfmaker up``: its parts (:attr:`services`) and their start and stop."""

    def __init__(self, settings: PlatformSettings, registry: Registry) -> None:
        settings.home.mkdir(parents=True, exist_ok=True)
        store = StateStore(settings.db_path)
        executors = Executors(settings)
        hooks = DeploymentHooks()
        metrics = MetricStore(settings.metrics_db_path, settings.metrics_retention_days)
        invocation_stats = InvocationStats()
        metrics.sources.append(invocation_stats)
        training = TrainingManager(settings, store, metrics)
        processing = ProcessingJobs(settings, store)
        self.services = Services(
            settings=settings,
            store=store,
            registry=registry,
            executors=executors,
            endpoints=EndpointManager(settings, store, executors, hooks),
            training=training,
            transforms=TransformJobs(settings, store, executors),
            tuning=TuningManager(settings, store, training),
            processing=processing,
            monitoring=MonitoringManager(settings, store, processing),
            logs=LogStreams(settings, store),
            metrics=metrics,
            invocation_stats=invocation_stats,
            alarms=Alarms(settings, store, metrics),
        )
        # the managers know features only as callables; the platform argument is bound here
        bind = functools.partial
        hooks.pool_factories.extend(bind(f, self.services) for f in registry.pool_factories)
        hooks.deployed.extend(bind(f, self.services) for f in registry.endpoint_hooks)
        hooks.deleted.extend(bind(f, self.services) for f in registry.endpoint_deleted_hooks)
        hooks.strategies.extend(bind(f, self.services) for f in registry.deployment_strategies)
        self._publisher: asyncio.Task[None] | None = None
        self._rotator: asyncio.Task[None] | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._alarm_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Recover jobs, restore endpoints, run the features' start-up hooks, publish metrics."""
        services = self.services
        self._reap_orphans()
        services.store.clear_instances()
        services.training.recover()
        services.processing.recover()
        services.monitoring.start_clock()  # after recover(): executions read their jobs' final status
        services.tuning.start_up()  # after recover(): the training jobs it marked Failed are replaced
        await services.endpoints.restore()
        services.transforms.start_up(asyncio.get_running_loop())
        for hook in services.registry.startup:
            await hook(services)
        self._publisher = asyncio.get_running_loop().create_task(
            publish_loop(services), name="variant-metrics-publisher"
        )
        if services.settings.log_max_bytes:
            self._rotator = asyncio.get_running_loop().create_task(self._rotate_logs(), name="log-rotation")
        self._sampler = asyncio.get_running_loop().create_task(self._sample_metrics(), name="metric-sampler")
        self._flusher = asyncio.get_running_loop().create_task(self._flush_metrics(), name="metric-flusher")
        self._alarm_task = asyncio.get_running_loop().create_task(self._evaluate_alarms(), name="alarms")

    async def _evaluate_alarms(self) -> None:
        """Evaluate the CloudWatch alarms every ``alarm_evaluation_interval`` seconds."""
        services = self.services
        while True:
            await asyncio.sleep(services.settings.alarm_evaluation_interval)
            try:
                await services.alarms.evaluate_all()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("evaluating alarms failed")

    async def _sample_metrics(self) -> None:
        """Sample the features' gauges (backlogs, serverless concurrency) once a second."""
        stats = self.services.invocation_stats
        while True:
            await asyncio.sleep(1.0)
            stats.sample_all()

    async def _flush_metrics(self) -> None:
        """Roll the last minute of live metrics up into the metric store, just after each minute ends;
        prune what is older than the retention once an hour."""
        store = self.services.metrics
        loop = asyncio.get_running_loop()
        pruned_at = 0.0
        while True:
            await asyncio.sleep(60.5 - time.time() % 60)
            try:
                await store.flush()
                self.services.invocation_stats.prune({r.name for r in self.services.endpoints.live.values()})
                if loop.time() - pruned_at >= 3600:
                    pruned_at = loop.time()
                    await asyncio.to_thread(store.prune)
            except Exception:  # noqa: BLE001 - the next minute tries again; the ring keeps 10 minutes
                log.exception("writing the metric store failed")

    async def _rotate_logs(self) -> None:
        """Rotate the model-server and job logs by size (the platform's own log rotates itself)."""
        settings = self.services.settings
        while True:
            await asyncio.sleep(settings.log_check_interval)
            await asyncio.to_thread(
                sweep,
                settings.logs_dir,
                settings.log_max_bytes,
                settings.log_backups,
                frozenset({"selfmaker.log"}),
            )

    def _reap_orphans(self) -> None:
        """Kill model servers a crashed previous run left behind (recorded PIDs that still run
        ``-m serving`` and started before this process)."""
        me = psutil.Process()
        for instance in self.services.store.instances():
            pid = instance.get("Pid")
            if not pid:
                continue
            try:
                proc = psutil.Process(pid)
                if "serving" not in proc.cmdline() or proc.create_time() > me.create_time():
                    continue
                log.warning(
                    "stopping model server %s (pid %s) left by a previous run", instance["InstanceId"], pid
                )
                os.killpg(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue

    async def stop(self) -> None:
        """Stop jobs, features, model servers; close the executors and the store."""
        services = self.services
        for task in (self._publisher, self._rotator, self._sampler, self._flusher, self._alarm_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            await services.metrics.flush(partial=True)
        except Exception:  # noqa: BLE001 - the figures of the last minute are lost, nothing else
            log.exception("writing the metric store at shutdown failed")
        await services.transforms.shutdown()
        for hook in services.registry.shutdown:
            try:
                await hook(services)
            except Exception:  # noqa: BLE001 - one feature must not keep the others from stopping
                log.exception("shutdown hook %s failed", getattr(hook, "__name__", hook))
        await services.endpoints.shutdown()
        await services.tuning.shutdown()  # first: no tuning job launches a training job while they stop
        await services.training.shutdown()
        await asyncio.to_thread(services.monitoring.stop_clock)  # no new execution while the jobs stop
        await services.processing.shutdown()
        await services.executors.close()
        services.metrics.close()
        services.store.close()

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the platform runs while the app does."""
        await self.start()
        yield
        await self.stop()

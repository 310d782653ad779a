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
from collections.abc import AsyncIterator

import psutil
from aiohttp import web

from selfmaker.api.metrics import publish_loop
from selfmaker.api.registry import Registry
from selfmaker.endpoints.builder import DeploymentHooks
from selfmaker.endpoints.manager import EndpointManager
from selfmaker.endpoints.stats import InvocationStats
from selfmaker.executors import Executors
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
        training = TrainingManager(settings, store)
        self.services = Services(
            settings=settings,
            store=store,
            registry=registry,
            executors=executors,
            endpoints=EndpointManager(settings, store, executors, hooks),
            training=training,
            transforms=TransformJobs(settings, store, executors),
            tuning=TuningManager(settings, store, training),
            processing=ProcessingJobs(settings, store),
            logs=LogStreams(settings, store),
            metrics=metrics,
            invocation_stats=invocation_stats,
        )
        # the managers know features only as callables; the platform argument is bound here
        bind = functools.partial
        hooks.pool_factories.extend(bind(f, self.services) for f in registry.pool_factories)
        hooks.deployed.extend(bind(f, self.services) for f in registry.endpoint_hooks)
        hooks.deleted.extend(bind(f, self.services) for f in registry.endpoint_deleted_hooks)
        hooks.strategies.extend(bind(f, self.services) for f in registry.deployment_strategies)
        self._publisher: asyncio.Task[None] | None = None
        self._rotator: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Recover jobs, restore endpoints, run the features' start-up hooks, publish metrics."""
        services = self.services
        self._reap_orphans()
        services.store.clear_instances()
        services.training.recover()
        services.processing.recover()
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
        for task in (self._publisher, self._rotator):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await services.transforms.shutdown()
        for hook in services.registry.shutdown:
            try:
                await hook(services)
            except Exception:  # noqa: BLE001 - one feature must not keep the others from stopping
                log.exception("shutdown hook %s failed", getattr(hook, "__name__", hook))
        await services.endpoints.shutdown()
        await services.tuning.shutdown()  # first: no tuning job launches a training job while they stop
        await services.training.shutdown()
        await services.processing.shutdown()
        await services.executors.close()
        services.metrics.close()
        services.store.close()

    async def lifespan(self, app: web.Application) -> AsyncIterator[None]:
        """aiohttp cleanup context: the platform runs while the app does."""
        await self.start()
        yield
        await self.stop()

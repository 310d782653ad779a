"""The platform object: settings, state, executors, endpoint and training managers.

One instance per ``selfmaker up`` process, created by the entry point and handed to every operation
handler, runtime route and extension hook (``platform`` argument).
"""

from __future__ import annotations

import logging
from typing import Any

from selfmaker.api.registry import Registry
from selfmaker.arns import make_arn
from selfmaker.endpoints.manager import EndpointManager
from selfmaker.executors import Executor, executor_kind_for_image, load_executor
from selfmaker.settings import PlatformSettings
from selfmaker.state import StateStore
from selfmaker.training_jobs import TrainingManager

log = logging.getLogger(__name__)


class Platform:
    """Shared services of a running ``selfmaker up``."""

    def __init__(self, settings: PlatformSettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        settings.home.mkdir(parents=True, exist_ok=True)
        self.store = StateStore(settings.db_path)
        self._executors: dict[str, Executor] = {}
        self.endpoints = EndpointManager(self)
        self.training = TrainingManager(self)
        #: free-form state of extensions, keyed by extension name
        self.extensions: dict[str, Any] = {}

    def arn(self, kind: str, name: str) -> str:
        """The ARN of resource ``name`` of ``kind`` in this platform's region and account."""
        return make_arn(self.settings.region, self.settings.account_id, kind, name)

    def executor_for(self, image: str | None) -> Executor:
        """The executor that runs ``image`` (created on first use)."""
        kind = executor_kind_for_image(image, self.settings.process_images)
        executor = self._executors.get(kind)
        if executor is None:
            executor = load_executor(kind, self.settings)
            self._executors[kind] = executor
        return executor

    def install_executor(self, kind: str, executor: Executor) -> None:
        """Make ``executor`` the one for ``kind`` (extensions: e.g. the serverless fork executor)."""
        self._executors[kind] = executor

    async def start(self) -> None:
        """Recover jobs, restore endpoints, run extension start-up hooks."""
        self._reap_orphans()
        self.store.clear_instances()
        self.training.recover()
        await self.endpoints.restore()
        for hook in self.registry.startup:
            await hook(self)

    def _reap_orphans(self) -> None:
        """Kill model servers a crashed previous run left behind (recorded PIDs that still run
        ``-m serving`` and started before this process)."""
        import os
        import signal

        import psutil

        me = psutil.Process()
        for instance in self.store.instances():
            pid = instance.get("Pid")
            if not pid:
                continue
            try:
                proc = psutil.Process(pid)
                if "serving" not in proc.cmdline() or proc.create_time() > me.create_time():
                    continue
                log.warning("stopping model server %s (pid %s) left by a previous run", instance["InstanceId"], pid)
                os.killpg(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue

    async def stop(self) -> None:
        """Stop extensions, model servers and jobs; close the store."""
        for hook in self.registry.shutdown:
            try:
                await hook(self)
            except Exception:  # noqa: BLE001 - one extension must not keep the others from stopping
                log.exception("shutdown hook %s failed", getattr(hook, "__name__", hook))
        await self.endpoints.shutdown()
        await self.training.shutdown()
        for executor in self._executors.values():
            await executor.close()
        self.store.close()

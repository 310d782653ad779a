"""Instance health: a model server that died or cannot be reached leaves its pool at once and is replaced.

The router reports unreachable instances (:meth:`InstanceHealth.mark_dead`); a loop checks every live
instance's process once a second for the ones that died quietly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from selfmaker.endpoints.runtime import EndpointRuntime, Instance, InstancePool, handle_servers

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

log = logging.getLogger(__name__)


class InstanceHealth:
    """Replaces dead model servers of live deployments."""

    def __init__(self, settings: PlatformSettings, store: StateStore) -> None:
        self.settings = settings
        self.store = store
        self._background: set[asyncio.Task[Any]] = set()
        self._monitor: asyncio.Task[None] | None = None

    def start(self, live: Callable[[], Iterable[EndpointRuntime]], interval: float = 1.0) -> None:
        """Start watching the processes of the deployments ``live()`` returns."""
        self._monitor = asyncio.get_running_loop().create_task(
            self._loop(live, interval), name="endpoint-health"
        )

    async def _loop(self, live: Callable[[], Iterable[EndpointRuntime]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for runtime in list(live()):
                for variant in runtime.all_variants():
                    for instance in list(variant.pool.instances):
                        if instance.handle.alive():
                            continue
                        log.warning(
                            "instance %s of %s died; replacing it", instance.instance_id, runtime.name
                        )
                        self.mark_dead(variant.pool, instance)

    async def _replace(self, pool: InstancePool) -> None:
        if pool.desired <= 0:  # e.g. a serverless pool scaled to zero: nothing to bring back
            return
        try:
            await pool.scale_to(pool.desired)
        except Exception:  # noqa: BLE001 - logged; the health loop tries again on the next death
            log.exception("could not replace an instance")

    def mark_dead(self, pool: InstancePool, instance: Instance) -> None:
        """Stop routing to ``instance``, stop it, start a replacement (up to ``pool.desired``)."""
        if not pool.detach(instance):
            return

        async def replace() -> None:
            instance.close()
            await instance.handle.stop(self.settings.stop_grace)
            for record_id, _ in handle_servers(instance.handle):
                self.store.remove_instance(record_id)
            await self._replace(pool)

        task = asyncio.get_running_loop().create_task(replace())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def shutdown(self) -> None:
        """Stop watching; cancel replacements in progress."""
        if self._monitor is not None:
            self._monitor.cancel()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *([self._monitor] if self._monitor else []), return_exceptions=True)

"""Endpoint lifecycle: create, blue/green update, live weight/capacity changes, delete, restore.

State transitions are written to the store (what DescribeEndpoint shows); the routable deployments
live in :attr:`EndpointManager.live`. A deployment is swapped in only after every instance of every
variant answered ``/ping``; the previous one is then drained (in-flight requests finish) and stopped,
so clients see no failed request during updates.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfmaker.endpoints.builder import DeployError, DeploymentBuilder, DeploymentHooks
from selfmaker.endpoints.health import InstanceHealth
from selfmaker.endpoints.runtime import EndpointRuntime, Instance, InstancePool
from selfmaker.errors import ValidationError

if TYPE_CHECKING:
    from selfmaker.executors import Executors
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

log = logging.getLogger(__name__)

__all__ = ["SERVING", "DeployError", "EndpointManager"]

#: statuses in which the live deployment takes traffic
SERVING = {"InService", "Updating", "SystemUpdating", "RollingBack"}


class EndpointManager:
    """Owns every live endpoint deployment of the platform."""

    def __init__(
        self, settings: PlatformSettings, store: StateStore, executors: Executors, hooks: DeploymentHooks
    ) -> None:
        self.settings = settings
        self.store = store
        self.hooks = hooks
        #: builds deployments and single variants (public: features build variants with it)
        self.builder = DeploymentBuilder(settings, store, executors, hooks)
        self.health = InstanceHealth(settings, store)
        #: lower-cased endpoint name -> routable deployment
        self.live: dict[str, EndpointRuntime] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}

    # ---- runtime lookup ------------------------------------------------------------------------

    def runtime_for(self, name: str) -> EndpointRuntime:
        """The deployment that serves ``name`` now; runtime ValidationError if none."""
        runtime = self.live.get(name.lower())
        if runtime is not None and runtime.name == name:
            return runtime
        record = self.store.get("endpoint", name)
        if record is None or (runtime is not None and runtime.name != name):
            raise ValidationError(
                f"Endpoint {name} of account {self.settings.account_id} not found.",
                extra={"ErrorCode": "NO_SUCH_ENDPOINT"},
            )
        raise ValidationError(
            f"Endpoint {name} of account {self.settings.account_id} is not in service "
            f"(status {record.status}).",
            extra={"ErrorCode": "ENDPOINT_NOT_IN_SERVICE"},
        )

    def _variant_summaries(self, runtime: EndpointRuntime) -> list[dict[str, Any]]:
        now = time.time()
        summaries = []
        for v in runtime.variants.values():
            summary: dict[str, Any] = {
                "VariantName": v.name,
                "DeployedImages": [
                    {
                        "SpecifiedImage": v.image or "selfmaker",
                        "ResolvedImage": v.image or "selfmaker",
                        "ResolutionTime": now,
                    }
                ],
                "CurrentWeight": v.weight,
                "DesiredWeight": v.weight,
            }
            if v.config.get("ServerlessConfig"):
                summary["CurrentServerlessConfig"] = v.config["ServerlessConfig"]
                summary["DesiredServerlessConfig"] = v.config["ServerlessConfig"]
            else:
                summary["CurrentInstanceCount"] = v.pool.size
                summary["DesiredInstanceCount"] = v.pool.desired or v.pool.size
            summaries.append(summary)
        return summaries

    def _shadow_summaries(self, runtime: EndpointRuntime) -> list[dict[str, Any]] | None:
        if not runtime.shadow_variants:
            return None
        return [
            {
                "VariantName": v.name,
                "CurrentWeight": v.weight,
                "DesiredWeight": v.weight,
                "CurrentInstanceCount": v.pool.size,
                "DesiredInstanceCount": v.pool.desired or v.pool.size,
            }
            for v in runtime.shadow_variants.values()
        ]

    def _deploy_dir(self, endpoint: str) -> Path:
        return self.settings.work_dir / "endpoints" / endpoint.lower() / uuid.uuid4().hex[:12]

    def _spawn(self, name: str, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"endpoint:{name}")
        self._tasks[name.lower()] = task
        task.add_done_callback(
            lambda t: self._tasks.pop(name.lower(), None) if self._tasks.get(name.lower()) is t else None
        )

    def settled(self, name: str) -> bool:
        """Whether ``name`` serves a deployment and no create/update/delete of it is running."""
        return name.lower() in self.live and not self.busy(name)

    def retained(self, name: str, excluded: set[str]) -> dict[str, dict[str, Any]]:
        """UpdateEndpoint's ``RetainAllVariantProperties``: ``{variant: {"weight": w, "count": n}}`` of the
        deployment in service, without the ``excluded`` VariantPropertyTypes (DesiredWeight,
        DesiredInstanceCount)."""
        retain: dict[str, dict[str, Any]] = {}
        for variant in self.live[name.lower()].variants.values():
            kept: dict[str, Any] = {}
            if "DesiredWeight" not in excluded:
                kept["weight"] = variant.weight
            if "DesiredInstanceCount" not in excluded and variant.pool.size:
                kept["count"] = variant.pool.desired or variant.pool.size
            retain[variant.name] = kept
        return retain

    def busy(self, name: str) -> bool:
        """Whether a create/update/delete of ``name`` is still running."""
        task = self._tasks.get(name.lower())
        return task is not None and not task.done()

    def create(self, name: str, config: dict[str, Any]) -> None:
        """Start deploying a new endpoint (its record exists with status Creating)."""
        self._spawn(name, self._create(name, config))

    async def _deploy(
        self,
        name: str,
        config: dict[str, Any],
        overrides: dict[str, dict[str, Any]],
        models: dict[str, dict[str, Any]] | None,
        doing: str,
        on_failure: Callable[[str], None],
    ) -> EndpointRuntime | None:
        """Build a deployment of ``config`` in a new directory: the one path of create, update and restore.

        On failure the directory is removed and ``on_failure(reason)`` records the FailureReason
        (``doing`` names the step in the reason of an unexpected error); returns None then.
        """
        deploy_dir = self._deploy_dir(name)
        try:
            runtime = await self.builder.build(name, config, overrides, deploy_dir, models)
        except DeployError as exc:
            reason = str(exc)
        except asyncio.CancelledError:
            shutil.rmtree(deploy_dir, ignore_errors=True)
            raise
        except Exception:
            log.exception("%s endpoint %s failed", doing, name)
            reason = f"internal error while {doing} the endpoint"
        else:
            runtime.deploy_dir = deploy_dir
            return runtime
        shutil.rmtree(deploy_dir, ignore_errors=True)
        on_failure(reason)
        return None

    async def _create(self, name: str, config: dict[str, Any]) -> None:
        runtime = await self._deploy(
            name, config, {}, None, "deploying", lambda reason: self._fail(name, reason)
        )
        if runtime is None:
            return
        self.live[name.lower()] = runtime
        self.store.update(
            "endpoint",
            name,
            status="InService",
            drop=("FailureReason",),
            merge={
                "ProductionVariants": self._variant_summaries(runtime),
                "ShadowProductionVariants": self._shadow_summaries(runtime),
                "_Config": config,
                "_Models": runtime.models,
            },
        )
        log.info("endpoint %s is InService", name)

    def _fail(self, name: str, reason: str) -> None:
        log.warning("endpoint %s failed: %s", name, reason)
        self.store.update("endpoint", name, status="Failed", merge={"FailureReason": reason[:1024]})

    def _update_failed(self, name: str, reason: str) -> None:
        """An update that did not come up: the endpoint keeps serving its deployment, with the reason."""
        log.warning("update of endpoint %s failed: %s", name, reason)
        self.store.update("endpoint", name, status="InService", merge={"FailureReason": reason[:1024]})

    def update(self, name: str, config: dict[str, Any], retain: dict[str, dict[str, Any]]) -> None:
        """Blue/green update to ``config`` (the record is already Updating); ``retain`` maps variant
        names to ``{"weight": w, "count": n}`` kept from the current deployment."""
        self._spawn(name, self._update(name, config, retain))

    async def _update(self, name: str, config: dict[str, Any], retain: dict[str, dict[str, Any]]) -> None:
        runtime = await self._deploy(
            name, config, retain, None, "updating", lambda reason: self._update_failed(name, reason)
        )
        if runtime is None:
            return
        old = self.live.get(name.lower())
        if old is not None:
            for strategy in self.hooks.strategies:
                # e.g. guardrails: shift traffic per DeploymentConfig while both fleets run; a reason =
                # rolled back
                reason = await strategy(name, old, runtime, config)
                if reason is not None:
                    await self._retire_runtime(runtime)
                    self.store.update(
                        "endpoint", name, status="InService", merge={"FailureReason": reason[:1024]}
                    )
                    return
        self.live[name.lower()] = runtime  # traffic moves here, atomically for new requests
        self.store.update(
            "endpoint",
            name,
            drop=("FailureReason",),
            merge={
                "EndpointConfigName": config["EndpointConfigName"],
                "ProductionVariants": self._variant_summaries(runtime),
                "ShadowProductionVariants": self._shadow_summaries(runtime),
                "_Config": config,
                "_Models": runtime.models,
            },
        )
        if old is not None:  # stays Updating until the old fleet has drained and stopped
            await self._retire_runtime(old)
        self.store.update("endpoint", name, status="InService")
        log.info("endpoint %s updated to %s", name, config["EndpointConfigName"])

    async def _retire_runtime(self, runtime: EndpointRuntime) -> None:
        """Stop a deployment no request can resolve any more: first the requests that resolved it before
        (leases) are answered, then its pools drain and stop."""
        if not await runtime.quiesced(self.settings.drain_timeout):
            log.warning(
                "endpoint %s: %d requests still in flight after %.0f s; stopping its old deployment anyway",
                runtime.name,
                runtime.inflight,
                self.settings.drain_timeout,
            )
        await runtime.stop()
        if runtime.deploy_dir is not None:
            shutil.rmtree(runtime.deploy_dir, ignore_errors=True)

    def update_weights_and_capacities(self, name: str, desired: list[dict[str, Any]]) -> None:
        """Apply new weights now and new instance counts in the background (record is Updating)."""
        runtime = self.live[name.lower()]
        weights = {
            d["VariantName"]: d["DesiredWeight"] for d in desired if d.get("DesiredWeight") is not None
        }
        runtime.set_weights(weights)
        counts = {
            d["VariantName"]: d["DesiredInstanceCount"]
            for d in desired
            if d.get("DesiredInstanceCount") is not None
        }
        for variant_name, count in counts.items():
            runtime.variants[variant_name].pool.desired = count
        self.store.update("endpoint", name, merge={"ProductionVariants": self._variant_summaries(runtime)})
        self._spawn(name, self._apply_capacities(name, runtime, counts))

    async def _apply_capacities(self, name: str, runtime: EndpointRuntime, counts: dict[str, int]) -> None:
        failure: str | None = None
        results = await asyncio.gather(
            *(runtime.variants[v].pool.scale_to(c) for v, c in counts.items()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                failure = str(result) if isinstance(result, DeployError) else "internal error while scaling"
                if not isinstance(result, DeployError):
                    log.error("scaling %s failed", name, exc_info=result)
        for variant_name in counts:
            pool = runtime.variants[variant_name].pool
            pool.desired = pool.size
        merge: dict[str, Any] = {"ProductionVariants": self._variant_summaries(runtime)}
        if failure:
            merge["FailureReason"] = failure[:1024]
        self.store.update(
            "endpoint", name, status="InService", merge=merge, drop=() if failure else ("FailureReason",)
        )

    def delete(self, name: str) -> None:
        """Stop routing to ``name``, drain and stop its servers, then forget it (record is Deleting)."""
        previous = self._tasks.get(name.lower())
        runtime = self.live.pop(name.lower(), None)
        self._spawn(name, self._delete(name, runtime, previous))

    async def _delete(
        self, name: str, runtime: EndpointRuntime | None, previous: asyncio.Task[Any] | None
    ) -> None:
        if previous is not None and not previous.done():
            previous.cancel()
            await asyncio.gather(previous, return_exceptions=True)
            late = self.live.pop(name.lower(), None)  # an update may have swapped in before the cancel
            if late is not None and late is not runtime:
                await self._retire_runtime(late)
        if runtime is not None:
            await self._retire_runtime(runtime)
        shutil.rmtree(self.settings.work_dir / "endpoints" / name.lower(), ignore_errors=True)
        await self._run_deleted_hooks(runtime.name if runtime is not None else name)
        self.store.delete("endpoint", name)
        log.info("endpoint %s deleted", name)

    async def _run_deleted_hooks(self, name: str) -> None:
        for hook in self.hooks.deleted:
            try:
                result = hook(name)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # noqa: BLE001 - one extension's failure must not keep the endpoint alive
                log.exception("endpoint %s: a deletion hook failed", name)

    # ---- start-up, health, shutdown ------------------------------------------------------------

    async def restore(self) -> None:
        """Bring back every endpoint of a previous run (relaunching its model servers)."""
        for record in self.store.list("endpoint"):
            config = record.doc.get("_Config")
            if record.status == "Deleting" or config is None:
                if record.status == "Deleting":
                    self.store.delete("endpoint", record.name)
                elif record.status == "Creating":
                    cfg = self.store.get("endpoint-config", record.doc.get("EndpointConfigName", ""))
                    if cfg is not None:
                        self.create(record.name, cfg.doc)
                    else:
                        self._fail(
                            record.name,
                            "The endpoint configuration was deleted before the endpoint was created.",
                        )
                continue
            if record.status == "Failed":
                continue
            retain = {
                v["VariantName"]: {
                    "weight": v.get("CurrentWeight", 1.0),
                    "count": v.get("CurrentInstanceCount"),
                }
                for v in record.doc.get("ProductionVariants") or []
                if v.get("CurrentInstanceCount")
            }
            for v in record.doc.get("ProductionVariants") or []:
                retain.setdefault(v["VariantName"], {"weight": v.get("CurrentWeight", 1.0)})
            self.store.update("endpoint", record.name, status="Creating", touch=False)
            self._spawn(record.name, self._restore(record.name, config, retain, record.doc.get("_Models")))
        self.health.start(self.live.values)

    async def _restore(
        self,
        name: str,
        config: dict[str, Any],
        retain: dict[str, dict[str, Any]],
        models: dict[str, dict[str, Any]] | None,
    ) -> None:
        runtime = await self._deploy(
            name, config, retain, models, "deploying", lambda reason: self._fail(name, reason)
        )
        if runtime is None:
            return
        self.live[name.lower()] = runtime
        self.store.update(
            "endpoint",
            name,
            status="InService",
            touch=False,
            merge={"ProductionVariants": self._variant_summaries(runtime)},
        )
        log.info("endpoint %s restored", name)

    def mark_dead(self, pool: InstancePool, instance: Instance) -> None:
        """The router could not connect to ``instance``: stop routing to it, stop it, start a replacement."""
        self.health.mark_dead(pool, instance)

    async def shutdown(self) -> None:
        """Stop every model server; endpoint records stay so the next start restores them."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.health.shutdown()
        runtimes, self.live = list(self.live.values()), {}
        for runtime in runtimes:
            for variant in runtime.all_variants():
                instances, variant.pool.instances = variant.pool.instances, []
                await asyncio.gather(
                    *(i.handle.stop(self.settings.stop_grace) for i in instances), return_exceptions=True
                )
        self.store.clear_instances()

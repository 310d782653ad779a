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
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from common.http import UpstreamError, UpstreamPool
from selfmaker.endpoints.runtime import (
    EndpointRuntime,
    Instance,
    InstancePool,
    VariantContext,
    VariantRuntime,
)
from selfmaker.errors import ValidationError
from selfmaker.executors.base import ExecutorError, InstanceHandle, InstanceSpec
from selfmaker.modeldata import ModelDataError, fetch_model_data

if TYPE_CHECKING:
    from selfmaker.platform import Platform

log = logging.getLogger(__name__)

#: statuses in which the live deployment takes traffic
SERVING = {"InService", "Updating", "SystemUpdating", "RollingBack"}


class DeployError(Exception):
    """A deployment could not be brought up; the message becomes FailureReason."""


def _ping_failure(variant: str) -> str:
    return (f"The primary container for production variant {variant} did not pass the ping health check. "
            "Please check CloudWatch logs for this endpoint.")


class EndpointManager:
    """Owns every live endpoint deployment of the platform."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.settings = platform.settings
        self.store = platform.store
        #: lower-cased endpoint name -> routable deployment
        self.live: dict[str, EndpointRuntime] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._closing = False
        #: blue/green traffic shifting with auto-rollback (selfmaker.guardrails_hooks), set by its plugin
        self.deployment_guard: Any = None

    # ---- runtime lookup ------------------------------------------------------------------------

    def runtime_for(self, name: str) -> EndpointRuntime:
        """The deployment that serves ``name`` now; runtime ValidationError if none."""
        runtime = self.live.get(name.lower())
        if runtime is not None and runtime.name == name:
            return runtime
        record = self.store.get("endpoint", name)
        if record is None or (runtime is not None and runtime.name != name):
            raise ValidationError(f"Endpoint {name} of account {self.settings.account_id} not found.",
                                  extra={"ErrorCode": "NO_SUCH_ENDPOINT"})
        raise ValidationError(f"Endpoint {name} of account {self.settings.account_id} is not in service "
                              f"(status {record.status}).", extra={"ErrorCode": "ENDPOINT_NOT_IN_SERVICE"})

    # ---- instances -----------------------------------------------------------------------------

    async def _wait_ready(self, handle: InstanceHandle, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        parsed = urlsplit(handle.url)
        probe = UpstreamPool(parsed.hostname or "127.0.0.1", parsed.port or 80, max_idle=1)
        try:
            while True:
                if not handle.alive():
                    raise DeployError("exited")
                try:
                    if (await probe.request("GET", "/ping", {}, b"", 2.0)).status == 200:
                        return
                except (UpstreamError, asyncio.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise DeployError("timeout")
                await asyncio.sleep(0.1)
        finally:
            probe.close()

    def _launcher(self, endpoint: str, variant: dict[str, Any], model: dict[str, Any], container: dict[str, Any],
                  model_dir: Path, deploy_dir: Path) -> Any:
        variant_name = variant["VariantName"]
        timeout = float(variant.get("ContainerStartupHealthCheckTimeoutInSeconds") or self.settings.startup_timeout)
        image = container.get("Image") or ""

        async def launch() -> Instance:
            instance_id = f"{endpoint}-{variant_name}-{uuid.uuid4().hex[:8]}"
            work = deploy_dir / "instances" / instance_id
            work.mkdir(parents=True, exist_ok=True)
            log_path = self.settings.logs_dir / "endpoints" / endpoint / f"{instance_id}.log"
            env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
            serverless = variant.get("ServerlessConfig") or {}
            spec = InstanceSpec(
                instance_id=instance_id, endpoint_name=endpoint, variant_name=variant_name,
                model_name=model["ModelName"], image=image, model_dir=model_dir, environment=env,
                instance_type=variant.get("InstanceType"), work_dir=work, log_path=log_path,
                startup_timeout=timeout, container=container, memory_mb=serverless.get("MemorySizeInMB"),
            )
            try:
                executor = self.platform.executor_for(image)
                handle = await executor.start(spec)
            except ExecutorError as exc:
                raise DeployError(f"Production variant {variant_name} could not start: {exc}") from exc
            self.store.put_instance(instance_id, endpoint, variant_name, url=handle.url, pid=handle.pid,
                                    status="Starting", log_path=str(log_path))
            try:
                await self._wait_ready(handle, timeout)
            except (DeployError, asyncio.CancelledError) as exc:
                await handle.stop(self.settings.stop_grace)
                self.store.remove_instance(instance_id)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                detail = (f" The model server exited (see `selfmaker logs {endpoint}`)." if str(exc) == "exited"
                          else f" It did not answer within {timeout:g} seconds.")
                raise DeployError(_ping_failure(variant_name) + detail) from None
            self.store.put_instance(instance_id, endpoint, variant_name, url=handle.url, pid=handle.pid,
                                    status="InService", log_path=str(log_path))
            log.info("instance %s of %s/%s ready at %s", instance_id, endpoint, variant_name, handle.url)
            return Instance(handle)

        return launch

    async def retire(self, instance: Instance) -> None:
        """Drain ``instance`` (already detached from its pool) and stop its server."""
        if not await instance.drained(self.settings.drain_timeout):
            log.warning("instance %s still had %d requests after %ss; stopping it", instance.instance_id,
                        instance.outstanding, self.settings.drain_timeout)
        instance.upstream.close()
        await instance.handle.stop(self.settings.stop_grace)
        self.store.remove_instance(instance.instance_id)

    # ---- deployments ---------------------------------------------------------------------------

    async def _build(self, endpoint: str, config: dict[str, Any], overrides: dict[str, dict[str, Any]],
                     deploy_dir: Path, models: dict[str, dict[str, Any]] | None = None) -> EndpointRuntime:
        """Bring up every variant of ``config``; all-or-nothing.

        ``models`` are the model documents the deployment was made with (a restart passes those stored
        with the endpoint: SageMaker endpoints keep serving a model deleted after CreateEndpoint); the
        documents used end up in ``runtime.attributes["models"]``, production and shadow variants alike.
        """
        used: dict[str, dict[str, Any]] = dict(models or {})
        variants: list[VariantRuntime] = []
        try:
            for variant in config["ProductionVariants"]:
                variants.append(await self._build_variant(endpoint, variant, overrides.get(variant["VariantName"], {}),
                                                          deploy_dir, used))
            runtime = EndpointRuntime(endpoint, config["EndpointConfigName"], variants)
            runtime.attributes["models"] = used
            for hook in self.platform.registry.endpoint_hooks:
                result = hook(self.platform, runtime, config)
                if asyncio.iscoroutine(result):
                    await result
        except BaseException:
            await asyncio.gather(*(v.pool.stop() for v in variants), return_exceptions=True)
            raise
        return runtime

    async def _build_variant(self, endpoint: str, variant: dict[str, Any], override: dict[str, Any],
                             deploy_dir: Path, models: dict[str, dict[str, Any]] | None = None) -> VariantRuntime:
        """One variant's pool; its model comes from ``models`` (filled in) when there, else from the store."""
        name = variant["VariantName"]
        model_name = variant.get("ModelName", "")
        model = models.get(model_name) if models is not None else None
        if model is None:
            model_record = self.store.get("model", model_name)
            if model_record is None:
                raise DeployError(f"Could not find model \"{self.platform.arn('model', model_name)}\".")
            model = model_record.doc
        if models is not None:
            models[model_name] = model
        container = model.get("PrimaryContainer") or (model.get("Containers") or [{}])[0]
        variant_dir = deploy_dir / name
        try:
            model_dir = await asyncio.to_thread(fetch_model_data, container, variant_dir)
        except ModelDataError as exc:
            raise DeployError(f"Failed to download model data for production variant {name}: {exc}") from exc
        ctx = VariantContext(
            endpoint_name=endpoint, variant=variant, model=model, container=container, model_dir=model_dir,
            launch=self._launcher(endpoint, variant, model, container, model_dir, variant_dir), retire=self.retire,
        )
        pool: InstancePool | None = None
        for factory in self.platform.registry.pool_factories:
            pool = factory(self.platform, ctx)
            if pool is not None:
                break
        if pool is None:
            if variant.get("ServerlessConfig"):
                raise DeployError(f"Production variant {name}: serverless variants are not supported by this build.")
            pool = InstancePool(ctx)
        weight = float(override.get("weight", variant.get("InitialVariantWeight", 1.0)))
        count = int(override.get("count", variant.get("InitialInstanceCount") or 0))
        runtime = VariantRuntime(name=name, weight=weight, pool=pool, config=variant, model_name=model["ModelName"],
                                 image=container.get("Image") or "")
        if count:
            await pool.start(count)
        return runtime

    def _variant_summaries(self, runtime: EndpointRuntime) -> list[dict[str, Any]]:
        now = time.time()
        summaries = []
        for v in runtime.variants.values():
            summary: dict[str, Any] = {
                "VariantName": v.name,
                "DeployedImages": [{"SpecifiedImage": v.image or "selfmaker", "ResolvedImage": v.image or "selfmaker",
                                    "ResolutionTime": now}],
                "CurrentWeight": v.weight, "DesiredWeight": v.weight,
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
        return [{"VariantName": v.name, "CurrentWeight": v.weight, "DesiredWeight": v.weight,
                 "CurrentInstanceCount": v.pool.size, "DesiredInstanceCount": v.pool.desired or v.pool.size}
                for v in runtime.shadow_variants.values()]

    def _deploy_dir(self, endpoint: str) -> Path:
        return self.settings.work_dir / "endpoints" / endpoint.lower() / uuid.uuid4().hex[:12]

    def _spawn(self, name: str, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"endpoint:{name}")
        self._tasks[name.lower()] = task
        task.add_done_callback(lambda t: self._tasks.pop(name.lower(), None) if self._tasks.get(name.lower()) is t else None)

    def busy(self, name: str) -> bool:
        """Whether a create/update/delete of ``name`` is still running."""
        task = self._tasks.get(name.lower())
        return task is not None and not task.done()

    def create(self, name: str, config: dict[str, Any]) -> None:
        """Start deploying a new endpoint (its record exists with status Creating)."""
        self._spawn(name, self._create(name, config))

    async def _create(self, name: str, config: dict[str, Any]) -> None:
        deploy_dir = self._deploy_dir(name)
        try:
            runtime = await self._build(name, config, {}, deploy_dir)
        except DeployError as exc:
            self._fail(name, str(exc))
            shutil.rmtree(deploy_dir, ignore_errors=True)
            return
        except asyncio.CancelledError:
            shutil.rmtree(deploy_dir, ignore_errors=True)
            raise
        except Exception:
            log.exception("deploying endpoint %s failed", name)
            self._fail(name, "internal error while deploying the endpoint")
            shutil.rmtree(deploy_dir, ignore_errors=True)
            return
        runtime.attributes["deploy_dir"] = deploy_dir
        self.live[name.lower()] = runtime
        self.store.update("endpoint", name, status="InService", drop=("FailureReason",), merge={
            "ProductionVariants": self._variant_summaries(runtime),
            "ShadowProductionVariants": self._shadow_summaries(runtime),
            "_Config": config,
            "_Models": runtime.attributes["models"],
        })
        log.info("endpoint %s is InService", name)

    def _fail(self, name: str, reason: str) -> None:
        log.warning("endpoint %s failed: %s", name, reason)
        self.store.update("endpoint", name, status="Failed", merge={"FailureReason": reason[:1024]})

    def update(self, name: str, config: dict[str, Any], retain: dict[str, dict[str, Any]]) -> None:
        """Blue/green update to ``config`` (the record is already Updating); ``retain`` maps variant
        names to ``{"weight": w, "count": n}`` kept from the current deployment."""
        self._spawn(name, self._update(name, config, retain))

    async def _update(self, name: str, config: dict[str, Any], retain: dict[str, dict[str, Any]]) -> None:
        deploy_dir = self._deploy_dir(name)
        try:
            runtime = await self._build(name, config, retain, deploy_dir)
        except DeployError as exc:
            log.warning("update of endpoint %s failed: %s", name, exc)
            self.store.update("endpoint", name, status="InService", merge={"FailureReason": str(exc)[:1024]})
            shutil.rmtree(deploy_dir, ignore_errors=True)
            return
        except Exception:
            log.exception("updating endpoint %s failed", name)
            self.store.update("endpoint", name, status="InService",
                              merge={"FailureReason": "internal error while updating the endpoint"})
            shutil.rmtree(deploy_dir, ignore_errors=True)
            return
        runtime.attributes["deploy_dir"] = deploy_dir
        old = self.live.get(name.lower())
        if old is not None and self.deployment_guard is not None:
            # guardrails: shift traffic per DeploymentConfig while both fleets run; a reason means rolled back
            reason = await self.deployment_guard.run(name, old, runtime, config)
            if reason is not None:
                await self._retire_runtime(runtime)
                self.store.update("endpoint", name, status="InService", merge={"FailureReason": reason[:1024]})
                return
        self.live[name.lower()] = runtime  # traffic moves here, atomically for new requests
        self.store.update("endpoint", name, drop=("FailureReason",), merge={
            "EndpointConfigName": config["EndpointConfigName"],
            "ProductionVariants": self._variant_summaries(runtime),
            "ShadowProductionVariants": self._shadow_summaries(runtime),
            "_Config": config,
            "_Models": runtime.attributes["models"],
        })
        if old is not None:  # stays Updating until the old fleet has drained and stopped
            await self._retire_runtime(old)
        self.store.update("endpoint", name, status="InService")
        log.info("endpoint %s updated to %s", name, config["EndpointConfigName"])

    async def _retire_runtime(self, runtime: EndpointRuntime) -> None:
        await runtime.stop()
        deploy_dir = runtime.attributes.get("deploy_dir")
        if deploy_dir:
            shutil.rmtree(deploy_dir, ignore_errors=True)

    def update_weights_and_capacities(self, name: str, desired: list[dict[str, Any]]) -> None:
        """Apply new weights now and new instance counts in the background (record is Updating)."""
        runtime = self.live[name.lower()]
        weights = {d["VariantName"]: d["DesiredWeight"] for d in desired if d.get("DesiredWeight") is not None}
        runtime.set_weights(weights)
        counts = {d["VariantName"]: d["DesiredInstanceCount"] for d in desired
                  if d.get("DesiredInstanceCount") is not None}
        for variant_name, count in counts.items():
            runtime.variants[variant_name].pool.desired = count
        self.store.update("endpoint", name, merge={"ProductionVariants": self._variant_summaries(runtime)})
        self._spawn(name, self._apply_capacities(name, runtime, counts))

    async def _apply_capacities(self, name: str, runtime: EndpointRuntime, counts: dict[str, int]) -> None:
        failure: str | None = None
        results = await asyncio.gather(*(runtime.variants[v].pool.scale_to(c) for v, c in counts.items()),
                                       return_exceptions=True)
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
        self.store.update("endpoint", name, status="InService", merge=merge,
                          drop=() if failure else ("FailureReason",))

    def delete(self, name: str) -> None:
        """Stop routing to ``name``, drain and stop its servers, then forget it (record is Deleting)."""
        previous = self._tasks.get(name.lower())
        runtime = self.live.pop(name.lower(), None)
        self._spawn(name, self._delete(name, runtime, previous))

    async def _delete(self, name: str, runtime: EndpointRuntime | None, previous: asyncio.Task[Any] | None) -> None:
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
        for hook in self.platform.registry.endpoint_deleted_hooks:
            try:
                result = hook(self.platform, name)
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
                        self._fail(record.name, "The endpoint configuration was deleted before the endpoint was created.")
                continue
            if record.status == "Failed":
                continue
            retain = {v["VariantName"]: {"weight": v.get("CurrentWeight", 1.0), "count": v.get("CurrentInstanceCount")}
                      for v in record.doc.get("ProductionVariants") or [] if v.get("CurrentInstanceCount")}
            for v in record.doc.get("ProductionVariants") or []:
                retain.setdefault(v["VariantName"], {"weight": v.get("CurrentWeight", 1.0)})
            self.store.update("endpoint", record.name, status="Creating", touch=False)
            self._spawn(record.name, self._restore(record.name, config, retain, record.doc.get("_Models")))
        self._monitor = asyncio.get_running_loop().create_task(self._health_loop(), name="endpoint-health")

    async def _restore(self, name: str, config: dict[str, Any], retain: dict[str, dict[str, Any]],
                       models: dict[str, dict[str, Any]] | None) -> None:
        deploy_dir = self._deploy_dir(name)
        try:
            runtime = await self._build(name, config, retain, deploy_dir, models)
        except DeployError as exc:
            self._fail(name, str(exc))
            return
        runtime.attributes["deploy_dir"] = deploy_dir
        self.live[name.lower()] = runtime
        self.store.update("endpoint", name, status="InService", touch=False,
                          merge={"ProductionVariants": self._variant_summaries(runtime)})
        log.info("endpoint %s restored", name)

    async def _health_loop(self) -> None:
        """Replace model servers that died (the router stops using them at once)."""
        while not self._closing:
            await asyncio.sleep(1.0)
            for runtime in list(self.live.values()):
                for variant in runtime.all_variants():
                    for instance in list(variant.pool.instances):
                        if instance.handle.alive():
                            continue
                        log.warning("instance %s of %s died; replacing it", instance.instance_id, runtime.name)
                        self.mark_dead(variant.pool, instance)

    async def _replace(self, pool: InstancePool) -> None:
        if pool.desired <= 0:  # e.g. a serverless pool scaled to zero: nothing to bring back
            return
        try:
            await pool.scale_to(pool.desired)
        except Exception:  # noqa: BLE001 - logged; the health loop tries again on the next death
            log.exception("could not replace an instance")

    def mark_dead(self, pool: InstancePool, instance: Instance) -> None:
        """The router could not connect to ``instance``: stop routing to it, stop it, start a replacement."""
        if not pool.detach(instance):
            return

        async def replace() -> None:
            instance.upstream.close()
            await instance.handle.stop(self.settings.stop_grace)
            self.store.remove_instance(instance.instance_id)
            await self._replace(pool)

        task = asyncio.get_running_loop().create_task(replace())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def shutdown(self) -> None:
        """Stop every model server; endpoint records stay so the next start restores them."""
        self._closing = True
        if self._monitor is not None:
            self._monitor.cancel()
        for task in list(self._tasks.values()) + list(self._background):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), *self._background, return_exceptions=True)
        runtimes, self.live = list(self.live.values()), {}
        for runtime in runtimes:
            for variant in runtime.all_variants():
                instances, variant.pool.instances = variant.pool.instances, []
                await asyncio.gather(*(i.handle.stop(self.settings.stop_grace) for i in instances),
                                     return_exceptions=True)
        self.store.clear_instances()

"""Building deployments: model data, instance pools, ready model servers, feature hooks.

:class:`DeploymentBuilder` turns an endpoint config into a routable :class:`EndpointRuntime` (all or
nothing). It is public so that features can build variants the way production variants are built (the
shadow feature brings up its shadow variants with :meth:`DeploymentBuilder.build_variant`).

The builder knows features only through :class:`DeploymentHooks`, lists of callables that the composition
root (:mod:`selfmaker.platform`) fills from the registry: pool factories, deployment hooks, deletion hooks
and deployment strategies.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from common.http import UpstreamError, UpstreamPool
from selfmaker.arns import make_arn
from selfmaker.endpoints.runtime import (
    EndpointRuntime,
    Instance,
    InstancePool,
    Pipeline,
    PipelineHandle,
    VariantContext,
    VariantRuntime,
    handle_servers,
)
from selfmaker.executors import ExecutorError, Executors, InstanceHandle, InstanceSpec
from selfmaker.logfiles import ENDPOINT_LOG_DIR, stamp
from selfmaker.modeldata import ModelDataError, execution_mode, fetch_model_data, model_containers

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

log = logging.getLogger(__name__)


class DeployError(Exception):
    """A deployment could not be brought up; the message becomes FailureReason."""


#: ``factory(ctx) -> pool | None``: a pool for the variants the feature handles
PoolFactory = Callable[[VariantContext], InstancePool | None]
#: ``hook(runtime, config)`` (sync or async): attach to a new deployment before it takes traffic
DeployedHook = Callable[[EndpointRuntime, dict[str, Any]], Any]
#: ``hook(endpoint name)`` (sync or async): the endpoint's servers are stopped, its record goes next
DeletedHook = Callable[[str], Any]
#: ``strategy(name, old, new, config) -> rollback reason | None``: move traffic from old to new
DeploymentStrategy = Callable[[str, EndpointRuntime, EndpointRuntime, dict[str, Any]], Awaitable[str | None]]


@dataclass
class DeploymentHooks:
    """What features add to deployments, bound to the platform by the composition root."""

    pool_factories: list[PoolFactory] = field(default_factory=list)
    deployed: list[DeployedHook] = field(default_factory=list)
    deleted: list[DeletedHook] = field(default_factory=list)
    strategies: list[DeploymentStrategy] = field(default_factory=list)


#: how selfmaker's model server says on /ping that its model failed to load (serving.http.fastpath)
LOAD_FAILURE_PREFIX = "model failed to load"


def load_failure(status: int, body: bytes) -> str | None:
    """The reason in a 503 /ping answer of a model server whose model failed to load, else None.

    Only selfmaker's own model server says so (a ``{"error": "model failed to load: …"}`` body); any
    other answer, or another server, leaves the decision to the start-up timeout.
    """
    if status != 503 or LOAD_FAILURE_PREFIX.encode() not in body[:64]:
        return None
    try:
        message = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(message, str) or not message.startswith(LOAD_FAILURE_PREFIX):
        return None
    return " ".join(message.split())[:600]


def last_log_line(path: Path, limit: int = 400) -> str | None:
    """The last non-blank line of a model server's log (its JSON ``msg`` when it is a JSON line)."""
    try:
        with open(path, "rb") as log_file:
            log_file.seek(0, 2)
            size = log_file.tell()
            log_file.seek(max(0, size - 8192))
            tail = log_file.read().decode("utf-8", "replace")
    except OSError:
        return None
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                line = str(orjson.loads(line).get("msg") or line)
            except (orjson.JSONDecodeError, AttributeError):
                pass
        return " ".join(line.split())[:limit]
    return None


def _ping_failure(variant: str, hostname: str | None = None) -> str:
    container = "The primary container" if hostname is None else f"The container {hostname}"
    return (
        f"{container} for production variant {variant} did not pass the ping health check. "
        "Please check CloudWatch logs for this endpoint."
    )


class DeploymentBuilder:
    """Brings up the variants of endpoint configs as pools of ready model servers."""

    def __init__(
        self, settings: PlatformSettings, store: StateStore, executors: Executors, hooks: DeploymentHooks
    ) -> None:
        self.settings = settings
        self.store = store
        self.executors = executors
        self.hooks = hooks

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
                    answer = await probe.request("GET", "/ping", {}, b"", 2.0)
                except (UpstreamError, asyncio.TimeoutError):
                    answer = None
                if answer is not None:
                    if answer.status == 200:
                        return
                    failure = load_failure(answer.status, answer.body)
                    if failure is not None:  # it will not get better: fail now, not at the timeout
                        raise DeployError(f"failed: {failure}")
                if time.monotonic() > deadline:
                    raise DeployError("timeout")
                await asyncio.sleep(0.1)
        finally:
            probe.close()

    def _launcher(
        self,
        endpoint: str,
        variant: dict[str, Any],
        model: dict[str, Any],
        containers: list[tuple[str, dict[str, Any], Path]],
        deploy_dir: Path,
    ) -> Callable[[], Awaitable[Instance]]:
        """Launches one ready instance: one model server per ``(hostname, container, model dir)``."""
        variant_name = variant["VariantName"]
        timeout = float(
            variant.get("ContainerStartupHealthCheckTimeoutInSeconds") or self.settings.startup_timeout
        )

        async def start_server(
            instance_id: str, container: dict[str, Any], model_dir: Path, hostname: str | None
        ) -> InstanceHandle:
            """One ready model server; ``hostname``: the container's, for a pipeline's servers."""
            work = deploy_dir / "instances" / instance_id
            work.mkdir(parents=True, exist_ok=True)
            log_path = self.settings.logs_dir / ENDPOINT_LOG_DIR / endpoint / f"{instance_id}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a", encoding="utf-8") as out:  # a timed first line starts the log stream
                out.write(stamp(f"starting instance {instance_id} of variant {variant_name}"))
            env = {str(k): str(v) for k, v in (container.get("Environment") or {}).items()}
            serverless = variant.get("ServerlessConfig") or {}
            image = container.get("Image") or ""
            spec = InstanceSpec(
                instance_id=instance_id,
                endpoint_name=endpoint,
                variant_name=variant_name,
                model_name=model["ModelName"],
                image=image,
                model_dir=model_dir,
                environment=env,
                instance_type=variant.get("InstanceType"),
                work_dir=work,
                log_path=log_path,
                startup_timeout=timeout,
                container=container,
                memory_mb=serverless.get("MemorySizeInMB"),
            )
            try:
                executor = self.executors.for_image(image)
                handle = await executor.start(spec)
            except ExecutorError as exc:
                raise DeployError(f"Production variant {variant_name} could not start: {exc}") from exc
            self.store.put_instance(
                instance_id,
                endpoint,
                variant_name,
                url=handle.url,
                pid=handle.pid,
                status="Starting",
                log_path=str(log_path),
            )
            try:
                await self._wait_ready(handle, timeout)
            except (DeployError, asyncio.CancelledError) as exc:
                await handle.stop(self.settings.stop_grace)
                self.store.remove_instance(instance_id)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                reason = str(exc)
                if reason == "exited":
                    last = last_log_line(log_path)
                    detail = f" The model server exited (see `selfmaker logs {endpoint}`)." + (
                        f" Its last words: {last}" if last else ""
                    )
                elif reason.startswith("failed: "):
                    said = reason[len("failed: ") :]
                    detail = f" The model server says: {said}."
                    if spec.memory_mb and "MemoryError" in said:  # a serverless limit (RLIMIT_AS) was hit
                        detail += f" It ran out of memory under MemorySizeInMB={spec.memory_mb}."
                else:
                    detail = f" It did not answer within {timeout:g} seconds."
                message = _ping_failure(variant_name, hostname)
                raise DeployError(message + detail) from None
            return handle

        async def launch() -> Instance:
            instance_id = f"{endpoint}-{variant_name}-{uuid.uuid4().hex[:8]}"
            if len(containers) == 1:
                _, container, model_dir = containers[0]
                handle = await start_server(instance_id, container, model_dir, None)
                stages = None
            else:
                handle, stages = await self._start_pipeline(instance_id, containers, start_server)
            # a pipeline's model servers are recorded one by one (status, orphan reaping after a crash)
            for record_id, server in handle_servers(handle):
                self.store.put_instance(
                    record_id,
                    endpoint,
                    variant_name,
                    url=server.url,
                    pid=server.pid,
                    status="InService",
                    log_path=str(self.settings.logs_dir / ENDPOINT_LOG_DIR / endpoint / f"{record_id}.log"),
                )
            log.info("instance %s of %s/%s ready at %s", instance_id, endpoint, variant_name, handle.url)
            return Instance(handle, stages)

        return launch

    async def _start_pipeline(
        self,
        instance_id: str,
        containers: list[tuple[str, dict[str, Any], Path]],
        start_server: Callable[[str, dict[str, Any], Path, str | None], Awaitable[InstanceHandle]],
    ) -> tuple[InstanceHandle, list[tuple[str, str]]]:
        """The model servers of one pipeline instance, started together (all or none)."""
        results = await asyncio.gather(
            *(
                start_server(f"{instance_id}--{name}", c, model_dir, name)
                for name, c, model_dir in containers
            ),
            return_exceptions=True,
        )
        handles = [r for r in results if isinstance(r, InstanceHandle)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(h.stop(self.settings.stop_grace) for h in handles), return_exceptions=True)
            raise failures[0]
        names = [name for name, _, _ in containers]
        handle = PipelineHandle(instance_id, list(zip(names, handles, strict=True)))
        return handle, [(name, h.url) for name, h in zip(names, handles, strict=True)]

    async def retire(self, instance: Instance) -> None:
        """Drain ``instance`` (already detached from its pool) and stop its server."""
        if not await instance.drained(self.settings.drain_timeout):
            log.warning(
                "instance %s still had %d requests after %ss; stopping it",
                instance.instance_id,
                instance.outstanding,
                self.settings.drain_timeout,
            )
        instance.close()
        await instance.handle.stop(self.settings.stop_grace)
        for record_id, _ in handle_servers(instance.handle):
            self.store.remove_instance(record_id)

    # ---- deployments ---------------------------------------------------------------------------

    async def build(
        self,
        endpoint: str,
        config: dict[str, Any],
        overrides: dict[str, dict[str, Any]],
        deploy_dir: Path,
        models: dict[str, dict[str, Any]] | None = None,
    ) -> EndpointRuntime:
        """Bring up every variant of ``config``, then run the deployment hooks; all or nothing.

        ``models`` are the model documents the deployment was made with (a restart passes those stored
        with the endpoint: SageMaker endpoints keep serving a model deleted after CreateEndpoint); the
        documents used end up in ``runtime.models``, production and shadow variants alike.
        """
        used: dict[str, dict[str, Any]] = dict(models or {})
        variants: list[VariantRuntime] = []
        try:
            for variant in config["ProductionVariants"]:
                variants.append(
                    await self.build_variant(
                        endpoint, variant, overrides.get(variant["VariantName"], {}), deploy_dir, used
                    )
                )
            runtime = EndpointRuntime(endpoint, config["EndpointConfigName"], variants)
            runtime.models = used
            for hook in self.hooks.deployed:
                result = hook(runtime, config)
                if asyncio.iscoroutine(result):
                    await result
        except BaseException:
            await asyncio.gather(*(v.pool.stop() for v in variants), return_exceptions=True)
            raise
        return runtime

    async def build_variant(
        self,
        endpoint: str,
        variant: dict[str, Any],
        override: dict[str, Any],
        deploy_dir: Path,
        models: dict[str, dict[str, Any]] | None = None,
    ) -> VariantRuntime:
        """One variant's pool, started with its instance count (``override`` may set ``weight`` and
        ``count``); its model comes from ``models`` (filled in) when there, else from the store."""
        name = variant["VariantName"]
        model_name = variant.get("ModelName", "")
        model = models.get(model_name) if models is not None else None
        if model is None:
            model_record = self.store.get("model", model_name)
            if model_record is None:
                arn = make_arn(self.settings.region, self.settings.account_id, "model", model_name)
                raise DeployError(f'Could not find model "{arn}".')
            model = model_record.doc
        if models is not None:
            models[model_name] = model
        named = model_containers(model)
        variant_dir = deploy_dir / name
        containers: list[tuple[str, dict[str, Any], Path]] = []
        for hostname, container in named:
            # a pipeline's containers each get their own /opt/ml/model
            dest = variant_dir if len(named) == 1 else variant_dir / "containers" / hostname
            try:
                model_dir = await asyncio.to_thread(
                    fetch_model_data, container, dest, max_unpacked_bytes=self.settings.max_unpacked_bytes
                )
            except ModelDataError as exc:
                raise DeployError(
                    f"Failed to download model data for production variant {name}"
                    + (f", container {hostname}" if len(named) > 1 else "")
                    + f": {exc}"
                ) from exc
            containers.append((hostname, container, model_dir))
        mode = execution_mode(model)
        if mode is not None and variant.get("ServerlessConfig"):
            raise DeployError(
                f"Production variant {name}: serverless variants cannot serve a model of several "
                "containers (an inference pipeline)."
            )
        container, model_dir = containers[0][1], containers[0][2]
        ctx = VariantContext(
            endpoint_name=endpoint,
            variant=variant,
            model=model,
            container=container,
            model_dir=model_dir,
            launch=self._launcher(endpoint, variant, model, containers, variant_dir),
            retire=self.retire,
        )
        pool: InstancePool | None = None
        for factory in self.hooks.pool_factories:
            pool = factory(ctx)
            if pool is not None:
                break
        if pool is None:
            if variant.get("ServerlessConfig"):
                raise DeployError(
                    f"Production variant {name}: serverless variants are not supported by this build."
                )
            pool = InstancePool(ctx)
        weight = float(override.get("weight", variant.get("InitialVariantWeight", 1.0)))
        count = int(override.get("count", variant.get("InitialInstanceCount") or 0))
        runtime = VariantRuntime(
            name=name,
            weight=weight,
            pool=pool,
            config=variant,
            model_name=model["ModelName"],
            image=container.get("Image") or "",
            pipeline=None if mode is None else Pipeline(mode, tuple(h for h, _, _ in containers)),
        )
        if count:
            await pool.start(count)
        return runtime

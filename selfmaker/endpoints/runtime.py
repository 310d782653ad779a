"""The in-memory, routable view of a deployed endpoint.

``EndpointRuntime`` → ``VariantRuntime`` (weight, pool) → ``InstancePool`` → ``Instance`` (one model server).
Routing decisions are the pure functions of :mod:`serving.router`. Everything here runs on the event
loop thread; variant selection and instance acquisition happen without an ``await`` in between, so a
swap of deployments or a removed instance can never be half-seen by a request.

Extension points (see docs/platform-internals.md):

* subclass :class:`InstancePool` (override :meth:`InstancePool.acquire`) — e.g. a serverless pool that
  starts an instance on first use and scales to zero — and return it from a ``@pool_factory``;
* ``EndpointRuntime.pre_invoke`` — callables ``(InvocationRecord) -> None`` run before routing; raise a
  :class:`selfmaker.errors.SageMakerError` to refuse (e.g. sync invoke of an async endpoint);
* ``EndpointRuntime.observers`` — callables ``(InvocationRecord) -> None`` run after every answered
  production request (data capture, shadow mirroring); they must not block (schedule a task);
* ``EndpointRuntime.dispatch`` — replaces the routing of a deployment while set (a guarded blue/green
  deployment sends each request to the old or the new fleet);
* ``EndpointRuntime.shadow_variants`` and ``EndpointRuntime.state`` (a :class:`FeatureState`: one object per
  type) for feature state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from common.http import UpstreamPool
from selfmaker.errors import ServiceUnavailable, ValidationError
from selfmaker.executors.base import InstanceHandle
from serving.router import WeightedChoice, least_outstanding

log = logging.getLogger(__name__)

T = TypeVar("T")


class FeatureState:
    """Feature objects kept by their type: one per type, typed on the way out.

    The platform keeps one (features' per-platform state: a capture writer, the async supervisor …) and so
    does every deployment (per-deployment state: a capture policy, an async endpoint's settings). Keying by
    type instead of by string keeps each feature's state private to it and typed for its readers.
    """

    def __init__(self) -> None:
        self._by_type: dict[type[Any], Any] = {}

    def get(self, kind: type[T]) -> T | None:
        """The object of type ``kind``, or None."""
        found = self._by_type.get(kind)
        return found if isinstance(found, kind) else None

    def setdefault(self, kind: type[T], factory: Callable[[], T]) -> T:
        """The object of type ``kind``, created by ``factory`` on first use."""
        found = self.get(kind)
        if found is None:
            found = self._by_type[kind] = factory()
        return found

    def put(self, value: Any) -> None:
        """Keep ``value`` as the object of its type (replacing any previous one)."""
        self._by_type[type(value)] = value

    def pop(self, kind: type[T]) -> T | None:
        """Forget the object of type ``kind`` and return it (None if there was none)."""
        found = self._by_type.pop(kind, None)
        return found if isinstance(found, kind) else None

    def values(self) -> list[Any]:
        return list(self._by_type.values())


class Instance:
    """One running model server in a pool, with its count of in-flight requests."""

    __slots__ = (
        "handle",
        "url",
        "invocations_url",
        "outstanding",
        "draining",
        "_idle",
        "served",
        "upstream",
        "stages",
    )

    def __init__(self, handle: InstanceHandle, stages: list[tuple[str, str]] | None = None) -> None:
        self.handle = handle
        self.url = handle.url
        self.invocations_url = handle.url + "/invocations"
        parsed = urlsplit(handle.url)
        #: keep-alive connections to this model server (common.http)
        self.upstream = UpstreamPool(parsed.hostname or "127.0.0.1", parsed.port or 80)
        #: an instance of a pipeline model: ``(container hostname, keep-alive connections)`` of each of its
        #: model servers, in pipeline order (the first is :attr:`upstream`); None for one model server
        self.stages: list[tuple[str, UpstreamPool]] | None = None
        if stages is not None:
            self.stages = [(stages[0][0], self.upstream)] + [
                (hostname, _upstream(url)) for hostname, url in stages[1:]
            ]
        self.outstanding = 0
        self.served = 0
        self.draining = False
        self._idle: asyncio.Event | None = None

    @property
    def instance_id(self) -> str:
        return self.handle.instance_id

    def begin(self) -> None:
        self.outstanding += 1

    def close(self) -> None:
        """Close the keep-alive connections to this instance's model server(s)."""
        self.upstream.close()
        for _, upstream in self.stages or ():
            upstream.close()

    def end(self) -> None:
        self.outstanding -= 1
        self.served += 1
        if self.outstanding == 0 and self._idle is not None:
            self._idle.set()

    async def drained(self, timeout: float) -> bool:
        """Wait until no request is in flight (call after removing it from its pool)."""
        self.draining = True
        if self.outstanding == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True


def _upstream(url: str) -> UpstreamPool:
    parsed = urlsplit(url)
    return UpstreamPool(parsed.hostname or "127.0.0.1", parsed.port or 80)


class PipelineHandle(InstanceHandle):
    """The model servers of one instance of a pipeline model, as one handle: alive while all are, stopped
    together; its URL is the first container's."""

    def __init__(self, instance_id: str, handles: list[tuple[str, InstanceHandle]]) -> None:
        self.instance_id = instance_id
        self.handles = handles
        self.url = handles[0][1].url

    def alive(self) -> bool:
        return all(handle.alive() for _, handle in self.handles)

    async def stop(self, grace: float) -> None:
        await asyncio.gather(*(handle.stop(grace) for _, handle in self.handles), return_exceptions=True)

    @property
    def pid(self) -> int | None:
        return self.handles[0][1].pid

    def describe(self) -> dict[str, Any]:
        return {"Containers": {name: handle.url for name, handle in self.handles}}


def handle_servers(handle: InstanceHandle) -> list[tuple[str, InstanceHandle]]:
    """``(instance id, handle)`` of each model server behind ``handle`` (one, or a pipeline's)."""
    if isinstance(handle, PipelineHandle):
        return [(server.instance_id, server) for _, server in handle.handles]
    return [(handle.instance_id, handle)]


#: launches one ready instance of a variant (executor start + /ping) — provided by the manager
InstanceLauncher = Callable[[], Awaitable[Instance]]
#: drains and stops one instance — provided by the manager
InstanceRetirer = Callable[[Instance], Awaitable[None]]


@dataclass
class VariantContext:
    """What a pool factory gets to decide on and build a pool for one variant of a deployment."""

    endpoint_name: str
    variant: dict[str, Any]  # the ProductionVariant of the endpoint config
    model: dict[str, Any]  # the DescribeModel document
    container: dict[str, Any]  # the (primary) ContainerDefinition
    model_dir: Path  # unpacked model data
    launch: InstanceLauncher  # start one more ready instance of this variant
    retire: InstanceRetirer  # drain + stop one instance


class InstancePool:
    """The routable instances of one variant; least-outstanding-requests selection.

    ``acquire()`` hands out an instance and counts the request; ``release()`` uncounts it. Subclasses
    may await inside ``acquire`` (cold start, queueing) and must then re-check their state after the
    await. ``scale_to`` changes the instance count: new instances join once ready, removed ones drain
    in-flight requests before they stop.
    """

    def __init__(self, ctx: VariantContext) -> None:
        self.ctx = ctx
        self.instances: list[Instance] = []
        self.desired = 0
        self._counter = itertools.count()
        self._lock = asyncio.Lock()

    @property
    def size(self) -> int:
        return len(self.instances)

    def pick(self) -> Instance | None:
        """The instance with the fewest requests in flight (rotating among equals), or None."""
        instances = self.instances
        if not instances:
            return None
        if len(instances) == 1:
            return instances[0]
        return instances[least_outstanding([i.outstanding for i in instances], next(self._counter))]

    async def acquire(self) -> Instance:
        """An instance to send one request to (counted until :meth:`release`)."""
        instance = self.pick()
        if instance is None:
            raise ServiceUnavailable(f"Variant {self.ctx.variant['VariantName']} has no instance in service.")
        instance.begin()
        return instance

    def release(self, instance: Instance) -> None:
        """The request sent to ``instance`` is over."""
        instance.end()

    def add(self, instance: Instance) -> None:
        """Make a ready instance routable."""
        self.instances.append(instance)

    def detach(self, instance: Instance) -> bool:
        """Stop routing to ``instance``; False if it was not in the pool."""
        try:
            self.instances.remove(instance)
        except ValueError:
            return False
        return True

    async def start(self, count: int) -> None:
        """Bring up ``count`` instances (all or nothing: on failure the started ones are retired)."""
        self.desired = count
        results = await asyncio.gather(*(self.ctx.launch() for _ in range(count)), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        started = [r for r in results if isinstance(r, Instance)]
        if failures:
            await asyncio.gather(*(self.ctx.retire(i) for i in started), return_exceptions=True)
            raise failures[0]
        for instance in started:
            self.add(instance)

    async def scale_to(self, count: int) -> None:
        """Grow or shrink to ``count`` instances without failing in-flight requests."""
        async with self._lock:
            self.desired = count
            missing = count - len(self.instances)
            if missing > 0:
                results = await asyncio.gather(
                    *(self.ctx.launch() for _ in range(missing)), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, Instance):
                        self.add(result)
                failures = [r for r in results if isinstance(r, BaseException)]
                if failures:
                    raise failures[0]
            elif missing < 0:
                # retire the least busy ones first
                victims = sorted(self.instances, key=lambda i: i.outstanding)[:-missing]
                for victim in victims:
                    self.detach(victim)
                await asyncio.gather(*(self.ctx.retire(v) for v in victims), return_exceptions=True)

    async def stop(self) -> None:
        """Detach and retire every instance (drains in-flight requests)."""
        victims, self.instances = self.instances, []
        await asyncio.gather(*(self.ctx.retire(v) for v in victims), return_exceptions=True)

    def describe(self) -> list[dict[str, Any]]:
        """The instances for ``selfmaker status``."""
        return [
            {"InstanceId": i.instance_id, "Url": i.url, "Outstanding": i.outstanding, "Served": i.served}
            for i in self.instances
        ]


@dataclass(frozen=True)
class Pipeline:
    """How a variant's model of several containers is invoked: ``Serial`` (each container's answer is the
    next one's request) or ``Direct`` (TargetContainerHostname picks one); ``hostnames`` in order."""

    mode: str
    hostnames: tuple[str, ...]

    def position(self, hostname: str) -> int | None:
        """The index of container ``hostname`` (an exact match first; hostnames, as DNS names, are unique
        regardless of case), or None."""
        if hostname in self.hostnames:
            return self.hostnames.index(hostname)
        lowered = [h.lower() for h in self.hostnames]
        return lowered.index(hostname.lower()) if hostname.lower() in lowered else None


@dataclass
class VariantRuntime:
    """One production variant of a deployment."""

    name: str
    weight: float
    pool: InstancePool
    config: dict[str, Any]
    model_name: str
    image: str
    #: set when the variant's model has several containers (its instances have ``stages``)
    pipeline: Pipeline | None = None


@dataclass
class InvocationRecord:
    """One runtime request and (once answered) its response, as seen by hooks and observers."""

    endpoint_name: str
    body: bytes
    content_type: str | None
    accept: str | None
    custom_attributes: str | None
    target_variant: str | None
    inference_id: str | None
    #: InvokeEndpoint's TargetContainerHostname (a multi-container model in Direct mode)
    target_container: str | None = None
    started: float = field(default_factory=time.time)
    variant_name: str | None = None
    status: int | None = None
    response_body: bytes | None = None
    response_content_type: str | None = None
    response_custom_attributes: str | None = None
    latency: float | None = None
    #: seconds the model server(s) took (the call to ``/invocations``); None while no model server was asked
    model_seconds: float | None = None


#: the answer of one call to a variant: (status, body, headers with lower-cased names)
VariantAnswer = tuple[int, bytes, dict[str, str]]
#: sends one request (record, body, outgoing headers) somewhere and says which variant answered
Dispatcher = Callable[
    [InvocationRecord, bytes, dict[str, str]], Awaitable[tuple[VariantRuntime, VariantAnswer]]
]


class EndpointRuntime:
    """The routable deployment of an endpoint (one per endpoint config generation)."""

    def __init__(
        self, name: str, config_name: str, variants: list[VariantRuntime], rng: random.Random | None = None
    ) -> None:
        self.name = name
        self.config_name = config_name
        self.variants: dict[str, VariantRuntime] = {v.name: v for v in variants}
        self._by_lower = {v.name.lower(): v for v in variants}
        self._order = list(variants)
        self._rng = rng or random.Random()
        self._chooser = WeightedChoice([v.weight for v in self._order])
        self.shadow_variants: dict[str, VariantRuntime] = {}
        self.pre_invoke: list[Callable[[InvocationRecord], None]] = []
        self.observers: list[Callable[[InvocationRecord], None]] = []
        #: replaces :meth:`route` + one call while set (a guarded deployment in progress)
        self.dispatch: Dispatcher | None = None
        #: the model documents this deployment was made with (production and shadow variants)
        self.models: dict[str, dict[str, Any]] = {}
        #: where this deployment's model data and instance directories live (removed when it is retired)
        self.deploy_dir: Path | None = None
        #: per-deployment feature state
        self.state = FeatureState()
        #: runtime requests that resolved this deployment and are not answered yet (leases): the manager
        #: stops its pools only once this is 0, so a request that resolved it just before a swap (its body
        #: still arriving) is served by it instead of failing
        self.inflight = 0
        self._quiet: asyncio.Event | None = None

    def lease(self) -> None:
        """Count one runtime request that resolved this deployment (until :meth:`unlease`)."""
        self.inflight += 1

    def unlease(self) -> None:
        """The request counted by :meth:`lease` is answered."""
        self.inflight -= 1
        if self.inflight == 0 and self._quiet is not None:
            self._quiet.set()

    async def quiesced(self, timeout: float) -> bool:
        """Wait until no leased request remains (call once no new request can resolve this deployment);
        False if some were still in flight after ``timeout`` seconds."""
        if self.inflight == 0:
            return True
        self._quiet = asyncio.Event()
        try:
            await asyncio.wait_for(self._quiet.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def set_weights(self, weights: dict[str, float]) -> None:
        """Change variant weights at once (the next request sees the new split)."""
        for name, weight in weights.items():
            self.variants[name].weight = float(weight)
        self._chooser = WeightedChoice([v.weight for v in self._order])

    def route(self, target_variant: str | None) -> VariantRuntime:
        """The variant for a request: the TargetVariant if given, else a weighted draw."""
        if target_variant:
            variant = self.variants.get(target_variant) or self._by_lower.get(target_variant.lower())
            if variant is None:
                raise ValidationError(
                    f"The variant {target_variant} was not found for endpoint {self.name}. Please check the "
                    "variant name and try again."
                )
            return variant
        if not self._chooser:
            raise ValidationError(
                f"Endpoint {self.name} has no variant with a weight above 0; use TargetVariant to invoke it."
            )
        return self._order[self._chooser.choose(self._rng.random())]

    def all_variants(self) -> list[VariantRuntime]:
        return [*self._order, *self.shadow_variants.values()]

    async def stop(self) -> None:
        """Retire every instance of every variant (in-flight requests finish first)."""
        await asyncio.gather(*(v.pool.stop() for v in self.all_variants()), return_exceptions=True)

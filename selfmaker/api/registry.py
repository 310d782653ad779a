"""Registration of control-plane operations and platform extensions by decorator.

Modules in :mod:`selfmaker.api.ops` (one per resource family: ``models.py``, ``endpoints.py`` …) and the
feature packages in :mod:`selfmaker.features` (``features/<name>/__init__.py`` holds the feature's
registrations) are imported when the platform starts; every function decorated here is collected into a
:class:`Registry`. Adding a family (``api/ops/transform_jobs.py``) or a feature (``features/shadow/``) is
therefore new files, no edit of anyone else's.

Every hook gets the platform's :class:`selfmaker.services.Services` as its first argument (``platform``).

Decorators only tag the function (no global state at import time):

``@operation("CreateModel")``, ``@operation("GetLogEvents", service="Logs_20140328")``
    ``async def handler(platform, params: dict) -> dict | None`` — params are validated against botocore's
    model (of SageMaker, or of the service of the target prefix) before the call; the returned dict is the
    response (``None`` → ``{}``); raise
    :class:`selfmaker.errors.SageMakerError` subclasses for errors.
``@runtime_route("POST", "/endpoints/{name}/async-invocations")``
    ``async def handler(platform, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse`` — raise
    SageMakerError subclasses (runtime codes) for errors; they are rendered like InvokeEndpoint's.
``@pool_factory``
    ``def factory(platform, ctx: selfmaker.endpoints.runtime.VariantContext) -> InstancePool | None`` —
    return a pool for variants you handle (e.g. those with ``ServerlessConfig``), None otherwise. The
    default pool is used when every factory returns None.
``@endpoint_hook``
    ``def hook(platform, endpoint: EndpointRuntime, config: dict) -> None`` — called for each new
    deployment of an endpoint before it takes traffic (attach observers, shadow pools, pre-invoke checks).
``@config_check``
    ``def check(platform, params: dict) -> Iterable[str] | None`` — called by CreateEndpointConfig for every
    request; raise ValidationException to reject; return the names of the features you *handle* among
    ``ServerlessConfig``, ``AsyncInferenceConfig``, ``ShadowProductionVariants``, ``DataCaptureConfig`` —
    the core refuses a request using one of them unless some check claimed it.
``@update_check``
    ``def check(platform, params: dict, record: Record, config: dict, retain: dict) -> None`` — called by
    UpdateEndpoint before the update starts (``config``: the new endpoint config; ``retain``: the variant
    weights/counts kept); raise ValidationException to reject (e.g. guardrails' ``DeploymentConfig``).
``@variant_update``
    ``def check(platform, variant: VariantRuntime, item: dict, index: int) -> Callable[[], dict] | None`` —
    called by UpdateEndpointWeightsAndCapacities for each ``DesiredWeightsAndCapacities`` item; raise
    ValidationException to reject, or return an ``apply()`` that changes the live variant once every item
    passed and returns the members of the variant's config it changed (kept for restarts), e.g.
    ``{"ServerlessConfig": …}`` for ``ServerlessUpdateConfig``.
``@deployment_strategy``
    ``async def strategy(platform, name, old: EndpointRuntime, new: EndpointRuntime, config) -> str | None``
    — called by UpdateEndpoint's deployment once the new fleet is up and before it takes traffic; move
    traffic as you see fit (e.g. ``EndpointRuntime.dispatch`` on ``old``) and return None to let the new
    fleet take over, or a rollback reason (the new fleet is then retired).
``@metrics_source``
    ``def source(platform) -> selfmaker.api.metrics.Metrics`` — the feature's numbers: Prometheus lines for
    ``GET /metrics`` and per-endpoint values that ``selfmaker status`` prints.
``@lifecycle("startup")`` / ``@lifecycle("shutdown")``
    ``async def hook(platform) -> None`` — start/stop workers of your feature.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
_TAG = "__selfmaker_registration__"

#: packages whose modules are imported and scanned when the platform starts
EXTENSION_PACKAGES = ("selfmaker.api.ops", "selfmaker.features")


def _tag(kind: str, *args: Any) -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        registrations = list(getattr(fn, _TAG, []))
        registrations.append((kind, args))
        setattr(fn, _TAG, registrations)
        return fn

    return decorate


def operation(name: str, service: str = "SageMaker") -> Callable[[F], F]:
    """Register a control-plane operation handler (``X-Amz-Target: <service>.<name>``; ``service`` is the
    target prefix of a JSON 1.1 service served on the same port, e.g. CloudWatch Logs' ``Logs_20140328``)."""
    return _tag("operation", name, service)


def runtime_route(method: str, path: str) -> Callable[[F], F]:
    """Register an extra runtime HTTP route (aiohttp path syntax)."""
    return _tag("route", method.upper(), path)


def pool_factory(fn: F) -> F:
    """Register an instance-pool factory (see module docstring)."""
    return _tag("pool_factory")(fn)


def endpoint_hook(fn: F) -> F:
    """Register a hook called for each new deployment of an endpoint."""
    return _tag("endpoint_hook")(fn)


def endpoint_deleted_hook(fn: F) -> F:
    """Register a hook ``hook(platform, endpoint_name)`` (sync or async) called once an endpoint's
    servers are stopped, before its record is forgotten."""
    return _tag("endpoint_deleted_hook")(fn)


def config_check(fn: F) -> F:
    """Register an extra CreateEndpointConfig check."""
    return _tag("config_check")(fn)


def update_check(fn: F) -> F:
    """Register an extra UpdateEndpoint check."""
    return _tag("update_check")(fn)


def variant_update(fn: F) -> F:
    """Register a check (and change) of UpdateEndpointWeightsAndCapacities items."""
    return _tag("variant_update")(fn)


def deployment_strategy(fn: F) -> F:
    """Register how UpdateEndpoint moves traffic from the old fleet to the new one."""
    return _tag("deployment_strategy")(fn)


def metrics_source(fn: F) -> F:
    """Register a source of metrics for ``GET /metrics`` and ``selfmaker status``."""
    return _tag("metrics_source")(fn)


def lifecycle(event: str) -> Callable[[F], F]:
    """Register an ``async def hook(platform)`` for ``"startup"`` or ``"shutdown"``."""
    if event not in {"startup", "shutdown"}:
        raise ValueError(f"unknown lifecycle event {event!r}")
    return _tag("lifecycle", event)


@dataclass
class Registry:
    """Everything collected from the extension packages."""

    #: the SageMaker operations by name (``targets["SageMaker"]``)
    operations: dict[str, Callable[..., Any]] = field(default_factory=dict)
    #: the operations of every JSON 1.1 service by target prefix, then name
    targets: dict[str, dict[str, Callable[..., Any]]] = field(default_factory=dict)
    routes: list[tuple[str, str, Callable[..., Any]]] = field(default_factory=list)
    pool_factories: list[Callable[..., Any]] = field(default_factory=list)
    endpoint_hooks: list[Callable[..., Any]] = field(default_factory=list)
    endpoint_deleted_hooks: list[Callable[..., Any]] = field(default_factory=list)
    config_checks: list[Callable[..., Any]] = field(default_factory=list)
    update_checks: list[Callable[..., Any]] = field(default_factory=list)
    variant_updates: list[Callable[..., Any]] = field(default_factory=list)
    deployment_strategies: list[Callable[..., Any]] = field(default_factory=list)
    metrics_sources: list[Callable[..., Any]] = field(default_factory=list)
    startup: list[Callable[..., Any]] = field(default_factory=list)
    shutdown: list[Callable[..., Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.targets.setdefault("SageMaker", self.operations)

    def handlers(self, service: str) -> dict[str, Callable[..., Any]]:
        """The operations of ``service`` (a target prefix) by name."""
        return self.targets.setdefault(service, {})

    def add_module(self, module: Any) -> None:
        """Collect the tagged functions of one module."""
        for value in vars(module).values():
            if getattr(value, "__module__", None) != module.__name__:
                continue  # imported names are registered by their own module
            for kind, args in getattr(value, _TAG, []):
                if kind == "operation":
                    table = self.handlers(args[1])
                    if args[0] in table:
                        raise RuntimeError(f"operation {args[0]} registered twice ({module.__name__})")
                    table[args[0]] = value
                elif kind == "route":
                    self.routes.append((args[0], args[1], value))
                elif kind == "pool_factory":
                    self.pool_factories.append(value)
                elif kind == "endpoint_hook":
                    self.endpoint_hooks.append(value)
                elif kind == "endpoint_deleted_hook":
                    self.endpoint_deleted_hooks.append(value)
                elif kind == "config_check":
                    self.config_checks.append(value)
                elif kind == "update_check":
                    self.update_checks.append(value)
                elif kind == "variant_update":
                    self.variant_updates.append(value)
                elif kind == "deployment_strategy":
                    if self.deployment_strategies:
                        raise RuntimeError(
                            f"a second deployment strategy ({module.__name__}): traffic can move "
                            "only one way at a time"
                        )
                    self.deployment_strategies.append(value)
                elif kind == "metrics_source":
                    self.metrics_sources.append(value)
                elif kind == "lifecycle":
                    (self.startup if args[0] == "startup" else self.shutdown).append(value)


def discover(packages: tuple[str, ...] = EXTENSION_PACKAGES) -> Registry:
    """Import every module of ``packages`` and collect their registrations (a feature package's
    registrations are in its ``__init__``; its other modules are its own business)."""
    registry = Registry()
    for package_name in packages:
        package = importlib.import_module(package_name)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{package_name}.{info.name}")
            registry.add_module(module)
            log.debug("loaded %s", module.__name__)
    return registry

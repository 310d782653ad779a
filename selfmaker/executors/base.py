"""The executor interface: how the platform starts one model server ("instance") of a variant.

An *instance* is one model server reachable at a base URL that speaks the SageMaker inference
container contract (``GET /ping`` → 200 when ready, ``POST /invocations``). The platform owns
everything around it:

* it resolves the model (``ContainerDefinition``) and **unpacks the model data once per variant** into
  ``InstanceSpec.model_dir`` (from ``file://`` or ``s3://`` ``model.tar.gz``, or a directory/prefix), so an
  executor only mounts/points at that directory (``/opt/ml/model`` in a container);
* it picks the executor from the image (:func:`selfmaker.executors.executor_kind_for_image`):
  selfmaker's own image and the built-ins run as local processes (:class:`ProcessExecutor`), anything
  else in a container (``selfmaker/executors/container.py`` defines ``ContainerExecutor(settings)``);
* after :meth:`Executor.start` returns it polls ``GET {handle.url}/ping`` until 200 (deadline:
  ``InstanceSpec.startup_timeout``), failing fast when :meth:`InstanceHandle.alive` turns False;
* it routes traffic, drains in-flight requests, and finally calls :meth:`InstanceHandle.stop`.

Implementing an executor therefore means: start something that listens on 127.0.0.1 (pick a free
port), return a handle with its URL, report liveness, write its output to ``spec.log_path``, and stop
it (graceful first, then forced). ``start`` must not wait for readiness and must not block the event
loop (use ``asyncio.create_subprocess_exec`` or ``asyncio.to_thread`` for blocking work).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class InstanceSpec:
    """Everything an executor needs to start one model-server instance."""

    #: unique id of this instance, e.g. ``my-endpoint-AllTraffic-3f2a9c`` (safe in file and container names)
    instance_id: str
    endpoint_name: str
    variant_name: str
    model_name: str
    #: ``ContainerDefinition.Image`` (may be empty for selfmaker's own image)
    image: str
    #: the unpacked model directory (contents of model.tar.gz); mount it as /opt/ml/model
    model_dir: Path
    #: ``ContainerDefinition.Environment`` merged with platform defaults (SAGEMAKER_* variables)
    environment: dict[str, str] = field(default_factory=dict)
    #: the variant's InstanceType (``ml.m5.large`` …), or None for serverless variants
    instance_type: str | None = None
    #: a private scratch directory for this instance (exists; removed by the platform afterwards)
    work_dir: Path = Path(".")
    #: append the server's stdout/stderr here (``selfmaker logs ENDPOINT`` prints it)
    log_path: Path = Path("instance.log")
    #: seconds the platform waits for /ping after start() returned
    startup_timeout: float = 120.0
    #: the full ContainerDefinition as stored (for executors that need more, e.g. ImageConfig)
    container: dict[str, Any] = field(default_factory=dict)
    #: serverless variants: memory in MB (containers may map it to a memory limit)
    memory_mb: int | None = None


class InstanceHandle(abc.ABC):
    """A started model server. The platform reads :attr:`url` and calls :meth:`alive` / :meth:`stop`."""

    #: base URL, ``http://127.0.0.1:<port>``; the platform calls ``{url}/ping`` and ``{url}/invocations``
    url: str
    #: the id from the spec
    instance_id: str

    @abc.abstractmethod
    def alive(self) -> bool:
        """Whether the process/container is still running (cheap, non-blocking)."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> None:
        """Stop gracefully (SIGTERM / ``stop -t``), force after ``grace`` seconds; idempotent."""

    @property
    def pid(self) -> int | None:
        """The OS process id if there is one (shown by ``selfmaker status``)."""
        return None

    def describe(self) -> dict[str, Any]:
        """Extra facts for ``selfmaker status`` (e.g. container id)."""
        return {}


class Executor(abc.ABC):
    """Starts instances of one kind (``process``, ``container`` …). One executor object per platform."""

    #: the kind this executor handles, as returned by :func:`executor_kind_for_image`
    kind: str = ""

    @abc.abstractmethod
    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        """Launch the model server for ``spec`` and return at once (readiness is polled by the platform).

        Raise :class:`ExecutorError` with a user-facing message when it cannot be launched at all
        (image missing, engine unavailable); it becomes the endpoint's FailureReason.
        """

    async def close(self) -> None:  # noqa: B027 - an optional hook: most executors hold nothing
        """Release executor-wide resources at platform shutdown (instances are stopped before this)."""


class ExecutorError(Exception):
    """An instance could not be launched; the message is shown as the endpoint's FailureReason."""

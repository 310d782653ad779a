"""The training executor interface: how :class:`training.runner.TrainingJobRunner` starts one host.

A training job with ``InstanceCount = N`` runs hosts ``algo-1 … algo-N``. For each host the runner
prepares a private ``/opt/ml`` tree (``HostSpec.ml_root``: ``input/config/*.json``, ``input/data/<channel>``,
``model/``, ``output/``, ``checkpoints/``, ``code/``) and asks an executor to run the image's
``train`` command against it. The runner owns everything else: fetching channels, feeding Pipe FIFOs,
reading the merged stdout/stderr stream line by line (logs + MetricDefinitions), enforcing
MaxRuntimeInSeconds, syncing checkpoints, reading ``output/failure`` and uploading the model.

Implementing an executor therefore means: start the host so that it sees ``spec.ml_root`` as
``/opt/ml`` (a local process gets ``SELFMAKER_ML_ROOT``; a container mounts it at ``/opt/ml``), with
``spec.env`` in its environment, and return a handle whose :attr:`ExecutionHandle.stream` yields the
merged stdout/stderr bytes. ``start`` returns at once; the runner calls :meth:`ExecutionHandle.wait`.

Hosts reach each other by the addresses in ``spec.host_addresses`` (for local processes all
``127.0.0.1``; a container executor may put the containers on one network and use the host names).
The built-in xgboost uses ``SELFMAKER_TRACKER_PORT`` on ``host_addresses[hosts[0]]``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


@dataclass(frozen=True)
class HostSpec:
    """Everything an executor needs to start one host of a training job."""

    #: training job name (safe in file and container names)
    job_name: str
    #: ``algo-1`` …
    host: str
    #: all hosts of the job, sorted as SageMaker sorts them
    hosts: tuple[str, ...]
    #: ``AlgorithmSpecification.TrainingImage`` ("" for selfmaker's own image)
    image: str
    #: the prepared /opt/ml tree of this host: mount it at /opt/ml (read-write)
    ml_root: Path
    #: environment for the training process: the job's ``Environment`` plus TRAINING_JOB_NAME,
    #: TRAINING_JOB_ARN,
    #: SELFMAKER_* variables set by the runner. A process executor adds it to ``os.environ``; a container
    #: executor passes exactly these.
    env: dict[str, str] = field(default_factory=dict)
    #: arguments after the image (default ``["train"]``); ``AlgorithmSpecification.ContainerArguments`` if
    #: set; empty for a processing job without ContainerArguments (the image's own command runs)
    arguments: tuple[str, ...] = ("train",)
    #: ``AlgorithmSpecification.ContainerEntrypoint`` if set (containers only)
    entrypoint: tuple[str, ...] | None = None
    #: ``ResourceConfig.InstanceType``
    instance_type: str = "ml.m5.large"
    #: host name → address other hosts use to reach it
    host_addresses: dict[str, str] = field(default_factory=dict)
    #: a private scratch directory for the executor (exists)
    work_dir: Path = Path(".")
    #: extra directories a container sees: (path relative to ``ml_root``, absolute path in the container),
    #: e.g. a CheckpointConfig.LocalPath outside /opt/ml; a local process is told the host path instead
    mounts: tuple[tuple[Path, str], ...] = ()
    #: what the host runs for (``training`` or ``processing``): container names and labels carry it
    kind: str = "training"


class ExecutionHandle(abc.ABC):
    """A started host. The runner reads :attr:`stream` until EOF and calls :meth:`wait`."""

    #: merged stdout+stderr of the host, binary, read by the runner until EOF
    stream: IO[bytes]

    @abc.abstractmethod
    def poll(self) -> int | None:
        """Exit code if the host has ended, else None (non-blocking)."""

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the host ends (or ``timeout`` passes → None); return its exit code."""

    @abc.abstractmethod
    def terminate(self) -> None:
        """Ask the host to stop (SIGTERM / ``stop --time``); idempotent, never raises if already gone."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Force the host to stop (SIGKILL); idempotent, never raises if already gone."""

    @property
    def pid(self) -> int | None:
        """The OS process id if there is one."""
        return None


class Executor(abc.ABC):
    """Starts training hosts of one kind (``process`` or ``container``)."""

    kind: str = ""

    @abc.abstractmethod
    def start(self, spec: HostSpec) -> ExecutionHandle:
        """Launch the host described by ``spec`` and return at once.

        Raise :class:`ExecutorError` with a user-facing message when it cannot be launched at all
        (image missing, engine unavailable); the message becomes the job's FailureReason.
        """

    def close(self) -> None:  # noqa: B027 - an optional hook: most executors hold nothing
        """Release executor-wide resources (called once by the runner after all hosts ended)."""


class ExecutorError(Exception):
    """A host could not be launched; the message is shown as the job's FailureReason."""

"""Host-side training job runner: one CreateTrainingJob request → one finished job.

:class:`TrainingJobRunner` prepares a job directory holding one ``/opt/ml`` tree per host, fetches the
channels (S3Prefix / ManifestFile, ``s3://`` or ``file://``, FullyReplicated / ShardedByS3Key, File /
FastFile / Pipe), restores checkpoints, starts every host through an executor (a local process for
selfmaker's own image and the built-ins, a container otherwise), streams their logs to files and a
callback, applies the MetricDefinitions regexes, enforces MaxRuntimeInSeconds and StopTrainingJob,
syncs checkpoints while running, reads ``output/failure`` and uploads ``model.tar.gz`` and
``output.tar.gz``. It reports the DescribeTrainingJob fields it owns through :class:`TrainingJobState`.

See docs/contracts.md §3 and docs/training.md.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import gzip
import json
import logging
import os
import re
import shutil
import tarfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common.childenv import aws_credentials
from common.proc import free_port
from training.environment import NETWORK_ISOLATION_ENV
from training.executors.base import ExecutionHandle, Executor, ExecutorError, HostSpec
from training.executors.process import ProcessExecutor
from training.images import classify_image
from training.script_mode import SUBMIT_CACHE_ENV
from training.storage import ObjectRef, Storage, StorageError, is_s3, join
from training.warm import WarmExecutor, WarmStart

log = logging.getLogger(__name__)

#: SecondaryStatus messages as SageMaker words them
MESSAGES = {
    "Starting": "Preparing the instances for training",
    "Downloading": "Downloading input data",
    "Training": "Training image download completed. Training in progress.",
    "Uploading": "Uploading generated training model",
    "Completed": "Training job completed",
    "Failed": "Training job failed",
    "Stopping": "Stopping the training job",
    "Stopped": "Training job stopped",
    "MaxRuntimeExceeded": "Training job runtime exceeded MaxRuntimeInSeconds provided",
    "MaxWaitTimeExceeded": "Training job wait time exceeded MaxWaitTimeInSeconds provided",
    "Interrupted": "Training job interrupted by a spot instance interruption",
    "Restarting": "Restarting the training job",
}

#: the share of the on-demand price a (simulated) managed spot job is billed: spot capacity locally costs
#: nothing, so this stands for SageMaker's typical spot discount and makes BillableTimeInSeconds < training
SPOT_PRICE_RATIO = 0.3
#: where SageMaker mounts the checkpoint directory when CheckpointConfig.LocalPath is absent
DEFAULT_CHECKPOINT_PATH = "/opt/ml/checkpoints"

FAILURE_REASON_LIMIT = 1024
DEFAULT_MAX_RUNTIME = 86400
MAX_PIPE_EPOCHS = 10_000


class TrainingRequestError(ValueError):
    """The request cannot run (bad field); the message names the field."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class TrainingJobState:
    """The DescribeTrainingJob members the runner owns, plus the full metric series.

    Timestamps are timezone-aware UTC ``datetime`` objects (what boto3 returns to its callers).
    """

    status: str = "InProgress"
    secondary_status: str = "Starting"
    transitions: list[dict[str, Any]] = field(default_factory=list)
    failure_reason: str | None = None
    #: every match of every MetricDefinition: ``{"MetricName", "Value", "Timestamp"}``
    metrics: list[dict[str, Any]] = field(default_factory=list)
    final_metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_artifacts: str | None = None
    output_artifacts: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    #: host → exit code
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    #: host → local log file
    log_files: dict[str, str] = field(default_factory=dict)
    #: BillableTimeInSeconds when it is not the training time (managed spot)
    billable_seconds: int | None = None
    #: attempts started (1 + restarts after internal errors or spot interruptions)
    attempts: int = 0

    def describe_fields(self) -> dict[str, Any]:
        """DescribeTrainingJob members (botocore names); absent values are omitted, never None."""
        out: dict[str, Any] = {
            "TrainingJobStatus": self.status,
            "SecondaryStatus": self.secondary_status,
            "SecondaryStatusTransitions": copy.deepcopy(self.transitions),
            "FinalMetricDataList": [dict(v) for v in self.final_metrics.values()],
        }
        if self.failure_reason:
            out["FailureReason"] = self.failure_reason
        if self.model_artifacts:
            out["ModelArtifacts"] = {"S3ModelArtifacts": self.model_artifacts}
        if self.start_time:
            out["TrainingStartTime"] = self.start_time
        if self.end_time:
            out["TrainingEndTime"] = self.end_time
        if self.start_time and self.end_time:
            seconds = max(0, int(round((self.end_time - self.start_time).total_seconds())))
            out["TrainingTimeInSeconds"] = seconds
            out["BillableTimeInSeconds"] = seconds if self.billable_seconds is None else self.billable_seconds
        return out


@dataclass
class _Channel:
    name: str
    uri: str
    data_type: str
    distribution: str
    input_mode: str
    content_type: str | None
    compression: str
    record_wrapper: str


@dataclass
class _Host:
    name: str
    root: Path
    handle: ExecutionHandle | None = None
    reader: threading.Thread | None = None


@dataclass(frozen=True)
class _JobRequest:
    """The CreateTrainingJob fields the runner uses, checked by :meth:`TrainingJobRunner._parse_request`."""

    algo: dict[str, Any]
    image: str
    kind: str  # classify_image: "container", "xgboost", "linear-learner", ...
    channels: list[_Channel]
    output_path: str
    names: list[str]  # the hosts, algo-1 ... algo-N
    instance_type: str
    max_runtime: float
    hyperparameters: dict[str, Any]
    checkpoint: dict[str, Any]
    #: EnableManagedSpotTraining
    spot: bool = False
    #: StoppingCondition.MaxWaitTimeInSeconds (spot only): the whole job's wall time, restarts included
    max_wait: float | None = None
    #: RetryStrategy.MaximumRetryAttempts - 1: restarts allowed after an internal error
    retries: int = 0
    #: CheckpointConfig.LocalPath as the job sees it (``/opt/ml/checkpoints`` by default)
    checkpoint_local: str = DEFAULT_CHECKPOINT_PATH

    @property
    def checkpoint_subdir(self) -> str | None:
        """The checkpoint directory relative to a host's ``/opt/ml`` tree, or None when LocalPath lies
        outside ``/opt/ml`` (then ``checkpoints/`` of the tree is mounted at LocalPath in a container)."""
        if self.checkpoint_local.startswith("/opt/ml/"):
            return self.checkpoint_local[len("/opt/ml/") :].strip("/")
        return None

    @property
    def checkpoint_uri(self) -> str | None:
        """CheckpointConfig.S3Uri, when checkpoints are synced."""
        uri = self.checkpoint.get("S3Uri")
        return str(uri) if uri else None


def checkpoint_local_path(checkpoint: Mapping[str, Any]) -> str:
    """CheckpointConfig.LocalPath, checked: an absolute path, not ``/opt/ml`` itself nor inside the
    platform-written ``/opt/ml/input`` (default ``/opt/ml/checkpoints``); TrainingRequestError otherwise."""
    local = str(checkpoint.get("LocalPath") or DEFAULT_CHECKPOINT_PATH)
    clean = os.path.normpath(local)
    if not local.startswith("/") or clean != local.rstrip("/") or clean in ("/", "/opt/ml"):
        raise TrainingRequestError(
            f"CheckpointConfig.LocalPath {local!r} must be a normalized absolute directory path other than "
            "/ and /opt/ml"
        )
    if clean == "/opt/ml/input" or clean.startswith("/opt/ml/input/"):
        raise TrainingRequestError(
            f"CheckpointConfig.LocalPath {local!r} must not be inside /opt/ml/input (the platform writes it)"
        )
    return clean


def check_request(request: dict[str, Any]) -> None:
    """The checks the runner makes of a request when it starts, without running anything: the
    TrainingRequestError a job would fail with (``selfmaker train REQUEST.json --aws-batch`` refuses it)."""
    TrainingJobRunner(request, Path("."))._parse_request()


class TrainingJobRunner:
    """Runs one CreateTrainingJob request (botocore shape) to completion.

    ``on_update(state)`` gets a copy of the state at every status change; ``on_log(host, line)`` gets
    every log line of every host. ``.run()`` blocks and returns the final state; ``.stop()`` is
    thread-safe (StopTrainingJob). Extra keyword arguments: ``executors`` (kind → executor; ``process``
    defaults to :class:`ProcessExecutor`, ``container`` to ``training.executors.container`` when present),
    ``storage`` / ``s3_endpoint_url``, ``stop_grace_seconds`` (SIGTERM → SIGKILL, SageMaker gives 120),
    ``checkpoint_sync_interval`` and ``job_arn``; ``spot_interrupt_after`` (seconds of Training after which a
    managed spot job is interrupted once, the test knob ``SELFMAKER_SPOT_INTERRUPT_AFTER``) and ``warm`` (a
    warm pool's standby interpreters and input cache, :mod:`training.warm`).

    ``RetryStrategy.MaximumRetryAttempts`` restarts the job after an internal error (a host killed by a
    signal or dead without ``output/failure``; a user error writes it and is final), and a spot interruption
    restarts it once; each restart begins again at Starting, restores CheckpointConfig.S3Uri into
    CheckpointConfig.LocalPath and shows in SecondaryStatusTransitions (Restarting / Interrupted).

    One node of a multi-machine job (an AWS Batch multi-node job) runs only its own hosts: ``local_hosts``
    names them (default: every host of the job), ``host_addresses`` says how hosts reach each other (at
    least ``algo-1``, the tracker's host) and ``tracker_port`` is the distributed tracker's port. Only the
    node running ``algo-1`` uploads the model and output archives.
    """

    def __init__(
        self,
        request: dict[str, Any],
        work_dir: str | Path,
        on_update: Callable[[TrainingJobState], None] | None = None,
        on_log: Callable[[str, str], None] | None = None,
        *,
        executors: dict[str, Executor] | None = None,
        storage: Storage | None = None,
        s3_endpoint_url: str | None = None,
        stop_grace_seconds: float = 120.0,
        checkpoint_sync_interval: float = 10.0,
        job_arn: str | None = None,
        local_hosts: Sequence[str] | None = None,
        host_addresses: Mapping[str, str] | None = None,
        tracker_port: int | None = None,
        spot_interrupt_after: float | None = None,
        warm: WarmStart | None = None,
    ) -> None:
        self.request = request
        self.work_dir = Path(work_dir).resolve()  # hosts run with their own cwd: no relative paths
        self.on_update = on_update
        self.on_log = on_log
        self.executors = dict(executors or {})
        self.storage = storage or Storage(s3_endpoint_url)
        self.stop_grace_seconds = stop_grace_seconds
        self.checkpoint_sync_interval = checkpoint_sync_interval
        self.job_name = str(request.get("TrainingJobName") or "training-job")
        self.local_hosts = None if local_hosts is None else frozenset(local_hosts)
        self.host_addresses = dict(host_addresses or {})
        self.tracker_port = tracker_port
        self.spot_interrupt_after = spot_interrupt_after
        self.warm = warm
        region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        self.job_arn = (
            job_arn or f"arn:aws:sagemaker:{region}:000000000000:training-job/{self.job_name.lower()}"
        )
        self.state = TrainingJobState()
        self._lock = threading.RLock()
        self._stop_requested = threading.Event()
        self._finished = threading.Event()
        self._hosts: list[_Host] = []
        self._metric_defs: list[tuple[str, re.Pattern[str]]] = []
        self._threads: list[threading.Thread] = []
        self._checkpoint_uploaded: dict[str, tuple[int, float]] = {}
        self._ckpt_lock = threading.Lock()
        self._exec_kind = "process"
        self._last_metric_notify = 0.0
        self._job: _JobRequest | None = None
        self._started_monotonic = time.monotonic()
        self._training_seconds = 0.0  # spent in Training by the attempts so far (MaxRuntimeInSeconds)
        self._transition("Starting")

    # -- public API -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Request StopTrainingJob: SIGTERM every host, SIGKILL after the grace period. Thread-safe."""
        if self._finished.is_set():
            return
        self._stop_requested.set()
        with self._lock:
            if self.state.status == "InProgress":
                self.state.status = "Stopping"
                self._notify()
            handles = [h.handle for h in self._hosts if h.handle is not None]
        for handle in handles:
            handle.terminate()

    def run(self) -> TrainingJobState:
        """Run the job to its end and return the final state (never raises for job failures)."""
        try:
            self._run()
        except (TrainingRequestError, StorageError, ExecutorError) as exc:
            text = str(exc)
            self._finish(
                "Failed", "Failed", text if text.startswith("ClientError") else f"ClientError: {text}"
            )
        except Exception as exc:  # an internal error must still end the job, with the traceback in the log
            log.exception("training job %s failed internally", self.job_name)
            self._finish("Failed", "Failed", f"InternalServerError: {type(exc).__name__}: {exc}")
        finally:
            self._stop_requested.set()
            for thread in self._threads:
                thread.join(timeout=10)
            self._finished.set()
        return self.snapshot()

    def snapshot(self) -> TrainingJobState:
        """A deep copy of the current state."""
        with self._lock:
            return copy.deepcopy(self.state)

    # -- state ----------------------------------------------------------------------------------
    def _notify(self) -> None:
        if self.on_update is not None:
            try:
                self.on_update(copy.deepcopy(self.state))
            except Exception:
                log.exception("on_update callback failed")

    def _transition(self, secondary: str, message: str | None = None) -> None:
        with self._lock:
            now = _now()
            for tr in self.state.transitions:
                if "EndTime" not in tr:
                    tr["EndTime"] = now
            entry: dict[str, Any] = {
                "Status": secondary,
                "StartTime": now,
                "StatusMessage": message or MESSAGES.get(secondary, secondary),
            }
            self.state.transitions.append(entry)
            self.state.secondary_status = secondary
            self._notify()

    def _finish(self, status: str, secondary: str, reason: str | None, message: str | None = None) -> None:
        with self._lock:
            if self.state.end_time is not None and self.state.status in {"Completed", "Failed", "Stopped"}:
                return
            if reason:
                self.state.failure_reason = reason[:FAILURE_REASON_LIMIT]
            self.state.status = status
            self._transition(secondary, message)
            now = self.state.transitions[-1]["StartTime"]
            self.state.transitions[-1]["EndTime"] = now
            if self.state.start_time is None:
                self.state.start_time = now
            self.state.end_time = now
            self._notify()

    # -- the job --------------------------------------------------------------------------------
    def _run(self) -> None:
        """The job's phases, as SageMaker's SecondaryStatus names them; attempts after an internal error
        (RetryStrategy) or a simulated spot interruption start again from Starting, with the checkpoints
        synced to CheckpointConfig.S3Uri restored."""
        job = self._parse_request()
        self._job = job
        self._started_monotonic = time.monotonic()
        retries_left = job.retries
        interrupt_after = self.spot_interrupt_after if job.spot else None
        reason: str | None = None
        stopped = False
        ended: str | None = None
        while True:
            with self._lock:
                self.state.attempts += 1
            executor = self._executor(job.kind)
            self._exec_kind = executor.kind  # FastFile symlinks only make sense for a local process
            self._prepare_hosts(job)
            self._download(job)
            if self._stop_requested.is_set():
                self._finish("Stopped", "Stopped", None)
                return
            try:
                ended = self._train(job, executor, interrupt_after)
            except ExecutorError as exc:
                if retries_left <= 0 or self._stop_requested.is_set():
                    raise
                retries_left -= 1
                self._restart(job, f"the training hosts could not be started: {exc}", retries_left)
                continue
            if ended == "Interrupted" and not self._stop_requested.is_set():
                interrupt_after = None  # one simulated interruption per job
                self._transition("Interrupted")
                self._say(
                    "Spot instance interrupted: the job restarts from the checkpoints synced to "
                    f"{job.checkpoint_uri or '(no CheckpointConfig: from scratch)'}"
                )
                self._transition("Starting", "Launching requested ML instances after the spot interruption")
                continue
            with self._lock:
                codes = {h.name: (h.handle.poll() if h.handle else None) for h in self._hosts}
                self.state.exit_codes = codes
            if ended == "Interrupted":
                ended = None  # stopped while interrupted: a plain stop
            stopped = self._stop_requested.is_set() and ended is None
            failed_hosts = [h.name for h in self._hosts if codes.get(h.name) not in (0,)]
            reason = None
            if not stopped and ended is None and failed_hosts:
                reason = self._failure_reason(failed_hosts, codes)
                if retries_left > 0 and self._internal_failure(failed_hosts, codes):
                    retries_left -= 1
                    self._restart(job, reason, retries_left)
                    continue
            break
        try:
            self._upload(job, keep_model=reason is None, interrupted=stopped or ended is not None)
        except StorageError as exc:
            reason = reason or f"ClientError: cannot upload the job output: {exc}"
            stopped, ended = False, None
        self._bill(job)
        if ended == "MaxRuntimeExceeded":
            self._finish(
                "Stopped",
                "MaxRuntimeExceeded",
                "MaxRuntimeExceeded: Training job runtime exceeded MaxRuntimeInSeconds provided "
                f"({job.max_runtime:g} s)",
            )
        elif ended == "MaxWaitTimeExceeded":
            self._finish(
                "Stopped",
                "MaxWaitTimeExceeded",
                "MaxWaitTimeExceeded: Training job wait time exceeded MaxWaitTimeInSeconds provided "
                f"({job.max_wait:g} s)",
            )
        elif stopped:
            self._finish("Stopped", "Stopped", None)
        elif reason is not None:
            self._finish("Failed", "Failed", reason)
        else:
            self._finish("Completed", "Completed", None)

    def _internal_failure(self, failed: list[str], codes: dict[str, int | None]) -> bool:
        """True when no failed host wrote ``output/failure``: the entry was killed by a signal or died before
        it could say why — what SageMaker's RetryStrategy retries; a user error writes the file (the other
        hosts, stopped because one failed, end by SIGTERM without one)."""
        return not any((self.work_dir / "hosts" / name / "output" / "failure").is_file() for name in failed)

    def _restart(self, job: _JobRequest, reason: str, retries_left: int) -> None:
        """Record the internal error and start the next attempt (SecondaryStatus Restarting)."""
        attempt = self.state.attempts
        self._say(f"Attempt {attempt} ended with an internal error; retrying ({retries_left} retries left)")
        first_line = reason.splitlines()[0] if reason else "internal error"
        self._transition(
            "Restarting",
            f"Restarting the training job after an internal error (attempt {attempt + 1} of "
            f"{job.retries + 1}): {first_line}"[:1024],
        )

    def _bill(self, job: _JobRequest) -> None:
        """BillableTimeInSeconds: the training time, or for managed spot the spot share of it, with the
        saving printed in the log as SageMaker prints it."""
        with self._lock:
            if self.state.start_time is None:
                return
            seconds = max(1, int(round((_now() - self.state.start_time).total_seconds())))
            if not job.spot:
                return
            billable = max(1, int(round(seconds * SPOT_PRICE_RATIO)))
            self.state.billable_seconds = billable
        self._say(f"Training seconds: {seconds}")
        self._say(f"Billable seconds: {billable}")
        self._say(f"Managed Spot Training savings: {100.0 * (1 - billable / seconds):.1f}%")

    def _say(self, line: str) -> None:
        """A platform line in the job log (host name ``selfmaker``)."""
        log.info("training job %s: %s", self.job_name, line)
        if self.on_log is not None:
            try:
                self.on_log("selfmaker", line)
            except Exception:
                log.exception("on_log callback failed")

    def _parse_request(self) -> _JobRequest:
        """The request's fields this runner uses, checked (TrainingRequestError names the bad field)."""
        req = self.request
        algo = req.get("AlgorithmSpecification") or {}
        if not isinstance(algo, dict):
            raise TrainingRequestError("AlgorithmSpecification must be an object")
        image = str(algo.get("TrainingImage") or "")
        if algo.get("AlgorithmName") and not image:
            image = str(algo["AlgorithmName"])
        default_mode = str(algo.get("TrainingInputMode") or "File")
        channels = self._parse_channels(req.get("InputDataConfig") or [], default_mode)
        output_path = str((req.get("OutputDataConfig") or {}).get("S3OutputPath") or "")
        if not output_path:
            raise TrainingRequestError("OutputDataConfig.S3OutputPath is required")
        resources = req.get("ResourceConfig") or {}
        count = int(resources.get("InstanceCount") or 1)
        if count < 1:
            raise TrainingRequestError("ResourceConfig.InstanceCount must be at least 1")
        for md in algo.get("MetricDefinitions") or []:
            try:
                self._metric_defs.append((str(md["Name"]), re.compile(str(md["Regex"]))))
            except (KeyError, re.error) as exc:
                raise TrainingRequestError(
                    f"AlgorithmSpecification.MetricDefinitions: bad definition {md!r}: {exc}"
                ) from exc
        hps = req.get("HyperParameters") or {}
        if not isinstance(hps, dict):
            raise TrainingRequestError("HyperParameters must be a map of strings")
        stopping = req.get("StoppingCondition") or {}
        checkpoint = req.get("CheckpointConfig") or {}
        local = checkpoint_local_path(checkpoint)
        retry = req.get("RetryStrategy") or {}
        return _JobRequest(
            algo=algo,
            image=image,
            kind=classify_image(image),
            channels=channels,
            output_path=output_path,
            names=sorted(f"algo-{i}" for i in range(1, count + 1)),  # lexicographic, as SageMaker sorts them
            instance_type=str(resources.get("InstanceType") or "ml.m5.large"),
            max_runtime=float(stopping.get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME),
            hyperparameters=hps,
            checkpoint=checkpoint,
            spot=bool(req.get("EnableManagedSpotTraining")),
            max_wait=float(stopping["MaxWaitTimeInSeconds"])
            if stopping.get("MaxWaitTimeInSeconds")
            else None,
            retries=max(0, int(retry.get("MaximumRetryAttempts") or 1) - 1),
            checkpoint_local=local,
        )

    # -- Starting: one /opt/ml tree per host
    def _prepare_hosts(self, job: _JobRequest) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "logs").mkdir(exist_ok=True)
        with self._lock:
            self._hosts = []  # a new attempt gets fresh hosts, as SageMaker gives it new instances
        with self._ckpt_lock:
            self._checkpoint_uploaded.clear()  # the local copies are gone; the restore records what it brings
        for name in job.names:
            if self.local_hosts is not None and name not in self.local_hosts:
                continue  # another node runs it
            root = self.work_dir / "hosts" / name
            if root.exists():
                shutil.rmtree(root)
            for sub in (
                "input/config",
                "input/data",
                "model",
                "output/data",
                "output/intermediate",
                "checkpoints",
                "code",
            ):
                (root / sub).mkdir(parents=True, exist_ok=True)
            (root / (job.checkpoint_subdir or "checkpoints")).mkdir(parents=True, exist_ok=True)
            with self._lock:
                self._hosts.append(_Host(name, root))
            self._write_configs(
                root,
                name,
                job.names,
                job.instance_type,
                job.hyperparameters,
                job.channels,
                job.algo,
                job.checkpoint,
                self._checkpoint_seen_as(job, root),
            )

    def _checkpoint_dir(self, host: _Host) -> Path:
        """The host-side directory of CheckpointConfig.LocalPath."""
        sub = self._job.checkpoint_subdir if self._job is not None else None
        return host.root / (sub or "checkpoints")

    def _checkpoint_seen_as(self, job: _JobRequest, root: Path) -> str:
        """CheckpointConfig.LocalPath as the training program sees it: the path itself in a container
        (mounted there when outside /opt/ml), its place in the host's tree for a local process (which sees
        its /opt/ml tree at ``$SELFMAKER_ML_ROOT``)."""
        if self._exec_kind == "container":
            return job.checkpoint_local
        return str(root / (job.checkpoint_subdir or "checkpoints"))

    # -- Downloading
    def _download(self, job: _JobRequest) -> None:
        with self._lock:
            if self.state.start_time is None:  # a restarted attempt keeps the job's start
                self.state.start_time = _now()
        self._transition("Downloading")
        for host in self._hosts:
            for ch in job.channels:
                self._fetch_channel(ch, host, job.names.index(host.name), len(job.names))
        if job.checkpoint_uri:
            for host in self._hosts:
                self._restore_checkpoints(job.checkpoint_uri, host)

    # -- Training
    def _train(
        self, job: _JobRequest, executor: Executor, interrupt_after: float | None = None
    ) -> str | None:
        """Start every host, wait for them all (or the stop, MaxRuntime, MaxWaitTime or the simulated spot
        interruption ``interrupt_after`` seconds in), sync the checkpoints a last time; what ended the hosts
        early (``MaxRuntimeExceeded``, ``MaxWaitTimeExceeded``, ``Interrupted``) or None."""
        self._transition("Training")
        names = job.names
        env = self._environment(job.kind, self.request)
        addresses = {n: "127.0.0.1" for n in names} if executor.kind == "process" else {n: n for n in names}
        addresses.update(self.host_addresses)
        if len(names) > 1:
            env["SELFMAKER_TRACKER_PORT"] = str(
                self.tracker_port or (free_port() if executor.kind == "process" else 9099)
            )
        env["SELFMAKER_HOST_ADDRESSES"] = json.dumps(addresses)
        mounts: tuple[tuple[Path, str], ...] = ()
        if job.checkpoint_subdir is None and executor.kind == "container":
            mounts = ((Path("checkpoints"), job.checkpoint_local),)  # relative to the host's tree
        algo = job.algo
        args = tuple(algo.get("ContainerArguments") or ("train",))
        entry = tuple(algo["ContainerEntrypoint"]) if algo.get("ContainerEntrypoint") else None
        started = time.monotonic()
        attempt_done = threading.Event()
        sync: threading.Thread | None = None
        try:
            for host in self._hosts:
                spec = HostSpec(
                    job_name=self.job_name,
                    host=host.name,
                    hosts=tuple(names),
                    image=job.image,
                    ml_root=host.root,
                    env=dict(env),
                    arguments=args if job.kind == "container" else ("train",),
                    entrypoint=entry,
                    instance_type=job.instance_type,
                    host_addresses=addresses,
                    work_dir=self._scratch(host.name),
                    mounts=mounts,
                )
                handle = executor.start(spec)
                with self._lock:
                    host.handle = handle
                host.reader = threading.Thread(
                    target=self._read_logs, args=(host,), name=f"log-{host.name}", daemon=True
                )
                host.reader.start()
                if self._stop_requested.is_set():
                    handle.terminate()
            if job.checkpoint_uri:
                sync = threading.Thread(
                    target=self._checkpoint_loop, args=(job.checkpoint_uri, attempt_done), daemon=True
                )
                sync.start()
                self._threads.append(sync)
            ended = self._wait_hosts(started, job, interrupt_after)
        finally:
            attempt_done.set()
            self._training_seconds += time.monotonic() - started
            for host in self._hosts:
                if host.handle is not None and host.handle.poll() is None:
                    host.handle.kill()
                    host.handle.wait(10)
                if host.reader is not None:
                    host.reader.join(timeout=10)
            executor.close()
            if sync is not None:
                sync.join(timeout=60)  # no sync of this attempt may run into the next one's restore
        if job.checkpoint_uri:
            for host in self._hosts:
                self._sync_checkpoints(job.checkpoint_uri, host)
        return ended

    # -- Uploading (the model is uploaded after a stop too: the algorithm had the grace period to save it)
    def _upload(self, job: _JobRequest, *, keep_model: bool, interrupted: bool) -> None:
        """``model.tar.gz`` (unless the job failed; after a stop or timeout only when a host saved a
        model) and ``output.tar.gz`` under ``<S3OutputPath>/<job>/output/``; raises StorageError."""
        if keep_model:
            self._transition("Uploading")
        if self.local_hosts is not None and job.names[0] not in self.local_hosts:
            return  # the node running algo-1 uploads the job's archives
        prefix = join(job.output_path, self.job_name, "output")
        if keep_model:
            model_tar = self.work_dir / "model.tar.gz"
            if self._tar_hosts(model_tar, "model") or not interrupted:
                self.storage.upload(model_tar, join(prefix, "model.tar.gz"))
                with self._lock:
                    self.state.model_artifacts = join(prefix, "model.tar.gz")
        out_tar = self.work_dir / "output.tar.gz"
        self._tar_hosts(out_tar, "output/data")
        self.storage.upload(out_tar, join(prefix, "output.tar.gz"))
        with self._lock:
            self.state.output_artifacts = join(prefix, "output.tar.gz")

    # -- request parsing ------------------------------------------------------------------------
    def _parse_channels(self, config: Any, default_mode: str) -> list[_Channel]:
        if not isinstance(config, list):
            raise TrainingRequestError("InputDataConfig must be a list of channels")
        out: list[_Channel] = []
        seen: set[str] = set()
        for i, ch in enumerate(config):
            where = f"InputDataConfig[{i}]"
            name = str(ch.get("ChannelName") or "")
            if not re.fullmatch(r"[A-Za-z0-9\.\-_]+", name):
                raise TrainingRequestError(f"{where}.ChannelName {name!r} is invalid")
            if name in seen:
                raise TrainingRequestError(f"{where}.ChannelName {name!r} is used twice")
            seen.add(name)
            src = (ch.get("DataSource") or {}).get("S3DataSource")
            if not src or not src.get("S3Uri"):
                raise TrainingRequestError(
                    f"{where}.DataSource.S3DataSource.S3Uri is required (FileSystemDataSource is not "
                    "supported)"
                )
            data_type = str(src.get("S3DataType") or "S3Prefix")
            if data_type not in {"S3Prefix", "ManifestFile"}:
                raise TrainingRequestError(
                    f"{where}.DataSource.S3DataSource.S3DataType {data_type!r} is not supported "
                    "(S3Prefix, ManifestFile)"
                )
            mode = str(ch.get("InputMode") or default_mode)
            if mode not in {"File", "FastFile", "Pipe"}:
                raise TrainingRequestError(f"{where}.InputMode {mode!r} must be File, FastFile or Pipe")
            dist = str(src.get("S3DataDistributionType") or "FullyReplicated")
            if dist not in {"FullyReplicated", "ShardedByS3Key"}:
                raise TrainingRequestError(
                    f"{where}.DataSource.S3DataSource.S3DataDistributionType {dist!r} is invalid"
                )
            out.append(
                _Channel(
                    name=name,
                    uri=str(src["S3Uri"]),
                    data_type=data_type,
                    distribution=dist,
                    input_mode=mode,
                    content_type=ch.get("ContentType"),
                    compression=str(ch.get("CompressionType") or "None"),
                    record_wrapper=str(ch.get("RecordWrapperType") or "None"),
                )
            )
        return out

    def _executor(self, kind: str) -> Executor:
        exec_kind = "container" if kind == "container" else "process"
        if exec_kind in self.executors:
            return self.executors[exec_kind]
        if exec_kind == "process":
            return WarmExecutor(self.warm) if self.warm is not None else ProcessExecutor()
        try:
            from training.executors import container as container_mod  # lands with the images work
        except ImportError as exc:
            raise ExecutorError(
                "this training image needs a container engine, and none is configured"
            ) from exc
        return container_mod.ContainerExecutor()

    def _environment(self, kind: str, req: dict[str, Any]) -> dict[str, str]:
        env = {str(k): str(v) for k, v in (req.get("Environment") or {}).items()}
        cache = self._submit_cache(kind, req)
        if cache is not None:
            env[SUBMIT_CACHE_ENV] = str(cache)
        env["TRAINING_JOB_NAME"] = self.job_name
        env["TRAINING_JOB_ARN"] = self.job_arn
        if req.get("EnableNetworkIsolation"):
            env[NETWORK_ISOLATION_ENV] = "1"
        if kind in {"xgboost", "linear-learner"}:
            env["SELFMAKER_ALGORITHM"] = kind
        if (
            kind != "container"
            and self.storage.endpoint_url
            and "AWS_ENDPOINT_URL_S3" not in env
            and "AWS_ENDPOINT_URL" not in env
        ):
            env["AWS_ENDPOINT_URL_S3"] = self.storage.endpoint_url  # the submit dir may live on the same S3
        if kind != "container" and "s3://" in json.dumps(req):
            # a job that uses S3 runs as the role would on SageMaker: with the platform's credentials (a job
            # on file:// data gets none; the environment is otherwise explicit, see common.childenv)
            for name, value in aws_credentials().items():
                env.setdefault(name, value)
        return env

    def _submit_cache(self, kind: str, req: dict[str, Any]) -> Path | None:
        """Where a warm pool keeps the unpacked ``sagemaker_submit_directory`` archive of this job: keyed by
        the archive's URI, size and version, so a changed archive is unpacked again (local processes only: a
        container does not see the cache)."""
        if self.warm is None or self.warm.input_cache is None or kind == "container":
            return None
        raw = (req.get("HyperParameters") or {}).get("sagemaker_submit_directory")
        try:
            uri = json.loads(raw) if isinstance(raw, str) and raw.startswith('"') else raw
        except ValueError:
            return None
        if not isinstance(uri, str) or not uri:
            return None
        try:
            refs = self.storage.list(uri)
        except StorageError:
            return None  # the host reports the bad URI itself
        if len(refs) != 1 or refs[0].uri.rstrip("/") != uri.rstrip("/") or not refs[0].version:
            return None  # a directory (copied anyway) or an ambiguous prefix
        key = self.warm.cache_key(refs[0].uri, refs[0].size, refs[0].version)
        return key.with_name(key.name + ".code") if key is not None else None

    def _write_configs(
        self,
        root: Path,
        host: str,
        hosts: list[str],
        instance_type: str,
        hps: dict[str, Any],
        channels: list[_Channel],
        algo: dict[str, Any],
        checkpoint: dict[str, Any],
        checkpoint_path: str = DEFAULT_CHECKPOINT_PATH,
    ) -> None:
        cfg = root / "input" / "config"
        (cfg / "hyperparameters.json").write_text(json.dumps({str(k): str(v) for k, v in hps.items()}))
        data_cfg: dict[str, Any] = {}
        for ch in channels:
            entry: dict[str, Any] = {
                "TrainingInputMode": "Pipe" if ch.input_mode == "Pipe" else "File",
                "S3DistributionType": ch.distribution,
                "RecordWrapperType": ch.record_wrapper,
            }
            if ch.content_type:
                entry["ContentType"] = ch.content_type
            data_cfg[ch.name] = entry
        (cfg / "inputdataconfig.json").write_text(json.dumps(data_cfg))
        (cfg / "resourceconfig.json").write_text(
            json.dumps(
                {
                    "current_host": host,
                    "hosts": hosts,
                    "network_interface_name": "eth0",
                    "current_instance_type": instance_type,
                    "current_group_name": "homogeneousCluster",
                    "instance_groups": [
                        {
                            "instance_group_name": "homogeneousCluster",
                            "instance_type": instance_type,
                            "hosts": hosts,
                        }
                    ],
                }
            )
        )
        if checkpoint.get("S3Uri"):
            (cfg / "checkpointconfig.json").write_text(
                json.dumps({"LocalPath": checkpoint_path, "S3Uri": checkpoint["S3Uri"]})
            )
        (cfg / "metric-definition-regex.json").write_text(json.dumps(algo.get("MetricDefinitions") or []))
        (cfg / "trainingjobconfig.json").write_text(json.dumps(self.request, default=str))

    # -- channels -------------------------------------------------------------------------------
    def _objects(self, ch: _Channel) -> list[ObjectRef]:
        if ch.data_type == "ManifestFile":
            try:
                manifest = json.loads(self.storage.read_bytes(ch.uri))
            except ValueError as exc:
                raise StorageError(f"manifest {ch.uri} is not valid JSON: {exc}") from exc
            if (
                not isinstance(manifest, list)
                or not manifest
                or not isinstance(manifest[0], dict)
                or "prefix" not in manifest[0]
            ):
                raise StorageError(f'manifest {ch.uri} must be a JSON list starting with {{"prefix": ...}}')
            base = str(manifest[0]["prefix"])
            return [
                ObjectRef(base.rstrip("/") + "/" + str(rel).lstrip("/"), str(rel).lstrip("/"))
                for rel in manifest[1:]
            ]
        refs = self.storage.list(ch.uri)
        if not refs:
            raise StorageError(f"channel {ch.name!r}: no objects under {ch.uri}")
        return refs

    def _fetch_channel(self, ch: _Channel, host: _Host, index: int, count: int) -> None:
        refs = self._objects(ch)
        if ch.distribution == "ShardedByS3Key" and count > 1:
            refs = refs[index::count]
        data = host.root / "input" / "data"
        if ch.input_mode == "Pipe":
            cache = self.work_dir / "pipe-cache" / host.name / ch.name
            files = []
            for i, ref in enumerate(refs):
                dest = cache / f"{i:06d}"
                self._download_object(ref, dest)
                files.append(dest)
            thread = threading.Thread(
                target=self._feed_pipe,
                args=(data, ch, files),
                name=f"pipe-{host.name}-{ch.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            return
        target = data / ch.name
        target.mkdir(parents=True, exist_ok=True)
        for ref in refs:
            dest = target / ref.relative
            if not dest.resolve().is_relative_to(target.resolve()):
                raise StorageError(f"channel {ch.name!r}: object {ref.uri} escapes the channel directory")
            if ch.input_mode == "FastFile" and not is_s3(ref.uri) and self._exec_kind == "process":
                # FastFile: readable at the same path without copying up front
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = Path(ref.uri[len("file://") :]) if ref.uri.startswith("file://") else Path(ref.uri)
                os.symlink(src, dest)
            else:
                self._download_object(ref, dest)

    def _download_object(self, ref: ObjectRef, dest: Path) -> None:
        """Download one object, through the warm pool's input cache when the job has one."""
        key = self.warm.cache_key(ref.uri, ref.size, ref.version) if self.warm is not None else None
        if key is not None and ref.version and self.warm is not None:
            if self.warm.fetch(key, dest):
                return
            self.storage.download(ref.uri, dest)
            self.warm.keep(key, dest)
            return
        self.storage.download(ref.uri, dest)

    def _feed_pipe(self, data_dir: Path, ch: _Channel, files: list[Path]) -> None:
        """Create ``<channel>_<epoch>`` FIFOs one after the other and stream the channel through each."""
        for epoch in range(MAX_PIPE_EPOCHS):
            path = data_dir / f"{ch.name}_{epoch}"
            try:
                os.mkfifo(path)
            except FileExistsError:
                pass
            except OSError:
                return  # the host's tree is gone: its attempt ended (a restart makes a new one)
            fd = None
            while not self._stop_requested.is_set():
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                        return
                    time.sleep(0.02)
            if fd is None:
                return
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            try:
                with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                    for f in files:
                        opener = gzip.open if ch.compression == "Gzip" else open
                        with opener(f, "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 20)
            except (BrokenPipeError, OSError):
                pass  # the reader closed early: this epoch is over for it

    # -- logs and metrics -----------------------------------------------------------------------
    def _read_logs(self, host: _Host) -> None:
        assert host.handle is not None
        path = self.work_dir / "logs" / f"{host.name}.log"
        with self._lock:
            self.state.log_files[host.name] = str(path)
        with open(path, "ab") as sink:
            for raw in iter(host.handle.stream.readline, b""):
                sink.write(raw)
                sink.flush()
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self._match_metrics(line)
                if self.on_log is not None:
                    try:
                        self.on_log(host.name, line)
                    except Exception:
                        log.exception("on_log callback failed")
        host.handle.stream.close()

    def _match_metrics(self, line: str) -> None:
        for name, pattern in self._metric_defs:
            m = pattern.search(line)
            if not m:
                continue
            text = m.group(1) if m.groups() else m.group(0)
            try:
                value = float(text)
            except (TypeError, ValueError):
                continue
            point = {"MetricName": name, "Value": value, "Timestamp": _now()}
            with self._lock:
                self.state.metrics.append(point)
                self.state.final_metrics[name] = dict(point)
                # live FinalMetricDataList for DescribeTrainingJob, at most one update per second
                if time.monotonic() - self._last_metric_notify >= 1.0:
                    self._last_metric_notify = time.monotonic()
                    self._notify()

    # -- waiting --------------------------------------------------------------------------------
    def _wait_hosts(
        self, started: float, job: _JobRequest, interrupt_after: float | None = None
    ) -> str | None:
        """Wait for every host; what ended them early (``MaxRuntimeExceeded``, ``MaxWaitTimeExceeded``,
        ``Interrupted``) or None. MaxRuntimeInSeconds counts the Training time of every attempt,
        MaxWaitTimeInSeconds the whole job's wall time (SageMaker's rules for managed spot)."""
        deadline = started + max(0.0, job.max_runtime - self._training_seconds)
        ended: str | None = None
        wait_deadline = self._started_monotonic + job.max_wait if job.max_wait else None
        if wait_deadline is not None and wait_deadline < deadline:
            deadline, limit = wait_deadline, "MaxWaitTimeExceeded"
        else:
            limit = "MaxRuntimeExceeded"
        interrupt_at = started + interrupt_after if interrupt_after is not None else None
        kill_at: float | None = None
        while True:
            alive = [h for h in self._hosts if h.handle is not None and h.handle.poll() is None]
            if not alive:
                return ended
            now = time.monotonic()
            if ended is None and now >= deadline and not self._stop_requested.is_set():
                ended = limit
                log.info("job %s: %s; stopping", self.job_name, limit)
                self._stop_requested.set()
                for h in alive:
                    h.handle.terminate()  # type: ignore[union-attr]
            if ended is None and interrupt_at is not None and now >= interrupt_at:
                # the simulated spot reclaim: SIGTERM as SageMaker's two-minute notice, SIGKILL after grace
                ended = "Interrupted"
                log.info("job %s: simulated spot interruption after %g s", self.job_name, interrupt_after)
                kill_at = now + self.stop_grace_seconds
                for h in alive:
                    h.handle.terminate()  # type: ignore[union-attr]
            if self._stop_requested.is_set() and kill_at is None:
                kill_at = now + self.stop_grace_seconds
                with self._lock:
                    if self.state.status == "InProgress":
                        self.state.status = "Stopping"
                for h in alive:
                    h.handle.terminate()  # type: ignore[union-attr]
            if kill_at is not None and now >= kill_at:
                for h in alive:
                    h.handle.kill()  # type: ignore[union-attr]
            # a failed host ends the job for everyone (SageMaker stops the cluster)
            if (
                any(h.handle is not None and h.handle.poll() not in (None, 0) for h in self._hosts)
                and kill_at is None
            ):
                kill_at = now + min(self.stop_grace_seconds, 10.0)
                for h in alive:
                    h.handle.terminate()  # type: ignore[union-attr]
            alive[0].handle.wait(0.1)  # type: ignore[union-attr]

    def _failure_reason(self, failed: list[str], codes: dict[str, int | None]) -> str:
        for name in failed:
            path = self.work_dir / "hosts" / name / "output" / "failure"
            if path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace").strip()
                if text:
                    if not text.startswith(("ClientError", "AlgorithmError")):
                        text = "AlgorithmError: " + text
                    return text[:FAILURE_REASON_LIMIT]
        name = failed[0]
        tail = ""
        log_path = self.work_dir / "logs" / f"{name}.log"
        if log_path.is_file():
            lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            tail = "\n".join(lines[-10:])
        return (
            f"AlgorithmError: {name} exited with code {codes.get(name)}"
            + (f"; last log lines:\n{tail}" if tail else "")
        )[:FAILURE_REASON_LIMIT]

    # -- checkpoints ----------------------------------------------------------------------------
    def _restore_checkpoints(self, uri: str, host: _Host) -> None:
        target = self._checkpoint_dir(host)
        prefix = uri.rstrip("/") + "/"
        try:
            refs = self.storage.list(prefix)
        except StorageError:
            return  # nothing there yet
        for ref in refs:
            dest = target / ref.relative
            self.storage.download(ref.uri, dest)
            st = dest.stat()
            with self._ckpt_lock:
                self._checkpoint_uploaded[f"{host.name}/{ref.relative}"] = (st.st_size, st.st_mtime)

    def _checkpoint_loop(self, uri: str, attempt_done: threading.Event) -> None:
        while not attempt_done.wait(self.checkpoint_sync_interval):
            for host in self._hosts:
                try:
                    self._sync_checkpoints(uri, host)
                except StorageError:
                    log.warning("checkpoint sync of %s failed; retrying", host.name, exc_info=True)
            if all(h.handle is not None and h.handle.poll() is not None for h in self._hosts):
                return

    def _sync_checkpoints(self, uri: str, host: _Host) -> None:
        """Upload new/changed files of the host's checkpoint dir; delete in S3 what it deleted locally."""
        with self._ckpt_lock:
            root = self._checkpoint_dir(host)
            present: set[str] = set()
            for path in sorted(root.rglob("*")):
                if not path.is_file() or path.name.endswith((".tmp", ".partial")):
                    continue
                rel = path.relative_to(root).as_posix()
                key = f"{host.name}/{rel}"
                present.add(key)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                sig = (st.st_size, st.st_mtime)
                if self._checkpoint_uploaded.get(key) != sig:
                    self.storage.upload(path, join(uri, rel))
                    self._checkpoint_uploaded[key] = sig
            for key in [
                k for k in self._checkpoint_uploaded if k.startswith(host.name + "/") and k not in present
            ]:
                self.storage.delete(join(uri, key.split("/", 1)[1]))
                del self._checkpoint_uploaded[key]

    # -- artifacts ------------------------------------------------------------------------------
    def _tar_hosts(self, dest: Path, sub: str) -> bool:
        """Tar ``<host>/<sub>`` of every host into one archive (algo-1 wins on clashes); True if not empty."""
        seen: set[str] = set()
        with tarfile.open(dest, "w:gz", compresslevel=6) as tar:
            for host in self._hosts:
                base = host.root / sub
                if not base.is_dir():
                    continue
                for path in sorted(base.rglob("*")):
                    rel = path.relative_to(base).as_posix()
                    if rel in seen or path.is_symlink() or not (path.is_file() or path.is_dir()):
                        continue
                    seen.add(rel)
                    tar.add(path, arcname=rel, recursive=False)
        return bool(seen)

    def _scratch(self, host: str) -> Path:
        path = self.work_dir / "scratch" / host
        path.mkdir(parents=True, exist_ok=True)
        return path


__all__ = ["TrainingJobRunner", "TrainingJobState", "TrainingRequestError", "MESSAGES"]

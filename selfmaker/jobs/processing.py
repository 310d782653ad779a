"""Processing jobs: CreateProcessingJob requests run in threads, one ``/opt/ml`` tree per host.

:func:`parse_request` checks a request the way SageMaker does before it accepts it (LocalPath under
``/opt/ml/processing/``, Gzip only with Pipe, no DatasetDefinition or FeatureStoreOutput here …) and
returns a :class:`ProcessingPlan`. :class:`ProcessingJobRunner` runs one plan: it prepares
``hosts/algo-N`` trees (``config/processingjobconfig.json`` and ``config/resourceconfig.json`` as
SageMaker writes them, every input under its LocalPath), fetches the S3Inputs (``s3://`` or ``file://``;
S3Prefix or ManifestFile; FullyReplicated or ShardedByS3Key; File, or Pipe through ``<LocalPath>_<epoch>``
FIFOs, Gzip decompressed while streaming), starts every host through an executor, enforces
MaxRuntimeInSeconds and StopProcessingJob, uploads the S3Outputs (Continuous while the job runs,
EndOfJob at its end) and reads ``/opt/ml/output/message`` into ExitMessage and FailureReason.

Images: selfmaker's own image and the built-in algorithm images (``SELFMAKER_PROCESS_IMAGES``) run the
job's ContainerEntrypoint + ContainerArguments as a local process whose ``python3`` is the platform's
Python (:class:`LocalProcessExecutor`: in a private mount namespace where the host's tree is
``/opt/ml``, so scripts with hard-coded ``/opt/ml/processing/...`` paths run unchanged); every other
image runs through the container engine with the tree mounted at ``/opt/ml``, as training's BYOC does.

:class:`ProcessingJobs` owns the records (kind ``processing-job``), the log file
(``<home>/logs/processing-jobs/<name>.log``, one line per line of a host with its time and ``[algo-N] ``
in front, as training jobs write theirs: :func:`selfmaker.logfiles.stamp`; the CloudWatch Logs view reads
it as ``/aws/sagemaker/ProcessingJobs``) and the restart rule: a job InProgress or Stopping when the
platform starts is marked Failed (its processes are gone). See docs/processing.md.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import fcntl
import gzip
import json
import logging
import os
import posixpath
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from common.childenv import aws_credentials, child_environment
from selfmaker.arns import make_arn
from selfmaker.errors import ResourceInUse, ValidationException
from selfmaker.executors import executor_kind_for_image, image_repository
from selfmaker.logfiles import job_log_path, stamp
from selfmaker.state import Record
from selfmaker.state import now as state_now
from training.environment import NETWORK_ISOLATION_ENV
from training.executors.base import ExecutionHandle, Executor, ExecutorError, HostSpec
from training.executors.process import ProcessHandle
from training.storage import ObjectRef, Storage, StorageError, join

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

log = logging.getLogger(__name__)

KIND = "processing-job"
RUNNING = ("InProgress", "Stopping")
ENDED = ("Completed", "Failed", "Stopped")
RESTART_REASON = "The selfmaker platform restarted while the processing job was running."
SHUTDOWN_REASON = "The selfmaker platform was stopped while the processing job was running."
#: every LocalPath must be below this directory (SageMaker's rule)
PROCESSING_ROOT = "/opt/ml/processing"
#: ExitMessage and FailureReason are at most this long (botocore's model)
MESSAGE_LIMIT = 1024
DEFAULT_MAX_RUNTIME = 86400
MAX_PIPE_EPOCHS = 10_000
#: the command of a built-in image that has one of its own, run when a request gives no ContainerEntrypoint
#: (SageMaker's Model Monitor analyzer image → selfmaker's analyzer, training/monitoring/)
BUILTIN_ENTRYPOINTS: dict[str, tuple[str, ...]] = {
    "sagemaker-model-monitor-analyzer": ("python3", "-m", "training.monitoring"),
}


# -- the request ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """One ``ProcessingInputs`` item with an S3Input (AppManaged inputs are not fetched)."""

    name: str
    uri: str
    #: the LocalPath relative to ``/opt/ml`` (``processing/input/data``)
    local: str
    data_type: str
    mode: str
    distribution: str
    compression: str


@dataclass(frozen=True)
class OutputSpec:
    """One ``ProcessingOutputConfig.Outputs`` item with an S3Output."""

    name: str
    uri: str
    #: the LocalPath relative to ``/opt/ml``
    local: str
    upload_mode: str


@dataclass(frozen=True)
class ProcessingPlan:
    """What :func:`parse_request` found in a CreateProcessingJob request."""

    image: str
    entrypoint: tuple[str, ...]
    arguments: tuple[str, ...]
    environment: dict[str, str]
    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    hosts: tuple[str, ...]
    instance_type: str
    max_runtime: float


def local_path(value: Any, where: str) -> str:
    """``value`` (a LocalPath) relative to ``/opt/ml``; ValidationException unless it is an absolute
    path strictly below ``/opt/ml/processing`` with no ``..`` in it."""
    text = str(value or "")
    normalized = posixpath.normpath(text) if text else ""
    if (
        not text.startswith("/")
        or ".." in text.split("/")
        or not normalized.startswith(PROCESSING_ROOT + "/")
    ):
        raise ValidationException(
            f"{where}.LocalPath {text!r} is invalid: it must be an absolute path below {PROCESSING_ROOT}/ "
            "(for example /opt/ml/processing/input)."
        )
    return normalized[len("/opt/ml/") :]


def _check_uri(uri: str, where: str) -> None:
    if not uri.startswith(("s3://", "file://")) or uri in ("s3://", "file://"):
        raise ValidationException(f"{where}.S3Uri {uri!r} must be an s3:// (or file://) URI.")


def parse_request(
    request: dict[str, Any], process_images: list[str] | tuple[str, ...] = ()
) -> ProcessingPlan:
    """The plan of a CreateProcessingJob request; ValidationException naming the bad member."""
    app = request.get("AppSpecification") or {}
    image = str(app.get("ImageUri") or "").strip()
    if not image:
        raise ValidationException("AppSpecification.ImageUri is required.")
    entrypoint = tuple(str(a) for a in app.get("ContainerEntrypoint") or ())
    arguments = tuple(str(a) for a in app.get("ContainerArguments") or ())
    runs_locally = executor_kind_for_image(image, process_images) == "process"
    if runs_locally and not entrypoint:
        entrypoint = BUILTIN_ENTRYPOINTS.get(image_repository(image), ())
    if runs_locally and not entrypoint:
        raise ValidationException(
            f"AppSpecification.ContainerEntrypoint is required with image {image}: selfmaker runs it as a "
            "local process (for example ['python3', '/opt/ml/processing/input/code/script.py'])."
        )
    inputs: list[InputSpec] = []
    locals_in: list[tuple[str, str]] = []
    names: set[str] = set()
    for i, item in enumerate(request.get("ProcessingInputs") or []):
        where = f"ProcessingInputs[{i}]"
        name = str(item.get("InputName") or "")
        if name in names:
            raise ValidationException(f"{where}.InputName {name!r} is used by another input.")
        names.add(name)
        if item.get("DatasetDefinition") is not None:
            raise ValidationException(
                f"{where}.DatasetDefinition is not supported by selfmaker (Athena and Redshift queries "
                "need those AWS services); run the query elsewhere and give its S3 output as an S3Input."
            )
        s3 = item.get("S3Input")
        if s3 is None:
            raise ValidationException(f"{where} needs an S3Input.")
        if item.get("AppManaged"):
            continue  # "input operations are managed natively by the processing job application"
        uri = str(s3.get("S3Uri") or "")
        _check_uri(uri, f"{where}.S3Input")
        local = local_path(s3.get("LocalPath"), f"{where}.S3Input")
        mode = str(s3.get("S3InputMode") or "File")
        compression = str(s3.get("S3CompressionType") or "None")
        if compression == "Gzip" and mode != "Pipe":
            raise ValidationException(
                f"{where}.S3Input.S3CompressionType Gzip is only supported with S3InputMode Pipe."
            )
        for other_name, other in locals_in:
            if local == other:
                raise ValidationException(
                    f"{where}.S3Input.LocalPath /opt/ml/{local} is the LocalPath of input {other_name!r} too."
                )
        locals_in.append((name, local))
        inputs.append(
            InputSpec(
                name=name,
                uri=uri,
                local=local,
                data_type=str(s3.get("S3DataType") or "S3Prefix"),
                mode=mode,
                distribution=str(s3.get("S3DataDistributionType") or "FullyReplicated"),
                compression=compression,
            )
        )
    outputs: list[OutputSpec] = []
    names = set()
    for i, item in enumerate((request.get("ProcessingOutputConfig") or {}).get("Outputs") or []):
        where = f"ProcessingOutputConfig.Outputs[{i}]"
        name = str(item.get("OutputName") or "")
        if name in names:
            raise ValidationException(f"{where}.OutputName {name!r} is used by another output.")
        names.add(name)
        if item.get("FeatureStoreOutput") is not None:
            raise ValidationException(
                f"{where}.FeatureStoreOutput is not supported by selfmaker (no Feature Store); "
                "use an S3Output."
            )
        if item.get("AppManaged"):
            continue  # the application uploads it itself
        s3 = item.get("S3Output")
        if s3 is None:
            raise ValidationException(f"{where} needs an S3Output.")
        uri = str(s3.get("S3Uri") or "")
        _check_uri(uri, f"{where}.S3Output")
        local = local_path(s3.get("LocalPath"), f"{where}.S3Output")
        for other_name, other in locals_in:
            if local == other:
                raise ValidationException(
                    f"{where}.S3Output.LocalPath /opt/ml/{local} is the LocalPath of input "
                    f"{other_name!r} too."
                )
        outputs.append(OutputSpec(name, uri, local, str(s3.get("S3UploadMode") or "EndOfJob")))
    cluster = (request.get("ProcessingResources") or {}).get("ClusterConfig") or {}
    count = int(cluster.get("InstanceCount") or 1)
    if count < 1:
        raise ValidationException("ProcessingResources.ClusterConfig.InstanceCount must be at least 1.")
    max_runtime = (request.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds") or DEFAULT_MAX_RUNTIME
    return ProcessingPlan(
        image=image,
        entrypoint=entrypoint,
        arguments=arguments,
        environment={str(k): str(v) for k, v in (request.get("Environment") or {}).items()},
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        hosts=tuple(sorted(f"algo-{i}" for i in range(1, count + 1))),  # lexicographic, as SageMaker sorts
        instance_type=str(cluster.get("InstanceType") or "ml.m5.large"),
        max_runtime=float(max_runtime),
    )


#: what DescribeProcessingJob reports for members a request left out (SageMaker fills them in; the SDK's
#: ``ProcessingJob.from_processing_name`` reads them without a default)
_INPUT_DEFAULTS = {
    "S3InputMode": "File",
    "S3DataDistributionType": "FullyReplicated",
    "S3CompressionType": "None",
}


def with_defaults(request: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``request`` with SageMaker's defaults filled in (AppManaged false, File mode,
    FullyReplicated, no compression)."""
    doc = copy.deepcopy(request)
    for item in doc.get("ProcessingInputs") or []:
        item.setdefault("AppManaged", False)
        if isinstance(item.get("S3Input"), dict):
            for key, value in _INPUT_DEFAULTS.items():
                item["S3Input"].setdefault(key, value)
    for item in (doc.get("ProcessingOutputConfig") or {}).get("Outputs") or []:
        item.setdefault("AppManaged", False)
    return doc


# -- local processes --------------------------------------------------------------------------------

#: run as ``sh -c SCRIPT sh <tree> <stash> <hosts file> <host name> <command…>`` in a new mount namespace:
#: makes ``<tree>`` the namespace's /opt/ml. Where /opt/ml does not exist on this machine (it usually does
#: not), /opt is covered by a tmpfs holding bind mounts of its original entries plus an empty ``ml`` mount
#: point, so the machine's /opt is never written to. The hosts file (this machine's plus ``algo-N`` →
#: 127.0.0.1) covers /etc/hosts, so hosts reach each other by name as on SageMaker; the host name is set
#: only when given, which is only with a UTS namespace of its own (never the machine's name).
_NAMESPACE_SCRIPT = r"""
set -e
tree="$1"; stash="$2"; hosts="$3"; host_name="$4"; shift 4
if [ ! -d /opt/ml ]; then
    mkdir -p "$stash"
    mount --bind /opt "$stash"
    mount -t tmpfs -o mode=0755 selfmaker-opt /opt
    for entry in "$stash"/* "$stash"/.[!.]*; do
        [ -e "$entry" ] || [ -L "$entry" ] || continue
        name="${entry##*/}"
        if [ -d "$entry" ]; then mkdir "/opt/$name"; else : > "/opt/$name"; fi
        mount --bind "$entry" "/opt/$name"
    done
    mkdir /opt/ml
fi
mount --bind "$tree" /opt/ml
if [ -f /etc/hosts ]; then mount --bind "$hosts" /etc/hosts; fi
if [ -n "$host_name" ]; then echo "$host_name" > /proc/sys/kernel/hostname; fi
exec "$@"
"""

_namespace_probe: list[str] | None = None
_namespace_lock = threading.Lock()


def namespace_command() -> list[str]:
    """The ``unshare`` prefix that gives a process its own mount namespace here (root: ``--mount``;
    otherwise a user namespace too), or ``[]`` when this machine allows neither (probed once)."""
    global _namespace_probe
    with _namespace_lock:
        if _namespace_probe is None:
            base = ["unshare", "--mount", "--propagation", "private"]
            if os.geteuid() != 0:
                base = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
            _namespace_probe = []
            for prefix in ([*base, "--uts"], base):
                check = "mount -t tmpfs selfmaker-probe /mnt"
                if "--uts" in prefix:  # the probe's own UTS namespace: the machine's name stays
                    check += " && echo selfmaker-probe > /proc/sys/kernel/hostname"
                if shutil.which(prefix[0]) is None:
                    continue
                try:
                    probe = subprocess.run(
                        [*prefix, "sh", "-c", check],
                        stdin=subprocess.DEVNULL,
                        capture_output=True,
                        timeout=30,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired):
                    continue
                if probe.returncode == 0:
                    _namespace_probe = prefix
                    break
        return list(_namespace_probe)


def _python_shims(directory: Path, python: str) -> Path:
    """``python3`` / ``python`` wrappers that run ``python`` (the image's Python of a local process)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        shim = directory / name
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} "$@"\n', encoding="utf-8")
        shim.chmod(0o755)
    return directory


def _hosts_file(hosts: tuple[str, ...]) -> str:
    """This machine's /etc/hosts plus a line naming every host of the job as 127.0.0.1."""
    try:
        text = Path("/etc/hosts").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = "127.0.0.1 localhost\n"
    if not text.endswith("\n"):
        text += "\n"
    return text + f"127.0.0.1 {' '.join(hosts)}\n"


def _translate(value: str, tree: Path) -> str:
    """``value`` with a leading ``/opt/ml`` replaced by ``tree`` (no mount namespace available)."""
    if value == "/opt/ml" or value.startswith("/opt/ml/"):
        return str(tree) + value[len("/opt/ml") :]
    return value


class LocalProcessExecutor(Executor):
    """Runs a processing host's ContainerEntrypoint + ContainerArguments as a local process.

    ``python3`` and ``python`` on its PATH are ``python`` (the platform's interpreter, which has what
    selfmaker's image has). With a mount namespace (:func:`namespace_command`) the host's tree is the
    process's ``/opt/ml``; without one, ``/opt/ml`` at the start of an argument or an environment value is
    rewritten to the tree (and ``SELFMAKER_ML_ROOT`` names it), so only paths built inside the script
    miss.
    """

    kind = "process"

    def __init__(self, python: str | None = None, namespace: list[str] | None = None) -> None:
        self.python = python or sys.executable
        self.namespace = namespace_command() if namespace is None else namespace

    def start(self, spec: HostSpec) -> ExecutionHandle:
        command = [*(spec.entrypoint or ()), *spec.arguments]
        if not command:
            raise ExecutorError("ClientError: AppSpecification.ContainerEntrypoint is required")
        shims = _python_shims(spec.work_dir / "bin", self.python)
        # an explicit environment (common.childenv): the job's, the machine's; credentials only when the
        # runner adds them
        env = child_environment(spec.env)
        env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', os.defpath)}"
        env["SELFMAKER_ML_ROOT"] = str(spec.ml_root)
        env.setdefault("PYTHONUNBUFFERED", "1")
        namespace = list(self.namespace)
        if namespace and spec.env.get(NETWORK_ISOLATION_ENV) == "1" and len(spec.hosts) == 1:
            namespace.append("--net")  # EnableNetworkIsolation: not even a loopback that is up
        if namespace:
            stash = spec.work_dir / "opt"
            hosts = spec.work_dir / "hosts"
            hosts.write_text(_hosts_file(spec.hosts), encoding="utf-8")
            name = spec.host if "--uts" in namespace else ""
            argv = [*namespace, "sh", "-c", _NAMESPACE_SCRIPT, "sh", str(spec.ml_root), str(stash)]
            argv += [str(hosts), name, *command]
        else:
            argv = [_translate(a, spec.ml_root) for a in command]
            env.update({k: _translate(v, spec.ml_root) for k, v in spec.env.items()})
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=str(spec.work_dir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ExecutorError(f"ClientError: cannot start {command[0]!r}: {exc}") from exc
        return ProcessHandle(proc)


# -- the runner -------------------------------------------------------------------------------------


@dataclass
class _Host:
    name: str
    root: Path
    handle: ExecutionHandle | None = None
    reader: threading.Thread | None = None


@dataclass
class _Uploads:
    """What the Continuous uploader already sent: ``(host, output, relative path)`` → (size, mtime)."""

    sent: dict[tuple[str, str, str], tuple[int, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _first_lines(text: str, limit: int = MESSAGE_LIMIT) -> str:
    return text.strip()[:limit]


class ProcessingJobRunner:
    """Runs one CreateProcessingJob request to its end.

    ``on_update(fields)`` gets DescribeProcessingJob members as they change (epoch floats for times);
    ``on_log(host, line)`` every line a host prints. :meth:`run` blocks and returns the final fields;
    :meth:`stop` is thread-safe (StopProcessingJob).
    """

    def __init__(
        self,
        request: dict[str, Any],
        work_dir: Path,
        *,
        job_arn: str,
        on_update: Callable[[dict[str, Any]], None],
        on_log: Callable[[str, str], None],
        executor: Executor,
        storage: Storage | None = None,
        stop_grace_seconds: float = 120.0,
        upload_interval: float = 5.0,
        process_images: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.request = request
        self.name = str(request["ProcessingJobName"])
        self.work_dir = work_dir.resolve()
        self.job_arn = job_arn
        self.on_update = on_update
        self.on_log = on_log
        self.executor = executor
        self.storage = storage or Storage()
        self.stop_grace_seconds = stop_grace_seconds
        self.upload_interval = upload_interval
        self.process_images = process_images
        self._stop = threading.Event()
        self._ended = threading.Event()
        self._lock = threading.Lock()
        self._hosts: list[_Host] = []
        self._threads: list[threading.Thread] = []
        self._uploads = _Uploads()
        self._processes: list[list[float]] = []

    # -- public ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """StopProcessingJob: SIGTERM every host now, SIGKILL after the grace period."""
        self._stop.set()
        with self._lock:
            handles = [h.handle for h in self._hosts if h.handle is not None]
        for handle in handles:
            handle.terminate()

    def kill(self) -> None:
        """SIGKILL every host now (the platform is stopping and will not wait for the grace period)."""
        self._stop.set()
        with self._lock:
            handles = [h.handle for h in self._hosts if h.handle is not None]
        for handle in handles:
            handle.kill()

    def run(self) -> dict[str, Any]:
        """Run the job; the final DescribeProcessingJob fields (never raises for a failed job)."""
        fields: dict[str, Any]
        try:
            fields = self._run()
        except ValidationException as exc:
            fields = {"ProcessingJobStatus": "Failed", "FailureReason": f"ClientError: {exc.message}"}
        except (StorageError, ExecutorError) as exc:
            text = str(exc)
            reason = text if text.startswith(("ClientError", "AlgorithmError")) else f"ClientError: {text}"
            fields = {"ProcessingJobStatus": "Failed", "FailureReason": reason[:MESSAGE_LIMIT]}
        finally:
            self._ended.set()
            for thread in self._threads:
                thread.join(timeout=30)
        fields.setdefault("ProcessingEndTime", time.time())
        return fields

    # -- the job --------------------------------------------------------------------------------
    def _run(self) -> dict[str, Any]:
        plan = parse_request(self.request, self.process_images)
        self._prepare(plan)
        self.on_update({"ProcessingStartTime": time.time()})
        for index, host in enumerate(self._hosts):
            for spec in plan.inputs:
                if self._stop.is_set():
                    break
                self._fetch(spec, host, index, len(self._hosts))
        if self._stop.is_set():
            return {"ProcessingJobStatus": "Stopped"}
        timed_out = self._execute(plan)
        codes = {h.name: h.handle.poll() if h.handle else None for h in self._hosts}
        stopped = self._stop.is_set() and not timed_out
        fields: dict[str, Any] = {}
        message = self._exit_message()
        if message:
            fields["ExitMessage"] = message
        upload_error: str | None = None
        try:
            self._upload(plan, final=True)
        except StorageError as exc:
            upload_error = f"ClientError: cannot upload the job's outputs: {exc}"[:MESSAGE_LIMIT]
        failed = [h for h in sorted(codes) if codes[h] != 0]
        if timed_out:
            fields.update(
                ProcessingJobStatus="Stopped",
                FailureReason=(
                    "MaxRuntimeExceeded: Processing job runtime exceeded MaxRuntimeInSeconds provided "
                    f"({plan.max_runtime:g} s)"
                ),
            )
        elif stopped:
            fields["ProcessingJobStatus"] = "Stopped"
        elif failed:
            fields.update(ProcessingJobStatus="Failed", FailureReason=self._failure_reason(failed, codes))
        elif upload_error:
            fields.update(ProcessingJobStatus="Failed", FailureReason=upload_error)
        else:
            fields["ProcessingJobStatus"] = "Completed"
        return fields

    def _prepare(self, plan: ProcessingPlan) -> None:
        """One tree per host: ``config/*.json``, every LocalPath, ``output/``."""
        if self.work_dir.exists():
            shutil.rmtree(self.work_dir / "hosts", ignore_errors=True)
        config = copy.deepcopy({k: v for k, v in self.request.items() if k != "Tags"})
        config["ProcessingJobArn"] = self.job_arn
        for name in plan.hosts:
            root = self.work_dir / "hosts" / name
            for sub in ("config", "output", "processing", *(s.local for s in plan.inputs)):
                (root / sub).mkdir(parents=True, exist_ok=True)
            for spec in plan.outputs:
                (root / spec.local).mkdir(parents=True, exist_ok=True)
            (root / "config" / "processingjobconfig.json").write_text(json.dumps(config, default=str))
            (root / "config" / "resourceconfig.json").write_text(
                json.dumps({"current_host": name, "hosts": list(plan.hosts)})
            )
            self._hosts.append(_Host(name, root))

    # -- inputs ---------------------------------------------------------------------------------
    def _objects(self, spec: InputSpec) -> list[ObjectRef]:
        if spec.data_type == "ManifestFile":
            try:
                manifest = json.loads(self.storage.read_bytes(spec.uri))
            except ValueError as exc:
                raise StorageError(f"manifest {spec.uri} is not valid JSON: {exc}") from exc
            if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
                raise StorageError(f'manifest {spec.uri} must be a JSON list starting with {{"prefix": ...}}')
            base = str(manifest[0].get("prefix") or "")
            rels = [str(rel).lstrip("/") for rel in manifest[1:]]
            return [ObjectRef(join(base, rel), rel) for rel in rels]
        refs = self.storage.list(spec.uri)
        if not refs:
            raise StorageError(f"input {spec.name!r}: no objects under {spec.uri}")
        return refs

    def _fetch(self, spec: InputSpec, host: _Host, index: int, count: int) -> None:
        refs = self._objects(spec)
        if spec.distribution == "ShardedByS3Key" and count > 1:
            refs = refs[index::count]
        target = (host.root / spec.local).resolve()
        if spec.mode == "Pipe":
            cache = self.work_dir / "pipe-cache" / host.name / spec.name
            files = []
            for i, ref in enumerate(refs):
                dest = cache / f"{i:06d}"
                self.storage.download(ref.uri, dest)
                files.append(dest)
            target.rmdir()  # the FIFOs are <LocalPath>_<epoch>, next to it
            thread = threading.Thread(
                target=self._feed_pipe,
                args=(host.name, target, spec.compression, files),
                name=f"pipe-{host.name}-{spec.name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            return
        for ref in refs:
            dest = (target / ref.relative).resolve()
            if not dest.is_relative_to(target):
                raise StorageError(f"input {spec.name!r}: object {ref.uri} escapes its LocalPath")
            self.storage.download(ref.uri, dest)

    def _feed_pipe(self, host: str, base: Path, compression: str, files: list[Path]) -> None:
        """FIFOs ``<base>_0``, ``<base>_1`` … one after the other, each streaming every file once (the
        Pipe mode layout of training channels)."""
        for epoch in range(MAX_PIPE_EPOCHS):
            path = base.with_name(f"{base.name}_{epoch}")
            try:
                os.mkfifo(path)
            except FileExistsError:
                pass
            fd = None
            while not self._ended.is_set() and not self._stop.is_set():
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as exc:
                    if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                        return
                    self._ended.wait(0.02)
            if fd is None:
                return
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            try:
                with os.fdopen(fd, "wb", buffering=1 << 20) as out:
                    for f in files:
                        with gzip.open(f, "rb") if compression == "Gzip" else open(f, "rb") as src:
                            shutil.copyfileobj(src, out, 1 << 20)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                if not isinstance(exc, BrokenPipeError):
                    self.on_log(host, f"selfmaker: cannot stream {base.name}: {exc}")

    # -- running --------------------------------------------------------------------------------
    def _execute(self, plan: ProcessingPlan) -> bool:
        """Start every host and wait for them; True when MaxRuntimeInSeconds ended the job."""
        env = dict(plan.environment)
        env.setdefault("AWS_REGION", os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION", ""))
        if not env["AWS_REGION"]:
            del env["AWS_REGION"]
        isolated = bool((self.request.get("NetworkConfig") or {}).get("EnableNetworkIsolation"))
        if isolated:
            # the executors' rule, as for training jobs: a container on no network (or an internal one), a
            # local single-host process in a network namespace of its own
            env[NETWORK_ISOLATION_ENV] = "1"
            if self.executor.kind == "process" and len(plan.hosts) > 1:
                self.on_log("", "selfmaker: network isolation: local hosts share this machine's loopback")
        if self.executor.kind == "process" and not isolated and "s3://" in json.dumps(self.request):
            # a job that uses S3 runs as its role would on SageMaker: with the platform's credentials (a job
            # on file:// data gets none; the environment is otherwise explicit, see common.childenv), as
            # training hosts do
            for key, value in aws_credentials().items():
                env.setdefault(key, value)
        try:
            for host in self._hosts:
                scratch = self.work_dir / "scratch" / host.name
                scratch.mkdir(parents=True, exist_ok=True)
                spec = HostSpec(
                    job_name=self.name,
                    host=host.name,
                    hosts=plan.hosts,
                    image=plan.image,
                    ml_root=host.root,
                    env=env,
                    arguments=plan.arguments,
                    entrypoint=plan.entrypoint or None,
                    instance_type=plan.instance_type,
                    host_addresses={n: "127.0.0.1" for n in plan.hosts},
                    work_dir=scratch,
                    kind="processing",
                )
                handle = self.executor.start(spec)
                with self._lock:
                    host.handle = handle
                if self.executor.kind == "process" and handle.pid is not None:
                    self._record_process(handle.pid)
                host.reader = threading.Thread(
                    target=self._read_logs, args=(host,), name=f"log-{self.name}-{host.name}", daemon=True
                )
                host.reader.start()
                if self._stop.is_set():
                    handle.terminate()
            if any(o.upload_mode == "Continuous" for o in plan.outputs):
                uploader = threading.Thread(target=self._upload_loop, args=(plan,), daemon=True)
                uploader.start()
                self._threads.append(uploader)
            return self._wait(plan.max_runtime)
        finally:
            for host in self._hosts:
                # a local host's process group goes with it, as a container's processes do: what the
                # script started in the background neither outlives the job nor holds its log open
                local = self.executor.kind == "process"
                if host.handle is not None and (local or host.handle.poll() is None):
                    host.handle.kill()
                    host.handle.wait(10)
                if host.reader is not None:
                    host.reader.join(timeout=10)
            self._ended.set()  # the pipe feeders and the uploader end with the hosts
            self.executor.close()

    def _record_process(self, pid: int) -> None:
        """Keep (pid, start time) of a local host process in the record, so that a platform that crashed
        can kill it when it starts again (the start time tells a reused PID apart)."""
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        self._processes.append([pid, started])
        self.on_update({"_Processes": list(self._processes)})

    def _read_logs(self, host: _Host) -> None:
        assert host.handle is not None
        for raw in iter(host.handle.stream.readline, b""):
            self.on_log(host.name, raw.decode("utf-8", "replace").rstrip("\r\n"))
        host.handle.stream.close()

    def _wait(self, max_runtime: float) -> bool:
        deadline = time.monotonic() + max_runtime
        kill_at: float | None = None
        timed_out = False
        while True:
            handles = [h.handle for h in self._hosts if h.handle is not None]
            alive = [h for h in handles if h.poll() is None]
            if not alive:
                return timed_out
            now = time.monotonic()
            if now >= deadline and not timed_out and not self._stop.is_set():
                timed_out = True
                self._stop.set()
            # a stop, the deadline or a failed host ends every host (SageMaker stops the cluster)
            failed = any(h.poll() not in (None, 0) for h in handles)
            if kill_at is None and (self._stop.is_set() or failed):
                kill_at = now + self.stop_grace_seconds
                for h in alive:
                    h.terminate()
            if kill_at is not None and now >= kill_at:
                for h in alive:
                    h.kill()
            alive[0].wait(0.1)

    def _exit_message(self) -> str | None:
        for host in self._hosts:
            path = host.root / "output" / "message"
            if path.is_file():
                text = _first_lines(path.read_text(encoding="utf-8", errors="replace"))
                if text:
                    return text
        return None

    def _failure_reason(self, failed: list[str], codes: dict[str, int | None]) -> str:
        message = None
        for host in self._hosts:
            if host.name in failed:
                path = host.root / "output" / "message"
                if path.is_file():
                    message = _first_lines(path.read_text(encoding="utf-8", errors="replace"))
                if message:
                    break
        name = failed[0]
        code = codes.get(name)
        if message:
            reason = f"AlgorithmError: {message}"
        else:
            reason = (
                f"AlgorithmError: {name} exited with code {code}. See the job's log "
                f"(selfmaker logs {self.name}) for more information."
            )
        return reason[:MESSAGE_LIMIT]

    # -- outputs --------------------------------------------------------------------------------
    def _upload_loop(self, plan: ProcessingPlan) -> None:
        while not self._ended.wait(self.upload_interval):
            try:
                self._upload(plan, final=False)
            except StorageError as exc:
                log.warning("continuous upload of processing job %s failed (retrying): %s", self.name, exc)

    def _upload(self, plan: ProcessingPlan, *, final: bool) -> None:
        """New or changed files of every Continuous output (and at the end every EndOfJob output) of
        every host, under ``S3Uri/<path below LocalPath>``."""
        with self._uploads.lock:
            for spec in plan.outputs:
                if not final and spec.upload_mode != "Continuous":
                    continue
                for host in self._hosts:
                    base = host.root / spec.local
                    if not base.is_dir():
                        continue
                    for path in sorted(base.rglob("*")):
                        if not path.is_file() or path.is_symlink():
                            continue
                        rel = path.relative_to(base).as_posix()
                        try:
                            stat = path.stat()
                        except FileNotFoundError:
                            continue
                        key = (host.name, spec.name, rel)
                        signature = (stat.st_size, stat.st_mtime)
                        if self._uploads.sent.get(key) == signature:
                            continue
                        self.storage.upload(path, join(spec.uri, rel))
                        self._uploads.sent[key] = signature


# -- the manager ------------------------------------------------------------------------------------


class ProcessingJobs:
    """Runs processing jobs in threads and keeps their records current."""

    def __init__(self, settings: PlatformSettings, store: StateStore) -> None:
        self.settings = settings
        self.store = store
        self._runners: dict[str, ProcessingJobRunner] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._closing = False

    def log_path(self, name: str) -> Path:
        """``<home>/logs/processing-jobs/<name>.log`` (what ``selfmaker logs NAME`` prints)."""
        return job_log_path(self.settings.logs_dir, KIND, name)

    def work_dir(self, name: str) -> Path:
        return self.settings.work_dir / "processing-jobs" / name

    def check(self, params: dict[str, Any]) -> ProcessingPlan:
        """The plan of a CreateProcessingJob request, or the ValidationException it gets."""
        return parse_request(params, self.settings.process_images)

    def create(self, params: dict[str, Any]) -> str:
        """Record a checked request (InProgress), tag it and start it; its ARN. ResourceInUse when the name
        is taken."""
        name = params["ProcessingJobName"]
        arn = make_arn(self.settings.region, self.settings.account_id, KIND, name)
        now = state_now()
        doc = with_defaults({k: v for k, v in params.items() if k != "Tags"})
        doc.update(ProcessingJobArn=arn, ProcessingJobStatus="InProgress", CreationTime=now)
        record = Record(
            kind=KIND, name=name, arn=arn, status="InProgress", created=now, modified=now, doc=doc
        )
        if not self.store.insert(record):
            raise ResourceInUse(
                "Processing job names must be unique within an AWS account and region, and a processing "
                f"job with this name already exists ({arn})"
            )
        if params.get("Tags"):
            self.store.add_tags(arn, params["Tags"])
        thread = threading.Thread(target=self._run, args=(name, dict(params), arn), name=f"processing:{name}")
        thread.daemon = True
        self._threads[name.lower()] = thread
        thread.start()
        return arn

    def _merge(self, name: str, fields: dict[str, Any]) -> None:
        record = self.store.get(KIND, name)
        if record is None:
            return
        status = fields.get("ProcessingJobStatus")
        if record.status == "Stopping" and status == "InProgress":
            fields = {**fields, "ProcessingJobStatus": "Stopping"}
            status = "Stopping"
        self.store.update(KIND, name, status=status, merge={k: v for k, v in fields.items() if v is not None})

    def _executor(self, image: str) -> Executor:
        kind = executor_kind_for_image(image, self.settings.process_images)
        if kind == "process":
            return LocalProcessExecutor(self.settings.python)
        try:  # loaded by name: a build without the container executor still runs process images
            from training.executors.container import ContainerExecutor
        except ImportError as exc:
            raise ExecutorError(f"ClientError: image {image} needs a container engine: {exc}") from exc
        return ContainerExecutor()

    def _run(self, name: str, request: dict[str, Any], arn: str) -> None:
        log_path = self.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        write_lock = threading.Lock()
        with open(log_path, "a", encoding="utf-8") as log_file:

            def on_log(host: str, line: str) -> None:
                with write_lock:
                    # time-stamped, host marked: the Logs API serves it as streams <job>/algo-N-<epoch>
                    log_file.write(stamp(line, host=host or None))
                    log_file.flush()

            def on_update(fields: dict[str, Any]) -> None:
                try:
                    self._merge(name, fields)
                except Exception:  # noqa: BLE001 - a bad update must not kill the job
                    log.exception("could not record an update of processing job %s", name)

            try:
                runner = ProcessingJobRunner(
                    request,
                    self.work_dir(name),
                    job_arn=arn,
                    on_update=on_update,
                    on_log=on_log,
                    executor=self._executor(str((request.get("AppSpecification") or {}).get("ImageUri"))),
                    stop_grace_seconds=self.settings.training_stop_grace,
                    upload_interval=self.settings.processing_upload_interval,
                    process_images=self.settings.process_images,
                )
                self._runners[name.lower()] = runner
                record = self.store.get(KIND, name)
                if record is not None and record.status == "Stopping":
                    runner.stop()
                fields = runner.run()
            except ExecutorError as exc:
                fields = {"ProcessingJobStatus": "Failed", "FailureReason": str(exc)[:MESSAGE_LIMIT]}
            except Exception:  # noqa: BLE001 - the job fails, the platform goes on
                log.exception("processing job %s crashed", name)
                fields = {
                    "ProcessingJobStatus": "Failed",
                    "FailureReason": "InternalServerError: internal error while running the processing job",
                }
            finally:
                self._runners.pop(name.lower(), None)
                # the hosts' trees hold copies of the inputs: gone with the job, as a SageMaker instance's
                # volume is (the log and the outputs stay)
                shutil.rmtree(self.work_dir(name), ignore_errors=True)
            if fields.get("FailureReason"):
                on_log("", f"selfmaker: {fields['ProcessingJobStatus']}: {fields['FailureReason']}")
        if self._closing and fields.get("ProcessingJobStatus") in ("Stopped", None):
            fields.update(ProcessingJobStatus="Failed", FailureReason=SHUTDOWN_REASON)
        if fields.get("ProcessingJobStatus") not in ENDED:
            fields.update(
                ProcessingJobStatus="Failed", FailureReason="The processing job ended without a status."
            )
        fields.setdefault("ProcessingEndTime", time.time())
        self._merge(name, fields)
        log.info("processing job %s ended: %s", name, fields["ProcessingJobStatus"])

    def stop(self, name: str) -> None:
        """StopProcessingJob: InProgress → Stopping → Stopped; ValidationException once it ended."""
        record = self.store.get(KIND, name)
        assert record is not None
        if record.status not in RUNNING:
            raise ValidationException(
                f"The request was rejected because the processing job is in status {record.status}."
            )
        if record.status == "InProgress":
            self.store.update(KIND, name, status="Stopping", merge={"ProcessingJobStatus": "Stopping"})
        runner = self._runners.get(name.lower())
        if runner is not None:
            runner.stop()

    def recover(self) -> None:
        """Mark jobs a previous run left running as Failed, killing the local processes a crashed run left
        behind."""
        now = time.time()
        for record in self.store.list(KIND):
            if record.status in RUNNING:
                for pid, started in record.doc.get("_Processes") or []:
                    _kill_orphan(int(pid), float(started))
                shutil.rmtree(self.work_dir(record.name), ignore_errors=True)
                self.store.update(
                    KIND,
                    record.name,
                    status="Failed",
                    merge={
                        "ProcessingJobStatus": "Failed",
                        "FailureReason": RESTART_REASON,
                        "ProcessingEndTime": now,
                    },
                )
                log.warning(
                    "processing job %s was running when the platform stopped; marked Failed", record.name
                )

    async def shutdown(self) -> None:
        """Stop running jobs (SIGTERM; SIGKILL for what still runs after 20 s) and wait for their threads."""
        self._closing = True
        for runner in list(self._runners.values()):
            runner.stop()
        deadline = time.monotonic() + 20
        threads = list(self._threads.values())
        for thread in threads:
            await asyncio.to_thread(thread.join, max(0.0, deadline - time.monotonic()))
        for runner in list(self._runners.values()):
            runner.kill()
        for thread in threads:
            await asyncio.to_thread(thread.join, 10)


def _kill_orphan(pid: int, started: float) -> None:
    """SIGKILL the process group of ``pid`` if it is still the process that started at ``started``."""
    try:
        if abs(psutil.Process(pid).create_time() - started) > 0.01:
            return  # the PID was reused
        log.warning("stopping process %s of a processing job left by a previous run", pid)
        os.killpg(pid, signal.SIGKILL)
    except (psutil.Error, ProcessLookupError, PermissionError):
        pass

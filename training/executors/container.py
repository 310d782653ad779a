"""Runs a training host in a container (docker, else podman): ``<engine> run … <image> train``.

The host's prepared ``/opt/ml`` tree (:attr:`HostSpec.ml_root`) is bind-mounted read-write at ``/opt/ml``;
the container gets exactly :attr:`HostSpec.env` (passed by name, so values never appear on a command
line), the host name as its hostname, and ``train`` (or ``ContainerArguments``) as its arguments. The
engine client runs attached, so its stdout is the container's merged output and its exit code the
container's. Multi-host jobs share a per-job network on which every container is reachable by its host
name (``algo-1`` …), as on SageMaker.

The container engine is picked by :func:`common.proc.detect_engine`'s rule; :func:`detect_engine` here
turns its error into this package's, and the platform's serving executor
(``selfmaker/executors/container.py``)
imports it from here.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import uuid
from pathlib import Path

from common import proc as common_proc
from common.childenv import child_environment
from training.environment import NETWORK_ISOLATION_ENV
from training.executors.base import ExecutionHandle, Executor, ExecutorError, HostSpec

log = logging.getLogger(__name__)

#: environment variable that names the engine to use (``docker``, ``podman`` or a path; common.proc's rule)
ENGINE_ENV = common_proc.ENGINE_ENV
#: seconds a missing image may take to pull before the launch fails
PULL_TIMEOUT = 600.0
#: environment variable: GPUs for the containers of GPU instance types (``auto`` | ``always`` | ``never``)
GPUS_ENV = "SELFMAKER_CONTAINER_GPUS"
GPU_MODES = ("auto", "always", "never")
#: SageMaker's NVIDIA GPU instance families (ml.g4dn, ml.g5, ml.g6e, ml.p3, ml.p4d, ml.p5 …) and the SDK's
#: local-mode GPU type
_GPU_INSTANCE_TYPE = re.compile(r"^(ml\.[gp]\d[a-z0-9-]*\.[a-z0-9]+|local_gpu)$")

_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


class ContainerEngineError(ExecutorError):
    """No working container engine (or the named one does not work)."""


engine_works = common_proc.engine_works
engine_name = common_proc.engine_name


def detect_engine(override: str | None = None) -> str:
    """The path of the container engine to use (:func:`common.proc.detect_engine`).

    Raises :class:`ContainerEngineError` with a user-facing message.
    """
    try:
        return common_proc.detect_engine(override)
    except common_proc.EngineError as exc:
        raise ContainerEngineError(f"ClientError: {exc}") from exc


def is_gpu_instance_type(instance_type: str | None) -> bool:
    """Whether SageMaker runs ``instance_type`` with NVIDIA GPUs (``ml.g*``, ``ml.p*``)."""
    return bool(instance_type and _GPU_INSTANCE_TYPE.match(instance_type))


def host_has_nvidia_gpu() -> bool:
    """Whether this host has an NVIDIA driver loaded (its control device exists)."""
    return Path("/dev/nvidiactl").exists()


def gpu_mode(value: str | None = None) -> str:
    """The GPU setting: ``value``, else ``$SELFMAKER_CONTAINER_GPUS``, else ``auto``; raises on anything
    else."""
    mode = (value or os.environ.get(GPUS_ENV) or "auto").strip().lower()
    if mode not in GPU_MODES:
        raise ExecutorError(f"{GPUS_ENV} must be one of {', '.join(GPU_MODES)}, not {mode!r}")
    return mode


def gpu_arguments(engine: str, instance_type: str | None, mode: str, host_has_gpu: bool) -> list[str]:
    """``<engine> run`` flags that give a container of a GPU instance type all the host's GPUs.

    docker: ``--gpus all`` (NVIDIA Container Toolkit); podman: ``--device nvidia.com/gpu=all`` (CDI; the
    spec comes from ``nvidia-ctk cdi generate``). ``auto`` adds them when the host has an NVIDIA GPU, so a
    GPU instance type still runs (on the CPU) on a machine without one; ``always`` adds them regardless
    (the start fails where the engine cannot provide GPUs); ``never`` leaves them out. CPU instance types
    never get GPUs.
    """
    if mode == "never" or not is_gpu_instance_type(instance_type) or (mode == "auto" and not host_has_gpu):
        return []
    if engine_name(engine) == "podman":
        return ["--device", "nvidia.com/gpu=all"]
    return ["--gpus", "all"]


def container_name(*parts: str) -> str:
    """A unique, valid container name made of ``parts`` (unsafe characters replaced)."""
    base = _NAME_UNSAFE.sub("-", "-".join(p for p in parts if p)).strip("-.") or "selfmaker"
    return f"{base[:100]}-{uuid.uuid4().hex[:6]}"


def ensure_image(engine: str, image: str, pull_timeout: float = PULL_TIMEOUT) -> None:
    """Make sure ``image`` is present: inspect it, else pull it. Raises :class:`ExecutorError`."""
    if not image or not image.strip():
        raise ExecutorError("ClientError: no container image given")
    probe = subprocess.run(
        [engine, "image", "inspect", image],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=common_proc.ENGINE_INFO_TIMEOUT,
    )
    if probe.returncode == 0:
        return
    log.info("image %s is not present; pulling it", image)
    try:
        pulled = subprocess.run(
            [engine, "pull", image],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
            timeout=pull_timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise ExecutorError(
            f"ClientError: pulling image {image} took longer than {pull_timeout:.0f} s"
        ) from exc
    if pulled.returncode != 0:
        detail = (pulled.stderr or pulled.stdout).decode("utf-8", "replace").strip().splitlines()
        raise ExecutorError(
            f"ClientError: image {image} is not present and cannot be pulled: "
            f"{detail[-1] if detail else 'unknown error'}"
        )


def read_cidfile(path: Path) -> str | None:
    """The container id the engine wrote to ``--cidfile`` once it created the container, else None."""
    try:
        cid = path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return cid or None


def _run_quiet(cmd: list[str], timeout: float) -> int | None:
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        ).returncode
    except (OSError, subprocess.TimeoutExpired):
        return None


class ContainerHandle(ExecutionHandle):
    """A training host running in a container; the attached engine client is the local process."""

    def __init__(self, engine: str, name: str, proc: subprocess.Popen[bytes], cidfile: Path) -> None:
        self.engine = engine
        self.name = name
        self._proc = proc
        self._cidfile = cidfile
        assert proc.stdout is not None
        self.stream = proc.stdout

    @property
    def container_id(self) -> str | None:
        """The engine's id of the container once it was created."""
        return read_cidfile(self._cidfile)

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _ref(self) -> str:
        return self.container_id or self.name

    def terminate(self) -> None:
        # SIGTERM to the container's PID 1 (the training process); the runner kills after its grace period
        if self._proc.poll() is None:
            _run_quiet([self.engine, "kill", "--signal", "TERM", self._ref()], timeout=30)

    def kill(self) -> None:
        if self._proc.poll() is None:
            _run_quiet([self.engine, "kill", "--signal", "KILL", self._ref()], timeout=30)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        # --rm removes it; this covers an engine client that died before the container did
        _run_quiet([self.engine, "rm", "-f", self._ref()], timeout=60)


class ContainerExecutor(Executor):
    """Starts training hosts as containers of :attr:`HostSpec.image` with ``/opt/ml`` mounted.

    ``engine`` is a name or path (default: :func:`detect_engine`, which honours
    ``$SELFMAKER_CONTAINER_ENGINE``); detection happens on the first :meth:`start`. ``gpus`` is the GPU
    setting of :func:`gpu_arguments` (default ``$SELFMAKER_CONTAINER_GPUS``, else ``auto``).
    """

    kind = "container"

    def __init__(
        self, engine: str | None = None, pull_timeout: float = PULL_TIMEOUT, gpus: str | None = None
    ) -> None:
        self._engine_override = engine
        self._engine: str | None = None
        self.pull_timeout = pull_timeout
        self.gpus = gpu_mode(gpus)
        self.host_has_gpu = host_has_nvidia_gpu()
        self._networks: set[str] = set()
        self._images_checked: set[str] = set()

    @property
    def engine(self) -> str:
        """Path of the engine (detected once)."""
        if self._engine is None:
            self._engine = detect_engine(self._engine_override)
        return self._engine

    def _network_for(self, spec: HostSpec) -> str | None:
        """A per-job network for multi-host jobs (hosts resolve each other by name); None for one host."""
        if len(spec.hosts) < 2:
            return None
        name = _NAME_UNSAFE.sub("-", f"selfmaker-{spec.job_name}")[:60]
        if name not in self._networks:
            _run_quiet([self.engine, "network", "rm", "-f", name], timeout=60)
            # EnableNetworkIsolation: the job's hosts reach each other and nothing else
            internal = ["--internal"] if spec.env.get(NETWORK_ISOLATION_ENV) == "1" else []
            created = subprocess.run(
                [self.engine, "network", "create", *internal, name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
                timeout=60,
            )
            if created.returncode != 0:
                detail = created.stderr.decode("utf-8", "replace").strip()
                raise ExecutorError(f"cannot create the container network {name}: {detail}")
            self._networks.add(name)
        return name

    def command(self, spec: HostSpec, name: str, cidfile: Path, network: str | None) -> list[str]:
        """The ``<engine> run`` command line for ``spec`` (environment values are passed by name only)."""
        cmd = [
            self.engine,
            "run",
            "--rm",
            "--name",
            name,
            "--cidfile",
            str(cidfile),
            "--hostname",
            spec.host,
            "-v",
            f"{spec.ml_root.resolve()}:/opt/ml",
            *[
                arg
                for rel, target in spec.mounts
                for arg in ("-v", f"{(spec.ml_root / rel).resolve()}:{target}")
            ],
            "--label",
            f"selfmaker.kind={spec.kind}",
            "--label",
            f"selfmaker.job={spec.job_name}",
            "--label",
            f"selfmaker.host={spec.host}",
        ]
        isolated = spec.env.get(NETWORK_ISOLATION_ENV) == "1"
        if network:
            cmd += ["--network", network, "--network-alias", spec.host]
        elif isolated:  # EnableNetworkIsolation: no interface but loopback
            cmd += ["--network", "none"]
        cmd += gpu_arguments(self.engine, spec.instance_type, self.gpus, self.host_has_gpu)
        for key in sorted(spec.env):
            if key != NETWORK_ISOLATION_ENV:
                cmd += ["-e", key]
        if isolated:  # the container is the isolation: script mode inside needs no namespace of its own
            cmd += ["-e", f"{NETWORK_ISOLATION_ENV}=container"]
        args = list(spec.arguments)
        if spec.entrypoint:
            cmd += ["--entrypoint", spec.entrypoint[0], spec.image, *spec.entrypoint[1:], *args]
        else:
            cmd += [spec.image, *args]
        return cmd

    def start(self, spec: HostSpec) -> ContainerHandle:
        engine = self.engine
        if spec.image not in self._images_checked:
            ensure_image(engine, spec.image, self.pull_timeout)
            self._images_checked.add(spec.image)
        network = self._network_for(spec)
        name = container_name(
            "selfmaker-train" if spec.kind == "training" else f"selfmaker-{spec.kind}",
            spec.job_name,
            spec.host,
        )
        cidfile = Path(spec.work_dir) / f"{name}.cid"
        cidfile.unlink(missing_ok=True)
        # the engine client's settings and the names passed with -e (the container sees only those)
        env = child_environment(spec.env, engine_client=True)
        cmd = self.command(spec, name, cidfile, network)
        log.info(
            "starting training host %s of %s in container %s (%s)",
            spec.host,
            spec.job_name,
            name,
            engine_name(engine),
        )
        try:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ExecutorError(f"cannot start the training container: {exc}") from exc
        return ContainerHandle(engine, name, proc, cidfile)

    def close(self) -> None:
        for network in sorted(self._networks):
            _run_quiet([self.engine, "network", "rm", "-f", network], timeout=60)
        self._networks.clear()

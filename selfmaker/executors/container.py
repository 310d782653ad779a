"""Model servers in containers (bring-your-own-container): ``<engine> run … <image> serve``.

Used for every image that is not selfmaker's own or a built-in (see
:func:`selfmaker.executors.executor_kind_for_image`). Per instance:

* the unpacked model directory (``InstanceSpec.model_dir``) is bind-mounted read-only at ``/opt/ml/model``;
* the container gets the Model's ``Environment`` (``InstanceSpec.environment``; values are passed by name,
  never on a command line) and ``serve`` as its argument (SageMaker's ``docker run <image> serve``);
* network ``bridge`` (default): a free port on 127.0.0.1 is published to the container's port
  (8080, or the model's ``SAGEMAKER_BIND_TO_PORT``), so any SageMaker image works unchanged;
  network ``host``: the container shares the host's network and is told ``SAGEMAKER_BIND_TO_PORT=<free port>``
  (only for images that honour it, e.g. selfmaker's own);
* serverless ``MemorySizeInMB`` becomes the container's memory limit;
* GPU instance types (``ml.g*``, ``ml.p*``) get the host's GPUs (``--gpus all`` / podman's CDI
  ``--device nvidia.com/gpu=all``) when the host has an NVIDIA GPU
  (:func:`training.executors.container.gpu_arguments`);
* the engine client runs attached with its output appended to ``InstanceSpec.log_path``; ``alive()`` is
  "the client is still running"; ``stop()`` is ``<engine> stop -t GRACE <container id>`` then a forced remove.

Settings (read once, at construction): ``container_engine`` / ``$SELFMAKER_CONTAINER_ENGINE``
(docker|podman|path; default docker when its daemon answers, else podman), ``container_network`` /
``$SELFMAKER_CONTAINER_NETWORK`` (``bridge`` | ``host``), ``container_pull_timeout`` /
``$SELFMAKER_CONTAINER_PULL_TIMEOUT`` (seconds), ``container_gpus`` / ``$SELFMAKER_CONTAINER_GPUS``
(``auto`` | ``always`` | ``never``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.childenv import child_environment
from common.proc import free_port
from selfmaker.executors.base import Executor, ExecutorError, InstanceHandle, InstanceSpec
from training.executors import container as engines
from training.executors.base import ExecutorError as TrainingExecutorError

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings

log = logging.getLogger(__name__)

#: the port SageMaker's inference contract has the container listen on
CONTAINER_PORT = 8080
NETWORK_MODES = ("bridge", "host")


def _setting(settings: Any, name: str, env: str, default: Any) -> Any:
    """A platform setting if PlatformSettings defines it, else the environment variable, else ``default``."""
    value = getattr(settings, name, None)
    if value is None:
        value = os.environ.get(env) or None
    return default if value is None else value


async def _run(cmd: list[str], timeout: float) -> tuple[int | None, str]:
    """Run an engine command; (exit code or None on timeout, combined output)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        return 127, str(exc)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return None, "timed out"
    return proc.returncode, out.decode("utf-8", "replace")


class ContainerInstanceHandle(InstanceHandle):
    """A model server running in a container."""

    def __init__(
        self,
        *,
        instance_id: str,
        url: str,
        engine: str,
        name: str,
        image: str,
        process: asyncio.subprocess.Process,
        cidfile: Path,
        network: str,
    ) -> None:
        self.instance_id = instance_id
        self.url = url
        self.engine = engine
        self.name = name
        self.image = image
        self.network = network
        self._process = process
        self._cidfile = cidfile
        self._stopped = False

    @property
    def container_id(self) -> str | None:
        """The engine's container id once the container was created."""
        return engines.read_cidfile(self._cidfile)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.returncode is None

    def describe(self) -> dict[str, Any]:
        cid = self.container_id
        return {
            "executor": "container",
            "engine": engines.engine_name(self.engine),
            "image": self.image,
            "container": self.name,
            "container_id": cid[:12] if cid else None,
            "network": self.network,
        }

    async def stop(self, grace: float) -> None:
        if self._stopped:
            return
        self._stopped = True
        ref = self.container_id or self.name
        if self._process.returncode is None:
            # `stop` sends the image's stop signal (SIGTERM), waits `grace`, then SIGKILL
            await _run([self.engine, "stop", "-t", str(max(0, int(round(grace)))), ref], timeout=grace + 60)
            try:
                await asyncio.wait_for(self._process.wait(), timeout=30)
            except asyncio.TimeoutError:
                self._process.kill()
                await self._process.wait()
        # --rm removes it on exit; this covers a client that died before its container
        await _run([self.engine, "rm", "-f", ref], timeout=60)
        self._cidfile.unlink(missing_ok=True)


class ContainerExecutor(Executor):
    """Runs a model-server image per instance in docker or podman (see the module docstring)."""

    kind = "container"

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self._engine_override: str | None = _setting(settings, "container_engine", engines.ENGINE_ENV, None)
        network = str(
            _setting(settings, "container_network", "SELFMAKER_CONTAINER_NETWORK", "bridge")
        ).lower()
        if network not in NETWORK_MODES:
            raise ExecutorError(
                f"SELFMAKER_CONTAINER_NETWORK must be one of {', '.join(NETWORK_MODES)}, not {network!r}"
            )
        self.network = network
        self.pull_timeout = float(
            _setting(
                settings, "container_pull_timeout", "SELFMAKER_CONTAINER_PULL_TIMEOUT", engines.PULL_TIMEOUT
            )
        )
        try:
            self.gpus = engines.gpu_mode(_setting(settings, "container_gpus", engines.GPUS_ENV, None))
        except TrainingExecutorError as exc:
            raise ExecutorError(str(exc)) from exc
        self.host_has_gpu = engines.host_has_nvidia_gpu()
        self._engine: str | None = None
        self._lock = asyncio.Lock()
        self._images_ready: set[str] = set()
        #: containers of this platform home carry this label; leftovers of a killed platform are reaped
        self.home_label = f"selfmaker.home={Path(getattr(settings, 'home', '.')).resolve()}"

    async def engine(self) -> str:
        """The engine path, detected once (in a thread: `<engine> info` blocks)."""
        if self._engine is None:
            async with self._lock:
                if self._engine is None:
                    try:
                        engine = await asyncio.to_thread(engines.detect_engine, self._engine_override)
                    except engines.ContainerEngineError as exc:
                        raise ExecutorError(str(exc)) from exc
                    await self._reap(engine, "left over from an earlier run of this platform")
                    self._engine = engine
        return self._engine

    async def _reap(self, engine: str, why: str) -> None:
        """Force-remove the serving containers of this platform home (one executor per platform process)."""
        code, out = await _run(
            [
                engine,
                "ps",
                "-a",
                "-q",
                "--filter",
                f"label={self.home_label}",
                "--filter",
                "label=selfmaker.kind=serving",
            ],
            timeout=60,
        )
        ids = out.split() if code == 0 else []
        if ids:
            log.warning("removing %d model-server container(s) %s", len(ids), why)
            await _run([engine, "rm", "-f", *ids], timeout=120)

    async def close(self) -> None:
        """At platform shutdown (instances already stopped): remove anything of ours still there."""
        if self._engine is not None:
            await self._reap(self._engine, "still present at shutdown")

    async def _ensure_image(self, engine: str, image: str) -> None:
        if image in self._images_ready:
            return
        try:
            await asyncio.to_thread(engines.ensure_image, engine, image, self.pull_timeout)
        except TrainingExecutorError as exc:
            raise ExecutorError(str(exc)) from exc
        self._images_ready.add(image)

    def command(self, spec: InstanceSpec, engine: str, name: str, cidfile: Path, port: int) -> list[str]:
        """The ``<engine> run`` command line (environment values are passed by name only)."""
        env = self.container_environment(spec, port)
        cmd = [
            engine,
            "run",
            "--rm",
            "--name",
            name,
            "--cidfile",
            str(cidfile),
            "-v",
            f"{Path(spec.model_dir).resolve()}:/opt/ml/model:ro",
            "--label",
            "selfmaker.kind=serving",
            "--label",
            self.home_label,
            "--label",
            f"selfmaker.endpoint={spec.endpoint_name}",
            "--label",
            f"selfmaker.variant={spec.variant_name}",
            "--label",
            f"selfmaker.instance={spec.instance_id}",
        ]
        if self.network == "host":
            cmd += ["--network", "host"]
        else:
            cmd += ["-p", f"127.0.0.1:{port}:{self.container_port(spec)}"]
        if spec.memory_mb:
            cmd += ["--memory", f"{int(spec.memory_mb)}m"]
        cmd += engines.gpu_arguments(engine, spec.instance_type, self.gpus, self.host_has_gpu)
        for key in sorted(env):
            cmd += ["-e", key]
        cmd += [spec.image, "serve"]
        return cmd

    @staticmethod
    def container_port(spec: InstanceSpec) -> int:
        """The port the server listens on inside the container: the model's SAGEMAKER_BIND_TO_PORT or 8080."""
        raw = spec.environment.get("SAGEMAKER_BIND_TO_PORT", "")
        return int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else CONTAINER_PORT

    def container_environment(self, spec: InstanceSpec, port: int) -> dict[str, str]:
        """What the container sees: the Model's Environment (+ the bind port in host-network mode)."""
        env = {str(k): str(v) for k, v in spec.environment.items()}
        if self.network == "host":
            env["SAGEMAKER_BIND_TO_PORT"] = str(port)
        return env

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        if not spec.image:
            raise ExecutorError("ClientError: the model has no container image")
        engine = await self.engine()
        await self._ensure_image(engine, spec.image)
        port = free_port()
        name = engines.container_name("selfmaker", spec.instance_id)
        work_dir = Path(spec.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        cidfile = work_dir / f"{name}.cid"
        cidfile.unlink(missing_ok=True)
        # the engine client's own settings and the names passed with -e; nothing else of the platform's
        client_env = child_environment(self.container_environment(spec, port), engine_client=True)
        cmd = self.command(spec, engine, name, cidfile, port)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info(
            "starting %s in container %s (%s, 127.0.0.1:%d)",
            spec.image,
            name,
            engines.engine_name(engine),
            port,
        )
        with open(spec.log_path, "ab") as log_file:
            try:
                process = await asyncio.create_subprocess_exec(
                    *cmd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    env=client_env,
                    cwd=str(work_dir),
                    start_new_session=True,
                )
            except OSError as exc:
                raise ExecutorError(f"could not start the container engine {engine}: {exc}") from exc
        return ContainerInstanceHandle(
            instance_id=spec.instance_id,
            url=f"http://127.0.0.1:{port}",
            engine=engine,
            name=name,
            image=spec.image,
            process=process,
            cidfile=cidfile,
            network=self.network,
        )

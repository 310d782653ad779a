"""Platform side of the template process: start it, ask it to fork model servers, watch and stop them.

:class:`TemplateProcess` owns one ``python -m selfmaker.executors.template`` child of the platform.
:class:`ForkExecutor` is an :class:`~selfmaker.executors.base.Executor` of kind ``process`` whose
instances are forks of that template instead of fresh interpreters (same command line, same
environment contract as :class:`~selfmaker.executors.process.ProcessExecutor`); when the template cannot
be used it falls back to a plain spawn so a variant never fails because of the accelerator.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.childenv import child_environment
from common.proc import free_port
from selfmaker.executors.base import Executor, ExecutorError, InstanceHandle, InstanceSpec

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings

log = logging.getLogger(__name__)


class TemplateError(Exception):
    """The template process is unavailable or refused a request."""


def template_request(
    socket_path: str | Path, payload: dict[str, Any], timeout: float = 10.0
) -> tuple[dict[str, Any], list[int]]:
    """Send one request to the template at ``socket_path``; return its answer and any received fds.

    Blocking (use ``asyncio.to_thread`` from the event loop). Raises :class:`TemplateError` when the
    template cannot be reached or answers ``ok: false``.
    """
    fds: list[int] = []
    buf = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall((json.dumps(payload) + "\n").encode())
            while not buf.endswith(b"\n"):
                data, new_fds, _flags, _addr = socket.recv_fds(sock, 65536, 4)
                fds += new_fds
                if not data:
                    break
                buf += data
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise TemplateError(f"template at {socket_path} unreachable: {exc}") from exc
    try:
        answer = json.loads(buf)
    except ValueError as exc:
        for fd in fds:
            os.close(fd)
        raise TemplateError(f"template at {socket_path} sent a bad answer: {buf[:200]!r}") from exc
    if not answer.get("ok"):
        for fd in fds:
            os.close(fd)
        raise TemplateError(str(answer.get("error", "template refused the request")))
    return answer, fds


class TemplateProcess:
    """One template process: started on demand, restarted when it died, stopped with the platform."""

    def __init__(
        self,
        socket_path: Path,
        log_path: Path,
        *,
        python: str | None = None,
        preload: list[str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.log_path = Path(log_path)
        self.python = python or sys.executable
        self.preload = preload
        self.startup_timeout = startup_timeout
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def ensure(self) -> None:
        """Start the template unless it is running; wait until it answers ``ping``."""
        async with self._lock:
            if self.alive():
                return
            await self._start()

    async def _start(self) -> None:
        # Short socket paths: AF_UNIX paths are limited to ~107 bytes.
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            self.python,
            "-m",
            "selfmaker.executors.template",
            "--socket",
            str(self.socket_path),
            "--parent-pid",
            str(os.getpid()),
        ]
        if self.preload is not None:
            cmd += ["--preload", *self.preload]
        # what every forked model server inherits: an explicit environment (common.childenv)
        env = child_environment()
        # fewer malloc arenas: less address space per thread, so RLIMIT_AS limits real use
        env.setdefault("MALLOC_ARENA_MAX", "2")
        started = time.perf_counter()
        with open(self.log_path, "ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self._process.returncode is not None:
                raise TemplateError(
                    f"template process exited with code {self._process.returncode} (see {self.log_path})"
                )
            try:
                answer, _ = await asyncio.to_thread(template_request, self.socket_path, {"op": "ping"}, 2.0)
            except TemplateError as exc:
                last = str(exc)
                await asyncio.sleep(0.02)
                continue
            log.info(
                "serverless template ready in %.2fs (pid %s, %d modules preloaded)",
                time.perf_counter() - started,
                answer.get("pid"),
                len(answer.get("preloaded", [])),
            )
            return
        await self.stop()
        raise TemplateError(f"template not ready after {self.startup_timeout}s: {last}")

    async def request(
        self, payload: dict[str, Any], timeout: float = 10.0
    ) -> tuple[dict[str, Any], list[int]]:
        """Send ``payload`` to the (running) template."""
        return await asyncio.to_thread(template_request, self.socket_path, payload, timeout)

    async def spawn(
        self,
        *,
        instance_id: str,
        module: str = "",
        path: str = "",
        args: list[str],
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        memory_mb: int | None,
    ) -> ForkedHandle:
        """Fork a model server: ``python -m <module> <args>`` semantics, ``env`` on top of the template's."""
        await self.ensure()
        answer, fds = await self.request(
            {
                "op": "spawn",
                "module": module,
                "path": path,
                "args": args,
                "env": env,
                "cwd": str(cwd),
                "log_path": str(log_path),
                "memory_mb": memory_mb,
                "instance_id": instance_id,
            }
        )
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise TemplateError("template answered spawn without a pidfd")
        return ForkedHandle(instance_id, int(answer["pid"]), fds[0], self, memory_mb=memory_mb)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop the template (model servers it forked are stopped through their handles)."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            await asyncio.wait_for(process.wait(), timeout=grace)
        except asyncio.TimeoutError:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await process.wait()


class ForkedHandle(InstanceHandle):
    """A model server forked by the template; watched through a pidfd (it is not our child)."""

    def __init__(
        self,
        instance_id: str,
        pid: int,
        pidfd: int,
        template: TemplateProcess,
        *,
        url: str = "",
        memory_mb: int | None = None,
    ) -> None:
        #: called with the template's reason when a server that ended on its own is stopped
        self.on_exit: Callable[[str], None] | None = None
        self.instance_id = instance_id
        self.url = url
        self._pid = pid
        self._pidfd: int | None = pidfd
        self._template = template
        self.memory_mb = memory_mb
        self._exited = False

    @property
    def pid(self) -> int | None:
        return self._pid

    def alive(self) -> bool:
        if self._exited or self._pidfd is None:
            return False
        readable, _, _ = select.select([self._pidfd], [], [], 0)
        if readable:
            self._exited = True
        return not self._exited

    async def exit_reason(self) -> str | None:
        """Why the server ended, as the template saw it (memory limit, exit code), or None if running."""
        try:
            answer, _ = await self._template.request({"op": "status", "pid": self._pid}, timeout=2.0)
        except TemplateError:
            return None if self.alive() else "the model server exited"
        return answer.get("reason") if not answer.get("running") else None

    async def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self._pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, grace: float) -> None:
        if self._pidfd is None:
            return
        if not self.alive() and self.on_exit is not None:
            reason = await self.exit_reason()
            if reason:
                self.on_exit(reason)
        if self.alive():
            self._killpg(signal.SIGTERM)
            if not await self._wait_exit(grace):
                self._killpg(signal.SIGKILL)
                await self._wait_exit(10.0)
        self._killpg(signal.SIGKILL)  # stray gunicorn workers of a group whose leader already exited
        os.close(self._pidfd)
        self._pidfd = None
        self._exited = True

    def describe(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"launcher": "template-fork"}
        if self.memory_mb is not None:
            facts["memory_limit_mb"] = self.memory_mb
        return facts


class ForkExecutor(Executor):
    """Local model servers forked from a pre-imported template (fast cold starts).

    Same contract as :class:`~selfmaker.executors.process.ProcessExecutor`: ``python -m serving
    --model-dir DIR --host 127.0.0.1 --port P`` with ``SAGEMAKER_BIND_TO_PORT`` and the variant's
    environment; ``InstanceSpec.memory_mb`` becomes the process memory limit. Environment variables
    that take effect at import time (``OMP_NUM_THREADS`` …) are those of the template.
    """

    kind = "process"

    def __init__(
        self,
        settings: PlatformSettings,
        *,
        template: TemplateProcess | None = None,
        fallback: Executor | None = None,
        fork_all: bool = True,
    ) -> None:
        self.settings = settings
        #: fork every instance (True) or only those with a memory limit, i.e. serverless variants (False)
        self.fork_all = fork_all
        self._failures: dict[tuple[str, str], tuple[float, str]] = {}
        run_dir = Path(settings.home) / "run"
        self.template = template or TemplateProcess(
            run_dir / f"template-{os.getpid()}.sock",
            Path(settings.logs_dir) / "serverless-template.log",
            python=settings.python,
        )
        self._fallback = fallback

    async def warm(self) -> None:
        """Start the template now so the first cold start does not pay for it."""
        await self.template.ensure()

    def recent_failure(self, endpoint: str, variant: str, within: float = 120.0) -> str | None:
        """Why the last server of ``endpoint``/``variant`` that ended on its own ended (if recent)."""
        entry = self._failures.get((endpoint, variant))
        if entry is None or time.monotonic() - entry[0] > within:
            return None
        return entry[1]

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        if self._fallback is not None and not self.fork_all and spec.memory_mb is None:
            return await self._fallback.start(spec)
        port = free_port()
        env = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(self.settings.model_server_workers)}
        env.update(spec.environment)
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
        args = ["--model-dir", str(spec.model_dir), "--host", "127.0.0.1", "--port", str(port)]
        try:
            handle = await self.template.spawn(
                instance_id=spec.instance_id,
                module="serving",
                args=args,
                env=env,
                cwd=spec.work_dir,
                log_path=spec.log_path,
                memory_mb=spec.memory_mb,
            )
        except TemplateError as exc:
            if self._fallback is None:
                raise ExecutorError(f"could not fork the model server: {exc}") from exc
            log.warning("template unavailable (%s); spawning %s the slow way", exc, spec.instance_id)
            return await self._fallback.start(spec)
        handle.url = f"http://127.0.0.1:{port}"
        key = (spec.endpoint_name, spec.variant_name)
        handle.on_exit = lambda reason: self._failures.__setitem__(key, (time.monotonic(), reason))
        return handle

    async def close(self) -> None:
        await self.template.stop()
        if self._fallback is not None:
            await self._fallback.close()

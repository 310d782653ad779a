"""Model servers as local processes: ``python -m serving --model-dir DIR --host 127.0.0.1 --port P``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TYPE_CHECKING

from common.childenv import child_environment
from common.proc import free_port
from selfmaker.executors.base import Executor, ExecutorError, InstanceHandle, InstanceSpec

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings


class ProcessHandle(InstanceHandle):
    """A model server running as a child process in its own process group."""

    def __init__(self, instance_id: str, url: str, process: asyncio.subprocess.Process) -> None:
        self.instance_id = instance_id
        self.url = url
        self._process = process

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def alive(self) -> bool:
        return self._process.returncode is None

    def _signal(self, sig: int) -> None:
        # The server is a group leader (start_new_session): signal the group so gunicorn's
        # workers go too; fall back to the process itself.
        try:
            os.killpg(self._process.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self._process.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self, grace: float) -> None:
        if self._process.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._process.wait(), timeout=grace)
        except asyncio.TimeoutError:
            self._signal(signal.SIGKILL)
            await self._process.wait()
        # stray workers of a group whose leader already exited
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class ProcessExecutor(Executor):
    """Runs selfmaker's model server (the ``serving`` package) as a local subprocess per instance."""

    kind = "process"

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        port = free_port()
        # an explicit environment (common.childenv): no credentials, no unrelated secret of the platform's
        env = child_environment({"SAGEMAKER_MODEL_SERVER_WORKERS": str(self.settings.model_server_workers)})
        env.update(spec.environment)
        env["SAGEMAKER_BIND_TO_PORT"] = str(port)
        env["SELFMAKER_PARENT_PID"] = str(os.getpid())  # the server stops if the platform is killed
        python = self.settings.python or sys.executable
        cmd = [
            python,
            "-m",
            "serving",
            "--model-dir",
            str(spec.model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log_path, "ab") as log:
            try:
                process = await asyncio.create_subprocess_exec(
                    *cmd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=env,
                    cwd=str(spec.work_dir),
                    start_new_session=True,
                )
            except OSError as exc:
                raise ExecutorError(f"could not start the model server: {exc}") from exc
        return ProcessHandle(spec.instance_id, f"http://127.0.0.1:{port}", process)

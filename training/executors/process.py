"""Runs a training host as a local Python process: ``python -m training train``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from common.childenv import child_environment
from training.executors.base import ExecutionHandle, Executor, ExecutorError, HostSpec


class ProcessHandle(ExecutionHandle):
    """A host running as a child process (in its own process group, so its children stop with it)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc
        assert proc.stdout is not None
        self.stream = proc.stdout

    def poll(self) -> int | None:
        return self._proc.poll()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self) -> None:
        # like `docker stop`: SIGTERM to the entry process only; it forwards to the user's script
        if self._proc.poll() is None:
            try:
                os.kill(self._proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        # SIGKILL the whole process group: the entry and everything it started
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    @property
    def pid(self) -> int | None:
        return self._proc.pid


class ProcessExecutor(Executor):
    """Starts ``<python> -m training train --root <ml_root>`` with the spec's environment."""

    kind = "process"

    def __init__(self, python: str | None = None) -> None:
        self.python = python or sys.executable

    def start(self, spec: HostSpec) -> ProcessHandle:
        # an explicit environment (common.childenv); the runner adds credentials when the job uses S3
        env = child_environment(spec.env)
        env["SELFMAKER_ML_ROOT"] = str(spec.ml_root)
        env.setdefault("PYTHONUNBUFFERED", "1")
        args = list(spec.arguments) or ["train"]
        cmd = [self.python, "-m", "training", *args, "--root", str(spec.ml_root)]
        try:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=str(spec.ml_root),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise ExecutorError(f"cannot start the training process: {exc}") from exc
        return ProcessHandle(proc)

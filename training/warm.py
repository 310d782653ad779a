"""Warm starts of training hosts (``ResourceConfig.KeepAlivePeriodInSeconds``).

What a warm pool keeps for the next matching job, on the runtime side:

* :class:`Standby` — a ``python -m training.standby`` interpreter per host with the runtime (and the
  built-in's libraries) imported, claimed by :class:`WarmExecutor` instead of spawning a fresh one;
* an input cache — the objects the previous job downloaded, keyed by URI, size and version (S3 ETag or
  file mtime), copied into the new job's channels instead of downloaded again.

The pool itself (matching, keep-alive, WarmPoolStatus) is the platform's (selfmaker/jobs/warm_pools.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.childenv import child_environment
from training.executors.base import ExecutorError, HostSpec
from training.executors.process import ProcessExecutor, ProcessHandle
from training.images import classify_image


def preload_kind(image: str) -> str:
    """What a standby for ``image`` imports ahead: ``xgboost``, ``linear-learner`` or ``script``;
    ``container`` for images that run in a container (no standby interpreter then)."""
    kind = classify_image(image)
    return kind if kind in ("xgboost", "linear-learner", "container") else "script"


class Standby:
    """One started ``python -m training.standby``; :meth:`claim` turns it into a running host."""

    def __init__(self, kind: str, python: str | None = None) -> None:
        # what a cold host's environment starts from (common.childenv: no credentials, no secret of the
        # platform's); the claim adds the job's. Unbuffered output is decided when the interpreter starts.
        env = child_environment({"PYTHONUNBUFFERED": "1"})
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [python or sys.executable, "-m", "training.standby", "--preload", kind],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        """Still waiting for a job (not claimed, not dead)."""
        return self._proc is not None and self._proc.poll() is None

    def claim(self, spec: HostSpec) -> ProcessHandle:
        """Run ``spec``'s host in this interpreter; ExecutorError when it died meanwhile."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None or proc.stdin is None:
            raise ExecutorError("the warm pool's standby interpreter is gone")
        env = dict(spec.env)
        env["SELFMAKER_ML_ROOT"] = str(spec.ml_root)
        args = [*(list(spec.arguments) or ["train"]), "--root", str(spec.ml_root)]
        try:
            proc.stdin.write(
                (json.dumps({"env": env, "cwd": str(spec.ml_root), "args": args}) + "\n").encode()
            )
            proc.stdin.close()
        except OSError as exc:
            _kill(proc)
            raise ExecutorError(f"the warm pool's standby interpreter refused the job: {exc}") from exc
        return ProcessHandle(proc)

    def close(self) -> None:
        """Release it unused: EOF on stdin ends it; SIGKILL to its group if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        _kill(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


@dataclass
class WarmStart:
    """What a job gets from the warm pool it reuses (or fills, when it has a keep-alive)."""

    #: host name → standby interpreter (claimed by the first attempt's hosts)
    standbys: dict[str, Standby] = field(default_factory=dict)
    #: directory of cached input objects (read from and written to), or None
    input_cache: Path | None = None
    #: hosts that started from a standby (filled by the executor)
    claimed: list[str] = field(default_factory=list)

    def cache_key(self, uri: str, size: int, version: str) -> Path | None:
        """Where the object is cached, or None without a cache."""
        if self.input_cache is None:
            return None
        digest = hashlib.sha256(f"{uri}\0{size}\0{version}".encode()).hexdigest()
        return self.input_cache / digest[:2] / digest

    def fetch(self, key: Path | None, dest: Path) -> bool:
        """Copy a cached object to ``dest``; False when it is not cached."""
        if key is None or not key.is_file():
            return False
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(key, dest)  # a copy, not a link: the job may change its input files
        return True

    def keep(self, key: Path | None, src: Path) -> None:
        """Cache a downloaded object (best effort: a full disk only costs the next job a download)."""
        if key is None or key.is_file():
            return
        try:
            key.parent.mkdir(parents=True, exist_ok=True)
            tmp = key.with_name(key.name + ".partial")
            shutil.copyfile(src, tmp)
            os.replace(tmp, key)
        except OSError:
            pass

    def close(self) -> None:
        """Release the standbys nobody claimed."""
        for standby in self.standbys.values():
            standby.close()
        self.standbys.clear()


class WarmExecutor(ProcessExecutor):
    """A :class:`ProcessExecutor` whose hosts start in the warm pool's standby interpreters when there
    are any (and a fresh interpreter otherwise)."""

    def __init__(self, warm: WarmStart, python: str | None = None) -> None:
        super().__init__(python)
        self.warm = warm

    def start(self, spec: HostSpec) -> ProcessHandle:
        standby = self.warm.standbys.pop(spec.host, None)
        if standby is not None and standby.alive():
            try:
                handle = standby.claim(spec)
            except ExecutorError:
                pass  # fall back to a cold start
            else:
                self.warm.claimed.append(spec.host)
                return handle
        if standby is not None:
            standby.close()
        return super().start(spec)

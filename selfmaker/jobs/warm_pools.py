"""Warm pools of training jobs (``ResourceConfig.KeepAlivePeriodInSeconds``).

A job with a keep-alive that completes leaves its prepared environment behind for the keep-alive period: a
standby interpreter per host with the training runtime and the built-in's libraries imported
(:class:`training.warm.Standby`) and the input objects it downloaded (:class:`training.warm.WarmStart`'s
cache). The next job with a keep-alive that matches it — SageMaker's rule: same RoleArn, InstanceType,
InstanceCount, VolumeSizeInGB, VolumeKmsKeyId, VpcConfig, network isolation and inter-container encryption;
here also the same image, since the standby has that image's libraries imported — takes it over and starts
without the interpreter start, the imports and the downloads. Its record's ``WarmPoolStatus`` goes
InUse → Available → Reused (``ReusedByJob``) or Terminated (keep-alive over, set to 0, the platform stopped),
with ``ResourceRetainedBillableTimeInSeconds`` the seconds it was kept.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.warm import Standby, WarmStart, preload_kind

if TYPE_CHECKING:
    from selfmaker.settings import PlatformSettings
    from selfmaker.state import StateStore

log = logging.getLogger(__name__)

#: seconds between two looks for expired pools
REAP_INTERVAL = 0.5


def keep_alive_of(request: dict[str, Any]) -> int:
    """``ResourceConfig.KeepAlivePeriodInSeconds`` (0 when absent)."""
    return int((request.get("ResourceConfig") or {}).get("KeepAlivePeriodInSeconds") or 0)


def match_key(request: dict[str, Any]) -> str:
    """What two jobs must share for the second to reuse the first one's warm pool."""
    resources = request.get("ResourceConfig") or {}
    algo = request.get("AlgorithmSpecification") or {}
    return json.dumps(
        {
            "RoleArn": request.get("RoleArn"),
            "Image": algo.get("TrainingImage") or algo.get("AlgorithmName") or "",
            "InstanceType": resources.get("InstanceType"),
            "InstanceCount": resources.get("InstanceCount"),
            "VolumeSizeInGB": resources.get("VolumeSizeInGB"),
            "VolumeKmsKeyId": resources.get("VolumeKmsKeyId"),
            "VpcConfig": request.get("VpcConfig"),
            "EnableNetworkIsolation": bool(request.get("EnableNetworkIsolation")),
            "EnableInterContainerTrafficEncryption": bool(
                request.get("EnableInterContainerTrafficEncryption")
            ),
        },
        sort_keys=True,
        default=str,
    )


@dataclass
class _Pool:
    job: str  # the job whose record reports this pool
    key: str
    available_since: float  # epoch seconds
    expires: float  # monotonic
    warm: WarmStart


class WarmPools:
    """The warm pools of `selfmaker up`'s training jobs; thread-safe."""

    def __init__(self, settings: PlatformSettings, store: StateStore) -> None:
        self.settings = settings
        self.store = store
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def root(self) -> Path:
        return self.settings.work_dir / "warm-pools"

    def _set_status(self, job: str, status: str, **extra: Any) -> None:
        self.store.update("training-job", job, merge={"WarmPoolStatus": {"Status": status, **extra}})

    # -- a job starts ---------------------------------------------------------------------------
    def start_job(self, job: str, request: dict[str, Any]) -> tuple[WarmStart, str | None]:
        """The warm start of a job with a keep-alive: a matching Available pool taken over (its name is
        returned) or an empty one with a new input cache. The job's WarmPoolStatus becomes InUse."""
        key = match_key(request)
        with self._lock:
            found = next((p for p in self._pools.values() if p.key == key), None)
            if found is not None:
                del self._pools[found.job.lower()]
        if found is not None:
            retained = max(0, int(round(time.time() - found.available_since)))
            self._set_status(
                found.job, "Reused", ReusedByJob=job, ResourceRetainedBillableTimeInSeconds=retained
            )
            warm = found.warm
            warm.claimed = []
        else:
            warm = WarmStart(input_cache=self.root / job / "inputs")
        self._set_status(job, "InUse")
        return warm, found.job if found is not None else None

    # -- a job ended ----------------------------------------------------------------------------
    def end_job(self, job: str, request: dict[str, Any], warm: WarmStart, completed: bool) -> None:
        """Keep the job's environment for its keep-alive (read from its record: UpdateTrainingJob may have
        changed it) when it completed, else release it (Terminated)."""
        warm.close()  # standbys a host did not claim (fresh ones are started for the next job)
        record = self.store.get("training-job", job)
        keep = keep_alive_of(record.doc if record is not None else request)
        if not completed or keep <= 0 or self._closed.is_set():
            self._release(warm)
            self._set_status(job, "Terminated", ResourceRetainedBillableTimeInSeconds=0)
            return
        kind = preload_kind(str((request.get("AlgorithmSpecification") or {}).get("TrainingImage") or ""))
        hosts = int((request.get("ResourceConfig") or {}).get("InstanceCount") or 1)
        standbys: dict[str, Standby] = {}
        if kind != "container":  # the interpreter a cold host gets (ProcessExecutor's)
            standbys = {f"algo-{i}": Standby(kind) for i in range(1, hosts + 1)}
        pool = _Pool(
            job=job,
            key=match_key(request),
            available_since=time.time(),
            expires=time.monotonic() + keep,
            warm=WarmStart(standbys=standbys, input_cache=warm.input_cache),
        )
        with self._lock:
            self._pools[job.lower()] = pool
        self._set_status(job, "Available")
        self._ensure_reaper()
        log.info("training job %s: warm pool kept for %d s", job, keep)

    # -- UpdateTrainingJob ----------------------------------------------------------------------
    def update_keep_alive(self, job: str, seconds: int) -> None:
        """A new keep-alive for an Available pool, counted from when it became available (0 releases it);
        an InUse pool reads it from the record when its job ends."""
        with self._lock:
            pool = self._pools.get(job.lower())
            if pool is not None:
                pool.expires = time.monotonic() + max(0.0, seconds - (time.time() - pool.available_since))
        if pool is not None and seconds <= 0:
            self._expire(job)

    # -- expiry ---------------------------------------------------------------------------------
    def _ensure_reaper(self) -> None:
        with self._lock:
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Thread(target=self._reap, name="warm-pools", daemon=True)
                self._reaper.start()

    def _reap(self) -> None:
        while not self._closed.wait(REAP_INTERVAL):
            now = time.monotonic()
            with self._lock:
                due = [p.job for p in self._pools.values() if p.expires <= now]
                if not self._pools:
                    self._reaper = None
                    return
            for job in due:
                self._expire(job)

    def _expire(self, job: str) -> None:
        with self._lock:
            pool = self._pools.pop(job.lower(), None)
        if pool is None:
            return
        self._release(pool.warm)
        retained = max(0, int(round(time.time() - pool.available_since)))
        self._set_status(pool.job, "Terminated", ResourceRetainedBillableTimeInSeconds=retained)
        log.info("training job %s: warm pool released after %d s", pool.job, retained)

    @staticmethod
    def _release(warm: WarmStart) -> None:
        warm.close()
        if warm.input_cache is not None:
            shutil.rmtree(warm.input_cache.parent, ignore_errors=True)

    def recover(self) -> None:
        """A previous run's pools are gone with it (its standbys exit when their stdin closes): remove what
        they kept on disk."""
        shutil.rmtree(self.root, ignore_errors=True)

    def standby_pids(self) -> list[int]:
        """The PIDs of the standby interpreters kept (for tests and `selfmaker status`)."""
        with self._lock:
            return [
                pid
                for p in self._pools.values()
                for s in p.warm.standbys.values()
                if (pid := s.pid) is not None
            ]

    def close(self) -> None:
        """Release every pool (the platform stops): the standbys end, the caches are removed."""
        self._closed.set()
        with self._lock:
            jobs = [p.job for p in self._pools.values()]
        for job in jobs:
            self._expire(job)

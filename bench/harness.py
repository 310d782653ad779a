"""Shared benchmark plumbing: start/stop servers by process group, poll readiness, closed-loop load.

Load comes from ``wrk`` through the anchors' ``load.sh`` (:data:`ANCHORS`) when both exist (``apt-get
install wrk``), else from a bounded aiohttp load generator. Every run is bounded in time; targets are
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.proc import free_port  # noqa: F401 - the benchmarks take it from here

#: the benchmark anchors (naive flask, MMS, load.sh, make_models.py, coldstart.py):
#: ``SELFMAKER_ANCHORS``, else ``shared/anchors`` beside the repository (``<repo>/../shared/anchors``,
#: where the project keeps them)
ANCHORS = Path(
    os.environ.get("SELFMAKER_ANCHORS") or Path(__file__).resolve().parents[2] / "shared" / "anchors"
)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return None


@dataclass
class Proc:
    """A server process started in its own process group (stopped by that group id only)."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        import psutil

        try:  # descendants may have left our process group (MMS's Java starts its own)
            descendants = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        try:
            self._stop_group()
        finally:
            for child in descendants:
                try:
                    child.terminate()
                except psutil.NoSuchProcess:
                    continue
            _, alive = psutil.wait_procs(descendants, timeout=10)
            for child in alive:
                try:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass

    def _stop_group(self) -> None:
        if self.popen.poll() is not None:
            return
        pgid = self.popen.pid  # start_new_session=True: the group id is the leader's pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        # children of the group (e.g. MMS's Java) may outlive the leader for a moment
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start(
    name: str, cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | None = None, log_dir: Path
) -> Proc:
    """Start ``cmd`` in a new session with output to ``log_dir/name.log``."""
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(
            cmd,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log_path)


def wait_ready(proc: Proc, url: str, timeout: float) -> None:
    """Poll ``url`` for 200 until ``timeout``; raise with the log tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            break
        if http_status(url) == 200:
            return
        time.sleep(0.1)
    tail = proc.log_path.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{proc.name} not ready at {url} after {timeout}s:\n{tail}")


CONTENT_TYPES = {
    "csv": "text/csv",
    "json": "application/json",
    "npy": "application/x-npy",
    "recordio": "application/x-recordio-protobuf",
}


@dataclass
class LoadResult:
    """One closed-loop measurement."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    tool: str
    extra: dict[str, Any] = field(default_factory=dict)


def have_wrk() -> bool:
    return shutil.which("wrk") is not None and (ANCHORS / "load.sh").is_file()


def load(url: str, payload: Path | None, concurrency: int, seconds: int) -> LoadResult:
    """Closed loop against ``url`` (POST ``payload``, or GET when None) for ``seconds`` (1..120)."""
    seconds = max(1, min(int(seconds), 120))
    if have_wrk():
        content_type = CONTENT_TYPES.get(payload.suffix.lstrip("."), "text/csv") if payload else "text/csv"
        out = subprocess.run(
            [
                "bash",
                str(ANCHORS / "load.sh"),
                url,
                str(payload) if payload else "-",
                str(concurrency),
                str(seconds),
                content_type,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        )
        if out.returncode != 0:
            raise RuntimeError(f"load.sh failed: {out.stderr[-500:]}")
        data = json.loads(out.stdout.strip().splitlines()[-1])
        errors = sum(
            int(data.get(k, 0)) for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
        )
        return LoadResult(data["rps"], data["p50_ms"], data["p99_ms"], data["requests"], errors, "wrk")
    return asyncio.run(_aio_load(url, payload, concurrency, seconds))


async def _aio_load(url: str, payload: Path | None, concurrency: int, seconds: int) -> LoadResult:
    import aiohttp

    body = payload.read_bytes() if payload else None
    headers = {"Content-Type": CONTENT_TYPES.get(payload.suffix.lstrip("."), "text/csv")} if payload else {}
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                if body is None:
                    async with session.get(url) as resp:
                        await resp.read()
                        ok = resp.status == 200
                else:
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += 0 if ok else 1

    begun = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)
    ) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.monotonic() - begun
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else 0.0
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else 0.0
    return LoadResult(len(latencies) / elapsed, p50, p99, len(latencies), errors, "aiohttp")


def timed_loop(func: Any, seconds: float, max_calls: int = 1_000_000) -> tuple[float, float, float, int]:
    """Call ``func()`` repeatedly for ``seconds`` (bounded by ``max_calls``): calls/s, p50 ms, p99 ms,
    calls."""
    for _ in range(3):
        func()
    samples: list[float] = []
    stop_at = time.perf_counter() + seconds
    begun = time.perf_counter()
    while len(samples) < max_calls:
        started = time.perf_counter()
        func()
        now = time.perf_counter()
        samples.append(now - started)
        if now >= stop_at:
            break
    elapsed = time.perf_counter() - begun
    samples.sort()
    return (
        len(samples) / elapsed,
        statistics.median(samples) * 1000,
        samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1000,
        len(samples),
    )


def build_classifier_tar(dest: Path, features: int = 20) -> Path:
    """A logistic regression over ``features`` features as ``dest/model.tar.gz`` (model.onnx +
    signature.json), the small model of the router and async benchmarks."""
    import io
    import tarfile

    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, features)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = LogisticRegression().fit(x, y)
    onx = to_onnx(model, x[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    signature = {"format": 1, "framework": "sklearn", "task": "binary_classification", "classes": [0, 1]}
    archive = dest / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (
            ("model.onnx", onx.SerializeToString()),
            ("signature.json", json.dumps(signature).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive

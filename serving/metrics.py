"""Prometheus metrics of the model server, aggregated across gunicorn workers.

Each worker process owns one small memory-mapped file of float64 slots in the metrics directory
(``worker-<pid>.bin``) and is its only writer, so recording a request is a handful of array
increments with no lock and no system call. ``/metrics`` in any worker sums every file (files of
exited workers keep their counts: counters never go down) and renders the Prometheus text format
through ``prometheus_client``'s metric families. Without a directory (in-process use) the slots live
in an anonymous array.

Series: ``selfmaker_requests_total{path,status}``, ``selfmaker_request_errors_total{status}``
(/invocations answered >= 400), ``selfmaker_model_latency_seconds`` (time in the model handler) and
``selfmaker_overhead_latency_seconds`` (the rest of the request: HTTP, decode/encode of the default
handler) histograms, and ``selfmaker_batch_size`` (invocations that arrived together and were answered
by one batch call, see ``serving.http.fastpath.PendingInvocation``).
"""

from __future__ import annotations

import bisect
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

PATHS = ("/invocations", "/ping", "/execution-parameters", "/metrics", "other")
STATUSES = (200, 400, 401, 403, 404, 405, 406, 408, 409, 413, 415, 422, 424, 429, 500, 502, 503, 504)
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)

_N_STATUS = len(STATUSES) + 1  # + "other"
_REQ = 0
_ERR = _REQ + len(PATHS) * _N_STATUS
_HIST_LEN = len(LATENCY_BUCKETS) + 1 + 2  # buckets incl. +Inf, sum, count
_MODEL = _ERR + _N_STATUS
_OVERHEAD = _MODEL + _HIST_LEN
_BATCH = _OVERHEAD + _HIST_LEN
_MODEL_SUM = _MODEL + _HIST_LEN - 2  # then the count
_OVERHEAD_SUM = _OVERHEAD + _HIST_LEN - 2
_BATCH_LEN = len(BATCH_BUCKETS) + 1 + 2
N_SLOTS = _BATCH + _BATCH_LEN

_PATH_INDEX = {path: i for i, path in enumerate(PATHS)}
_STATUS_INDEX = {status: i for i, status in enumerate(STATUSES)}


def _status_label(index: int) -> str:
    return str(STATUSES[index]) if index < len(STATUSES) else "other"


class Metrics:
    """Request counters and latency histograms of one worker; :meth:`render` sums all workers."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"worker-{os.getpid()}.bin"
            with open(path, "wb+") as handle:
                handle.truncate(N_SLOTS * 8)
                self._map: mmap.mmap | bytearray = mmap.mmap(handle.fileno(), N_SLOTS * 8)
        else:
            self._map = bytearray(N_SLOTS * 8)
        # a memoryview of doubles: item updates are plain C stores, far cheaper than numpy scalars
        self._slots = memoryview(self._map).cast("d")
        # uncontended with sync workers; keeps read-modify-write exact with gthread workers
        self._lock = threading.Lock()

    def observe(self, path: str, status: int, total_seconds: float, model_seconds: float | None) -> None:
        """Record one request (``model_seconds`` None when no model work happened)."""
        slots = self._slots
        status_index = _STATUS_INDEX.get(status, len(STATUSES))
        with self._lock:
            slots[_REQ + _PATH_INDEX.get(path, len(PATHS) - 1) * _N_STATUS + status_index] += 1
            if status >= 400 and path == "/invocations":
                slots[_ERR + status_index] += 1
            if model_seconds is not None:  # both latency histograms, inline (once per invocation)
                overhead = total_seconds - model_seconds if total_seconds > model_seconds else 0.0
                slots[_MODEL + bisect.bisect_left(LATENCY_BUCKETS, model_seconds)] += 1
                slots[_MODEL_SUM] += model_seconds
                slots[_MODEL_SUM + 1] += 1
                slots[_OVERHEAD + bisect.bisect_left(LATENCY_BUCKETS, overhead)] += 1
                slots[_OVERHEAD_SUM] += overhead
                slots[_OVERHEAD_SUM + 1] += 1

    def observe_batch(self, size: int) -> None:
        """Record ``size`` invocations answered by one batch call."""
        with self._lock:
            self._hist(_BATCH, float(size), BATCH_BUCKETS)

    def _hist(self, base: int, value: float, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        slots = self._slots
        length = len(buckets) + 3
        slots[base + bisect.bisect_left(buckets, value)] += 1
        slots[base + length - 2] += value
        slots[base + length - 1] += 1

    def totals(self) -> np.ndarray:
        """Slots summed over every worker file (or this process's slots without a directory)."""
        if self.directory is None:
            return np.array(self._slots, dtype=np.float64)
        total = np.zeros(N_SLOTS, dtype=np.float64)
        for path in self.directory.glob("worker-*.bin"):
            try:
                data = np.fromfile(path, dtype=np.float64)
            except OSError:
                continue
            if data.shape == (N_SLOTS,):
                total += data
        return total

    def render(self) -> tuple[bytes, str]:
        """Prometheus text exposition of :meth:`totals` and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

        totals = self.totals()

        class _Collector:
            def collect(self) -> Iterator[Metric]:
                requests = CounterMetricFamily(
                    "selfmaker_requests", "HTTP requests by path and status", labels=["path", "status"]
                )
                for p, path in enumerate(PATHS):
                    for s in range(_N_STATUS):
                        value = totals[_REQ + p * _N_STATUS + s]
                        if value:
                            requests.add_metric([path, _status_label(s)], value)
                yield requests
                errors = CounterMetricFamily(
                    "selfmaker_request_errors", "Invocations answered with an error status", labels=["status"]
                )
                for s in range(_N_STATUS):
                    if totals[_ERR + s]:
                        errors.add_metric([_status_label(s)], totals[_ERR + s])
                yield errors
                for base, buckets, name, doc in (
                    (
                        _MODEL,
                        LATENCY_BUCKETS,
                        "selfmaker_model_latency_seconds",
                        "Time spent in the model handler",
                    ),
                    (
                        _OVERHEAD,
                        LATENCY_BUCKETS,
                        "selfmaker_overhead_latency_seconds",
                        "Request time outside the model handler",
                    ),
                    (
                        _BATCH,
                        BATCH_BUCKETS,
                        "selfmaker_batch_size",
                        "Invocations answered together by one batch call",
                    ),
                ):
                    counts = np.cumsum(totals[base : base + len(buckets) + 1])
                    bounds = [repr(b) for b in buckets] + ["+Inf"]
                    histogram = HistogramMetricFamily(name, doc)
                    histogram.add_metric(
                        [],
                        list(zip(bounds, counts.tolist(), strict=True)),
                        sum_value=totals[base + len(buckets) + 1],
                    )
                    yield histogram

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector())
        return generate_latest(registry), CONTENT_TYPE_LATEST

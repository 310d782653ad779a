"""Prometheus metrics of the model server, aggregated across gunicorn workers.

The entry point sets ``PROMETHEUS_MULTIPROC_DIR`` (before ``prometheus_client`` is first imported) so
each worker writes its samples to memory-mapped files there and ``/metrics`` in any worker sums them
all. Without that directory (in-process use, tests) a private registry is used.

Series: ``selfmaker_requests_total{path,status}``, ``selfmaker_request_errors_total{status}``,
``selfmaker_model_latency_seconds`` (handler: decode+predict+encode for hooks, ORT run for the
default handler), ``selfmaker_overhead_latency_seconds`` (everything else in the request).
"""

from __future__ import annotations

import os
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class Metrics:
    """Counters and latency histograms; ``render()`` gives the Prometheus text exposition."""

    def __init__(self, multiproc_dir: str | None = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.multiproc_dir = multiproc_dir
        # in multiprocess mode the samples live in files; the registry only holds the collectors
        self._own_registry = CollectorRegistry(auto_describe=True)
        registry = self._own_registry
        self.requests = Counter(
            "selfmaker_requests", "HTTP requests by path and status", ["path", "status"], registry=registry
        )
        self.errors = Counter(
            "selfmaker_request_errors", "Invocations answered with an error status", ["status"], registry=registry
        )
        self.model_latency = Histogram(
            "selfmaker_model_latency_seconds", "Time spent in the model handler", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.overhead_latency = Histogram(
            "selfmaker_overhead_latency_seconds",
            "Request time outside the model handler (HTTP, decode/encode for the default handler)",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, path: str, status: int, total_seconds: float, model_seconds: float | None) -> None:
        """Record one request (model_seconds None when no model work happened)."""
        key = (path, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(path, str(status)), self.errors.labels(str(status)) if status >= 400 else None)
            if len(self._children) < 256:  # bounded: paths are the app's own routes
                self._children[key] = children
        children[0].inc()
        if children[1] is not None and path == "/invocations":
            children[1].inc()
        if model_seconds is not None:
            self.model_latency.observe(model_seconds)
            self.overhead_latency.observe(max(0.0, total_seconds - model_seconds))

    def render(self) -> tuple[bytes, str]:
        """Exposition text and its content type (summed across workers in multiprocess mode)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiproc_dir and os.path.isdir(self.multiproc_dir):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self._own_registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int, multiproc_dir: str | None) -> None:
    """Tell prometheus_client a worker exited (called from gunicorn's ``child_exit``)."""
    if multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, multiproc_dir)

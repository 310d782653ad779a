"""Observability of serverless variants, shadow variants, data capture and deployments.

* :func:`render_metrics` — Prometheus text for ``GET /metrics`` of ``selfmaker up``. It also appends the
  text of every ``platform.extensions`` value that has a ``metrics() -> str`` method, so other extensions
  can publish metrics without registering a second ``/metrics`` route.
* :func:`publish_loop` — every couple of seconds, writes the same numbers into each endpoint's record
  (``_Metrics``, hidden from DescribeEndpoint) so ``selfmaker status`` — a separate process that reads the
  state store — can print them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfmaker.platform import Platform

log = logging.getLogger(__name__)

METRICS_KEY = "_Metrics"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def collect(platform: Platform) -> dict[str, dict[str, Any]]:
    """``{endpoint: {"Serverless": {...}, "Shadow": {...}, "Deployment": {...}}}`` of live endpoints."""
    from selfmaker.guardrails_hooks import snapshots as deployment_snapshots
    from selfmaker.serverless.integration import snapshots as serverless_snapshots
    from selfmaker.shadow_hooks import snapshots as shadow_snapshots

    out: dict[str, dict[str, Any]] = {}
    for key, data in (
        ("Serverless", serverless_snapshots(platform)),
        ("Shadow", shadow_snapshots(platform)),
        ("Deployment", deployment_snapshots(platform)),
    ):
        for endpoint, value in data.items():
            out.setdefault(endpoint, {})[key] = value
    return out


def render_metrics(platform: Platform) -> str:
    """Prometheus exposition text."""
    lines: list[str] = []
    data = collect(platform)

    def family(
        name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float | int | None]]
    ) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            lines.append(f"{name}{{{text}}} {value}")

    serverless = [(ep, v, s) for ep, d in data.items() for v, s in (d.get("Serverless") or {}).items()]
    for metric, kind, help_ in (
        ("instances", "gauge", "Running model servers of a serverless variant."),
        ("in_flight", "gauge", "Requests in flight on a serverless variant."),
        ("max_concurrency", "gauge", "MaxConcurrency of a serverless variant."),
        ("memory_mb", "gauge", "MemorySizeInMB (memory limit of each model server) of a serverless variant."),
        ("invocations", "counter", "Requests served by a serverless variant."),
        ("throttled", "counter", "Requests refused with ThrottlingException (MaxConcurrency reached)."),
        ("cold_starts", "counter", "Cold starts of a serverless variant."),
        ("cold_start_failures", "counter", "Model servers of a serverless variant that failed to start."),
        ("scaled_to_zero", "counter", "Times a serverless variant scaled to zero instances."),
        ("last_cold_start_seconds", "gauge", "Seconds from launch to a ready model server, last cold start."),
        (
            "last_first_answer_seconds",
            "gauge",
            "Seconds from a cold request's arrival to its answer, last cold start.",
        ),
    ):
        suffix = "_total" if kind == "counter" else ""
        family(
            f"selfmaker_serverless_{metric}{suffix}",
            kind,
            help_,
            [({"endpoint": ep, "variant": v}, s.get(metric)) for ep, v, s in serverless],
        )

    shadows = [(ep, v, s) for ep, d in data.items() for v, s in (d.get("Shadow") or {}).items()]
    for metric, kind, help_ in (
        ("requests", "counter", "Copies of production requests sent to a shadow variant."),
        ("errors", "counter", "Shadow copies answered non-2xx or not at all."),
        ("dropped", "counter", "Shadow copies dropped because too many were in flight."),
        ("compared", "counter", "Shadow answers compared with the production answer."),
        ("mismatches", "counter", "Shadow answers that differ from the production answer."),
        ("latency_sum_seconds", "counter", "Total latency of shadow copies."),
        ("latency_count", "counter", "Shadow copies timed."),
        ("latency_p50_seconds", "gauge", "Median latency of the last 1000 shadow copies."),
        ("latency_p99_seconds", "gauge", "99th percentile latency of the last 1000 shadow copies."),
    ):
        name = metric if kind == "gauge" or metric.endswith(("_seconds", "_count")) else f"{metric}_total"
        family(
            f"selfmaker_shadow_{name}",
            kind,
            help_,
            [({"endpoint": ep, "variant": v}, s.get(metric)) for ep, v, s in shadows],
        )

    deployments = [(ep, d["Deployment"]) for ep, d in data.items() if d.get("Deployment")]
    family(
        "selfmaker_deployment_new_fleet_traffic_share",
        "gauge",
        "Share of traffic on the new fleet of a blue/green deployment in progress.",
        [({"endpoint": ep}, d.get("new_fraction")) for ep, d in deployments],
    )
    family(
        "selfmaker_deployment_fallbacks_total",
        "counter",
        "New-fleet failures re-sent to the old fleet during a deployment.",
        [({"endpoint": ep}, d.get("fallbacks")) for ep, d in deployments],
    )
    family(
        "selfmaker_deployment_rollbacks_total",
        "counter",
        "Deployments rolled back by an alarm or timeout.",
        [({"endpoint": ep}, d.get("rollbacks")) for ep, d in deployments],
    )

    capture = platform.extensions.get("capture")
    if capture is not None:
        stats = capture.stats
        for metric, help_ in (
            ("submitted", "Capture records queued."),
            ("written", "Capture records written."),
            ("dropped", "Capture records dropped (queue full)."),
            ("failed", "Capture records lost to write errors."),
            ("objects", "Capture files written."),
        ):
            family(f"selfmaker_capture_{metric}_total", "counter", help_, [({}, getattr(stats, metric))])
    for key, value in platform.extensions.items():
        metrics = getattr(value, "metrics", None)
        if callable(metrics):
            try:
                text = metrics()
            except Exception:  # noqa: BLE001 - one extension must not break /metrics
                log.exception("metrics of extension %s failed", key)
                continue
            if isinstance(text, str) and text:
                lines.append(text.rstrip("\n"))
    return "\n".join(lines) + "\n"


def publish(platform: Platform, data: dict[str, dict[str, Any]]) -> None:
    """Write ``data`` (from :func:`collect`) into the endpoint records (for ``selfmaker status``)."""
    for endpoint, metrics in data.items():
        platform.store.update("endpoint", endpoint, merge={METRICS_KEY: metrics}, touch=False)


async def publish_loop(platform: Platform, interval: float = 2.0) -> None:
    """Collect (on the event loop) and publish (in a thread) every ``interval`` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(publish, platform, collect(platform))
        except Exception:  # noqa: BLE001 - status numbers are best effort
            log.exception("publishing endpoint metrics failed")


def status_lines(metrics: dict[str, Any] | None, indent: str = "    ") -> list[str]:
    """Lines for ``selfmaker status`` from an endpoint's published ``_Metrics``."""
    if not metrics:
        return []

    def seconds(value: Any) -> str:
        return f"{value:.3f}s" if isinstance(value, (int, float)) else "-"

    lines: list[str] = []
    for variant, s in (metrics.get("Serverless") or {}).items():
        lines.append(
            f"{indent}serverless {variant}: instances={s.get('instances')} in_flight={s.get('in_flight')}/"
            f"{s.get('max_concurrency')} memory={s.get('memory_mb')}MB invocations={s.get('invocations')} "
            f"throttled={s.get('throttled')} cold_starts={s.get('cold_starts')} "
            f"last_cold_start={seconds(s.get('last_first_answer_seconds'))} "
            f"scaled_to_zero={s.get('scaled_to_zero')}"
        )
    for variant, s in (metrics.get("Shadow") or {}).items():
        lines.append(
            f"{indent}shadow {variant}: copies={s.get('requests')} errors={s.get('errors')} "
            f"dropped={s.get('dropped')} mismatches={s.get('mismatches')}/{s.get('compared')} "
            f"p50={seconds(s.get('latency_p50_seconds'))} p99={seconds(s.get('latency_p99_seconds'))}"
        )
    deployment = metrics.get("Deployment")
    if deployment:
        state = (
            f"in progress ({deployment.get('status')}, new fleet {deployment.get('new_fraction'):.0%})"
            if deployment.get("in_progress") and deployment.get("new_fraction") is not None
            else deployment.get("last_outcome") or "-"
        )
        lines.append(
            f"{indent}deployment: {state} fallbacks={deployment.get('fallbacks')} "
            f"rollbacks={deployment.get('rollbacks')} completed={deployment.get('completed')}"
        )
    return lines

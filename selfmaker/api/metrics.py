"""``GET /metrics`` and the numbers ``selfmaker status`` prints, gathered from ``@metrics_source`` hooks.

Every feature with numbers registers a source (:func:`selfmaker.api.registry.metrics_source`) returning a
:class:`Metrics`: Prometheus lines for ``/metrics`` (:func:`family` writes one metric family) and, under
its ``key``, values per endpoint. :func:`publish_loop` writes those values every couple of seconds into
each endpoint's record (``_Metrics``, hidden from DescribeEndpoint) so that ``selfmaker status`` — a
separate process that reads the state store — can print them (:func:`status_lines`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from selfmaker.services import Services

log = logging.getLogger(__name__)

METRICS_KEY = "_Metrics"


@dataclass
class Metrics:
    """The numbers of one source."""

    #: name of the per-endpoint values in the published ``_Metrics`` ("Serverless", "Shadow" …)
    key: str
    #: endpoint name -> value (what ``selfmaker status`` prints)
    per_endpoint: dict[str, Any] = field(default_factory=dict)
    #: Prometheus exposition lines
    lines: list[str] = field(default_factory=list)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def family(
    lines: list[str],
    name: str,
    kind: str,
    help_: str,
    samples: Iterable[tuple[dict[str, str], float | int | None]],
) -> None:
    """Append one Prometheus metric family (samples whose value is None are left out)."""
    lines.append(f"# HELP {name} {help_}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        if value is None:
            continue
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        lines.append(f"{name}{{{text}}} {value}")


def gather(platform: Services) -> list[Metrics]:
    """The numbers of every registered source (a failing source is logged and left out)."""
    found: list[Metrics] = []
    for source in platform.registry.metrics_sources:
        try:
            found.append(source(platform))
        except Exception:  # noqa: BLE001 - one feature must not break /metrics
            log.exception("metrics source %s failed", getattr(source, "__name__", source))
    return found


def render_metrics(platform: Services) -> str:
    """Prometheus exposition text."""
    lines: list[str] = []
    for metrics in gather(platform):
        lines.extend(metrics.lines)
    return "\n".join(lines) + "\n"


def collect(platform: Services) -> dict[str, dict[str, Any]]:
    """``{endpoint: {key: value}}`` of every source, for the endpoint records."""
    out: dict[str, dict[str, Any]] = {}
    for metrics in gather(platform):
        for endpoint, value in metrics.per_endpoint.items():
            out.setdefault(endpoint, {})[metrics.key] = value
    return out


def publish(platform: Services, data: dict[str, dict[str, Any]]) -> None:
    """Write ``data`` (from :func:`collect`) into the endpoint records (for ``selfmaker status``)."""
    for endpoint, metrics in data.items():
        platform.store.update("endpoint", endpoint, merge={METRICS_KEY: metrics}, touch=False)


async def publish_loop(platform: Services, interval: float = 2.0) -> None:
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

"""``GET /metrics`` and the numbers ``selfmaker status`` prints, gathered from ``@metrics_source`` hooks.

Every feature with numbers registers a source (:func:`selfmaker.api.registry.metrics_source`) returning a
:class:`Metrics`: Prometheus lines for ``/metrics`` (:func:`family` writes one counter or gauge family,
:func:`histogram` one histogram family) and, under its ``key``, values per endpoint. :func:`publish_loop`
writes those values every couple of seconds into each endpoint's record (``_Metrics``, hidden from
DescribeEndpoint) so that ``selfmaker status`` — a separate process that reads the state store — can print
them (:func:`status_lines`).

Names follow Prometheus' conventions (https://prometheus.io/docs/practices/naming/, listed in
docs/observability.md): the prefix ``selfmaker_``, base units in the name (``_seconds``, ``_bytes``,
``_ratio``), counters end in ``_total``, latencies are histograms, and labels are ``endpoint``, ``variant``,
``instance_id`` (not ``instance``: Prometheus sets ``instance`` to the scraped target itself).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from selfmaker.metricstore import LATENCY_BUCKETS

if TYPE_CHECKING:
    from selfmaker.services import Services

log = logging.getLogger(__name__)

METRICS_KEY = "_Metrics"
#: the Content-Type of ``GET /metrics``: Prometheus' text format 0.0.4
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    """The numbers of one source."""

    #: name of the per-endpoint values in the published ``_Metrics`` ("Serverless", "Shadow" …)
    key: str
    #: endpoint name -> value (what ``selfmaker status`` prints)
    per_endpoint: dict[str, Any] = field(default_factory=dict)
    #: Prometheus exposition lines
    lines: list[str] = field(default_factory=list)


class Buckets(NamedTuple):
    """A histogram's value: the upper bounds of its finite buckets, the count of observations in each bucket
    (not cumulative; one more than ``bounds``: the last holds what is above every bound) and their sum."""

    bounds: Sequence[float]
    counts: Sequence[int | float]
    sum: float


class Histogram:
    """Observations counted in fixed buckets, for :func:`histogram` (one bisect and three additions each);
    latencies (shadow copies, cold requests) by default in the bounds of the invocation histograms."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is >= it (Prometheus' ``le``)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def value(self) -> Buckets:
        """A copy of the counts, for :func:`histogram`."""
        return Buckets(self.bounds, list(self.counts), self.sum)


def _label(value: str) -> str:
    # the exposition format's three escapes
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float | int) -> str:
    if isinstance(value, int):  # bool too
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _sample(name: str, labels: dict[str, str], value: float | int) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
    return f"{name}{{{text}}} {_number(value)}"


def _header(lines: list[str], name: str, kind: str, help_: str) -> None:
    # HELP text escapes only backslash and line feed
    text = help_.replace("\\", "\\\\").replace("\n", "\\n")
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")


def family(
    lines: list[str],
    name: str,
    kind: str,
    help_: str,
    samples: Iterable[tuple[dict[str, str], float | int | None]],
) -> None:
    """Append one Prometheus counter or gauge family (samples whose value is None are left out).

    A counter's ``name`` ends in ``_total`` (its HELP and TYPE lines name it so, as prometheus_client
    writes them).
    """
    _header(lines, name, kind, help_)
    for labels, value in samples:
        if value is not None:
            lines.append(_sample(name, labels, value))


def histogram(
    lines: list[str],
    name: str,
    help_: str,
    samples: Iterable[tuple[dict[str, str], Buckets | None]],
) -> None:
    """Append one Prometheus histogram family: per labelled value, a cumulative ``name_bucket`` sample per
    bound (``le``) and ``+Inf``, then ``name_sum`` and ``name_count`` (values that are None are left out)."""
    _header(lines, name, "histogram", help_)
    for labels, value in samples:
        if value is None:
            continue
        if len(value.counts) != len(value.bounds) + 1:
            raise ValueError(f"{name}: {len(value.bounds)} bounds need {len(value.bounds) + 1} counts")
        cumulative = list(itertools.accumulate(value.counts))
        for bound, count in zip([*value.bounds, math.inf], cumulative, strict=True):
            lines.append(_sample(f"{name}_bucket", {**labels, "le": _number(float(bound))}, count))
        lines.append(_sample(f"{name}_sum", labels, value.sum))
        lines.append(_sample(f"{name}_count", labels, cumulative[-1]))


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

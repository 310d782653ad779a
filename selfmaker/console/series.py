"""The time series the console draws, in the one shape its charts take.

A series document is ``{"t": [epoch seconds …], "period": seconds, "variants": {variant: {"invocations":
[…], "errors4xx": […], "errors5xx": […], "p50": [ms …], "p99": [ms …]}}}``: every list as long as ``t``,
``None`` where nothing was measured (a gap in the chart). Invocation counts are per ``period`` (the page
divides by it for req/s).
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import orjson

from selfmaker.logfiles import endpoint_log_dir, instance_variant
from selfmaker.metricstore import (
    SAGEMAKER_NAMESPACE,
    TRAINING_NAMESPACE,
    UNITS,
    Aggregate,
    Datum,
    MetricStore,
    dims_of,
    statistic,
)
from selfmaker.services import Services

#: seconds of live traffic on the overview
OVERVIEW_SECONDS = 300
#: the endpoint page's windows: name → (seconds, period)
WINDOWS: dict[str, tuple[int, int]] = {
    "10m": (600, 1),
    "3h": (3 * 3600, 60),
    "1d": (24 * 3600, 300),
    "15d": (15 * 24 * 3600, 3600),
}
#: model-server log lines that tell of an error
_ERROR_LINE = re.compile(r"error|exception|traceback|critical", re.IGNORECASE)
#: log levels of the model server's JSON lines that the endpoint page lists
_ERROR_LEVELS = frozenset({"WARNING", "ERROR", "CRITICAL"})
#: error lines shown on an endpoint page
ERROR_LINES = 50
_TAIL_BYTES = 32 * 1024


def empty(period: int) -> dict[str, Any]:
    """A series document without points."""
    return {"t": [], "period": period, "variants": {}}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def live(platform: Services, endpoint: str, seconds: int) -> dict[str, Any]:
    """The last ``seconds`` (whole seconds, the current one left out) of ``endpoint``'s traffic, per second
    and variant, from the invocation recorder's ring (on the event loop)."""
    now = int(time.time())
    t = list(range(now - seconds, now))
    variants: dict[str, dict[str, list[Any]]] = {}
    for variant, points in platform.invocation_stats.recent(endpoint, seconds + 1).items():
        by_second = {p.timestamp: p for p in points}
        rows = [by_second.get(s) for s in t]
        variants[variant] = {
            "invocations": [p.invocations if p else 0 for p in rows],
            "errors4xx": [p.errors_4xx if p else 0 for p in rows],
            "errors5xx": [p.errors_5xx if p else 0 for p in rows],
            "p50": [_ms(p.model_p50) if p else None for p in rows],
            "p99": [_ms(p.model_p99) if p else None for p in rows],
        }
    return {"t": t, "period": 1, "variants": variants}


#: (key in the series document, metric, statistic) read from the metric store for the longer windows
_WINDOW_STATISTICS = (
    ("invocations", "Invocations", "Sum"),
    ("errors4xx", "Invocation4XXErrors", "Sum"),
    ("errors5xx", "Invocation5XXErrors", "Sum"),
    ("p50", "ModelLatency", "p50"),
    ("p99", "ModelLatency", "p99"),
)


def _stored(
    store: MetricStore,
    endpoint: str,
    variants: list[str],
    t: list[int],
    period: int,
    live_data: dict[tuple[str, str], list[Datum]],
) -> dict[str, dict[str, list[Any]]]:
    """Per variant, the statistics of :data:`_WINDOW_STATISTICS` per ``period`` over ``t`` (minute rollups
    in SQLite plus the live seconds not flushed yet; a thread's work)."""
    start, end = t[0], t[-1] + period
    out: dict[str, dict[str, list[Any]]] = {}
    for variant in variants:
        dims = dims_of({"EndpointName": endpoint, "VariantName": variant})
        found: dict[str, list[Any]] = {}
        by_metric: dict[str, dict[int, Aggregate]] = {}
        for key, metric, stat in _WINDOW_STATISTICS:
            if metric not in by_metric:
                live = live_data.get((variant, metric), [])
                by_metric[metric] = store.series(
                    SAGEMAKER_NAMESPACE, metric, dims, start, end, period, live=live
                )
            bounds = UNITS[metric][1]
            values = [by_metric[metric].get(s) for s in t]
            numbers = [None if v is None else statistic(v, stat, bounds) for v in values]
            if metric == "ModelLatency":  # µs → ms
                numbers = [None if n is None else round(n / 1000.0, 3) for n in numbers]
            elif stat == "Sum":  # no request in a period: 0 requests, not a gap
                numbers = [0 if n is None else n for n in numbers]
            found[key] = numbers
        out[variant] = found
    return out


async def window(platform: Services, endpoint: str, name: str, variants: list[str]) -> dict[str, Any]:
    """``endpoint``'s traffic over the window ``name`` of :data:`WINDOWS`, per variant: the 1-second ring
    for the shortest, the metric store (minute rollups) for the others."""
    seconds, period = WINDOWS[name]
    if period == 1:
        return live(platform, endpoint, seconds)
    now = int(time.time())
    first = (now - seconds) // period * period + period
    t = list(range(first, now + 1, period))
    # taken on the event loop (the thread that feeds the ring): the minutes not in the database yet, rolled up
    store = platform.metrics
    live_data = {
        (variant, metric): store.pending(
            now + 1, metric, dims_of({"EndpointName": endpoint, "VariantName": variant})
        )
        for variant in variants
        for metric in {metric for _, metric, _ in _WINDOW_STATISTICS}
    }
    found = await asyncio.to_thread(_stored, store, endpoint, variants, t, period, live_data)
    return {"t": t, "period": period, "variants": found}


def backlog(platform: Services, endpoint: str, seconds: int = OVERVIEW_SECONDS) -> dict[str, Any]:
    """An async endpoint's ApproximateBacklogSize, one sample a second over the last ``seconds``."""
    now = int(time.time())
    values: dict[int, float] = {}
    dims = dims_of({"EndpointName": endpoint})
    for d in platform.metrics.live(now - seconds, now, "ApproximateBacklogSize", dims):
        if d.value.n:
            values[d.timestamp] = d.value.total / d.value.n
    t = list(range(now - seconds, now))
    return {"t": t, "v": [values.get(s) for s in t]}


def _training_rows(store: MetricStore, job: str, metrics: list[str], start: int, end: int) -> dict[str, Any]:
    dims = dims_of({"TrainingJobName": job})
    curves: dict[str, dict[str, list[Any]]] = {}
    for metric in metrics:
        rows = sorted(store.rows(TRAINING_NAMESPACE, metric, dims, start, end), key=lambda d: d.timestamp)
        curves[metric] = {
            "t": [d.timestamp for d in rows],
            "v": [d.value.total / d.value.n if d.value.n else None for d in rows],
        }
    return curves


async def training_curves(platform: Services, job: str, described: dict[str, Any]) -> dict[str, Any]:
    """Every metric training job ``job`` logged, as ``{metric: {"t": [...], "v": [...]}}`` (the values of
    one second averaged), from the metric store (namespace ``/aws/sagemaker/TrainingJobs``)."""
    metrics = [str(m.get("MetricName")) for m in described.get("FinalMetricDataList") or []]
    created = float(described.get("CreationTime") or 0)
    ended = float(described.get("TrainingEndTime") or time.time())
    curves = await asyncio.to_thread(
        _training_rows, platform.metrics, job, metrics, int(created) - 1, int(ended) + 2
    )
    for point in described.get("FinalMetricDataList") or []:
        curve = curves.get(str(point.get("MetricName")))
        if curve is not None and not curve["t"]:  # not in the store (a job older than it): the last value
            curve["t"].append(point.get("Timestamp"))
            curve["v"].append(point.get("Value"))
    return curves


def recent_errors(platform: Services, endpoint: str) -> list[dict[str, str]]:
    """The last error lines of ``endpoint``'s model servers: ``{"instance", "variant", "line"}``."""
    directory = endpoint_log_dir(platform.settings.logs_dir, endpoint)
    if directory is None:
        return []
    found: list[dict[str, str]] = []
    for path in sorted(directory.glob("*.log")):
        try:
            with open(path, "rb") as handle:
                handle.seek(0, 2)
                size = handle.tell()
                handle.seek(max(0, size - _TAIL_BYTES))
                lines = handle.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        if size > _TAIL_BYTES:
            lines = lines[1:]
        instance = path.stem
        variant = instance_variant(endpoint, instance)
        for line in lines:
            shown = error_line(line)
            if shown is not None:
                found.append({"instance": instance, "variant": variant, "line": shown[:2000]})
    return found[-ERROR_LINES:]


def error_line(line: str) -> str | None:
    """``line`` of a model server's log as the console shows it when it tells of an error, else None: the
    model server's JSON lines at WARNING and above or answering a 4xx/5xx (``ts level msg``), other lines
    that mention an error, an exception or a traceback (as they are)."""
    if line.startswith("{"):
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError:
            doc = None
        if isinstance(doc, dict):
            status = doc.get("status")
            failed = isinstance(status, int) and status >= 400
            if str(doc.get("level", "")).upper() in _ERROR_LEVELS or failed:
                return f"{doc.get('ts', '')} {doc.get('level', '')} {doc.get('msg', '')}".strip()
            return None
    return line if _ERROR_LINE.search(line) else None

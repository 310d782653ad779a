"""The time series the console draws, in the one shape its charts take.

A series document is ``{"t": [epoch seconds …], "period": seconds, "variants": {variant: {"invocations":
[…], "errors4xx": […], "errors5xx": […], "p50": [ms …], "p99": [ms …]}}}``: every list as long as ``t``,
``None`` where nothing was measured (a gap in the chart). Invocation counts are per ``period`` (the page
divides by it for req/s).
"""

from __future__ import annotations

import re
from typing import Any

from selfmaker.logfiles import endpoint_log_dir, instance_variant
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
#: error lines shown on an endpoint page
ERROR_LINES = 50
_TAIL_BYTES = 32 * 1024


def empty(period: int) -> dict[str, Any]:
    """A series document without points."""
    return {"t": [], "period": period, "variants": {}}


def live(platform: Services, endpoint: str, seconds: int) -> dict[str, Any]:
    """The last ``seconds`` of ``endpoint``'s traffic, per second and variant."""
    return empty(1)


def window(platform: Services, endpoint: str, name: str) -> dict[str, Any]:
    """``endpoint``'s traffic over the window ``name`` of :data:`WINDOWS`, per variant."""
    seconds, period = WINDOWS[name]
    if period == 1:
        return live(platform, endpoint, seconds)
    return empty(period)


def backlog(platform: Services, endpoint: str) -> dict[str, Any] | None:
    """An async endpoint's ApproximateBacklogSize over the last minutes (None: not async)."""
    return None


def training_curves(
    platform: Services, job: str, described: dict[str, Any]
) -> dict[str, dict[str, list[Any]]]:
    """Every metric of training job ``job`` as ``{metric: {"t": [...], "v": [...]}}``."""
    curves: dict[str, dict[str, list[Any]]] = {}
    for point in described.get("FinalMetricDataList") or []:
        curve = curves.setdefault(str(point.get("MetricName")), {"t": [], "v": []})
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
        found.extend(
            {"instance": instance, "variant": variant, "line": line[:2000]}
            for line in lines
            if _ERROR_LINE.search(line)
        )
    return found[-ERROR_LINES:]

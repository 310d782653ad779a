"""Invocation statistics of endpoints, as SageMaker publishes them to CloudWatch (namespace ``AWS/SageMaker``,
dimensions ``EndpointName`` + ``VariantName``).

One :class:`InvocationStats` per platform (``platform.invocation_stats``). The HTTP layer calls
:meth:`InvocationStats.record` once per runtime request, answered or refused, with the time the model
server took and the platform's own time around it; everything runs on the event loop thread, so recording
is a dict lookup, a few additions and two bisections, without locks or allocation.

SageMaker's definitions:

* ``Invocations``: InvokeEndpoint requests sent to the variant (errors included);
* ``Invocation4XXErrors`` / ``Invocation5XXErrors``: requests answered with a 4xx / 5xx — a model's own
  4xx/5xx answer (ModelError), and the platform's refusals (validation, throttling: 4xx; no instance,
  time-outs, unreachable model servers: 5xx); ``Average`` is the error rate (each request is a 0 or 1 sample);
* ``ModelLatency``: µs the model server took to answer (the request to ``/invocations``);
  ``OverheadLatency``: µs of the rest (reading the request, routing, writing the answer);
* ``InvocationsPerInstance``: invocations divided by the variant's instance count at that second;
* ``ModelSetupTime``: µs a serverless variant took to start a model server (cold start);
* gauges sampled each second by :meth:`InvocationStats.sample` (async endpoints' ``ApproximateBacklogSize``,
  serverless variants' ``ServerlessConcurrentExecutions``).

Two views of the same numbers:

* **cumulative** counters and latency histograms per (endpoint, variant) (:meth:`InvocationStats.counters`;
  Prometheus ``_total`` counters and ``_seconds`` histograms with the bounds of
  :data:`selfmaker.metricstore.LATENCY_BUCKETS`);
* a **1-second ring** of the last :data:`selfmaker.metricstore.LIVE_SECONDS` seconds per variant (count,
  4xx, 5xx, sum/min/max and bucket counts of both latencies), from which :meth:`InvocationStats.recent`
  answers the console's live views and :meth:`InvocationStats.seconds` feeds the metric store
  (:class:`selfmaker.metricstore.MetricStore`: minute rollups, GetMetricStatistics).
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from selfmaker.metricstore import (
    LATENCY_BUCKETS,
    LIVE_SECONDS,
    SAGEMAKER_NAMESPACE,
    Aggregate,
    Datum,
    Dims,
    percentile,
)

log = logging.getLogger(__name__)

#: the metrics made from the ring of each variant (the others are sampled gauges)
_INVOCATION_METRICS = frozenset(
    {
        "Invocations",
        "Invocation4XXErrors",
        "Invocation5XXErrors",
        "ModelLatency",
        "OverheadLatency",
        "InvocationsPerInstance",
    }
)
#: status classes :meth:`InvocationStats.record` takes
OK, CLIENT_ERROR, SERVER_ERROR = 2, 4, 5
_NBUCKETS = len(LATENCY_BUCKETS) + 1
_SECONDS_TO_US = 1e6


def status_class(status: int) -> int:
    """The class :meth:`InvocationStats.record` takes for an HTTP status (0, no answer at all: 5xx)."""
    if 200 <= status < 400:
        return OK
    return CLIENT_ERROR if 400 <= status < 500 else SERVER_ERROR


class Latency:
    """Samples of a latency (seconds): count, sum, min, max and per-bucket counts (not cumulative: bucket
    ``i`` counts samples ``<= LATENCY_BUCKETS[i]`` and above the previous bound; the last one +Inf)."""

    __slots__ = ("n", "total", "low", "high", "buckets")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        self.buckets = [0] * _NBUCKETS

    def add(self, seconds: float) -> None:
        self.add_at(seconds, bisect.bisect_left(LATENCY_BUCKETS, seconds))

    def add_at(self, seconds: float, index: int) -> None:
        """One sample whose bucket (``bisect_left(LATENCY_BUCKETS, seconds)``) is known."""
        self.n += 1
        self.total += seconds
        if seconds < self.low:
            self.low = seconds
        if seconds > self.high:
            self.high = seconds
        self.buckets[index] += 1

    def merge(self, other: Latency) -> None:
        """Add ``other``'s samples."""
        if not other.n:
            return
        self.n += other.n
        self.total += other.total
        self.low = min(self.low, other.low)
        self.high = max(self.high, other.high)
        buckets = self.buckets
        for i, count in enumerate(other.buckets):
            buckets[i] += count

    def copy(self) -> Latency:
        out = Latency()
        out.merge(self)
        return out

    def reset(self) -> None:
        self.n = 0
        self.total = 0.0
        self.low = math.inf
        self.high = -math.inf
        buckets = self.buckets
        for i in range(_NBUCKETS):
            buckets[i] = 0

    def aggregate(self, scale: float = _SECONDS_TO_US) -> Aggregate:
        """These samples as an :class:`Aggregate` in µs (CloudWatch's unit of the latency metrics)."""
        return Aggregate(
            float(self.n), self.total * scale, self.low * scale, self.high * scale, list(self.buckets)
        )

    def quantile(self, q: float) -> float | None:
        """The ``q``-th percentile in seconds (from the buckets), None without samples."""
        return percentile(self.aggregate(1.0), q, LATENCY_BUCKETS)


class _Second:
    """One second of one variant in the ring."""

    __slots__ = ("second", "count", "errors_4xx", "errors_5xx", "model", "overhead", "instances")

    def __init__(self) -> None:
        self.second = -1
        self.count = 0
        self.errors_4xx = 0
        self.errors_5xx = 0
        self.model = Latency()
        self.overhead = Latency()
        self.instances = 0

    def reset(self, second: int) -> None:
        self.second = second
        self.count = self.errors_4xx = self.errors_5xx = 0
        self.model.reset()
        self.overhead.reset()
        self.instances = 0


@dataclass
class VariantCounters:
    """Cumulative figures of one (endpoint, variant) since the platform started (a snapshot:
    :meth:`InvocationStats.counters` makes them)."""

    endpoint: str
    #: None: requests refused before a variant was chosen (an unknown TargetVariant …)
    variant: str | None
    invocations: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    model_latency: Latency = field(default_factory=Latency)
    overhead_latency: Latency = field(default_factory=Latency)
    model_setup: Latency = field(default_factory=Latency)
    dims: Dims = ()

    def __post_init__(self) -> None:
        pairs = [("EndpointName", self.endpoint)]
        if self.variant is not None:
            pairs.append(("VariantName", self.variant))
        self.dims = tuple(sorted(pairs))

    def fold(self, slot: _Second) -> None:
        """Add one second of the ring."""
        self.invocations += slot.count
        self.errors_4xx += slot.errors_4xx
        self.errors_5xx += slot.errors_5xx
        self.model_latency.merge(slot.model)
        self.overhead_latency.merge(slot.overhead)


class _Variant:
    """One (endpoint, variant): its ring, and the totals of the seconds the ring has let go of (the request
    path updates only the second it falls in; a second is folded into the totals when its slot is reused)."""

    __slots__ = ("totals", "ring", "last", "dims")

    def __init__(self, endpoint: str, variant: str | None) -> None:
        self.totals = VariantCounters(endpoint, variant)
        self.dims = self.totals.dims
        #: the seconds of the ring, made on first use (an idle variant costs no memory for them)
        self.ring: list[_Second | None] = [None] * LIVE_SECONDS
        #: the last second with a request
        self.last = 0

    def snapshot(self) -> VariantCounters:
        """The totals with the ring's seconds added."""
        t = self.totals
        out = VariantCounters(
            t.endpoint,
            t.variant,
            t.invocations,
            t.errors_4xx,
            t.errors_5xx,
            t.model_latency.copy(),
            t.overhead_latency.copy(),
            t.model_setup.copy(),
        )
        for slot in self.ring:
            if slot is not None and slot.count:
                out.fold(slot)
        return out


@dataclass(frozen=True)
class SecondPoint:
    """One second of one variant, for the live views: requests, errors and model latency percentiles
    (seconds; None without answered requests)."""

    timestamp: int
    invocations: int
    errors_4xx: int
    errors_5xx: int
    model_p50: float | None
    model_p99: float | None
    model_average: float | None
    overhead_average: float | None


class _Gauge:
    """A sampled value's ring (one sample per second at most is kept: the last)."""

    __slots__ = ("seconds", "values")

    def __init__(self) -> None:
        self.seconds = [-1] * LIVE_SECONDS
        self.values = [0.0] * LIVE_SECONDS


class InvocationStats:
    """Invocation counters, latency histograms and the 1-second ring of every endpoint variant."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._variants: dict[tuple[str, str | None], _Variant] = {}
        self._gauges: dict[tuple[str, Dims], _Gauge] = {}
        #: called once a second by the platform to :meth:`sample` gauges (features add theirs at start-up:
        #: async endpoints' backlog, serverless variants' concurrency and cold starts)
        self.samplers: list[Callable[[InvocationStats], None]] = []

    def _variant(self, endpoint: str, variant: str | None) -> _Variant:
        key = (endpoint, variant)
        found = self._variants.get(key)
        if found is None:
            found = self._variants[key] = _Variant(endpoint, variant)
        return found

    # ---- recording (event loop thread) --------------------------------------------------------

    def record(
        self,
        endpoint: str,
        variant: str | None,
        status_class: int,
        model_seconds: float | None,
        overhead_seconds: float,
        instances: int = 0,
    ) -> None:
        """One runtime request of ``endpoint`` answered by (or refused for) ``variant`` (None: refused before
        a variant was chosen): its status class (:data:`OK`, :data:`CLIENT_ERROR`, :data:`SERVER_ERROR`),
        the model server's time (None when no model server was asked) and the platform's own time, in
        seconds; ``instances`` is the variant's instance count (for InvocationsPerInstance)."""
        state = self._variants.get((endpoint, variant))
        if state is None:
            state = self._variant(endpoint, variant)
        second = int(self._clock())
        slot = state.ring[second % LIVE_SECONDS]
        if slot is None:
            slot = state.ring[second % LIVE_SECONDS] = _Second()
        if slot.second != second:
            if slot.count:
                state.totals.fold(slot)
            slot.reset(second)
            state.last = second
        slot.count += 1
        if status_class == CLIENT_ERROR:
            slot.errors_4xx += 1
        elif status_class == SERVER_ERROR:
            slot.errors_5xx += 1
        if model_seconds is not None:
            slot.model.add_at(model_seconds, bisect.bisect_left(LATENCY_BUCKETS, model_seconds))
        slot.overhead.add_at(overhead_seconds, bisect.bisect_left(LATENCY_BUCKETS, overhead_seconds))
        if instances > slot.instances:
            slot.instances = instances

    def model_setup(self, endpoint: str, variant: str, seconds: float) -> None:
        """A model server of ``variant`` took ``seconds`` to start (a serverless cold start)."""
        state = self._variant(endpoint, variant)
        state.totals.model_setup.add(seconds)
        self.sample("ModelSetupTime", state.dims, seconds * _SECONDS_TO_US)

    def sample(self, metric: str, dims: Dims, value: float) -> None:
        """The value of a gauge (``ApproximateBacklogSize`` …) now; one sample per second is kept."""
        key = (metric, dims)
        gauge = self._gauges.get(key)
        if gauge is None:
            gauge = self._gauges[key] = _Gauge()
        second = int(self._clock())
        index = second % LIVE_SECONDS
        gauge.seconds[index] = second
        gauge.values[index] = float(value)

    def sample_all(self) -> None:
        """Run every sampler once (a failing one is logged and skipped)."""
        for sampler in list(self.samplers):
            try:
                sampler(self)
            except Exception:  # noqa: BLE001 - one feature's figures must not stop the others'
                log.exception("metric sampler %s failed", getattr(sampler, "__name__", sampler))

    def prune(self, live_endpoints: set[str]) -> None:
        """Drop the figures of endpoints that are gone (not in ``live_endpoints``) once their ring holds
        nothing newer than :data:`LIVE_SECONDS` (the metric store has it all by then)."""
        oldest = int(self._clock()) - LIVE_SECONDS - 60
        gone = {e for e, _ in self._variants if e not in live_endpoints}
        for endpoint in gone:
            if all(c.last < oldest for (e, _), c in self._variants.items() if e == endpoint):
                self.forget(endpoint)
        for key, gauge in list(self._gauges.items()):
            owner = dict(key[1]).get("EndpointName")
            if owner not in live_endpoints and max(gauge.seconds) < oldest:
                del self._gauges[key]

    def forget(self, endpoint: str) -> None:
        """Drop the figures of a deleted endpoint (what is already in the metric store stays there)."""
        for key in [k for k in self._variants if k[0] == endpoint]:
            del self._variants[key]
        for gkey in [k for k in self._gauges if ("EndpointName", endpoint) in k[1]]:
            del self._gauges[gkey]

    # ---- reading ------------------------------------------------------------------------------

    def counters(self) -> list[VariantCounters]:
        """The cumulative figures of every (endpoint, variant) seen since start (snapshots; read on the
        event loop)."""
        return [state.snapshot() for state in list(self._variants.values())]

    def recent(self, endpoint: str, seconds: int = 300) -> dict[str, list[SecondPoint]]:
        """The last ``seconds`` (at most :data:`LIVE_SECONDS`) of ``endpoint``, per variant, one point per
        second that had requests, oldest first — the console's live charts (request rate, errors, p50/p99)."""
        now = int(self._clock())
        start = now - min(max(1, seconds), LIVE_SECONDS) + 1
        out: dict[str, list[SecondPoint]] = {}
        for (name, variant), counters in list(self._variants.items()):
            if name != endpoint or variant is None:
                continue
            points = []
            for slot in self._slots(counters, start, now + 1):
                model = slot.model
                overhead = slot.overhead
                points.append(
                    SecondPoint(
                        timestamp=slot.second,
                        invocations=slot.count,
                        errors_4xx=slot.errors_4xx,
                        errors_5xx=slot.errors_5xx,
                        model_p50=model.quantile(50) if model.n else None,
                        model_p99=model.quantile(99) if model.n else None,
                        model_average=model.total / model.n if model.n else None,
                        overhead_average=overhead.total / overhead.n if overhead.n else None,
                    )
                )
            out[variant] = points
        return out

    def active(self, since: int) -> Iterator[tuple[str, str, Dims]]:
        """The series with data since ``since`` (the metric store's ListMetrics)."""
        for counters in list(self._variants.values()):
            if counters.last < since:
                continue
            names = ["Invocations", "Invocation4XXErrors", "Invocation5XXErrors", "OverheadLatency"]
            if counters.totals.variant is not None:
                names += ["InvocationsPerInstance", "ModelLatency"]
            for name in names:
                yield SAGEMAKER_NAMESPACE, name, counters.dims
        for (name, dims), gauge in list(self._gauges.items()):
            if max(gauge.seconds) >= since:
                yield SAGEMAKER_NAMESPACE, name, dims

    @staticmethod
    def _slots(counters: _Variant, start: int, end: int) -> Iterator[_Second]:
        ring = counters.ring
        for second in range(max(start, end - LIVE_SECONDS), end):
            slot = ring[second % LIVE_SECONDS]
            if slot is not None and slot.second == second and slot.count:
                yield slot

    def seconds(
        self, start: int, end: int, metric: str | None = None, dims: Dims | None = None
    ) -> Iterator[Datum]:
        """Per-second datums of every series in ``[start, end)``, or only of ``metric``/``dims`` (the metric
        store's live source)."""
        ns = SAGEMAKER_NAMESPACE

        def wanted(name: str) -> bool:
            return metric is None or metric == name

        for counters in list(self._variants.values()):
            if dims is not None and counters.dims != dims:
                continue
            if metric is not None and metric not in _INVOCATION_METRICS:
                break
            variant_dims = counters.dims
            for slot in self._slots(counters, start, end):
                t, count = slot.second, float(slot.count)
                if wanted("Invocations"):
                    yield Datum(ns, "Invocations", variant_dims, t, Aggregate(count, count, 1.0, 1.0))
                for name, errors in (
                    ("Invocation4XXErrors", slot.errors_4xx),
                    ("Invocation5XXErrors", slot.errors_5xx),
                ):
                    if wanted(name):
                        low = 0.0 if errors < slot.count else 1.0
                        high = 1.0 if errors else 0.0
                        yield Datum(ns, name, variant_dims, t, Aggregate(count, float(errors), low, high))
                if slot.model.n and wanted("ModelLatency"):
                    yield Datum(ns, "ModelLatency", variant_dims, t, slot.model.aggregate())
                if slot.overhead.n and wanted("OverheadLatency"):
                    yield Datum(ns, "OverheadLatency", variant_dims, t, slot.overhead.aggregate())
                if slot.instances and wanted("InvocationsPerInstance"):
                    per_instance = Aggregate.of(count / slot.instances)
                    yield Datum(ns, "InvocationsPerInstance", variant_dims, t, per_instance)
        for (name, gauge_dims), gauge in list(self._gauges.items()):
            if (metric is not None and name != metric) or (dims is not None and gauge_dims != dims):
                continue
            for second in range(max(start, end - LIVE_SECONDS), end):
                index = second % LIVE_SECONDS
                if gauge.seconds[index] == second:
                    yield Datum(ns, name, gauge_dims, second, Aggregate.of(gauge.values[index]))

"""Pure logic of the endpoint gateway: names, ALB weights, listener-rule priorities, rollout steps.

Everything here is a plain function of plain values (tested with hypothesis in tests/infra/test_endpoints.py);
the components in ``infra/components/endpoints/`` only turn its answers into resources.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: SageMaker's EndpointName / VariantName pattern (botocore sagemaker service-2.json).
_SAGEMAKER_NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
#: An ALB forward action takes at most this many target groups, each weighted 0..999.
MAX_TARGET_GROUPS = 5
MAX_ALB_WEIGHT = 999
#: Listener-rule priorities run 1..50000; each endpoint owns a block of BLOCK consecutive ones.
MAX_PRIORITY = 50000
BLOCK = 10
SLOTS = MAX_PRIORITY // BLOCK - 1
#: The two runtime paths of an endpoint behind the gateway (sagemaker-runtime's request URIs).
INVOKE_PATHS = ("/endpoints/{name}/invocations", "/endpoints/{name}/invocations-response-stream")
TARGET_VARIANT_HEADER = "X-Amzn-SageMaker-Target-Variant"
STRATEGIES = ("canary", "linear", "all-at-once")


def valid_sagemaker_name(name: str) -> bool:
    """Whether ``name`` is a valid SageMaker endpoint or variant name (1-63 chars, letters, digits, ``-``)."""
    return bool(_SAGEMAKER_NAME_RE.match(name))


def variant_names_problem(names: Sequence[str]) -> str | None:
    """What is wrong with an endpoint's variant names (none, repeated, not SageMaker names), or None."""
    if not names:
        return "at least one variant is needed"
    if len(set(names)) != len(names):
        return f"variant names repeat: {list(names)}"
    for name in names:
        if not valid_sagemaker_name(name):
            return f"{name!r} is not a valid variant name"
    return None


def invoke_paths(endpoint: str) -> list[str]:
    """The ALB path patterns of ``endpoint`` (no wildcard: names are matched exactly)."""
    if not valid_sagemaker_name(endpoint):
        raise ValueError(f"{endpoint!r} is not a valid endpoint name")
    return [p.format(name=endpoint) for p in INVOKE_PATHS]


def alb_weights(weights: Sequence[float]) -> list[int]:
    """SageMaker's variant weights (any non-negative floats) as ALB target-group weights (integers 0..999).

    The largest weight becomes 999 and the others are rounded in proportion; a positive weight never
    rounds down to 0 (that variant would silently get no traffic). The traffic share each group gets
    differs from the configured share by less than 0.5 % (see :func:`share_error`). Raises
    ``ValueError`` for more than five weights, a negative or non-finite weight, or all zeros.
    """
    if not weights:
        raise ValueError("at least one variant weight is needed")
    if len(weights) > MAX_TARGET_GROUPS:
        raise ValueError(
            f"an ALB forward action takes at most {MAX_TARGET_GROUPS} target groups, got {len(weights)}"
        )
    for w in weights:
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights must be finite and >= 0, got {w!r}")
    top = max(weights)
    if top <= 0:
        raise ValueError("at least one weight must be positive")
    return [0 if w == 0 else max(1, round(w / top * MAX_ALB_WEIGHT)) for w in weights]


def share_error(weights: Sequence[float], integers: Sequence[int]) -> float:
    """The largest absolute difference between configured and resulting traffic shares (0.004 = 0.4 %)."""
    total_w, total_i = math.fsum(weights), sum(integers)
    return max(abs(w / total_w - i / total_i) for w, i in zip(weights, integers, strict=True))


def _home_slot(name: str) -> int:
    return zlib.crc32(name.encode()) % SLOTS


def priority_blocks(endpoints: Iterable[str]) -> dict[str, int]:
    """The first listener-rule priority of each endpoint's block of :data:`BLOCK` priorities.

    An endpoint's block comes from a hash of its name alone, so adding or removing other endpoints
    leaves its rules where they are (ALB refuses two rules with one priority, so renumbering rules on
    every change would make updates fail half-way). Names whose hashes collide are placed by linear
    probing in name order — the only case where another endpoint can move a block. The result does
    not depend on the order of ``endpoints``.
    """
    names = sorted(set(endpoints))
    if len(names) > SLOTS:
        raise ValueError(f"at most {SLOTS} endpoints fit on one listener")
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for name in sorted(names, key=lambda n: (_home_slot(n), n)):
        slot = _home_slot(name)
        while slot in taken:
            slot = (slot + 1) % SLOTS
        taken[slot] = name
        out[name] = BLOCK * (slot + 1)
    return out


@dataclass(frozen=True)
class RulePriorities:
    """Priorities of one endpoint's rules: a header rule per variant ahead of the weighted rule."""

    header: Mapping[str, int]
    weighted: int


def rule_priorities(block: int, variants: Sequence[str]) -> RulePriorities:
    """Header rules at ``block + 1..``, the weighted rule last in the block (lower number = checked first)."""
    if len(variants) > BLOCK - 2:
        raise ValueError(f"at most {BLOCK - 2} variants per endpoint")
    return RulePriorities(
        header={v: block + 1 + i for i, v in enumerate(variants)},
        weighted=block + BLOCK - 1,
    )


def checkpoints(strategy: str, *, canary_percent: int = 10, linear_step_percent: int = 25) -> list[int]:
    """Instance-refresh checkpoint percentages of a rollout (the last is always 100; none for all-at-once).

    ``canary``: ``canary_percent`` of the instances first, then the rest; ``linear``: equal steps of
    ``linear_step_percent`` (SageMaker's CanarySize / LinearStepSize as a share of the fleet).
    """
    if strategy == "all-at-once":
        return []
    if strategy == "canary":
        if not 1 <= canary_percent <= 99:
            raise ValueError("canary_percent must be 1-99")
        return [canary_percent, 100]
    if strategy == "linear":
        if not 1 <= linear_step_percent <= 50:
            raise ValueError("linear_step_percent must be 1-50")
        steps = list(range(linear_step_percent, 100, linear_step_percent))
        return [*steps, 100]
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")


def dashboard_body(
    title: str, region: str, load_balancer: str, target_groups: Mapping[str, str]
) -> dict[str, object]:
    """A CloudWatch dashboard of one endpoint: per variant requests, p50/p99 latency, 4xx/5xx, healthy hosts.

    ``load_balancer`` and ``target_groups`` (variant → target group) are ARN suffixes, the dimension
    values of the ``AWS/ApplicationELB`` metrics.
    """

    def per_variant(metric: str, stat: str) -> list[list[object]]:
        return [
            [
                "AWS/ApplicationELB",
                metric,
                "LoadBalancer",
                load_balancer,
                "TargetGroup",
                tg,
                {"stat": stat, "label": f"{variant} {stat}"},
            ]
            for variant, tg in sorted(target_groups.items())
        ]

    def widget(i: int, name: str, metrics: list[list[object]]) -> dict[str, object]:
        return {
            "type": "metric",
            "x": (i % 2) * 12,
            "y": (i // 2) * 6,
            "width": 12,
            "height": 6,
            "properties": {
                "title": name,
                "region": region,
                "view": "timeSeries",
                "stacked": False,
                "period": 60,
                "metrics": metrics,
            },
        }

    panels = [
        ("Requests per variant", per_variant("RequestCount", "Sum")),
        (
            "Latency p50 / p99 (s)",
            per_variant("TargetResponseTime", "p50") + per_variant("TargetResponseTime", "p99"),
        ),
        (
            "Model errors (target 4xx / 5xx)",
            per_variant("HTTPCode_Target_4XX_Count", "Sum") + per_variant("HTTPCode_Target_5XX_Count", "Sum"),
        ),
        ("Healthy instances", per_variant("HealthyHostCount", "Minimum")),
    ]
    return {
        "widgets": [
            {
                "type": "text",
                "x": 0,
                "y": 0,
                "width": 24,
                "height": 1,
                "properties": {"markdown": f"# {title}"},
            }
        ]
        + [{**widget(i, name, metrics), "y": 1 + (i // 2) * 6} for i, (name, metrics) in enumerate(panels)]
    }


#: Lambda function names: 1-64 characters of [a-zA-Z0-9-_].
MAX_FUNCTION_NAME = 64


def function_name(prefix: str, endpoint: str, variant: str) -> str:
    """The Lambda function of a serverless variant: ``<prefix>-<endpoint>-<variant>``, shortened with a
    hash of the full name when longer than Lambda allows (the stack's prefix always stays, so one
    ``<prefix>-*`` pattern covers every function of the stack)."""
    full = f"{prefix}-{endpoint}-{variant}"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", full):
        raise ValueError(f"{full!r} is not a valid Lambda function name")
    if len(full) <= MAX_FUNCTION_NAME:
        return full
    digest = f"{zlib.crc32(full.encode()):08x}"
    head = full[: MAX_FUNCTION_NAME - len(digest) - 1].rstrip("-")
    if not head.startswith(f"{prefix}-"):
        raise ValueError(f"the stack prefix {prefix!r} is too long for Lambda function names")
    return f"{head}-{digest}"


def serverless_dashboard_body(
    title: str, region: str, functions: Mapping[str, str], alias: str
) -> dict[str, object]:
    """A CloudWatch dashboard of one serverless endpoint: per variant invocations, duration p50/p99, errors
    and throttles, concurrency and provisioned-concurrency spill-over (``AWS/Lambda`` metrics of the alias
    the load balancer invokes; ``functions`` maps variant → function name)."""

    def per_variant(metric: str, stat: str) -> list[list[object]]:
        return [
            [
                "AWS/Lambda",
                metric,
                "FunctionName",
                fn,
                "Resource",
                f"{fn}:{alias}",
                {"stat": stat, "label": f"{variant} {metric} {stat}"},
            ]
            for variant, fn in sorted(functions.items())
        ]

    panels = [
        ("Invocations per variant", per_variant("Invocations", "Sum")),
        ("Duration p50 / p99 (ms)", per_variant("Duration", "p50") + per_variant("Duration", "p99")),
        (
            "Errors / throttled (beyond maxConcurrency)",
            per_variant("Errors", "Sum") + per_variant("Throttles", "Sum"),
        ),
        (
            "Concurrency / cold starts beyond provisioned",
            per_variant("ConcurrentExecutions", "Maximum")
            + per_variant("ProvisionedConcurrencySpilloverInvocations", "Sum"),
        ),
    ]
    return {
        "widgets": [
            {
                "type": "text",
                "x": 0,
                "y": 0,
                "width": 24,
                "height": 1,
                "properties": {"markdown": f"# {title}"},
            }
        ]
        + [
            {
                "type": "metric",
                "x": (i % 2) * 12,
                "y": 1 + (i // 2) * 6,
                "width": 12,
                "height": 6,
                "properties": {
                    "title": name,
                    "region": region,
                    "view": "timeSeries",
                    "stacked": False,
                    "period": 60,
                    "metrics": metrics,
                },
            }
            for i, (name, metrics) in enumerate(panels)
        ]
    }

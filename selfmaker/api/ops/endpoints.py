"""CreateEndpoint, DescribeEndpoint, DeleteEndpoint, ListEndpoints, UpdateEndpoint,
UpdateEndpointWeightsAndCapacities."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from selfmaker.api.common import list_page
from selfmaker.api.metrics import Buckets, Metrics, family, histogram
from selfmaker.api.ops._shared import (
    check_config_instances,
    check_instances,
    create_record,
    find,
    public,
    status_metrics,
)
from selfmaker.api.registry import metrics_source, operation
from selfmaker.errors import ValidationException
from selfmaker.metricstore import LATENCY_BUCKETS

if TYPE_CHECKING:
    from selfmaker.endpoints.stats import Latency
    from selfmaker.services import Services
    from selfmaker.state import Record

#: members of the endpoint config echoed by DescribeEndpoint
_ECHOED = ("DataCaptureConfig", "AsyncInferenceConfig")


def _echo(config: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if config.get("DataCaptureConfig"):
        capture = config["DataCaptureConfig"]
        doc["DataCaptureConfig"] = {
            "EnableCapture": bool(capture.get("EnableCapture", True)),
            "CaptureStatus": "Started" if capture.get("EnableCapture", True) else "Stopped",
            "CurrentSamplingPercentage": capture.get("InitialSamplingPercentage"),
            "DestinationS3Uri": capture.get("DestinationS3Uri"),
            "KmsKeyId": capture.get("KmsKeyId"),
        }
    if config.get("AsyncInferenceConfig"):
        doc["AsyncInferenceConfig"] = config["AsyncInferenceConfig"]
    return doc


@operation("CreateEndpoint")
async def create_endpoint(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Create an endpoint (Creating) and deploy its configuration in the background."""
    name = params["EndpointName"]
    config = find(platform, "endpoint-config", params["EndpointConfigName"])
    check_config_instances(platform, config.doc)
    arn = platform.arn("endpoint", name)
    doc = {
        "EndpointName": name,
        "EndpointArn": arn,
        "EndpointConfigName": config.name,
        "DeploymentConfig": params.get("DeploymentConfig"),
        **_echo(config.doc),
    }
    create_record(
        platform,
        "endpoint",
        name,
        {k: v for k, v in doc.items() if v is not None},
        status="Creating",
        tags=params.get("Tags"),
    )
    platform.endpoints.create(name, config.doc)
    return {"EndpointArn": arn}


def describe(record: Record) -> dict[str, Any]:
    """DescribeEndpoint's answer for a stored endpoint."""
    doc = public(record.doc)
    deployed = record.doc.get("_Config")
    if deployed is not None:  # the echoed members follow the config in service, also after UpdateEndpoint
        for key in _ECHOED:
            doc.pop(key, None)
        doc.update(_echo(deployed))
    doc.update(EndpointStatus=record.status, CreationTime=record.created, LastModifiedTime=record.modified)
    if doc.get("DeploymentConfig"):
        doc["LastDeploymentConfig"] = doc.pop("DeploymentConfig")
    return doc


@operation("DescribeEndpoint")
async def describe_endpoint(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Status, variants (weights, instance counts) and failure reason of an endpoint."""
    return describe(find(platform, "endpoint", params["EndpointName"]))


@operation("DeleteEndpoint")
async def delete_endpoint(platform: Services, params: dict[str, Any]) -> None:
    """Stop routing, drain in-flight requests, stop the model servers, forget the endpoint."""
    record = find(platform, "endpoint", params["EndpointName"])
    if record.status == "Deleting":
        return
    platform.store.update("endpoint", record.name, status="Deleting")
    platform.endpoints.delete(record.name)


@operation("ListEndpoints")
async def list_endpoints(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Endpoints, filtered (name, status, times), sorted and paginated."""
    items, token = list_page(
        platform.store.list("endpoint"),
        params,
        lambda r: {
            "EndpointName": r.name,
            "EndpointArn": r.arn,
            "CreationTime": r.created,
            "LastModifiedTime": r.modified,
            "EndpointStatus": r.status,
        },
    )
    return {"Endpoints": items, "NextToken": token}


def _require_in_service(platform: Services, record: Record) -> None:
    if record.status != "InService" or not platform.endpoints.settled(record.name):
        raise ValidationException(f'Cannot update in-progress endpoint "{record.arn}".')


@operation("UpdateEndpoint")
async def update_endpoint(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Blue/green deployment of another endpoint configuration; the old one serves until the new is ready."""
    record = find(platform, "endpoint", params["EndpointName"])
    config = find(platform, "endpoint-config", params["EndpointConfigName"])
    _require_in_service(platform, record)
    check_config_instances(platform, config.doc)
    deployed = record.doc.get("_Config") or {}
    if bool(deployed.get("AsyncInferenceConfig")) != bool(config.doc.get("AsyncInferenceConfig")):
        # as SageMaker: an endpoint stays asynchronous (its queue, outputs and notifications) or real-time
        verb = "removed from" if deployed.get("AsyncInferenceConfig") else "added to"
        raise ValidationException(
            f"The AsyncInferenceConfig parameter cannot be {verb} endpoint {record.name}. "
            "To change the endpoint type, create a new endpoint."
        )
    retain: dict[str, dict[str, Any]] = {}
    if params.get("RetainAllVariantProperties"):
        excluded = {p["VariantPropertyType"] for p in params.get("ExcludeRetainedVariantProperties") or []}
        retain = platform.endpoints.retained(record.name, excluded)
    for check in platform.registry.update_checks:  # e.g. guardrails: DeploymentConfig and its alarms
        check(platform, params, record, config.doc, retain)
    merge: dict[str, Any] = {}
    if params.get("DeploymentConfig"):
        merge["DeploymentConfig"] = params["DeploymentConfig"]
    platform.store.update("endpoint", record.name, status="Updating", merge=merge)
    platform.endpoints.update(record.name, config.doc, retain)
    return {"EndpointArn": record.arn}


@operation("UpdateEndpointWeightsAndCapacities")
async def update_weights_and_capacities(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Change variant weights at once and instance counts in the background."""
    record = find(platform, "endpoint", params["EndpointName"])
    _require_in_service(platform, record)
    runtime = platform.endpoints.live[record.name.lower()]
    desired = params["DesiredWeightsAndCapacities"]
    names = [d["VariantName"] for d in desired]
    unknown = [n for n in names if n not in runtime.variants]
    if unknown:
        raise ValidationException(
            f'The variant(s) "[{", ".join(unknown)}]" is/are not present in the current endpoint '
            f'configuration of endpoint "{record.arn}".'
        )
    if len(set(names)) != len(names):
        raise ValidationException("Each variant may appear only once in DesiredWeightsAndCapacities.")
    changes: list[tuple[str, Callable[[], dict[str, Any]]]] = []  # (variant, apply) of @variant_update hooks
    for index, item in enumerate(desired, start=1):
        variant = runtime.variants[item["VariantName"]]
        count = item.get("DesiredInstanceCount")
        if count is not None and variant.config.get("ServerlessConfig"):
            raise ValidationException(
                f"Variant '{variant.name}' is serverless: it has no instance count to set (it scales with "
                "requests); change MaxConcurrency or ProvisionedConcurrency with ServerlessUpdateConfig."
            )
        check_instances(platform, count, f"Variant '{variant.name}'")
        if count is not None and count < 1:
            raise ValidationException(
                f"1 validation error detected: Value '{count}' at "
                f"'desiredWeightsAndCapacities.{index}.member.desiredInstanceCount' failed to satisfy "
                "constraint: Member must have value greater than or equal to 1"
            )
        for check in platform.registry.variant_updates:  # e.g. ServerlessUpdateConfig
            apply = check(platform, variant, item, index)
            if apply is not None:
                changes.append((variant.name, apply))
    weights = {v.name: v.weight for v in runtime.variants.values()}
    weights.update(
        {d["VariantName"]: float(d["DesiredWeight"]) for d in desired if d.get("DesiredWeight") is not None}
    )
    if sum(weights.values()) <= 0:
        raise ValidationException("At least one production variant must keep a weight above 0.")
    merge: dict[str, Any] = {}
    if changes:
        changed: dict[str, dict[str, Any]] = {}
        for name, apply in changes:
            changed.setdefault(name, {}).update(apply())
        # the config in service is what a restart brings back: it carries the changes too
        deployed = record.doc.get("_Config") or {}
        merge["_Config"] = {
            **deployed,
            "ProductionVariants": [
                {**v, **changed[v["VariantName"]]} if v.get("VariantName") in changed else v
                for v in deployed.get("ProductionVariants") or []
            ],
        }
    platform.store.update("endpoint", record.name, status="Updating", merge=merge)
    platform.endpoints.update_weights_and_capacities(record.name, desired)
    return {"EndpointArn": record.arn}


def _buckets(latency: Latency) -> Buckets:
    return Buckets(LATENCY_BUCKETS, list(latency.buckets), latency.total)


def _invocation_families(platform: Services, lines: list[str]) -> None:
    """SageMaker's invocation metrics (``platform.invocation_stats``) as counters and histograms."""
    rows = [
        # requests refused before a variant was chosen (an unknown TargetVariant) have no variant label
        ({"endpoint": c.endpoint, **({"variant": c.variant} if c.variant is not None else {})}, c)
        for c in platform.invocation_stats.counters()
    ]
    family(
        lines,
        "selfmaker_invocations_total",
        "counter",
        "InvokeEndpoint requests of a variant, errors included (SageMaker's Invocations).",
        [(labels, c.invocations) for labels, c in rows],
    )
    family(
        lines,
        "selfmaker_invocation_errors_total",
        "counter",
        "Requests answered with a 4xx or 5xx, by code class (Invocation4XXErrors, Invocation5XXErrors).",
        [
            ({**labels, "code": code}, count)
            for labels, c in rows
            for code, count in (("4xx", c.errors_4xx), ("5xx", c.errors_5xx))
        ],
    )
    histogram(
        lines,
        "selfmaker_model_latency_seconds",
        "Seconds the model server took to answer (SageMaker's ModelLatency).",
        [(labels, _buckets(c.model_latency)) for labels, c in rows if "variant" in labels],
    )
    histogram(
        lines,
        "selfmaker_overhead_latency_seconds",
        "Seconds of the platform's own work around the model server: reading, routing, answering "
        "(SageMaker's OverheadLatency).",
        [(labels, _buckets(c.overhead_latency)) for labels, c in rows],
    )
    histogram(
        lines,
        "selfmaker_model_setup_seconds",
        "Seconds to start a model server and have it ready, per start (SageMaker's ModelSetupTime: "
        "serverless cold starts).",
        [(labels, _buckets(c.model_setup)) for labels, c in rows if c.model_setup.n],
    )


@metrics_source
def endpoint_metrics(platform: Services) -> Metrics:
    """Endpoints by status; per variant its invocations, errors, latencies, instances and weight; per model
    server its load."""
    found = status_metrics(
        platform, "endpoint", "selfmaker_endpoints", "Endpoints in each EndpointStatus.", "EndpointStatus"
    )
    _invocation_families(platform, found.lines)
    runtimes = list(platform.endpoints.live.values())
    # shadow variants have instances too (their weight is a sampling share, not a traffic split)
    variants = [(r.name, v) for r in runtimes for v in r.all_variants()]
    family(
        found.lines,
        "selfmaker_variant_instances",
        "gauge",
        "Running model servers (instances) of a variant, production or shadow.",
        [({"endpoint": ep, "variant": v.name}, v.pool.size) for ep, v in variants],
    )
    family(
        found.lines,
        "selfmaker_variant_desired_instances",
        "gauge",
        "Instances a variant is asked to run (its current instance count).",
        [({"endpoint": ep, "variant": v.name}, v.pool.desired) for ep, v in variants],
    )
    family(
        found.lines,
        "selfmaker_variant_weight",
        "gauge",
        "Current weight of a production variant (its share of traffic is its weight over the sum).",
        [({"endpoint": r.name, "variant": v.name}, v.weight) for r in runtimes for v in r.variants.values()],
    )
    instances = [
        ({"endpoint": ep, "variant": v.name, "instance_id": i.instance_id}, i)
        for ep, v in variants
        for i in list(v.pool.instances)
    ]
    family(
        found.lines,
        "selfmaker_instance_in_flight_requests",
        "gauge",
        "Requests in flight on one model server.",
        [(labels, i.outstanding) for labels, i in instances],
    )
    family(
        found.lines,
        "selfmaker_instance_invocations_total",
        "counter",
        "Requests one model server answered since it started (any status).",
        [(labels, i.served) for labels, i in instances],
    )
    return found

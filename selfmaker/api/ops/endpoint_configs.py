"""CreateEndpointConfig, DescribeEndpointConfig, DeleteEndpointConfig, ListEndpointConfigs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.common import list_page
from selfmaker.api.ops._shared import create_record, find, public
from selfmaker.api.registry import operation
from selfmaker.errors import ValidationException
from selfmaker.modeldata import execution_mode

if TYPE_CHECKING:
    from selfmaker.services import Services

#: features the core refuses unless a ``@config_check`` extension claims them
EXTENSION_FEATURES = (
    "ServerlessConfig",
    "AsyncInferenceConfig",
    "ShadowProductionVariants",
    "DataCaptureConfig",
)


def _features(params: dict[str, Any]) -> set[str]:
    used = {
        key
        for key in ("AsyncInferenceConfig", "ShadowProductionVariants", "DataCaptureConfig")
        if params.get(key)
    }
    variants = [*params.get("ProductionVariants", []), *(params.get("ShadowProductionVariants") or [])]
    if any(v.get("ServerlessConfig") for v in variants):
        used.add("ServerlessConfig")
    return used


def check_variants(platform: Services, variants: list[dict[str, Any]], member: str) -> None:
    """Cross-field rules of production variants that botocore's model cannot express."""
    seen: set[str] = set()
    for index, variant in enumerate(variants, start=1):
        path = f"{member}.{index}.member"
        name = variant["VariantName"]
        if name.lower() in seen:
            raise ValidationException(f"Variant names must be unique; '{name}' appears more than once.")
        seen.add(name.lower())
        if not variant.get("ModelName"):
            raise ValidationException(
                f"1 validation error detected: Value null at '{path}.modelName' failed to "
                "satisfy constraint: Member must not be null"
            )
        model = find(platform, "model", variant["ModelName"])
        if variant.get("ServerlessConfig") and execution_mode(model.doc) is not None:
            raise ValidationException(
                f"Variant '{name}': model {model.name} has several containers (an inference pipeline); "
                "serverless variants serve models of one container."
            )
        scaling = variant.get("ManagedInstanceScaling") or {}
        low, high = scaling.get("MinInstanceCount"), scaling.get("MaxInstanceCount")
        if low is not None and high is not None and low > high:
            raise ValidationException(
                f"Variant '{name}': ManagedInstanceScaling MinInstanceCount ({low}) is above "
                f"MaxInstanceCount ({high})."
            )
        if variant.get("ServerlessConfig"):
            if variant.get("InstanceType") or variant.get("InitialInstanceCount"):
                raise ValidationException(
                    f"Variant '{name}': ServerlessConfig cannot be combined with "
                    "InstanceType or InitialInstanceCount."
                )
        else:
            for field in ("InstanceType", "InitialInstanceCount"):
                if variant.get(field) is None:
                    raise ValidationException(
                        f"1 validation error detected: Value null at '{path}.{field[0].lower()}{field[1:]}' "
                        f"failed to satisfy constraint: Member must not be null (variant '{name}' has no "
                        "ServerlessConfig)"
                    )


@operation("CreateEndpointConfig")
async def create_endpoint_config(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Store an endpoint configuration after checking its variants and models."""
    name = params["EndpointConfigName"]
    claimed: set[str] = set()
    for check in platform.registry.config_checks:
        claimed |= set(check(platform, params) or ())
    for feature in sorted(_features(params) - claimed):
        raise ValidationException(f"{feature} is not supported by this selfmaker installation.")
    variants = params["ProductionVariants"]
    check_variants(platform, variants, "productionVariants")
    if params.get("ShadowProductionVariants"):
        check_variants(platform, params["ShadowProductionVariants"], "shadowProductionVariants")
        names = {v["VariantName"].lower() for v in variants}
        clash = [
            v["VariantName"] for v in params["ShadowProductionVariants"] if v["VariantName"].lower() in names
        ]
        if clash:
            raise ValidationException(
                f"Variant names must be unique; '{clash[0]}' is both a production and a shadow variant."
            )
    if params.get("AsyncInferenceConfig"):
        for variant in variants:
            model = find(platform, "model", variant["ModelName"])
            if execution_mode(model.doc) is not None:
                # the async workers post to one model server per instance: a pipeline would answer half-done
                raise ValidationException(
                    f"Variant '{variant['VariantName']}': model {model.name} has several containers (an "
                    "inference pipeline); asynchronous endpoints here serve models of one container."
                )
    if sum(float(v.get("InitialVariantWeight", 1.0)) for v in variants) <= 0:
        raise ValidationException(
            "At least one production variant must have an InitialVariantWeight above 0."
        )
    doc = {k: v for k, v in params.items() if k != "Tags"}
    doc["ProductionVariants"] = [
        {**v, "InitialVariantWeight": float(v.get("InitialVariantWeight", 1.0))} for v in variants
    ]
    arn = platform.arn("endpoint-config", name)
    record = create_record(platform, "endpoint-config", name, doc, tags=params.get("Tags"))
    platform.store.update(
        "endpoint-config", name, merge={"EndpointConfigArn": arn, "CreationTime": record.created}, touch=False
    )
    return {"EndpointConfigArn": arn}


@operation("DescribeEndpointConfig")
async def describe_endpoint_config(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The stored endpoint configuration."""
    return public(find(platform, "endpoint-config", params["EndpointConfigName"]).doc)


@operation("DeleteEndpointConfig")
async def delete_endpoint_config(platform: Services, params: dict[str, Any]) -> None:
    """Forget an endpoint configuration (endpoints keep the configuration they resolved)."""
    record = find(platform, "endpoint-config", params["EndpointConfigName"])
    platform.store.delete("endpoint-config", record.name)


@operation("ListEndpointConfigs")
async def list_endpoint_configs(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Endpoint configurations, filtered, sorted and paginated."""
    items, token = list_page(
        platform.store.list("endpoint-config"),
        params,
        lambda r: {"EndpointConfigName": r.name, "EndpointConfigArn": r.arn, "CreationTime": r.created},
    )
    return {"EndpointConfigs": items, "NextToken": token}

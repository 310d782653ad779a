"""CreateModel, DescribeModel, DeleteModel, ListModels."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.common import list_page
from selfmaker.api.ops._shared import create_record, find, public
from selfmaker.api.ops.model_packages import inference_container
from selfmaker.api.registry import operation
from selfmaker.errors import ValidationException

if TYPE_CHECKING:
    from selfmaker.services import Services


@operation("CreateModel")
async def create_model(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Store a model (container image + model data); nothing runs until an endpoint uses it."""
    name = params["ModelName"]
    containers = params.get("Containers")
    if not params.get("PrimaryContainer") and not containers:
        raise ValidationException(
            f"Either PrimaryContainer or Containers must be specified for model '{name}'."
        )
    if params.get("PrimaryContainer") and containers:
        raise ValidationException("PrimaryContainer and Containers cannot both be specified.")
    if containers and len(containers) > 1:
        # refused rather than serving the first container alone, which would answer for the pipeline
        raise ValidationException(
            f"Model '{name}' has {len(containers)} containers: selfmaker runs one container per model "
            "and does not support inference pipelines or direct invocation of several containers."
        )
    for container in [params.get("PrimaryContainer")] + list(containers or []):
        if container and container.get("Mode") == "MultiModel":
            raise ValidationException(
                f"Model '{name}': Mode MultiModel is not supported; selfmaker serves one model per container."
            )
    doc = {k: v for k, v in params.items() if k != "Tags"}
    # a container named by ModelPackageName runs the package's inference container (its Image,
    # ModelDataUrl and Environment; the request's own Environment wins)
    if (params.get("PrimaryContainer") or {}).get("ModelPackageName"):
        doc["PrimaryContainer"] = _from_package(platform, params["PrimaryContainer"])
    if containers and containers[0].get("ModelPackageName"):
        doc["Containers"] = [_from_package(platform, containers[0])]
    arn = platform.arn("model", name)
    record = create_record(platform, "model", name, doc, tags=params.get("Tags"))
    platform.store.update("model", name, merge={"ModelArn": arn, "CreationTime": record.created}, touch=False)
    return {"ModelArn": arn}


def _from_package(platform: Services, container: dict[str, Any]) -> dict[str, Any]:
    resolved = inference_container(platform, container["ModelPackageName"])
    environment = {**resolved.get("Environment", {}), **(container.get("Environment") or {})}
    return {**resolved, **container, **({"Environment": environment} if environment else {})}


@operation("DescribeModel")
async def describe_model(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """The stored model."""
    record = find(platform, "model", params["ModelName"])
    return public(record.doc)


@operation("DeleteModel")
async def delete_model(platform: Services, params: dict[str, Any]) -> None:
    """Forget a model (endpoints already using it keep running)."""
    record = find(platform, "model", params["ModelName"])
    platform.store.delete("model", record.name)


@operation("ListModels")
async def list_models(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Models, filtered, sorted and paginated."""
    items, token = list_page(
        platform.store.list("model"),
        params,
        lambda r: {"ModelName": r.name, "ModelArn": r.arn, "CreationTime": r.created},
    )
    return {"Models": items, "NextToken": token}

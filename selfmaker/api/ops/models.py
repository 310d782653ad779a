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
        _check_pipeline(
            name, containers, (params.get("InferenceExecutionConfig") or {}).get("Mode") or "Serial"
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
    if containers and any(c.get("ModelPackageName") for c in containers):
        doc["Containers"] = [
            _from_package(platform, c) if c.get("ModelPackageName") else c for c in containers
        ]
    if containers and len(containers) > 1 and not params.get("InferenceExecutionConfig"):
        doc["InferenceExecutionConfig"] = {"Mode": "Serial"}  # SageMaker's default, as DescribeModel says
    arn = platform.arn("model", name)
    record = create_record(platform, "model", name, doc, tags=params.get("Tags"))
    platform.store.update("model", name, merge={"ModelArn": arn, "CreationTime": record.created}, touch=False)
    return {"ModelArn": arn}


def _check_pipeline(name: str, containers: list[dict[str, Any]], mode: str) -> None:
    """The ContainerHostname rules of a model of several containers (at most 15: botocore's model checks
    the count): all named or none (Direct: all), no name twice."""
    hostnames = [c.get("ContainerHostname") for c in containers]
    if mode == "Direct" and not all(hostnames):
        raise ValidationException(
            f"Model '{name}': ContainerHostname must be specified for every container when "
            "InferenceExecutionConfig.Mode is Direct."
        )
    if any(hostnames) and not all(hostnames):
        raise ValidationException(
            f"Model '{name}': ContainerHostname must be specified for every container of an inference "
            "pipeline when it is specified for any of them."
        )
    seen: set[str] = set()
    for hostname in hostnames:
        if hostname and hostname.lower() in seen:
            raise ValidationException(
                f"Model '{name}': ContainerHostname '{hostname}' is used by more than one container; "
                "container hostnames must be unique within a model."
            )
        if hostname:
            seen.add(hostname.lower())


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

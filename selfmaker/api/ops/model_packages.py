"""The model registry: model package groups and (versioned or unversioned) model packages.

A versioned package lives in a group (``CreateModelPackage`` with ``ModelPackageGroupName``) and is
numbered 1, 2, … in it (numbers are never reused, as on SageMaker); its ARN is
``model-package/<group>/<version>`` and it has a ``ModelApprovalStatus`` (``PendingManualApproval`` by
default; ``Approved`` / ``Rejected`` through ``UpdateModelPackage``). An unversioned package has a name
of its own and no approval status. ``CreateModel`` takes a package by name or ARN as a container's
``ModelPackageName`` and runs its inference container (selfmaker/api/ops/models.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.common import list_page
from selfmaker.api.ops._shared import create_record, public
from selfmaker.api.registry import operation
from selfmaker.arns import parse_arn
from selfmaker.errors import ConflictException, ValidationException
from selfmaker.state import Record

if TYPE_CHECKING:
    from selfmaker.services import Services

GROUP = "model-package-group"
PACKAGE = "model-package"


def _name_of(value: str, kind: str) -> str:
    """A name, or the name part of an ARN of ``kind`` (ValidationException for another ARN)."""
    if not value.startswith("arn:"):
        return value
    parsed = parse_arn(value)
    if parsed is None or parsed[0] != kind:
        raise ValidationException(f"{value} is not the ARN of a {kind.replace('-', ' ')}.")
    return parsed[1]


def find_group(platform: Services, name_or_arn: str) -> Record:
    """The group named (or ARN'd) ``name_or_arn``, or SageMaker's ValidationException."""
    name = _name_of(name_or_arn, GROUP)
    record = platform.store.get(GROUP, name)
    if record is None:
        raise ValidationException(f"Model Package Group {platform.arn(GROUP, name)} does not exist.")
    return record


def find_package(platform: Services, name_or_arn: str) -> Record:
    """The package named ``name_or_arn`` (unversioned) or with that ARN (either), or a ValidationException."""
    name = _name_of(name_or_arn, PACKAGE)
    record = platform.store.get(PACKAGE, name)
    if record is None:
        raise ValidationException(f"ModelPackage {platform.arn(PACKAGE, name)} does not exist.")
    return record


def inference_container(platform: Services, name_or_arn: str) -> dict[str, Any]:
    """The container (Image, ModelDataUrl, Environment) a model made from package ``name_or_arn`` runs."""
    record = find_package(platform, name_or_arn)
    containers = (record.doc.get("InferenceSpecification") or {}).get("Containers") or []
    if not containers:
        raise ValidationException(f"ModelPackage {record.arn} has no InferenceSpecification containers.")
    if len(containers) > 1:
        raise ValidationException(
            f"ModelPackage {record.arn} has {len(containers)} inference containers: selfmaker runs one "
            "container per model."
        )
    container = containers[0]
    return {k: container[k] for k in ("Image", "ModelDataUrl", "Environment") if container.get(k) is not None}


# -- groups -----------------------------------------------------------------------------------------


@operation("CreateModelPackageGroup")
async def create_model_package_group(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """A new, empty group (its name is also the name of the versioned packages in it)."""
    name = params["ModelPackageGroupName"]
    doc = {k: v for k, v in params.items() if k != "Tags"}
    record = create_record(platform, GROUP, name, doc, status="Completed", tags=params.get("Tags"))
    platform.store.update(
        GROUP,
        name,
        merge={"ModelPackageGroupArn": record.arn, "CreationTime": record.created, "CreatedBy": {}},
        touch=False,
    )
    return {"ModelPackageGroupArn": record.arn}


def describe_group(record: Record) -> dict[str, Any]:
    """DescribeModelPackageGroup's answer for a stored group (Search uses it too)."""
    doc = public(record.doc)
    doc["ModelPackageGroupStatus"] = record.status
    return doc


@operation("DescribeModelPackageGroup")
async def describe_model_package_group(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    return describe_group(find_group(platform, params["ModelPackageGroupName"]))


@operation("ListModelPackageGroups")
async def list_model_package_groups(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    def summary(r: Record) -> dict[str, Any]:
        return {
            "ModelPackageGroupName": r.name,
            "ModelPackageGroupArn": r.arn,
            "ModelPackageGroupDescription": r.doc.get("ModelPackageGroupDescription"),
            "CreationTime": r.created,
            "ModelPackageGroupStatus": r.status,
        }

    items, token = list_page(platform.store.list(GROUP), params, summary)
    return {"ModelPackageGroupSummaryList": items, "NextToken": token}


@operation("DeleteModelPackageGroup")
async def delete_model_package_group(platform: Services, params: dict[str, Any]) -> None:
    """Only an empty group can go (SageMaker's ConflictException otherwise)."""
    record = find_group(platform, params["ModelPackageGroupName"])
    held = [p for p in platform.store.list(PACKAGE) if p.doc.get("ModelPackageGroupName") == record.name]
    if held:
        raise ConflictException(
            f"Model Package Group {record.arn} cannot be deleted: it holds {len(held)} model package(s); "
            "delete them first."
        )
    platform.store.delete(GROUP, record.name)


# -- packages ---------------------------------------------------------------------------------------


@operation("CreateModelPackage")
async def create_model_package(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """A versioned package (next version of its group) or an unversioned one (its own name)."""
    group_name, own_name = params.get("ModelPackageGroupName"), params.get("ModelPackageName")
    if bool(group_name) == bool(own_name):
        raise ValidationException(
            "Exactly one of ModelPackageName or ModelPackageGroupName must be specified."
        )
    approval = params.get("ModelApprovalStatus")
    doc = {k: v for k, v in params.items() if k not in {"Tags", "ClientToken"}}
    if group_name:
        group = find_group(platform, group_name)
        version = int(group.doc.get("_LastVersion", 0)) + 1
        platform.store.update(GROUP, group.name, merge={"_LastVersion": version}, touch=False)
        name = f"{group.name}/{version}"
        doc.update(
            ModelPackageName=group.name,
            ModelPackageGroupName=group.name,
            ModelPackageVersion=version,
            ModelApprovalStatus=approval or "PendingManualApproval",
        )
    else:
        if approval:
            raise ValidationException("ModelApprovalStatus is only supported for versioned model packages.")
        name = str(own_name)
    record = create_record(platform, PACKAGE, name, doc, status="Completed", tags=params.get("Tags"))
    platform.store.update(
        PACKAGE,
        name,
        merge={
            "ModelPackageArn": record.arn,
            "CreationTime": record.created,
            "ModelPackageStatusDetails": {"ValidationStatuses": [], "ImageScanStatuses": []},
            "CertifyForMarketplace": bool(params.get("CertifyForMarketplace", False)),
            "CreatedBy": {},
        },
        touch=False,
    )
    return {"ModelPackageArn": record.arn}


def describe_package(record: Record) -> dict[str, Any]:
    """DescribeModelPackage's answer for a stored package (Search uses it too)."""
    doc = public(record.doc)
    doc.update(ModelPackageStatus=record.status, LastModifiedTime=record.modified)
    return doc


@operation("DescribeModelPackage")
async def describe_model_package(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    return describe_package(find_package(platform, params["ModelPackageName"]))


@operation("UpdateModelPackage")
async def update_model_package(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Approval status and description, customer metadata, inference specification, source URI."""
    record = find_package(platform, params["ModelPackageArn"])
    versioned = record.doc.get("ModelPackageVersion") is not None
    merge: dict[str, Any] = {}
    approval = params.get("ModelApprovalStatus")
    if approval is not None:
        if not versioned:
            raise ValidationException("ModelApprovalStatus is only supported for versioned model packages.")
        merge["ModelApprovalStatus"] = approval
        merge["LastModifiedBy"] = {}
    if params.get("ApprovalDescription") is not None:
        merge["ApprovalDescription"] = params["ApprovalDescription"]
    metadata = dict(record.doc.get("CustomerMetadataProperties") or {})
    if params.get("CustomerMetadataProperties") or params.get("CustomerMetadataPropertiesToRemove"):
        metadata.update(params.get("CustomerMetadataProperties") or {})
        for key in params.get("CustomerMetadataPropertiesToRemove") or []:
            metadata.pop(key, None)
        merge["CustomerMetadataProperties"] = metadata
    for member in ("InferenceSpecification", "SourceUri", "ModelCard", "ModelLifeCycle"):
        if params.get(member) is not None:
            merge[member] = params[member]
    if params.get("AdditionalInferenceSpecificationsToAdd"):
        merge["AdditionalInferenceSpecifications"] = [
            *(record.doc.get("AdditionalInferenceSpecifications") or []),
            *params["AdditionalInferenceSpecificationsToAdd"],
        ]
    if merge:
        platform.store.update(PACKAGE, record.name, merge=merge)
    return {"ModelPackageArn": record.arn}


@operation("DeleteModelPackage")
async def delete_model_package(platform: Services, params: dict[str, Any]) -> None:
    record = find_package(platform, params["ModelPackageName"])
    platform.store.delete(PACKAGE, record.name)


@operation("ListModelPackages")
async def list_model_packages(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """A group's versions (ModelPackageGroupName), or packages by type (default: unversioned, as
    SageMaker's), filtered by approval status, name and time, sorted and paginated."""
    records = platform.store.list(PACKAGE)
    if params.get("ModelPackageGroupName"):
        group = find_group(platform, params["ModelPackageGroupName"])
        records = [r for r in records if r.doc.get("ModelPackageGroupName") == group.name]
    else:
        kind = params.get("ModelPackageType") or "Unversioned"
        if kind != "Both":
            records = [
                r for r in records if (r.doc.get("ModelPackageVersion") is not None) == (kind == "Versioned")
            ]
    if params.get("ModelApprovalStatus"):
        records = [r for r in records if r.doc.get("ModelApprovalStatus") == params["ModelApprovalStatus"]]

    def summary(r: Record) -> dict[str, Any]:
        return {
            "ModelPackageName": r.doc.get("ModelPackageName", r.name),
            "ModelPackageGroupName": r.doc.get("ModelPackageGroupName"),
            "ModelPackageVersion": r.doc.get("ModelPackageVersion"),
            "ModelPackageArn": r.arn,
            "ModelPackageDescription": r.doc.get("ModelPackageDescription"),
            "CreationTime": r.created,
            "ModelPackageStatus": r.status,
            "ModelApprovalStatus": r.doc.get("ModelApprovalStatus"),
        }

    items, token = list_page(records, params, summary)
    return {"ModelPackageSummaryList": items, "NextToken": token}

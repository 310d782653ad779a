"""AddTags, ListTags, DeleteTags (any resource kind stored by the platform)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.common import decode_offset, encode_token
from selfmaker.api.registry import operation
from selfmaker.arns import parse_arn
from selfmaker.errors import ResourceLimitExceeded, ValidationException

if TYPE_CHECKING:
    from selfmaker.services import Services

MAX_TAGS = 50


def _resource_arn(platform: Services, arn: str) -> str:
    parsed = parse_arn(arn)
    record = platform.store.get(parsed[0], parsed[1]) if parsed else None
    if record is None or record.arn.split(":", 5)[3:5] != arn.split(":", 5)[3:5]:  # region and account too
        raise ValidationException(f"Resource {arn} does not exist.")
    return record.arn


@operation("AddTags")
async def add_tags(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Add or overwrite tags (at most 50 per resource)."""
    arn = _resource_arn(platform, params["ResourceArn"])
    reserved = sorted({t["Key"] for t in params["Tags"] if t["Key"].lower().startswith("aws:")})
    if reserved:
        raise ValidationException(
            f"Tag keys starting with 'aws:' are reserved for AWS use: {', '.join(reserved)}"
        )
    keys = {t["Key"] for t in platform.store.tags(arn)} | {t["Key"] for t in params["Tags"]}
    if len(keys) > MAX_TAGS:
        raise ResourceLimitExceeded(f"A resource can have at most {MAX_TAGS} tags.")
    platform.store.add_tags(arn, params["Tags"])
    return {"Tags": params["Tags"]}


@operation("ListTags")
async def list_tags(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Tags of a resource, paginated (default page 50)."""
    arn = _resource_arn(platform, params["ResourceArn"])
    tags = platform.store.tags(arn)
    limit = params.get("MaxResults") or 50
    offset = decode_offset(params["NextToken"], arn) if params.get("NextToken") else 0
    token = encode_token(offset + limit, arn) if offset + limit < len(tags) else None
    return {"Tags": tags[offset : offset + limit], "NextToken": token}


@operation("DeleteTags")
async def delete_tags(platform: Services, params: dict[str, Any]) -> None:
    """Remove tags by key."""
    arn = _resource_arn(platform, params["ResourceArn"])
    platform.store.delete_tags(arn, params["TagKeys"])

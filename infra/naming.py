"""Names and tags: pure functions shared by every component.

Physical names are avoided (Pulumi auto-names resources) except where something outside Pulumi must
know the name in advance: log groups that the container runtime writes to, and the name prefix that
scopes the IAM permissions of queues and topics created by other stacks or components.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Tags every taggable resource carries (values filled in by :func:`standard_tags`).
REQUIRED_TAG_KEYS: tuple[str, ...] = ("Project", "Stack", "ManagedBy")

_SLUG_RE = re.compile(r"[^a-z0-9-]+")
_GROUP_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")
_S3_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def slug(value: str, *, max_len: int = 40) -> str:
    """Lower-case ``value`` and keep ``[a-z0-9-]``, collapsing other runs into one ``-``.

    The result never starts or ends with ``-`` and is at most ``max_len`` characters; an input with no
    usable character raises ``ValueError`` rather than producing an empty name.
    """
    if max_len < 1:
        raise ValueError("max_len must be positive")
    out = _SLUG_RE.sub("-", value.lower()).strip("-")
    out = re.sub(r"-{2,}", "-", out)[:max_len].strip("-")
    if not out:
        raise ValueError(f"{value!r} has no character usable in a resource name")
    return out


def resource_prefix(project: str, stack: str) -> str:
    """The physical-name prefix of a stack, e.g. ``selfmaker-dev`` (at most 32 characters).

    IAM permissions for resources that other components create later (SQS queues, SNS topics, log
    groups) are scoped to names starting with this prefix.
    """
    return slug(f"{project}-{stack}", max_len=32)


def child_name(parent: str, role: str) -> str:
    """Logical name of a component's child: ``f"{parent}-{role}"``."""
    if not parent or not role:
        raise ValueError("parent and role must be non-empty")
    return f"{parent}-{role}"


def valid_group_name(name: str) -> bool:
    """Whether ``name`` is usable as an instance-group name (2-32 chars, ``[a-z0-9-]``, starts with a
    letter)."""
    return bool(_GROUP_NAME_RE.match(name))


def log_group_name(prefix: str, group: str) -> str:
    """CloudWatch log group the containers of instance group ``group`` write to."""
    return f"/{prefix}/{group}"


def log_group_arn_pattern(partition: str, region: str, account: str, prefix: str) -> str:
    """ARN pattern matching every log group (and its streams) under ``/{prefix}/``."""
    return f"arn:{partition}:logs:{region}:{account}:log-group:/{prefix}/*"


def prefixed_arn_pattern(partition: str, service: str, region: str, account: str, prefix: str) -> str:
    """ARN pattern of regional resources whose name starts with ``{prefix}-`` (SQS queues, SNS topics)."""
    return f"arn:{partition}:{service}:{region}:{account}:{prefix}-*"


def normalize_key_prefix(prefix: str) -> str:
    """An S3 key prefix without a leading ``/`` and with exactly one trailing ``/`` ("" stays "")."""
    cleaned = prefix.strip().lstrip("/")
    if not cleaned:
        return ""
    return cleaned.rstrip("/") + "/"


def s3_uri(bucket: str, key: str) -> str:
    """``s3://bucket/key`` after checking the bucket name."""
    if not _S3_BUCKET_RE.match(bucket):
        raise ValueError(f"{bucket!r} is not a valid S3 bucket name")
    return f"s3://{bucket}/{key.lstrip('/')}"


def image_uri(repository_url: str, tag: str) -> str:
    """``repository_url:tag`` (tags follow Docker's rules: ``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", tag):
        raise ValueError(f"{tag!r} is not a valid image tag")
    return f"{repository_url}:{tag}"


def registry_host(repository_url: str) -> str:
    """The registry part of an ECR repository URL (what ``docker login`` needs)."""
    return repository_url.split("/", 1)[0]


def standard_tags(project: str, stack: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags for every taggable resource: Project, Stack, ManagedBy plus the user's extra tags.

    Extra tags may not override the standard ones nor use AWS's reserved ``aws:`` prefix; keys are at
    most 128 and values at most 256 characters (the EC2/S3 limits).
    """
    tags = {"Project": project, "Stack": stack, "ManagedBy": "pulumi"}
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"tag {key!r}: keys and values must be strings")
        if key in tags:
            raise ValueError(f"tag {key!r} is set by selfmaker and cannot be overridden")
        if key.lower().startswith("aws:"):
            raise ValueError(f"tag {key!r}: the 'aws:' prefix is reserved")
        if not 1 <= len(key) <= 128 or len(value) > 256:
            raise ValueError(f"tag {key!r}: keys are 1-128 and values 0-256 characters")
        tags[key] = value
    return tags


def with_name(tags: Mapping[str, str], name: str) -> dict[str, str]:
    """``tags`` plus a ``Name`` tag (what the EC2 console shows)."""
    return {**tags, "Name": name}

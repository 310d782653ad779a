"""Small helpers of the operation modules (not an operation module itself)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from selfmaker.api.metrics import Metrics, family
from selfmaker.api.validation import service_model
from selfmaker.errors import ResourceLimitExceeded, ValidationException
from selfmaker.state import Record
from selfmaker.state import now as state_now

if TYPE_CHECKING:
    from selfmaker.services import Services

#: the noun SageMaker uses in "Could not find <noun> ..." messages
NOUNS = {"model": "model", "endpoint-config": "endpoint configuration", "endpoint": "endpoint"}


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored document without internal keys (``_…``) and without None values."""
    return {k: v for k, v in doc.items() if not k.startswith("_") and v is not None}


def find(platform: Services, kind: str, name: str) -> Record:
    """The record of ``name`` or SageMaker's ``Could not find <noun> "<arn>".`` ValidationException."""
    record = platform.store.get(kind, name)
    if record is None:
        raise ValidationException(f'Could not find {NOUNS[kind]} "{platform.arn(kind, name)}".')
    return record


def create_record(
    platform: Services,
    kind: str,
    name: str,
    doc: dict[str, Any],
    *,
    status: str | None = None,
    tags: list[dict[str, str]] | None = None,
) -> Record:
    """Insert a new resource; ``Cannot create already existing <noun> "<arn>".`` when the name is taken."""
    now = state_now()
    arn = platform.arn(kind, name)
    record = Record(kind=kind, name=name, arn=arn, status=status, created=now, modified=now, doc=doc)
    if not platform.store.insert(record):
        raise ValidationException(f'Cannot create already existing {NOUNS.get(kind, kind)} "{arn}".')
    if tags:
        platform.store.add_tags(arn, tags)
    return record


def check_instances(platform: Services, count: int | None, what: str) -> None:
    """ResourceLimitExceeded when ``count`` instances of ``what`` exceed ``SELFMAKER_MAX_INSTANCES``."""
    limit = platform.settings.max_instances
    if count is not None and count > limit:
        raise ResourceLimitExceeded(
            f"{what} asks for {count} instances; the limit is {limit} per variant or job on this platform "
            "(each instance is a local process). Raise SELFMAKER_MAX_INSTANCES to allow more."
        )


def check_config_instances(platform: Services, config: dict[str, Any]) -> None:
    """The instance counts of an endpoint config's production and shadow variants."""
    for key in ("ProductionVariants", "ShadowProductionVariants"):
        for variant in config.get(key) or []:
            for count in (
                variant.get("InitialInstanceCount"),
                (variant.get("ManagedInstanceScaling") or {}).get("MaxInstanceCount"),
            ):
                check_instances(platform, count, f"Variant '{variant.get('VariantName')}'")


def status_metrics(platform: Services, kind: str, name: str, help_: str, status_shape: str) -> Metrics:
    """A gauge family ``name{status}``: how many resources of ``kind`` are in each status, every status of
    botocore's ``status_shape`` enum present (0 included, so that rates and alerts see a series)."""
    counts = platform.store.count_by_status(kind)
    statuses = [*service_model().shape_for(status_shape).enum]
    statuses += sorted(set(counts) - set(statuses))
    found = Metrics(name)
    family(found.lines, name, "gauge", help_, [({"status": s}, counts.get(s, 0)) for s in statuses])
    return found

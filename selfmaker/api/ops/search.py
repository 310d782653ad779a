"""Search: SageMaker's query over resources by their Describe documents.

A result is what the resource's Describe operation answers, plus its ``Tags``; filters address members by
dotted names (``HyperParameters.eta``, ``Tags.team``, ``ModelApprovalStatus``), and a name that crosses a
list matches when any element does. Operators: Equals, NotEquals, GreaterThan(OrEqualTo),
LessThan(OrEqualTo) (numbers and times compare as numbers), Contains (substring, or an element of a
list), Exists, NotExists, In (comma-separated). ``NestedFilters`` must all hold for one element of the
list they name; ``SubExpressions`` nest; ``Operator`` And (default) / Or joins a level's parts. Resource
types this platform does not keep (experiments, pipelines, feature groups, …) have no results.
"""

from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Any

from selfmaker.api.common import decode_offset, encode_token, to_epoch
from selfmaker.api.registry import operation
from selfmaker.errors import ValidationException

if TYPE_CHECKING:
    from selfmaker.services import Services

#: Search resource → (store kind, Describe operation, its name member, pass the ARN instead of the name)
SOURCES: dict[str, tuple[str, str, str, bool]] = {
    "TrainingJob": ("training-job", "DescribeTrainingJob", "TrainingJobName", False),
    "Endpoint": ("endpoint", "DescribeEndpoint", "EndpointName", False),
    "Model": ("model", "DescribeModel", "ModelName", False),
    "ModelPackage": ("model-package", "DescribeModelPackage", "ModelPackageName", True),
    "ModelPackageGroup": ("model-package-group", "DescribeModelPackageGroup", "ModelPackageGroupName", False),
    "HyperParameterTuningJob": (
        "hyper-parameter-tuning-job",
        "DescribeHyperParameterTuningJob",
        "HyperParameterTuningJobName",
        False,
    ),
}
_MISSING = object()


def _values(doc: Any, path: list[str]) -> list[Any]:
    """Every value at ``path`` under ``doc`` (lists fan out)."""
    if not path:
        return [doc]
    if isinstance(doc, list):
        return [v for item in doc for v in _values(item, path)]
    if isinstance(doc, dict) and path[0] in doc:
        return _values(doc[path[0]], path[1:])
    return []


def _number(value: Any, name: str) -> float | None:
    """``value`` as a number (an ISO time as epoch seconds), or None when it is not one (nor a bool)."""
    if isinstance(value, bool):
        return None
    with contextlib.suppress(TypeError, ValueError):
        return float(value)
    if isinstance(value, str) and len(value) >= 10 and value[4:5] == "-":  # an ISO time
        with contextlib.suppress(ValidationException):
            return to_epoch(value, name)
    return None


def _matches(value: Any, op: str, wanted: str | None, name: str) -> bool:
    if op == "Contains":
        if isinstance(value, list):
            return any(str(v) == wanted for v in value)
        return wanted is not None and wanted.lower() in str(value).lower()
    text = str(value).lower() if isinstance(value, bool) else str(value)
    if op == "Equals":
        number = _number(value, name)
        return text == wanted or (number is not None and number == _number(wanted, name))
    if op == "NotEquals":
        return not _matches(value, "Equals", wanted, name)
    if op == "In":
        return any(_matches(value, "Equals", item.strip(), name) for item in (wanted or "").split(","))
    left, right = _number(value, name), _number(wanted, name)
    if left is None or right is None:
        if op in ("GreaterThan", "GreaterThanOrEqualTo", "LessThan", "LessThanOrEqualTo"):
            left_s, right_s = text, wanted or ""
            return {
                "GreaterThan": left_s > right_s,
                "GreaterThanOrEqualTo": left_s >= right_s,
                "LessThan": left_s < right_s,
                "LessThanOrEqualTo": left_s <= right_s,
            }[op]
        return False
    return {
        "GreaterThan": left > right,
        "GreaterThanOrEqualTo": left >= right,
        "LessThan": left < right,
        "LessThanOrEqualTo": left <= right,
    }[op]


def _filter(doc: dict[str, Any], flt: dict[str, Any]) -> bool:
    name = flt["Name"]
    op = flt.get("Operator") or "Equals"
    values = _values(doc, name.split("."))
    if op == "Exists":
        return bool(values)
    if op == "NotExists":
        return not values
    if "Value" not in flt:
        raise ValidationException(f"Filter on {name} with operator {op} needs a Value.")
    if op == "NotEquals":
        return all(_matches(v, op, flt["Value"], name) for v in values)
    if op == "Contains" and len(values) > 1 and not any(isinstance(v, list) for v in values):
        values = [values]  # a list crossed by the path: Contains asks for one of its elements
    return any(_matches(v, op, flt["Value"], name) for v in values)


def _nested(doc: dict[str, Any], nested: dict[str, Any]) -> bool:
    prop = nested["NestedPropertyName"]
    for element in _values(doc, prop.split(".")):
        items = element if isinstance(element, list) else [element]
        for item in items:
            wrapped: dict[str, Any] = {}
            cursor = wrapped
            parts = prop.split(".")
            for part in parts[:-1]:
                cursor = cursor.setdefault(part, {})
            cursor[parts[-1]] = item
            if all(_filter(wrapped, f) for f in nested.get("Filters") or []):
                return True
    return False


def matches(doc: dict[str, Any], expression: dict[str, Any] | None) -> bool:
    """Whether ``doc`` satisfies a SearchExpression (None: everything does)."""
    if not expression:
        return True
    parts = [
        *(_filter(doc, f) for f in expression.get("Filters") or []),
        *(_nested(doc, n) for n in expression.get("NestedFilters") or []),
        *(matches(doc, e) for e in expression.get("SubExpressions") or []),
    ]
    if not parts:
        return True
    return any(parts) if expression.get("Operator") == "Or" else all(parts)


def _sort_key(doc: dict[str, Any], sort_by: str) -> tuple[int, Any]:
    found = _values(doc, sort_by.split("."))
    if not found:
        return (0, "")
    number = _number(found[0], sort_by)
    return (1, number) if number is not None else (2, str(found[0]))


@operation("Search")
async def search(platform: Services, params: dict[str, Any]) -> dict[str, Any]:
    """Describe documents of ``Resource`` that satisfy ``SearchExpression``, sorted and paginated."""
    resource = params["Resource"]
    results: list[dict[str, Any]] = []
    source = SOURCES.get(resource)
    describe = platform.registry.operations.get(source[1]) if source else None
    if source is not None and describe is not None:
        kind, _, member, by_arn = source
        for record in platform.store.list(kind):
            try:
                doc = await describe(platform, {member: record.arn if by_arn else record.name})
            except ValidationException:  # deleted meanwhile
                continue
            doc = dict(doc or {})
            doc["Tags"] = platform.store.tags(record.arn)
            tag_map = {t["Key"]: t["Value"] for t in doc["Tags"]}
            if matches({**doc, "Tags": tag_map}, params.get("SearchExpression")):
                results.append(doc)
    sort_by = params.get("SortBy") or "LastModifiedTime"
    descending = (params.get("SortOrder") or "Descending") == "Descending"
    results.sort(key=lambda d: _sort_key(d, sort_by), reverse=descending)
    fingerprint = json.dumps(
        {k: params.get(k) for k in sorted(params) if k not in {"NextToken", "MaxResults"}}, default=str
    )
    start = decode_offset(params["NextToken"], fingerprint) if params.get("NextToken") else 0
    size = params.get("MaxResults") or 10
    page = results[start : start + size]
    token = encode_token(start + size, fingerprint) if start + size < len(results) else None
    return {
        "Results": [{resource: doc} for doc in page],
        "NextToken": token,
        "TotalHits": {"Value": len(results), "Relation": "EqualTo"},
    }

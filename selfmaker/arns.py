"""ARNs of selfmaker resources: ``arn:aws:sagemaker:{region}:{account}:{type}/{lower-cased name}``."""

from __future__ import annotations

#: resource kind (as stored) -> ARN resource type
ARN_TYPES: dict[str, str] = {
    "model": "model",
    "endpoint-config": "endpoint-config",
    "endpoint": "endpoint",
    "training-job": "training-job",
    "transform-job": "transform-job",
    "processing-job": "processing-job",
    "hyper-parameter-tuning-job": "hyper-parameter-tuning-job",
    "model-package": "model-package",
    "model-package-group": "model-package-group",
    "monitoring-schedule": "monitoring-schedule",
    "data-quality-job-definition": "data-quality-job-definition",
}


def make_arn(region: str, account_id: str, kind: str, name: str) -> str:
    """The ARN of resource ``name`` of ``kind`` (SageMaker lower-cases the name part)."""
    return f"arn:aws:sagemaker:{region}:{account_id}:{ARN_TYPES[kind]}/{name.lower()}"


def parse_arn(arn: str) -> tuple[str, str] | None:
    """``(kind, lower-cased name)`` of a SageMaker ARN, or None when it is not one."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "sagemaker" or "/" not in parts[5]:
        return None
    kind, _, name = parts[5].partition("/")
    if kind not in ARN_TYPES.values() or not name:
        return None
    return kind, name.lower()

"""IAM, bucket and ECR policy documents as plain dicts (pure, tested without Pulumi).

Every statement names its resources. The only ``"Resource": "*"`` statements are for actions AWS does
not scope to a resource (``ecr:GetAuthorizationToken``; ``cloudwatch:PutMetricData``, which is then
narrowed by a namespace condition) — see :data:`UNSCOPED_ACTIONS`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Document = dict[str, Any]

#: Actions that AWS only allows on ``"Resource": "*"``.
UNSCOPED_ACTIONS: frozenset[str] = frozenset(
    {"ecr:GetAuthorizationToken", "cloudwatch:PutMetricData", "ecs:DiscoverPollEndpoint"}
)
#: What the ECS agent on an AWS Batch instance does in its cluster (AmazonEC2ContainerServiceforEC2Role
#: without its wildcards); ``ecs:DiscoverPollEndpoint`` is unscoped and granted separately.
ECS_AGENT_ACTIONS = (
    "ecs:RegisterContainerInstance",
    "ecs:DeregisterContainerInstance",
    "ecs:Poll",
    "ecs:StartTelemetrySession",
    "ecs:UpdateContainerInstancesState",
    "ecs:SubmitAttachmentStateChanges",
    "ecs:SubmitContainerStateChange",
    "ecs:SubmitTaskStateChange",
)

ECR_PULL_ACTIONS = ("ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage")
LOG_WRITE_ACTIONS = ("logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams")
METRICS_NAMESPACE = "selfmaker"


def document(*statements: Document) -> Document:
    """Wrap statements in a 2012-10-17 policy document."""
    return {"Version": "2012-10-17", "Statement": list(statements)}


def assume_role_policy(service: str, source_account: str | None = None) -> Document:
    """Trust policy letting ``service`` (e.g. ``ec2.amazonaws.com``) assume the role.

    ``source_account`` limits a service acting on behalf of resources (flow logs) to this account
    (the confused-deputy guard AWS recommends).
    """
    statement: Document = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if source_account:
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": source_account}}
    return document(statement)


def _objects(bucket_arn: str, prefix: str) -> str:
    return f"{bucket_arn}/{prefix}*"


def s3_read(sid: str, bucket_arn: str, prefix: str) -> list[Document]:
    """Read objects under ``prefix`` and list only that prefix."""
    return [
        {
            "Sid": f"{sid}Get",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": _objects(bucket_arn, prefix),
        },
        {
            "Sid": f"{sid}List",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        },
    ]


def s3_write(
    sid: str, bucket_arn: str, prefix: str, *, read: bool = False, delete: bool = False
) -> list[Document]:
    """Write (and optionally read/delete) objects under ``prefix``; listing is limited to the prefix."""
    actions = ["s3:PutObject", "s3:AbortMultipartUpload"]
    if read:
        actions += ["s3:GetObject"]
    if delete:
        actions += ["s3:DeleteObject"]
    return [
        {
            "Sid": f"{sid}Objects",
            "Effect": "Allow",
            "Action": actions,
            "Resource": _objects(bucket_arn, prefix),
        },
        {
            "Sid": f"{sid}List",
            "Effect": "Allow",
            "Action": "s3:ListBucket",
            "Resource": bucket_arn,
            "Condition": {"StringLike": {"s3:prefix": [f"{prefix}*"]}},
        },
    ]


def ecr_pull(repository_arns: Iterable[str]) -> list[Document]:
    """Pull from the given repositories; the token call cannot be scoped."""
    arns = sorted(set(repository_arns))
    if not arns:
        raise ValueError("ecr_pull needs at least one repository ARN")
    return [
        {"Sid": "EcrToken", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"},
        {"Sid": "EcrPull", "Effect": "Allow", "Action": list(ECR_PULL_ACTIONS), "Resource": arns},
    ]


def logs_and_metrics(log_group_pattern: str) -> list[Document]:
    """Write container logs under the stack's log groups and metrics in the ``selfmaker`` namespace."""
    return [
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": list(LOG_WRITE_ACTIONS),
            "Resource": [log_group_pattern, f"{log_group_pattern}:*"],
        },
        {
            "Sid": "Metrics",
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": METRICS_NAMESPACE}},
        },
    ]


def kms_use(key_arn: str | None) -> list[Document]:
    """Encrypt/decrypt with the store's KMS key (nothing when buckets use S3-managed keys)."""
    if not key_arn:
        return []
    return [
        {
            "Sid": "Kms",
            "Effect": "Allow",
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": key_arn,
        }
    ]


@dataclass(frozen=True)
class RoleScope:
    """What the instance roles of serving and async groups may touch: buckets, prefixes, repositories, log
    groups, queues."""

    models_bucket_arn: str
    data_bucket_arn: str
    outputs_bucket_arn: str
    repository_arns: tuple[str, ...]
    log_group_pattern: str
    queue_pattern: str
    topic_pattern: str
    model_prefix: str = "models/"
    async_prefix: str = "async/"
    kms_key_arn: str | None = None


def serving_policy(scope: RoleScope) -> Document:
    """Model servers: read the model prefix, pull images, write logs and metrics."""
    return document(
        *s3_read("Models", scope.models_bucket_arn, scope.model_prefix),
        *ecr_pull(scope.repository_arns),
        *logs_and_metrics(scope.log_group_pattern),
        *kms_use(scope.kms_key_arn),
    )


def async_worker_policy(scope: RoleScope) -> Document:
    """Async inference workers: consume the stack's queues, publish to its topics, read inputs and
    models, write outputs and failures."""
    return document(
        {
            "Sid": "Queues",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
                "sqs:SendMessage",
            ],
            "Resource": scope.queue_pattern,
        },
        {"Sid": "Topics", "Effect": "Allow", "Action": "sns:Publish", "Resource": scope.topic_pattern},
        *s3_read("Models", scope.models_bucket_arn, scope.model_prefix),
        *s3_write("Async", scope.outputs_bucket_arn, scope.async_prefix, read=True),
        *ecr_pull(scope.repository_arns),
        *logs_and_metrics(scope.log_group_pattern),
        *kms_use(scope.kms_key_arn),
    )


@dataclass(frozen=True)
class JobScope:
    """What the AWS Batch roles may touch: the buckets, the image repository, the jobs' log group and the
    ECS clusters Batch creates for the stack's compute environments."""

    models_bucket_arn: str
    data_bucket_arn: str
    outputs_bucket_arn: str
    repository_arns: tuple[str, ...]
    log_group_arn: str
    cluster_pattern: str
    container_instance_pattern: str
    model_prefix: str = "models/"
    data_prefix: str = ""
    #: jobs write their outputs, checkpoints and state (``selfmaker-jobs/``) anywhere in the outputs bucket
    outputs_prefix: str = ""
    kms_key_arn: str | None = None


def batch_instance_policy(scope: JobScope) -> Document:
    """Batch's container instances: the ECS agent in the stack's clusters, image pulls for the jobs and the
    awslogs driver writing the jobs' log group (both run with the instance's role)."""
    return document(
        {
            "Sid": "EcsAgent",
            "Effect": "Allow",
            "Action": list(ECS_AGENT_ACTIONS),
            "Resource": [scope.cluster_pattern, scope.container_instance_pattern],
        },
        {"Sid": "EcsDiscover", "Effect": "Allow", "Action": "ecs:DiscoverPollEndpoint", "Resource": "*"},
        *ecr_pull(scope.repository_arns),
        {
            "Sid": "JobLogs",
            "Effect": "Allow",
            "Action": list(LOG_WRITE_ACTIONS),
            "Resource": [scope.log_group_arn, f"{scope.log_group_arn}:*"],
        },
    )


def batch_job_policy(scope: JobScope) -> Document:
    """The jobs' containers: read the data bucket and the model prefix, write outputs, checkpoints and job
    state in the outputs bucket (read back to resume, delete old checkpoints), pull the image, write logs."""
    return document(
        *s3_read("Data", scope.data_bucket_arn, scope.data_prefix),
        *s3_read("Models", scope.models_bucket_arn, scope.model_prefix),
        *s3_write("Outputs", scope.outputs_bucket_arn, scope.outputs_prefix, read=True, delete=True),
        *ecr_pull(scope.repository_arns),
        *logs_and_metrics(scope.log_group_arn),
        *kms_use(scope.kms_key_arn),
    )


def flow_logs_policy(log_group_arn: str) -> Document:
    """What the VPC flow-logs service needs on its own log group."""
    return document(
        {
            "Sid": "FlowLogs",
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogStream",
                "logs:PutLogEvents",
                "logs:DescribeLogStreams",
                "logs:DescribeLogGroups",
            ],
            "Resource": [log_group_arn, f"{log_group_arn}:*"],
        },
    )


def tls_only_bucket_policy(bucket_arn: str, *extra: Document) -> Document:
    """Deny any request to the bucket that is not over TLS 1.2+ (plus ``extra`` statements)."""
    resources = [bucket_arn, f"{bucket_arn}/*"]
    return document(
        {
            "Sid": "DenyInsecureTransport",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "DenyOldTls",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": resources,
            "Condition": {"NumericLessThan": {"s3:TlsVersion": "1.2"}},
        },
        *extra,
    )


#: Regions that predate August 2022 deliver load-balancer access logs as these ELB accounts; newer
#: regions use the log-delivery service principal (Elastic Load Balancing user guide, "Enable access logs").
ELB_LOG_ACCOUNTS: dict[str, str] = {
    "us-east-1": "127311923021",
    "us-east-2": "033677994240",
    "us-west-1": "027434742980",
    "us-west-2": "797873946194",
    "af-south-1": "098369216593",
    "ca-central-1": "985666609251",
    "eu-central-1": "054676820928",
    "eu-west-1": "156460612806",
    "eu-west-2": "652711504416",
    "eu-south-1": "635631232127",
    "eu-west-3": "009996457667",
    "eu-north-1": "897822967062",
    "ap-east-1": "754344448648",
    "ap-northeast-1": "582318560864",
    "ap-northeast-2": "600734575887",
    "ap-northeast-3": "383597477331",
    "ap-southeast-1": "114774131450",
    "ap-southeast-2": "783225319266",
    "ap-south-1": "718504428378",
    "me-south-1": "076674570225",
    "sa-east-1": "507241528517",
}


def load_balancer_log_delivery(
    bucket_arn: str, prefix: str, account_id: str, region: str, partition: str
) -> Document:
    """The bucket-policy statement letting Elastic Load Balancing write access logs under ``prefix``."""
    if region in ELB_LOG_ACCOUNTS:
        principal: dict[str, str] = {"AWS": f"arn:{partition}:iam::{ELB_LOG_ACCOUNTS[region]}:root"}
    else:
        principal = {"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}
    return {
        "Sid": "LoadBalancerAccessLogs",
        "Effect": "Allow",
        "Principal": principal,
        "Action": "s3:PutObject",
        "Resource": f"{bucket_arn}/{prefix.strip('/')}/AWSLogs/{account_id}/*",
    }


def ecr_lifecycle_policy(keep_last: int, untagged_days: int = 7) -> Document:
    """Expire untagged images after ``untagged_days`` and keep only the newest ``keep_last`` images.

    The ``any`` rule must have the highest priority number (ECR evaluates it last).
    """
    if keep_last < 1 or untagged_days < 1:
        raise ValueError("keep_last and untagged_days must be >= 1")
    return {
        "rules": [
            {
                "rulePriority": 1,
                "description": f"expire untagged images after {untagged_days} days",
                "selection": {
                    "tagStatus": "untagged",
                    "countType": "sinceImagePushed",
                    "countUnit": "days",
                    "countNumber": untagged_days,
                },
                "action": {"type": "expire"},
            },
            {
                "rulePriority": 2,
                "description": f"keep the last {keep_last} images",
                "selection": {
                    "tagStatus": "any",
                    "countType": "imageCountMoreThan",
                    "countNumber": keep_last,
                },
                "action": {"type": "expire"},
            },
        ]
    }


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def wildcard_violations(doc: Document) -> list[str]:
    """Allow statements that grant too much: a wildcard action (``*``, ``svc:*``) anywhere, or
    ``"Resource": "*"`` with an action outside :data:`UNSCOPED_ACTIONS`. Empty list = clean.

    Used by the tests over every policy of the program and usable as a pre-deploy check.
    """
    problems: list[str] = []
    for i, stmt in enumerate(doc.get("Statement", [])):
        if stmt.get("Effect") != "Allow":
            continue
        if "NotAction" in stmt or "NotResource" in stmt:
            problems.append(f"statement {i}: NotAction/NotResource in an Allow")
        actions = [str(a) for a in _as_list(stmt.get("Action", []))]
        resources = [str(r) for r in _as_list(stmt.get("Resource", []))]
        for action in actions:
            if action == "*" or action.endswith(":*"):
                problems.append(f"statement {i}: wildcard action {action!r}")
        if "*" in resources:
            unscoped = [a for a in actions if a not in UNSCOPED_ACTIONS]
            if unscoped:
                problems.append(f"statement {i}: {unscoped} on Resource '*'")
    return problems


@dataclass(frozen=True)
class AsyncEndpointScope:
    """What one async endpoint's front and workers may touch (ARNs resolved)."""

    queue_arn: str
    topic_arns: tuple[str, ...]
    #: ``(bucket ARN, key prefix)`` pairs the endpoint's inputs may come from
    input_locations: tuple[tuple[str, str], ...]
    outputs_bucket_arn: str
    #: key prefixes of outputs, failures and the worker's state in the outputs bucket
    output_prefixes: tuple[str, ...]
    models_bucket_arn: str
    model_key: str
    repository_arns: tuple[str, ...]
    log_group_pattern: str
    kms_key_arn: str | None = None


def _input_reads(scope: AsyncEndpointScope) -> list[Document]:
    statements: list[Document] = []
    for i, (bucket_arn, prefix) in enumerate(scope.input_locations):
        statements += s3_read(f"Inputs{i}", bucket_arn, prefix)
    return statements


def async_front_policy(scope: AsyncEndpointScope, front_log_group_arn: str) -> Document:
    """The front Lambda of one async endpoint: send to its queue (nothing else on SQS), check that an
    input is readable (HEAD needs s3:GetObject; listing tells a missing key from a refused one), log."""
    return document(
        {"Sid": "Enqueue", "Effect": "Allow", "Action": "sqs:SendMessage", "Resource": scope.queue_arn},
        *_input_reads(scope),
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [front_log_group_arn, f"{front_log_group_arn}:*"],
        },
        *kms_use(scope.kms_key_arn),
    )


def async_endpoint_worker_policy(scope: AsyncEndpointScope) -> Document:
    """The worker instances of one async endpoint: consume its queue, read inputs and its model, write
    (and read back, for idempotency) outputs, failures and state, publish to its topics, pull, log."""
    statements: list[Document] = [
        {
            "Sid": "Consume",
            "Effect": "Allow",
            "Action": [
                "sqs:ReceiveMessage",
                "sqs:DeleteMessage",
                "sqs:ChangeMessageVisibility",
                "sqs:GetQueueAttributes",
            ],
            "Resource": scope.queue_arn,
        },
    ]
    if scope.topic_arns:
        statements.append(
            {
                "Sid": "Notify",
                "Effect": "Allow",
                "Action": "sns:Publish",
                "Resource": sorted(set(scope.topic_arns)),
            }
        )
    statements += _input_reads(scope)
    statements += [
        {
            "Sid": "Model",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"{scope.models_bucket_arn}/{scope.model_key}",
        },
    ]
    for i, prefix in enumerate(sorted(set(scope.output_prefixes))):
        statements += s3_write(f"Results{i}", scope.outputs_bucket_arn, prefix, read=True)
    return document(
        *statements,
        *ecr_pull(scope.repository_arns),
        *logs_and_metrics(scope.log_group_pattern),
        *kms_use(scope.kms_key_arn),
    )


def serverless_function_policy(
    model_object_arn: str, log_group_arn: str, kms_key_arn: str | None = None
) -> Document:
    """A serverless variant's function: read its one model archive and write its own log group, nothing else.

    (The image is pulled by the Lambda service under the repository policy of
    :func:`ecr_lambda_pull_policy`, not with this role.)
    """
    if not model_object_arn.startswith("arn:") or model_object_arn.endswith("*"):
        raise ValueError(f"serverless_function_policy needs one model object ARN, got {model_object_arn!r}")
    return document(
        {"Sid": "Model", "Effect": "Allow", "Action": "s3:GetObject", "Resource": model_object_arn},
        {
            "Sid": "Logs",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [log_group_arn, f"{log_group_arn}:*"],
        },
        *kms_use(kms_key_arn),
    )


def ecr_lambda_pull_policy(function_arn_pattern: str, account_id: str) -> Document:
    """Repository policy letting this account's Lambda functions (and only those matching the pattern)
    pull the image: container-image functions are pulled by the Lambda service, not by their role."""
    return document(
        {
            "Sid": "LambdaPull",
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            "Condition": {
                "StringLike": {"aws:sourceArn": function_arn_pattern},
                "StringEquals": {"aws:sourceAccount": account_id},
            },
        }
    )

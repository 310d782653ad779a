"""`ModelStore`: encrypted, versioned, private, TLS-only S3 buckets for models, data and outputs."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import naming, policies

ENCRYPTIONS = ("kms", "s3")
BUCKETS = ("models", "data", "outputs")


@dataclass
class ModelStoreArgs:
    """Inputs of :class:`ModelStore`; validated when constructed."""

    tags: Mapping[str, str]
    encryption: str = "kms"
    outputs_expiration_days: int = 90
    noncurrent_version_days: int = 30
    abort_multipart_days: int = 7
    force_destroy: bool = False
    #: Where the gateway's access logs go, as (prefix, account id, region, partition); None = no gateway.
    #: With ``encryption="kms"`` they get a ``logs`` bucket of their own with S3-managed keys, the only
    #: encryption load-balancer log delivery supports; otherwise they go to the outputs bucket.
    load_balancer_logs: tuple[str, str, str, str] | None = None

    def __post_init__(self) -> None:
        if self.encryption not in ENCRYPTIONS:
            raise ValueError(
                f"ModelStoreArgs.encryption: must be one of {ENCRYPTIONS}, got {self.encryption!r}"
            )
        for name in ("outputs_expiration_days", "noncurrent_version_days", "abort_multipart_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelStoreArgs.{name}: must be >= 1")


def _bucket_policy(args: ModelStoreArgs, receives_logs: bool, bucket_arn: str) -> str:
    """TLS-only policy of a bucket; the one receiving the gateway's access logs lets ELB write them."""
    extra: list[policies.Document] = []
    if receives_logs and args.load_balancer_logs is not None:
        prefix, account, region, partition = args.load_balancer_logs
        extra.append(policies.load_balancer_log_delivery(bucket_arn, prefix, account, region, partition))
    return json.dumps(policies.tls_only_bucket_policy(bucket_arn, *extra))


def lifecycle_rules(
    bucket: str, args: ModelStoreArgs
) -> list[aws.s3.BucketLifecycleConfigurationRuleArgsDict]:
    """Lifecycle rules of one bucket (snake_case dicts for pulumi_aws).

    Every bucket drops incomplete multipart uploads; outputs also expire current objects and
    old versions — models and data are kept until someone deletes them.
    """
    rules: list[aws.s3.BucketLifecycleConfigurationRuleArgsDict] = [
        {
            "id": "abort-incomplete-multipart",
            "status": "Enabled",
            "filter": {"prefix": ""},
            "abort_incomplete_multipart_upload": {"days_after_initiation": args.abort_multipart_days},
        }
    ]
    if bucket in ("outputs", "logs"):
        rules.append(
            {
                "id": "expire-outputs",
                "status": "Enabled",
                "filter": {"prefix": ""},
                "expiration": {"days": args.outputs_expiration_days},
                "noncurrent_version_expiration": {"noncurrent_days": args.noncurrent_version_days},
            }
        )
    return rules


class ModelStore(pulumi.ComponentResource):
    """Three buckets (``models``, ``data``, ``outputs``) and, with ``encryption="kms"``, their KMS key."""

    def __init__(self, name: str, args: ModelStoreArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("selfmaker:storage:ModelStore", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        self.kms_key: aws.kms.Key | None = None
        if args.encryption == "kms":
            self.kms_key = aws.kms.Key(
                naming.child_name(name, "key"),
                description=f"{name}: S3 encryption for models, data and outputs",
                enable_key_rotation=True,
                deletion_window_in_days=30,
                tags=tags,
                opts=child,
            )

        self.buckets: dict[str, aws.s3.Bucket] = {}
        logs_role = None
        if args.load_balancer_logs is not None:
            logs_role = "logs" if args.encryption == "kms" else "outputs"
        roles = (*BUCKETS, "logs") if logs_role == "logs" else BUCKETS
        for role in roles:
            bucket = aws.s3.Bucket(
                naming.child_name(name, role),
                force_destroy=args.force_destroy,
                tags={**tags, "Purpose": role},
                opts=child,
            )
            aws.s3.BucketOwnershipControls(
                naming.child_name(name, f"{role}-ownership"),
                bucket=bucket.id,
                rule={"object_ownership": "BucketOwnerEnforced"},
                opts=child,
            )
            block = aws.s3.BucketPublicAccessBlock(
                naming.child_name(name, f"{role}-public-access"),
                bucket=bucket.id,
                block_public_acls=True,
                block_public_policy=True,
                ignore_public_acls=True,
                restrict_public_buckets=True,
                opts=child,
            )
            default: (
                aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgsDict
            )
            if self.kms_key is not None and role != "logs":
                default = {"sse_algorithm": "aws:kms", "kms_master_key_id": self.kms_key.arn}
            else:
                default = {"sse_algorithm": "AES256"}
            aws.s3.BucketServerSideEncryptionConfiguration(
                naming.child_name(name, f"{role}-encryption"),
                bucket=bucket.id,
                rules=[{"apply_server_side_encryption_by_default": default, "bucket_key_enabled": True}],
                opts=child,
            )
            aws.s3.BucketVersioning(
                naming.child_name(name, f"{role}-versioning"),
                bucket=bucket.id,
                versioning_configuration={"status": "Enabled"},
                opts=child,
            )
            aws.s3.BucketPolicy(
                naming.child_name(name, f"{role}-tls-only"),
                bucket=bucket.id,
                policy=bucket.arn.apply(functools.partial(_bucket_policy, args, role == logs_role)),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[block]),
            )
            aws.s3.BucketLifecycleConfiguration(
                naming.child_name(name, f"{role}-lifecycle"),
                bucket=bucket.id,
                rules=lifecycle_rules(role, args),
                opts=child,
            )
            self.buckets[role] = bucket

        #: The bucket the gateway writes its access logs to (None without ``load_balancer_logs``).
        self.access_logs_bucket: aws.s3.Bucket | None = self.buckets[logs_role] if logs_role else None
        self.kms_key_arn: pulumi.Output[str] | None = self.kms_key.arn if self.kms_key is not None else None
        self.register_outputs(
            {
                **{f"{role}_bucket": bucket.bucket for role, bucket in self.buckets.items()},
                "kms_key_arn": self.kms_key_arn,
            }
        )

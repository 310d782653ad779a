"""`Roles`: instance roles and profiles for serving and async workers (least privilege); the roles of
training and transform jobs belong to AWS Batch (:mod:`infra.components.jobs`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import naming, policies

KINDS = ("serving", "async")
_BUILDERS: dict[str, Callable[[policies.RoleScope], policies.Document]] = {
    "serving": policies.serving_policy,
    "async": policies.async_worker_policy,
}


@dataclass
class RolesArgs:
    """Inputs of :class:`Roles`. ARNs may be outputs of other components; the rest is plain."""

    models_bucket_arn: pulumi.Input[str]
    data_bucket_arn: pulumi.Input[str]
    outputs_bucket_arn: pulumi.Input[str]
    repository_arns: Sequence[pulumi.Input[str]]
    partition: str
    region: str
    account_id: str
    prefix: str
    tags: Mapping[str, str]
    kms_key_arn: pulumi.Input[str] | None = None
    model_prefix: str = "models/"
    ssm_access: bool = True

    def __post_init__(self) -> None:
        if not self.repository_arns:
            raise ValueError("RolesArgs.repository_arns: at least one repository is needed")
        for name in ("partition", "region", "account_id", "prefix"):
            if not getattr(self, name):
                raise ValueError(f"RolesArgs.{name}: required")
        if not self.account_id.isdigit() or len(self.account_id) != 12:
            raise ValueError(f"RolesArgs.account_id: {self.account_id!r} is not a 12-digit account id")
        if not {"Project", "Stack"} <= set(self.tags):
            raise ValueError("RolesArgs.tags: Project and Stack tags are needed to scope permissions")
        if naming.normalize_key_prefix(self.model_prefix) != self.model_prefix or not self.model_prefix:
            raise ValueError(f"RolesArgs.model_prefix: {self.model_prefix!r} must look like 'models/'")


class Roles(pulumi.ComponentResource):
    """Role + inline policy + instance profile per kind (``serving``, ``async``)."""

    def __init__(self, name: str, args: RolesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("selfmaker:iam:Roles", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        def scope_doc(kind: str) -> pulumi.Output[str]:
            def build(values: dict[str, Any]) -> str:
                scope = policies.RoleScope(
                    models_bucket_arn=values["models"],
                    data_bucket_arn=values["data"],
                    outputs_bucket_arn=values["outputs"],
                    repository_arns=tuple(values["repos"]),
                    log_group_pattern=naming.log_group_arn_pattern(
                        args.partition, args.region, args.account_id, args.prefix
                    ),
                    queue_pattern=naming.prefixed_arn_pattern(
                        args.partition, "sqs", args.region, args.account_id, args.prefix
                    ),
                    topic_pattern=naming.prefixed_arn_pattern(
                        args.partition, "sns", args.region, args.account_id, args.prefix
                    ),
                    model_prefix=args.model_prefix,
                    kms_key_arn=values["kms"],
                )
                return json.dumps(_BUILDERS[kind](scope))

            return pulumi.Output.all(
                models=args.models_bucket_arn,
                data=args.data_bucket_arn,
                outputs=args.outputs_bucket_arn,
                repos=pulumi.Output.all(*args.repository_arns),
                kms=args.kms_key_arn,
            ).apply(build)

        self.roles: dict[str, aws.iam.Role] = {}
        self.profiles: dict[str, aws.iam.InstanceProfile] = {}
        for kind in KINDS:
            role = aws.iam.Role(
                naming.child_name(name, kind),
                description=f"selfmaker {kind} instances",
                assume_role_policy=json.dumps(policies.assume_role_policy("ec2.amazonaws.com")),
                tags=tags,
                opts=child,
            )
            aws.iam.RolePolicy(
                naming.child_name(name, f"{kind}-policy"), role=role.id, policy=scope_doc(kind), opts=child
            )
            if args.ssm_access:
                # Session Manager instead of SSH: no key pairs, no port 22.
                aws.iam.RolePolicyAttachment(
                    naming.child_name(name, f"{kind}-ssm"),
                    role=role.name,
                    policy_arn=f"arn:{args.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore",
                    opts=child,
                )
            self.roles[kind] = role
            self.profiles[kind] = aws.iam.InstanceProfile(
                naming.child_name(name, f"{kind}-profile"),
                role=role.name,
                tags=tags,
                opts=child,
            )

        self.register_outputs(
            {
                **{f"{kind}_role_arn": role.arn for kind, role in self.roles.items()},
                **{f"{kind}_instance_profile_arn": p.arn for kind, p in self.profiles.items()},
            }
        )

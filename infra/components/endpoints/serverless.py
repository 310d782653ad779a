"""`ServerlessEndpoint`: serverless production variants as Lambda functions behind the stack's `Gateway`.

Per variant (SageMaker's ServerlessConfig on AWS's own parts): a Lambda function running the stack's
image in its ``lambda`` mode (``package_type: Image``; serving/lambda_handler.py), with
``MemorySizeInMB`` as its memory and ``MaxConcurrency`` as its reserved concurrency (a call beyond it is
throttled, see docs/serverless.md); every deployment publishes a version behind the alias ``live``, which
keeps ``ProvisionedConcurrency`` sandboxes initialised (model loaded). The alias is the one target of a
Lambda target group; the load balancer may invoke that alias alone. Per endpoint: the weighted rule on
``POST /endpoints/<name>/invocations`` and a header rule per variant for ``TargetVariant``, as for
real-time endpoints, and a CloudWatch dashboard. Each function has its own role (read its model archive,
write its log group).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import endpoints, naming, policies
from infra.components.endpoints.gateway import Gateway, Route

#: The alias the load balancer invokes (a published version; provisioned concurrency is configured on it).
ALIAS = "live"
MEMORY_SIZES_MB = (1024, 2048, 3072, 4096, 5120, 6144)
MAX_CONCURRENCY = 200


@dataclass(frozen=True)
class ServerlessVariantArgs:
    """One serverless production variant (``aws.sagemaker.EndpointConfiguration``'s names:
    ``variant_name``, ``initial_variant_weight``, ``memory_size_in_mb``, ``max_concurrency``,
    ``provisioned_concurrency``). ``model_key`` is the archive's key in the models bucket."""

    variant_name: str
    model_key: str
    image_tag: str
    memory_size_in_mb: int
    max_concurrency: int
    provisioned_concurrency: int | None = None
    initial_variant_weight: float = 1.0
    environment: Mapping[str, str] = field(default_factory=dict)
    timeout_seconds: int = 60
    ephemeral_storage_in_mb: int = 1024
    multi_value_headers: bool = False


@dataclass
class ServerlessEndpointArgs:
    """Inputs of :class:`ServerlessEndpoint`; validated when constructed."""

    gateway: Gateway
    variants: Sequence[ServerlessVariantArgs]
    priority_block: int
    repository_url: pulumi.Input[str]
    models_bucket: pulumi.Input[str]
    models_bucket_arn: pulumi.Input[str]
    region: str
    account_id: str
    partition: str
    prefix: str
    tags: Mapping[str, str]
    kms_key_arn: pulumi.Input[str] | None = None
    log_retention_days: int = 30
    alb_weights: list[int] = field(init=False)

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ValueError:
            return ValueError(f"ServerlessEndpointArgs.{name}: {message}")

        names = [v.variant_name for v in self.variants]
        problem = endpoints.variant_names_problem(names)
        if problem is not None:
            raise bad("variants", problem)
        for v in self.variants:
            where = f"variants[{v.variant_name}]"
            if v.memory_size_in_mb not in MEMORY_SIZES_MB:
                raise bad(f"{where}.memory_size_in_mb", f"must be one of {list(MEMORY_SIZES_MB)}")
            if not 1 <= v.max_concurrency <= MAX_CONCURRENCY:
                raise bad(f"{where}.max_concurrency", f"must be 1-{MAX_CONCURRENCY}")
            if (
                v.provisioned_concurrency is not None
                and not 1 <= v.provisioned_concurrency <= v.max_concurrency
            ):
                raise bad(
                    f"{where}.provisioned_concurrency", f"must be 1-max_concurrency ({v.max_concurrency})"
                )
            if not v.model_key.endswith(".tar.gz") or v.model_key.startswith("/"):
                raise bad(f"{where}.model_key", f"{v.model_key!r} is not a model.tar.gz key")
            if not 1 <= v.timeout_seconds <= 900:
                raise bad(f"{where}.timeout_seconds", "must be 1-900 (Lambda's limit)")
            if not 512 <= v.ephemeral_storage_in_mb <= 10240:
                raise bad(f"{where}.ephemeral_storage_in_mb", "must be 512-10240")
        if not self.account_id.isdigit() or len(self.account_id) != 12:
            raise bad("account_id", f"{self.account_id!r} is not a 12-digit account id")
        try:
            self.alb_weights = endpoints.alb_weights([v.initial_variant_weight for v in self.variants])
            endpoints.rule_priorities(self.priority_block, names)
        except ValueError as exc:
            raise bad("variants", str(exc)) from None
        if self.priority_block % endpoints.BLOCK or not 0 < self.priority_block < endpoints.MAX_PRIORITY:
            raise bad(
                "priority_block", f"must be a multiple of {endpoints.BLOCK} in 1..{endpoints.MAX_PRIORITY}"
            )


class ServerlessEndpoint(pulumi.ComponentResource):
    """Log group, role, function, alias (+ provisioned concurrency), Lambda target group per variant;
    listener rules per endpoint."""

    def __init__(
        self, name: str, args: ServerlessEndpointArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("selfmaker:endpoints:ServerlessEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "Endpoint": name}
        gateway = args.gateway
        path = endpoints.invoke_paths(name)[0]  # the ALB cannot stream a Lambda answer: no streaming path

        self.functions: dict[str, aws.lambda_.Function] = {}
        self.aliases: dict[str, aws.lambda_.Alias] = {}
        self.target_groups: dict[str, aws.lb.TargetGroup] = {}
        for variant in args.variants:
            vname = naming.child_name(name, variant.variant_name)
            vtags = {**tags, "Variant": variant.variant_name}
            function_name = endpoints.function_name(args.prefix, name, variant.variant_name)
            log_group = aws.cloudwatch.LogGroup(
                naming.child_name(vname, "logs"),
                name=naming.log_group_name(args.prefix, vname),
                retention_in_days=args.log_retention_days,
                tags=naming.with_name(vtags, naming.child_name(vname, "logs")),
                opts=child,
            )
            role = aws.iam.Role(
                naming.child_name(vname, "role"),
                description=f"selfmaker serverless variant {name}/{variant.variant_name}",
                assume_role_policy=json.dumps(
                    policies.assume_role_policy("lambda.amazonaws.com", args.account_id)
                ),
                tags=vtags,
                opts=child,
            )
            policy = aws.iam.RolePolicy(
                naming.child_name(vname, "policy"),
                role=role.id,
                policy=pulumi.Output.all(
                    bucket=args.models_bucket_arn, logs=log_group.arn, kms=args.kms_key_arn
                ).apply(functools.partial(_function_policy, variant.model_key)),
                opts=child,
            )
            environment: dict[str, pulumi.Input[str]] = {
                **variant.environment,
                "SELFMAKER_MODEL_DATA": pulumi.Output.format(
                    "s3://{0}/{1}", args.models_bucket, variant.model_key
                ),
                "SELFMAKER_ENDPOINT_NAME": name,
                "SELFMAKER_VARIANT_NAME": variant.variant_name,
                # SageMaker's serverless payload limit (the load balancer's own limit is lower: 1 MB)
                "SAGEMAKER_MAX_PAYLOAD_IN_MB": "4",
            }
            function = aws.lambda_.Function(
                naming.child_name(vname, "function"),
                name=function_name,
                role=role.arn,
                package_type="Image",
                image_uri=pulumi.Output.concat(args.repository_url, ":", variant.image_tag),
                image_config={"commands": ["lambda"]},
                architectures=["x86_64"],
                memory_size=variant.memory_size_in_mb,
                reserved_concurrent_executions=variant.max_concurrency,
                timeout=variant.timeout_seconds,
                ephemeral_storage={"size": variant.ephemeral_storage_in_mb},
                # every change is a new version behind the alias: provisioned sandboxes are prepared for it
                publish=True,
                environment={"variables": environment},
                kms_key_arn=args.kms_key_arn,
                logging_config={"log_format": "Text", "log_group": log_group.name},
                tags=naming.with_name(vtags, function_name),
                opts=pulumi.ResourceOptions(parent=self, depends_on=[policy, log_group]),
            )
            alias = aws.lambda_.Alias(
                naming.child_name(vname, "alias"),
                name=ALIAS,
                function_name=function.name,
                function_version=function.version,
                description=f"what the gateway invokes for {name}/{variant.variant_name}",
                opts=child,
            )
            if variant.provisioned_concurrency:
                aws.lambda_.ProvisionedConcurrencyConfig(
                    naming.child_name(vname, "provisioned"),
                    function_name=function.name,
                    qualifier=alias.name,
                    provisioned_concurrent_executions=variant.provisioned_concurrency,
                    opts=child,
                )
            target_group = aws.lb.TargetGroup(
                naming.child_name(vname, "tg"),
                target_type="lambda",
                lambda_multi_value_headers_enabled=variant.multi_value_headers,
                # health checks would invoke the function all the time: a serverless variant scales to zero
                health_check={"enabled": False},
                tags=naming.with_name(vtags, naming.child_name(vname, "tg")),
                opts=child,
            )
            permission = aws.lambda_.Permission(
                naming.child_name(vname, "invoke"),
                action="lambda:InvokeFunction",
                function=function.name,
                qualifier=alias.name,
                principal="elasticloadbalancing.amazonaws.com",
                source_arn=target_group.arn,
                source_account=args.account_id,
                opts=child,
            )
            aws.lb.TargetGroupAttachment(
                naming.child_name(vname, "target"),
                target_group_arn=target_group.arn,
                target_id=alias.arn,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[permission]),
            )
            aws.cloudwatch.MetricAlarm(
                naming.child_name(vname, "throttles"),
                namespace="AWS/Lambda",
                metric_name="Throttles",
                dimensions={
                    "FunctionName": function.name,
                    "Resource": pulumi.Output.concat(function.name, ":", ALIAS),
                },
                statistic="Sum",
                period=60,
                evaluation_periods=1,
                threshold=1,
                comparison_operator="GreaterThanOrEqualToThreshold",
                treat_missing_data="notBreaching",
                alarm_description=f"{name}/{variant.variant_name}: calls beyond MaxConcurrency "
                f"({variant.max_concurrency}) were refused",
                tags=vtags,
                opts=child,
            )
            self.functions[variant.variant_name] = function
            self.aliases[variant.variant_name] = alias
            self.target_groups[variant.variant_name] = target_group

        priorities = endpoints.rule_priorities(args.priority_block, [v.variant_name for v in args.variants])
        self.weighted_rule = gateway.add_route(
            naming.child_name(name, "weighted"),
            paths=[path],
            priority=priorities.weighted,
            routes=[
                Route(self.target_groups[v.variant_name].arn, w)
                for v, w in zip(args.variants, args.alb_weights, strict=True)
            ],
        )
        # Header rules are named by their place in the block, not by variant: a rule's priority then never
        # changes, so removing or inserting a variant updates a rule's header and target group in place
        # (the engine deletes last; moving a rule onto a priority its old holder still has is refused).
        for i, variant in enumerate(args.variants):
            gateway.add_route(
                naming.child_name(name, f"target-{i + 1}"),
                paths=[path],
                priority=priorities.header[variant.variant_name],
                routes=[Route(self.target_groups[variant.variant_name].arn, 1)],
                header=(endpoints.TARGET_VARIANT_HEADER, variant.variant_name),
            )
        self.dashboard = aws.cloudwatch.Dashboard(
            naming.child_name(name, "dashboard"),
            dashboard_name=f"{args.prefix}-{name}",
            dashboard_body=pulumi.Output.all(**{v: f.name for v, f in self.functions.items()}).apply(
                lambda names: json.dumps(
                    endpoints.serverless_dashboard_body(
                        f"selfmaker serverless endpoint {name}", args.region, names, ALIAS
                    ),
                    sort_keys=True,
                )
            ),
            opts=child,
        )
        #: What a client calls (sagemaker-runtime's InvokeEndpoint URL through the gateway).
        self.url: pulumi.Output[str] = pulumi.Output.concat(gateway.url, path)
        self.register_outputs(
            {
                "url": self.url,
                "function_names": {v: f.name for v, f in self.functions.items()},
                "target_group_arns": {v: tg.arn for v, tg in self.target_groups.items()},
            }
        )


def _function_policy(model_key: str, values: Mapping[str, Any]) -> str:
    """The function role's policy document, once the bucket, log group and key ARNs are known."""
    return json.dumps(
        policies.serverless_function_policy(f"{values['bucket']}/{model_key}", values["logs"], values["kms"])
    )

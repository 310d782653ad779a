"""`RealtimeEndpoint`: production variants on Auto Scaling groups behind the stack's `Gateway`.

Per variant: a target group (health check ``/ping``), an :class:`~infra.components.compute.InstanceGroup`
registered in it (ELB health checks, guarded instance refresh), target tracking on
``ALBRequestCountPerTarget`` and two alarms (target 5xx, p99 latency) that stop and roll back a rollout.
Per endpoint: a weighted listener rule on ``POST /endpoints/<name>/invocations`` (and the streaming
path), a header rule per variant for ``X-Amzn-SageMaker-Target-Variant``, and a CloudWatch dashboard.
Weights live in the listener rules alone, so a weight change replaces no instance.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from infra import endpoints, naming, userdata
from infra.components.compute import InstanceGroup, InstanceGroupArgs, InstanceRefreshArgs, WarmPoolArgs
from infra.components.endpoints.gateway import Gateway, Route


@dataclass(frozen=True)
class ManagedInstanceScalingArgs:
    """Target tracking of a variant (pulumi_aws's ``managed_instance_scaling`` names, plus the target)."""

    min_instance_count: int
    max_instance_count: int
    #: SageMakerVariantInvocationsPerInstance: requests per instance per minute
    invocations_per_instance: int = 1000


@dataclass(frozen=True)
class ProductionVariantArgs:
    """One production variant (field names of ``aws.sagemaker.EndpointConfiguration``'s variants where
    one exists: ``variant_name``, ``initial_instance_count``, ``initial_variant_weight``,
    ``volume_size_in_gb``, ``managed_instance_scaling``,
    ``container_startup_health_check_timeout_in_seconds``)."""

    variant_name: str
    model_data_uri: pulumi.Input[str]
    image_tag: str
    ami_parameter: str
    initial_instance_count: int = 1
    initial_variant_weight: float = 1.0
    accelerator: str = "cpu"
    instance_types: Sequence[str] = ("c5.large",)
    ami_id: str | None = None
    volume_size_in_gb: int = 40
    port: int = userdata.CONTAINER_PORT
    on_demand_base: int = 0
    spot_percentage: int = 0
    capacity_rebalance: bool = False
    warm_pool: WarmPoolArgs | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    managed_instance_scaling: ManagedInstanceScalingArgs | None = None
    container_startup_health_check_timeout_in_seconds: int = 300


@dataclass(frozen=True)
class RolloutArgs:
    """How changed models or images roll out (see :func:`infra.endpoints.checkpoints`)."""

    strategy: str = "canary"
    canary_percent: int = 10
    linear_step_percent: int = 25
    wait_seconds: int = 300


@dataclass(frozen=True)
class AlarmArgs:
    """Per-variant alarm thresholds (a firing alarm stops a rollout and rolls it back)."""

    target_5xx_per_minute: int = 5
    p99_latency_ms: int = 2000
    evaluation_minutes: int = 2


@dataclass
class RealtimeEndpointArgs:
    """Inputs of :class:`RealtimeEndpoint`; validated when constructed."""

    gateway: Gateway
    variants: Sequence[ProductionVariantArgs]
    priority_block: int
    vpc_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    instance_profile_arn: pulumi.Input[str]
    repository_url: pulumi.Input[str]
    region: str
    prefix: str
    tags: Mapping[str, str]
    extra_security_group_ids: Sequence[pulumi.Input[str]] = field(default_factory=list)
    rollout: RolloutArgs = field(default_factory=RolloutArgs)
    alarms: AlarmArgs = field(default_factory=AlarmArgs)
    log_retention_days: int = 30
    alb_weights: list[int] = field(init=False)
    checkpoints: list[int] = field(init=False)

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ValueError:
            return ValueError(f"RealtimeEndpointArgs.{name}: {message}")

        names = [v.variant_name for v in self.variants]
        problem = endpoints.variant_names_problem(names)
        if problem is not None:
            raise bad("variants", problem)
        for v in self.variants:
            scaling = v.managed_instance_scaling
            if scaling is not None and not (
                0 <= scaling.min_instance_count <= v.initial_instance_count <= scaling.max_instance_count
            ):
                raise bad(
                    "variants", f"{v.variant_name}: need min <= initial_instance_count <= max instances"
                )
        try:
            self.alb_weights = endpoints.alb_weights([v.initial_variant_weight for v in self.variants])
            endpoints.rule_priorities(self.priority_block, names)
        except ValueError as exc:
            raise bad("variants", str(exc)) from None
        try:
            self.checkpoints = endpoints.checkpoints(
                self.rollout.strategy,
                canary_percent=self.rollout.canary_percent,
                linear_step_percent=self.rollout.linear_step_percent,
            )
        except ValueError as exc:
            raise bad("rollout", str(exc)) from None
        if self.priority_block % endpoints.BLOCK or not 0 < self.priority_block < endpoints.MAX_PRIORITY:
            raise bad(
                "priority_block", f"must be a multiple of {endpoints.BLOCK} in 1..{endpoints.MAX_PRIORITY}"
            )


class RealtimeEndpoint(pulumi.ComponentResource):
    """Target group, instance group, scaling policy and alarms per variant; listener rules and a dashboard."""

    def __init__(
        self, name: str, args: RealtimeEndpointArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("selfmaker:endpoints:RealtimeEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "Endpoint": name}
        gateway = args.gateway
        lb_suffix = gateway.load_balancer.arn_suffix

        self.target_groups: dict[str, aws.lb.TargetGroup] = {}
        self.groups: dict[str, InstanceGroup] = {}
        self.alarms: dict[str, list[aws.cloudwatch.MetricAlarm]] = {}
        for variant in args.variants:
            vname = naming.child_name(name, variant.variant_name)
            vtags = {**tags, "Variant": variant.variant_name}
            target_group = aws.lb.TargetGroup(
                naming.child_name(vname, "tg"),
                vpc_id=args.vpc_id,
                port=variant.port,
                protocol="HTTP",
                target_type="instance",
                # the slowest in-flight request may finish; SageMaker's own drain is similarly short
                deregistration_delay=30,
                load_balancing_algorithm_type="least_outstanding_requests",
                health_check={
                    "enabled": True,
                    "path": "/ping",
                    "protocol": "HTTP",
                    "port": "traffic-port",
                    "matcher": "200",
                    "interval": 10,
                    "timeout": 5,
                    "healthy_threshold": 2,
                    "unhealthy_threshold": 3,
                },
                tags=naming.with_name(vtags, naming.child_name(vname, "tg")),
                opts=child,
            )
            self.target_groups[variant.variant_name] = target_group
            dimensions = {"LoadBalancer": lb_suffix, "TargetGroup": target_group.arn_suffix}
            errors = aws.cloudwatch.MetricAlarm(
                naming.child_name(vname, "5xx"),
                namespace="AWS/ApplicationELB",
                metric_name="HTTPCode_Target_5XX_Count",
                dimensions=dimensions,
                statistic="Sum",
                period=60,
                evaluation_periods=args.alarms.evaluation_minutes,
                threshold=args.alarms.target_5xx_per_minute,
                comparison_operator="GreaterThanOrEqualToThreshold",
                treat_missing_data="notBreaching",
                alarm_description=(
                    f"{name}/{variant.variant_name}: model servers answer 5xx "
                    "(stops and rolls back a rollout)"
                ),
                tags=vtags,
                opts=child,
            )
            latency = aws.cloudwatch.MetricAlarm(
                naming.child_name(vname, "p99"),
                namespace="AWS/ApplicationELB",
                metric_name="TargetResponseTime",
                dimensions=dimensions,
                extended_statistic="p99",
                period=60,
                evaluation_periods=args.alarms.evaluation_minutes,
                threshold=args.alarms.p99_latency_ms / 1000,
                comparison_operator="GreaterThanThreshold",
                treat_missing_data="notBreaching",
                alarm_description=(
                    f"{name}/{variant.variant_name}: p99 latency above {args.alarms.p99_latency_ms} ms"
                ),
                tags=vtags,
                opts=child,
            )
            self.alarms[variant.variant_name] = [errors, latency]
            scaling = variant.managed_instance_scaling
            group = InstanceGroup(
                vname,
                InstanceGroupArgs(
                    role="serve",
                    accelerator=variant.accelerator,
                    instance_types=variant.instance_types,
                    vpc_id=args.vpc_id,
                    subnet_ids=args.subnet_ids,
                    instance_profile_arn=args.instance_profile_arn,
                    repository_url=args.repository_url,
                    image_tag=variant.image_tag,
                    region=args.region,
                    log_group_name=naming.log_group_name(args.prefix, vname),
                    tags=tags,
                    ami_parameter=variant.ami_parameter,
                    ami_id=variant.ami_id,
                    min_size=scaling.min_instance_count if scaling else variant.initial_instance_count,
                    max_size=scaling.max_instance_count
                    if scaling
                    else max(1, variant.initial_instance_count),
                    desired_capacity=variant.initial_instance_count,
                    on_demand_base=variant.on_demand_base,
                    spot_percentage=variant.spot_percentage,
                    capacity_rebalance=variant.capacity_rebalance,
                    warm_pool=variant.warm_pool,
                    root_volume_gb=variant.volume_size_in_gb,
                    port=variant.port,
                    log_retention_days=args.log_retention_days,
                    # the model-server port is open to the gateway alone
                    ingress_security_group_ids=[gateway.security_group.id],
                    extra_security_group_ids=list(args.extra_security_group_ids),
                    model_data_uri=variant.model_data_uri,
                    environment=dict(variant.environment),
                    target_group_arns=[target_group.arn],
                    health_check_grace_period=variant.container_startup_health_check_timeout_in_seconds,
                    refresh=InstanceRefreshArgs(
                        checkpoint_percentages=args.checkpoints,
                        checkpoint_delay=args.rollout.wait_seconds,
                        alarm_names=[errors.name, latency.name],
                    ),
                    scaled=scaling is not None,
                    endpoint_name=name,
                    variant_name=variant.variant_name,
                ),
                opts=child,
            )
            self.groups[variant.variant_name] = group
            gateway.allow_targets(vname, group.security_group, variant.port)
            if scaling is not None:
                aws.autoscaling.Policy(
                    naming.child_name(vname, "scaling"),
                    autoscaling_group_name=group.auto_scaling_group.name,
                    policy_type="TargetTrackingScaling",
                    estimated_instance_warmup=300,
                    target_tracking_configuration={
                        "predefined_metric_specification": {
                            "predefined_metric_type": "ALBRequestCountPerTarget",
                            "resource_label": pulumi.Output.concat(lb_suffix, "/", target_group.arn_suffix),
                        },
                        "target_value": float(scaling.invocations_per_instance),
                    },
                    opts=child,
                )

        priorities = endpoints.rule_priorities(args.priority_block, [v.variant_name for v in args.variants])
        paths = endpoints.invoke_paths(name)
        self.weighted_rule = gateway.add_route(
            naming.child_name(name, "weighted"),
            paths=paths,
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
                paths=paths,
                priority=priorities.header[variant.variant_name],
                routes=[Route(self.target_groups[variant.variant_name].arn, 1)],
                header=(endpoints.TARGET_VARIANT_HEADER, variant.variant_name),
            )

        self.dashboard = aws.cloudwatch.Dashboard(
            naming.child_name(name, "dashboard"),
            dashboard_name=f"{args.prefix}-{name}",
            dashboard_body=pulumi.Output.all(
                lb=lb_suffix,
                tgs=pulumi.Output.all(**{v: tg.arn_suffix for v, tg in self.target_groups.items()}),
            ).apply(
                lambda v: json.dumps(
                    endpoints.dashboard_body(f"selfmaker endpoint {name}", args.region, v["lb"], v["tgs"]),
                    sort_keys=True,
                )
            ),
            opts=child,
        )
        #: What a client calls (sagemaker-runtime's InvokeEndpoint URL through the gateway).
        self.url: pulumi.Output[str] = pulumi.Output.concat(gateway.url, paths[0])
        self.register_outputs(
            {
                "url": self.url,
                "target_group_arns": {v: tg.arn for v, tg in self.target_groups.items()},
                "auto_scaling_groups": {v: g.auto_scaling_group.name for v, g in self.groups.items()},
            }
        )

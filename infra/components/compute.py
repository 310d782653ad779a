"""`InstanceGroup`: a launch template and an Auto Scaling group running the serving image (``serve``), or the
model server with an async worker beside it (``async``). Training and transform jobs run on AWS Batch
(:mod:`infra.components.jobs`)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import naming, presets, userdata

ROLES = ("serve", "async")
WARM_POOL_STATES = ("Stopped", "Running", "Hibernated")
ROOT_DEVICE = "/dev/xvda"  # Amazon Linux 2023 and the AL2023 deep-learning AMI


@dataclass(frozen=True)
class WarmPoolArgs:
    """An Auto Scaling warm pool: ``min_size`` pre-initialised instances kept in ``state``."""

    min_size: int = 0
    max_prepared_capacity: int | None = None
    state: str = "Stopped"


@dataclass(frozen=True)
class InstanceRefreshArgs:
    """How a new launch template version replaces the instances: launch before terminate (min healthy
    100 %), pausing at ``checkpoint_percentages`` for ``checkpoint_delay`` seconds, rolled back when an
    alarm of ``alarm_names`` fires (an empty ``checkpoint_percentages`` replaces everything at once)."""

    checkpoint_percentages: Sequence[int] = ()
    checkpoint_delay: int = 300
    alarm_names: Sequence[pulumi.Input[str]] = ()
    instance_warmup: int = 300


@dataclass
class InstanceGroupArgs:
    """Inputs of :class:`InstanceGroup`; validated when constructed.

    ``model_data_uri`` is an S3 URI
    that may be outputs of the ModelStore; everything shaping the group's size and types is plain.
    """

    role: str
    accelerator: str
    instance_types: Sequence[str]
    vpc_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    instance_profile_arn: pulumi.Input[str]
    repository_url: pulumi.Input[str]
    image_tag: str
    region: str
    log_group_name: str
    tags: Mapping[str, str]
    ami_parameter: str
    ami_id: str | None = None
    min_size: int = 0
    max_size: int = 1
    desired_capacity: int = 0
    on_demand_base: int = 0
    spot_percentage: int = 0
    capacity_rebalance: bool = False
    warm_pool: WarmPoolArgs | None = None
    root_volume_gb: int = 40
    port: int = userdata.CONTAINER_PORT
    log_retention_days: int = 30
    ingress_security_group_ids: Sequence[pulumi.Input[str]] = field(default_factory=list)
    extra_security_group_ids: Sequence[pulumi.Input[str]] = field(default_factory=list)
    model_data_uri: pulumi.Input[str] | None = None
    environment: Mapping[str, str] = field(default_factory=dict)
    #: Behind the gateway: the target groups the instances register in (ELB health checks replace EC2's)
    target_group_arns: Sequence[pulumi.Input[str]] = field(default_factory=list)
    health_check_grace_period: int = 300
    refresh: InstanceRefreshArgs | None = None
    #: a scaling policy owns the desired capacity after creation (Pulumi must not reset it)
    scaled: bool = False
    endpoint_name: str | None = None
    variant_name: str | None = None
    #: async: the endpoint's queue URL and the worker's state prefix (``s3://``), invocations per instance
    #: and lease length
    queue_url: pulumi.Input[str] | None = None
    state_uri: pulumi.Input[str] | None = None
    concurrency: int = 1
    visibility_timeout: int = 300

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ValueError:
            return ValueError(f"InstanceGroupArgs.{name}: {message}")

        if self.role not in ROLES:
            raise bad("role", f"must be one of {ROLES}, got {self.role!r}")
        if not self.instance_types:
            raise bad("instance_types", "at least one type is needed")
        try:
            self.instance_types = presets.resolve_instance_types(
                self.accelerator, None, list(self.instance_types)
            )
        except ValueError as exc:
            raise bad(
                "instance_types" if self.accelerator in presets.ACCELERATORS else "accelerator", str(exc)
            ) from None
        if not self.subnet_ids:
            raise bad("subnet_ids", "at least one private subnet is needed")
        if not 0 <= self.min_size <= self.desired_capacity <= self.max_size or self.max_size < 1:
            raise bad(
                "desired_capacity",
                f"need 0 <= min_size <= desired_capacity <= max_size and max_size >= 1, got "
                f"{self.min_size}/{self.desired_capacity}/{self.max_size}",
            )
        try:
            presets.capacity_mix(self.desired_capacity, self.on_demand_base, self.spot_percentage)
        except ValueError as exc:
            raise bad("spot_percentage", str(exc)) from None
        if self.warm_pool is not None:
            if self.spot_percentage or len(self.instance_types) != 1:
                raise bad(
                    "warm_pool", "AWS allows warm pools only without spot and with a single instance type"
                )
            if self.warm_pool.state not in WARM_POOL_STATES:
                raise bad("warm_pool", f"state must be one of {WARM_POOL_STATES}")
            if self.warm_pool.min_size < 0:
                raise bad("warm_pool", "min_size must be >= 0")
        if not self.ami_parameter.startswith("/"):
            raise bad("ami_parameter", f"{self.ami_parameter!r} is not an SSM parameter name")
        if not 8 <= self.root_volume_gb <= 16384:
            raise bad("root_volume_gb", "must be 8-16384")
        if not 1 <= self.port <= 65535:
            raise bad("port", "must be 1-65535")
        try:
            naming.image_uri("registry.example/repo", self.image_tag)
        except ValueError as exc:
            raise bad("image_tag", str(exc)) from None
        if self.refresh is not None:
            percentages = list(self.refresh.checkpoint_percentages)
            if percentages and (
                percentages[-1] != 100 or percentages != sorted(set(percentages)) or percentages[0] < 1
            ):
                raise bad("refresh", f"checkpoint percentages must rise and end at 100, got {percentages}")
        if not 0 <= self.health_check_grace_period <= 7200:
            raise bad("health_check_grace_period", "must be 0-7200 seconds")
        if (self.endpoint_name is None) != (self.variant_name is None) or (
            self.endpoint_name and self.role not in ("serve", "async")
        ):
            raise bad(
                "endpoint_name", "endpoint_name and variant_name go together, on serving or async groups"
            )
        if self.role == "async" and (
            self.queue_url is None or self.state_uri is None or not self.endpoint_name
        ):
            raise bad("queue_url", "an async group needs queue_url, state_uri and endpoint_name")
        if self.role in ("serve", "async") and self.model_data_uri is None:
            raise bad("model_data_uri", "a serving group needs the model.tar.gz URI")


class InstanceGroup(pulumi.ComponentResource):
    """Security group, log group, launch template (IMDSv2, encrypted gp3) and ASG of one group.

    The ASG spreads over the given private subnets and uses a mixed instances policy (instance types,
    on-demand base, spot share, capacity rebalance) unless a warm pool is configured, which AWS only
    allows with a single on-demand type.
    """

    def __init__(
        self, name: str, args: InstanceGroupArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("selfmaker:compute:InstanceGroup", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "Group": name, "Role": args.role}

        def tagged(role: str) -> dict[str, str]:
            return naming.with_name(tags, naming.child_name(name, role))

        self.log_group = aws.cloudwatch.LogGroup(
            naming.child_name(name, "logs"),
            name=args.log_group_name,
            retention_in_days=args.log_retention_days,
            tags=tags,
            opts=child,
        )

        self.security_group = aws.ec2.SecurityGroup(
            naming.child_name(name, "sg"),
            vpc_id=args.vpc_id,
            description=f"selfmaker {args.role} group {name}",
            tags=tagged("sg"),
            opts=child,
        )
        for i, source in enumerate(args.ingress_security_group_ids):
            aws.vpc.SecurityGroupIngressRule(
                naming.child_name(name, f"ingress-{i}"),
                security_group_id=self.security_group.id,
                referenced_security_group_id=source,
                ip_protocol="tcp",
                from_port=args.port,
                to_port=args.port,
                description="model server port from a trusted security group",
                tags=tagged(f"ingress-{i}"),
                opts=child,
            )
        aws.vpc.SecurityGroupEgressRule(
            naming.child_name(name, "https-out"),
            security_group_id=self.security_group.id,
            cidr_ipv4="0.0.0.0/0",
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            description="HTTPS to AWS APIs, ECR and package repos",
            tags=tagged("https-out"),
            opts=child,
        )

        image_id: pulumi.Input[str]
        if args.ami_id:
            image_id = args.ami_id
        else:
            image_id = aws.ssm.get_parameter_output(
                name=args.ami_parameter, opts=pulumi.InvokeOutputOptions(parent=self)
            ).value

        # Only rendering happens in apply(): the script needs the S3 and ECR locations, which are outputs.
        user_data = pulumi.Output.all(
            repo=args.repository_url,
            model=args.model_data_uri,
            queue=args.queue_url,
            state=args.state_uri,
        ).apply(lambda v: _encoded_user_data(name, args, v))

        tag_specs: list[aws.ec2.LaunchTemplateTagSpecificationArgsDict] = [
            {"resource_type": kind, "tags": tagged(kind)}
            for kind in ("instance", "volume", "network-interface")
        ]
        self.launch_template = aws.ec2.LaunchTemplate(
            naming.child_name(name, "lt"),
            description=f"selfmaker {args.role} group {name}",
            image_id=image_id,
            instance_type=args.instance_types[0] if args.warm_pool is not None else None,
            iam_instance_profile={"arn": args.instance_profile_arn},
            vpc_security_group_ids=[self.security_group.id, *args.extra_security_group_ids],
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                # Containers sit one hop behind the host (docker bridge) and still need the role.
                "http_put_response_hop_limit": 2,
                "instance_metadata_tags": "disabled",
            },
            block_device_mappings=[
                {
                    "device_name": ROOT_DEVICE,
                    "ebs": {
                        "volume_size": args.root_volume_gb,
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            monitoring={"enabled": True},
            user_data=user_data,
            update_default_version=True,
            tag_specifications=tag_specs,
            tags=tagged("lt"),
            opts=child,
        )

        template_ref = {
            "id": self.launch_template.id,
            "version": self.launch_template.latest_version.apply(str),
        }
        group_kwargs: dict[str, Any] = {}
        if args.warm_pool is not None:
            group_kwargs["launch_template"] = template_ref
            group_kwargs["warm_pool"] = {
                "pool_state": args.warm_pool.state,
                "min_size": args.warm_pool.min_size,
                **(
                    {"max_group_prepared_capacity": args.warm_pool.max_prepared_capacity}
                    if args.warm_pool.max_prepared_capacity is not None
                    else {}
                ),
            }
        else:
            group_kwargs["mixed_instances_policy"] = {
                "instances_distribution": presets.instances_distribution(
                    args.on_demand_base, args.spot_percentage
                ),
                "launch_template": {
                    "launch_template_specification": {
                        "launch_template_id": template_ref["id"],
                        "version": template_ref["version"],
                    },
                    "overrides": [{"instance_type": itype} for itype in args.instance_types],
                },
            }
        if args.refresh is not None:
            refresh = args.refresh
            preferences: aws.autoscaling.GroupInstanceRefreshPreferencesArgsDict = {
                # launch before terminate: new instances join before old ones leave
                "min_healthy_percentage": 100,
                "max_healthy_percentage": 200,
                "instance_warmup": str(refresh.instance_warmup),
                "skip_matching": True,
                "auto_rollback": True,
            }
            if refresh.checkpoint_percentages:
                preferences["checkpoint_percentages"] = list(refresh.checkpoint_percentages)
                preferences["checkpoint_delay"] = str(refresh.checkpoint_delay)
            if refresh.alarm_names:
                preferences["alarm_specification"] = {"alarms": list(refresh.alarm_names)}
            instance_refresh: aws.autoscaling.GroupInstanceRefreshArgsDict = {
                "strategy": "Rolling",
                "preferences": preferences,
            }
        else:
            instance_refresh = {"strategy": "Rolling", "preferences": {"min_healthy_percentage": 90}}
        if args.target_group_arns:
            group_kwargs["target_group_arns"] = list(args.target_group_arns)
        asg_tags: list[aws.autoscaling.GroupTagArgsDict] = [
            {"key": k, "value": v, "propagate_at_launch": False} for k, v in sorted(tagged("asg").items())
        ]
        self.auto_scaling_group = aws.autoscaling.Group(
            naming.child_name(name, "asg"),
            min_size=args.min_size,
            max_size=args.max_size,
            desired_capacity=args.desired_capacity,
            vpc_zone_identifiers=list(args.subnet_ids),
            capacity_rebalance=args.capacity_rebalance,
            # behind a load balancer an instance is healthy when its model server answers /ping
            health_check_type="ELB" if args.target_group_arns else "EC2",
            health_check_grace_period=args.health_check_grace_period,
            default_instance_warmup=300,
            instance_refresh=instance_refresh,
            enabled_metrics=[
                aws.autoscaling.Metric.GROUP_DESIRED_CAPACITY,
                aws.autoscaling.Metric.GROUP_IN_SERVICE_INSTANCES,
                aws.autoscaling.Metric.GROUP_TOTAL_INSTANCES,
            ],
            tags=asg_tags,
            opts=pulumi.ResourceOptions(
                parent=self, ignore_changes=["desiredCapacity"] if args.scaled else None
            ),
            **group_kwargs,
        )
        self.register_outputs(
            {
                "auto_scaling_group_name": self.auto_scaling_group.name,
                "launch_template_id": self.launch_template.id,
                "security_group_id": self.security_group.id,
                "log_group_name": self.log_group.name,
            }
        )


def _encoded_user_data(name: str, args: InstanceGroupArgs, values: Mapping[str, Any]) -> str:
    """Render and base64-encode the bootstrap script once the S3 and ECR locations are known."""
    repo = str(values["repo"])
    spec = userdata.UserDataSpec(
        mode=args.role,
        group=name,
        region=args.region,
        registry=naming.registry_host(repo),
        image=naming.image_uri(repo, args.image_tag),
        log_group=args.log_group_name,
        gpu=args.accelerator == "gpu",
        install_docker=args.accelerator == "cpu",
        environment=dict(args.environment),
        host_port=args.port,
        model_data=values["model"],
        endpoint=args.endpoint_name,
        variant=args.variant_name,
        queue_url=values.get("queue"),
        state_uri=values.get("state"),
        concurrency=args.concurrency,
        visibility_timeout=args.visibility_timeout,
    )
    return base64.b64encode(userdata.render_user_data(spec).encode()).decode()

"""`JobQueue`: AWS Batch for training and transform jobs — compute environments, queues, job
definitions, roles.

Per configured environment (``cpu``, ``gpu``, ...): a managed EC2 compute environment for on-demand capacity
and/or one for spot (``SPOT_PRICE_CAPACITY_OPTIMIZED``), both scaling from 0 vCPUs, in the private subnets,
with a launch template that requires IMDSv2 and encrypts the root volume; a job queue for each
(``<prefix>-<name>``, ``<prefix>-<name>-spot``), and the job definitions ``train``, ``transform`` and
(on-demand
only: AWS Batch runs no multi-node job on spot) ``train-multinode`` running the stack's image. The queues are
tagged with what ``selfmaker train/transform --aws-batch QUEUE`` needs (definition names, capacity, spot
queue).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import naming, policies, presets

ROOT_DEVICE = "/dev/xvda"  # the ECS-optimized Amazon Linux 2023 AMIs Batch picks
#: Batch's ECS-optimized AMI family per accelerator
IMAGE_TYPES = {"cpu": "ECS_AL2023", "gpu": "ECS_AL2023_NVIDIA"}
#: the status reasons Batch gives when the instance went away under the job (spot reclaim, host failure)
HOST_GONE = "Host EC2*"
#: the queue tags the submission commands read (selfmaker/jobs/aws_batch.py)
TAG_CAPACITY = "selfmaker:capacity"
TAG_ACCELERATOR = "selfmaker:accelerator"
TAG_SPOT_QUEUE = "selfmaker:spot-queue"
TAG_DEFINITION = {
    "train": "selfmaker:train-definition",
    "train-multinode": "selfmaker:train-multinode-definition",
    "transform": "selfmaker:transform-definition",
}
COMMANDS = {
    "train": ["train-node", "--state", "Ref::state"],
    "transform": ["transform-share", "--state", "Ref::state"],
}


@dataclass(frozen=True)
class JobEnvironmentArgs:
    """One machine kind: instance types, capacity kinds, and the size of one job's container."""

    name: str
    accelerator: str
    instance_types: Sequence[str]
    image_tag: str
    max_vcpus: int = 64
    on_demand: bool = True
    spot: bool = False
    priority: int = 10
    vcpus: int = 4
    memory_mib: int = 7000
    gpus: int = 0
    root_volume_gb: int = 40


@dataclass
class JobQueueArgs:
    """Inputs of :class:`JobQueue`; validated when constructed (messages name the field)."""

    prefix: str
    environments: Sequence[JobEnvironmentArgs]
    vpc_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    repository_url: pulumi.Input[str]
    repository_arn: pulumi.Input[str]
    models_bucket_arn: pulumi.Input[str]
    data_bucket_arn: pulumi.Input[str]
    outputs_bucket_arn: pulumi.Input[str]
    partition: str
    region: str
    account_id: str
    tags: Mapping[str, str]
    kms_key_arn: pulumi.Input[str] | None = None
    model_prefix: str = "models/"
    log_retention_days: int = 30
    retry_attempts: int = 3
    extra_security_group_ids: Sequence[pulumi.Input[str]] = field(default_factory=list)
    ssm_access: bool = True

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ValueError:
            return ValueError(f"JobQueueArgs.{name}: {message}")

        if not self.environments:
            raise bad("environments", "at least one environment is needed")
        if not self.subnet_ids:
            raise bad("subnet_ids", "at least one private subnet is needed")
        if not 1 <= self.retry_attempts <= 10:
            raise bad("retry_attempts", "must be 1-10 (AWS Batch's range)")
        if not self.account_id.isdigit() or len(self.account_id) != 12:
            raise bad("account_id", f"{self.account_id!r} is not a 12-digit account id")
        names: set[str] = set()
        for i, env in enumerate(self.environments):
            where = f"environments[{i}]"
            if env.name in names or not naming.valid_group_name(env.name):
                raise bad(f"{where}.name", f"{env.name!r} is a duplicate or not [a-z][a-z0-9-]{{1,31}}")
            names.add(env.name)
            if env.accelerator not in presets.ACCELERATORS:
                raise bad(f"{where}.accelerator", f"must be one of {presets.ACCELERATORS}")
            try:
                presets.resolve_instance_types(env.accelerator, None, list(env.instance_types))
            except ValueError as exc:
                raise bad(f"{where}.instance_types", str(exc)) from None
            if not (env.on_demand or env.spot):
                raise bad(f"{where}.on_demand", "on-demand or spot capacity (or both) is needed")
            if env.vcpus < 1 or env.max_vcpus < env.vcpus:
                raise bad(
                    f"{where}.max_vcpus", f"need 1 <= vcpus ({env.vcpus}) <= max_vcpus ({env.max_vcpus})"
                )
            if env.accelerator == "cpu" and env.gpus:
                raise bad(f"{where}.gpus", "a cpu environment has no GPUs")
            if env.memory_mib < 512:
                raise bad(f"{where}.memory_mib", "must be >= 512")
            try:
                naming.image_uri("registry.example/repo", env.image_tag)
            except ValueError as exc:
                raise bad(f"{where}.image_tag", str(exc)) from None


def queue_name(prefix: str, environment: str, spot: bool) -> str:
    """The physical name of a job queue (users submit to it by name)."""
    return f"{prefix}-{environment}" + ("-spot" if spot else "")


def definition_name(prefix: str, environment: str, kind: str) -> str:
    """The physical name of a job definition (revisions accumulate under it)."""
    return f"{prefix}-{environment}-{kind}"


def retry_strategy(attempts: int) -> dict[str, Any]:
    """Retry when the host went away (spot reclaim, instance failure); any other failure is the job's own."""
    return {
        "attempts": attempts,
        "evaluate_on_exits": [
            {"on_status_reason": HOST_GONE, "action": "retry"},
            {"on_reason": "*", "action": "exit"},
        ],
    }


def container_properties(
    env: JobEnvironmentArgs, *, kind: str, image: str, job_role_arn: str, log_group: str, region: str
) -> dict[str, Any]:
    """A job definition's container: the stack's image running ``train-node`` / ``transform-share``."""
    requirements = [
        {"type": "VCPU", "value": str(env.vcpus)},
        {"type": "MEMORY", "value": str(env.memory_mib)},
    ]
    if env.gpus:
        requirements.append({"type": "GPU", "value": str(env.gpus)})
    return {
        "image": image,
        "command": COMMANDS["train" if kind.startswith("train") else "transform"],
        "jobRoleArn": job_role_arn,
        "resourceRequirements": requirements,
        "environment": [{"name": "AWS_DEFAULT_REGION", "value": region}],
        "logConfiguration": {
            "logDriver": "awslogs",
            "options": {"awslogs-group": log_group, "awslogs-region": region, "awslogs-stream-prefix": kind},
        },
        # PyTorch data loaders and Dask workers share memory through /dev/shm; Docker's default is 64 MB
        "linuxParameters": {"sharedMemorySize": max(64, env.memory_mib // 4)},
        "readonlyRootFilesystem": False,
        "privileged": False,
    }


class JobQueue(pulumi.ComponentResource):
    """AWS Batch for the stack's training and transform jobs (see the module docstring)."""

    def __init__(self, name: str, args: JobQueueArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("selfmaker:jobs:JobQueue", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)

        def tagged(role: str) -> dict[str, str]:
            return naming.with_name(tags, naming.child_name(name, role))

        self.log_group = aws.cloudwatch.LogGroup(
            naming.child_name(name, "logs"),
            name=naming.log_group_name(args.prefix, "jobs"),
            retention_in_days=args.log_retention_days,
            tags=tags,
            opts=child,
        )

        # Nodes of a multi-node job talk to each other on any port (xgboost's tracker and its peers).
        self.security_group = aws.ec2.SecurityGroup(
            naming.child_name(name, "sg"),
            vpc_id=args.vpc_id,
            description="selfmaker AWS Batch jobs",
            tags=tagged("sg"),
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            naming.child_name(name, "peers"),
            security_group_id=self.security_group.id,
            referenced_security_group_id=self.security_group.id,
            ip_protocol="-1",
            description="nodes of the same job",
            tags=tagged("peers"),
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            naming.child_name(name, "peers-out"),
            security_group_id=self.security_group.id,
            referenced_security_group_id=self.security_group.id,
            ip_protocol="-1",
            description="nodes of the same job",
            tags=tagged("peers-out"),
            opts=child,
        )
        aws.vpc.SecurityGroupEgressRule(
            naming.child_name(name, "https-out"),
            security_group_id=self.security_group.id,
            cidr_ipv4="0.0.0.0/0",
            ip_protocol="tcp",
            from_port=443,
            to_port=443,
            description="HTTPS to AWS APIs, ECR and S3",
            tags=tagged("https-out"),
            opts=child,
        )

        # -- roles ----------------------------------------------------------------------------------------
        log_group_arn = (
            f"arn:{args.partition}:logs:{args.region}:{args.account_id}:log-group:"
            f"{naming.log_group_name(args.prefix, 'jobs')}"
        )
        ecs = f"arn:{args.partition}:ecs:{args.region}:{args.account_id}"

        def scoped(builder: Any) -> pulumi.Output[str]:
            def build(values: dict[str, Any]) -> str:
                scope = policies.JobScope(
                    models_bucket_arn=values["models"],
                    data_bucket_arn=values["data"],
                    outputs_bucket_arn=values["outputs"],
                    repository_arns=(values["repo"],),
                    log_group_arn=log_group_arn,
                    cluster_pattern=f"{ecs}:cluster/AWSBatch-{args.prefix}-*",
                    container_instance_pattern=f"{ecs}:container-instance/AWSBatch-{args.prefix}-*",
                    model_prefix=args.model_prefix,
                    kms_key_arn=values["kms"],
                )
                return json.dumps(builder(scope))

            return pulumi.Output.all(
                models=args.models_bucket_arn,
                data=args.data_bucket_arn,
                outputs=args.outputs_bucket_arn,
                repo=args.repository_arn,
                kms=args.kms_key_arn,
            ).apply(build)

        self.service_role = aws.iam.Role(
            naming.child_name(name, "service"),
            description="AWS Batch managing the selfmaker compute environments",
            assume_role_policy=json.dumps(
                policies.assume_role_policy("batch.amazonaws.com", args.account_id)
            ),
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicyAttachment(
            naming.child_name(name, "service-policy"),
            role=self.service_role.name,
            policy_arn=f"arn:{args.partition}:iam::aws:policy/service-role/AWSBatchServiceRole",
            opts=child,
        )
        self.instance_role = aws.iam.Role(
            naming.child_name(name, "instance"),
            description="selfmaker AWS Batch container instances",
            assume_role_policy=json.dumps(policies.assume_role_policy("ec2.amazonaws.com")),
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            naming.child_name(name, "instance-policy"),
            role=self.instance_role.id,
            policy=scoped(policies.batch_instance_policy),
            opts=child,
        )
        if args.ssm_access:
            aws.iam.RolePolicyAttachment(
                naming.child_name(name, "instance-ssm"),
                role=self.instance_role.name,
                policy_arn=f"arn:{args.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore",
                opts=child,
            )
        self.instance_profile = aws.iam.InstanceProfile(
            naming.child_name(name, "instance-profile"),
            role=self.instance_role.name,
            tags=tags,
            opts=child,
        )
        self.job_role = aws.iam.Role(
            naming.child_name(name, "job"),
            description="selfmaker training and transform jobs",
            assume_role_policy=json.dumps(
                policies.assume_role_policy("ecs-tasks.amazonaws.com", args.account_id)
            ),
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            naming.child_name(name, "job-policy"),
            role=self.job_role.id,
            policy=scoped(policies.batch_job_policy),
            opts=child,
        )

        # -- compute environments, queues, definitions ---------------------------------------------------
        self.compute_environments: dict[str, aws.batch.ComputeEnvironment] = {}
        self.queues: dict[str, aws.batch.JobQueue] = {}
        self.definitions: dict[str, aws.batch.JobDefinition] = {}
        for env in args.environments:
            template = aws.ec2.LaunchTemplate(
                naming.child_name(name, f"{env.name}-lt"),
                description=f"selfmaker AWS Batch {env.name} instances",
                metadata_options={
                    "http_endpoint": "enabled",
                    "http_tokens": "required",
                    # containers sit one hop behind the host and still need the job role
                    "http_put_response_hop_limit": 2,
                    "instance_metadata_tags": "disabled",
                },
                block_device_mappings=[
                    {
                        "device_name": ROOT_DEVICE,
                        "ebs": {
                            "volume_size": env.root_volume_gb,
                            "volume_type": "gp3",
                            "encrypted": "true",
                            "delete_on_termination": "true",
                        },
                    }
                ],
                tag_specifications=[
                    {"resource_type": kind, "tags": tagged(f"{env.name}-{kind}")}
                    for kind in ("instance", "volume", "network-interface")
                ],
                update_default_version=True,
                tags=tagged(f"{env.name}-lt"),
                opts=child,
            )
            image = pulumi.Output.from_input(args.repository_url).apply(
                functools.partial(naming.image_uri, tag=env.image_tag)
            )
            kinds = ["train", "transform"] + (["train-multinode"] if env.on_demand else [])
            for kind in kinds:
                self.definitions[f"{env.name}-{kind}"] = self._definition(
                    name, args, env, kind, image, tags, child
                )
            capacities = [c for c, wanted in (("on-demand", env.on_demand), ("spot", env.spot)) if wanted]
            for capacity in capacities:
                spot = capacity == "spot"
                key = f"{env.name}-spot" if spot else env.name
                compute = aws.batch.ComputeEnvironment(
                    naming.child_name(name, f"{key}-ce"),
                    # named: Batch calls its ECS cluster AWSBatch-<name>-..., which the instance role is
                    # scoped to
                    name=f"{args.prefix}-{key}",
                    type="MANAGED",
                    state="ENABLED",
                    service_role=self.service_role.arn,
                    compute_resources={
                        "type": "SPOT" if spot else "EC2",
                        "allocation_strategy": "SPOT_PRICE_CAPACITY_OPTIMIZED"
                        if spot
                        else "BEST_FIT_PROGRESSIVE",
                        "min_vcpus": 0,
                        "max_vcpus": env.max_vcpus,
                        "instance_types": list(env.instance_types),
                        "subnets": list(args.subnet_ids),
                        "security_group_ids": [self.security_group.id, *args.extra_security_group_ids],
                        "instance_role": self.instance_profile.arn,
                        "launch_template": {
                            "launch_template_id": template.id,
                            "version": template.latest_version.apply(str),
                        },
                        "ec2_configurations": [{"image_type": IMAGE_TYPES[env.accelerator]}],
                        "tags": tagged(f"{key}-instance"),
                    },
                    update_policy={"job_execution_timeout_minutes": 30, "terminate_jobs_on_update": False},
                    tags=tagged(f"{key}-ce"),
                    opts=child,
                )
                self.compute_environments[key] = compute
                queue_tags = {
                    **tags,
                    TAG_CAPACITY: capacity,
                    TAG_ACCELERATOR: env.accelerator,
                    TAG_DEFINITION["train"]: definition_name(args.prefix, env.name, "train"),
                    TAG_DEFINITION["transform"]: definition_name(args.prefix, env.name, "transform"),
                }
                if env.on_demand:
                    queue_tags[TAG_DEFINITION["train-multinode"]] = definition_name(
                        args.prefix, env.name, "train-multinode"
                    )
                if not spot and env.spot:
                    queue_tags[TAG_SPOT_QUEUE] = queue_name(args.prefix, env.name, True)
                self.queues[key] = aws.batch.JobQueue(
                    naming.child_name(name, f"{key}-queue"),
                    name=queue_name(args.prefix, env.name, spot),
                    state="ENABLED",
                    priority=env.priority,
                    compute_environment_orders=[{"order": 1, "compute_environment": compute.arn}],
                    tags=queue_tags,
                    opts=child,
                )

        self.register_outputs(
            {
                "queues": {key: q.name for key, q in self.queues.items()},
                "job_definitions": {key: d.name for key, d in self.definitions.items()},
                "job_role_arn": self.job_role.arn,
                "log_group_name": self.log_group.name,
            }
        )

    def _definition(
        self,
        name: str,
        args: JobQueueArgs,
        env: JobEnvironmentArgs,
        kind: str,
        image: pulumi.Output[str],
        tags: dict[str, str],
        child: pulumi.ResourceOptions,
    ) -> aws.batch.JobDefinition:
        common: dict[str, Any] = {
            "name": definition_name(args.prefix, env.name, kind),
            "platform_capabilities": ["EC2"],
            # the submitter passes the job's state prefix; the container command refers to it as Ref::state
            "parameters": {"state": ""},
            "retry_strategy": retry_strategy(args.retry_attempts),
            "propagate_tags": True,
            "tags": tags,
        }
        properties = pulumi.Output.all(image=image, role=self.job_role.arn, group=self.log_group.name).apply(
            lambda v: container_properties(
                env,
                kind=kind,
                image=v["image"],
                job_role_arn=v["role"],
                log_group=v["group"],
                region=args.region,
            )
        )
        if kind == "train-multinode":
            node_properties = properties.apply(
                lambda c: json.dumps(
                    {
                        "mainNode": 0,
                        "numNodes": 2,
                        "nodeRangeProperties": [{"targetNodes": "0:", "container": c}],
                    }
                )
            )
            return aws.batch.JobDefinition(
                naming.child_name(name, f"{env.name}-{kind}"),
                type="multinode",
                node_properties=node_properties,
                opts=child,
                **common,
            )
        return aws.batch.JobDefinition(
            naming.child_name(name, f"{env.name}-{kind}"),
            type="container",
            container_properties=properties.apply(json.dumps),
            opts=child,
            **common,
        )

"""The Pulumi program: stack config → components → stack outputs.

``main()`` is what ``infra/__main__.py`` runs; ``build(config)`` takes an already-validated
:class:`~infra.config.StackConfig`, so tests can run the whole program under mocks.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import async_scaling, endpoints, naming, policies
from infra import config as stack_config
from infra.components.compute import InstanceGroup, InstanceGroupArgs, WarmPoolArgs
from infra.components.endpoints.async_endpoint import AsyncEndpoint, AsyncEndpointArgs
from infra.components.endpoints.gateway import Gateway, GatewayArgs
from infra.components.endpoints.realtime import (
    AlarmArgs,
    ManagedInstanceScalingArgs,
    ProductionVariantArgs,
    RealtimeEndpoint,
    RealtimeEndpointArgs,
    RolloutArgs,
)
from infra.components.endpoints.serverless import (
    ServerlessEndpoint,
    ServerlessEndpointArgs,
    ServerlessVariantArgs,
)
from infra.components.iam import Roles, RolesArgs
from infra.components.jobs import JobEnvironmentArgs, JobQueue, JobQueueArgs
from infra.components.network import Network, NetworkArgs
from infra.components.registry import ImageRepository, ImageRepositoryArgs
from infra.components.storage import ModelStore, ModelStoreArgs

#: Which image and which instance role each group role uses (training runs on AWS Batch: JobQueue).
IMAGE_FOR_ROLE = {"serve": "serving"}
PROFILE_FOR_ROLE = {"serve": "serving"}
IMAGES = ("serving", "training")
#: the image repository AWS Batch jobs run (training and transform)
JOBS_IMAGE = "training"


def configured_keys() -> list[str]:
    """Keys set under the ``selfmaker:`` namespace of the current stack (for typo detection)."""
    from pulumi.runtime import config as runtime_config

    prefix = f"{stack_config.NAMESPACE}:"
    return [key[len(prefix) :] for key in runtime_config.CONFIG.get() if key.startswith(prefix)]


def load_config() -> stack_config.StackConfig:
    """Read and validate the stack configuration of the running stack."""
    return stack_config.load(
        pulumi.Config(stack_config.NAMESPACE),
        project=pulumi.get_project(),
        stack=pulumi.get_stack(),
        present_keys=configured_keys(),
    )


def build(cfg: stack_config.StackConfig) -> dict[str, Any]:
    """Create every component for ``cfg`` and return the stack outputs (not yet exported)."""
    region = aws.get_region().region
    account_id = aws.get_caller_identity().account_id
    partition_info = aws.get_partition()
    # Regular AZs only: Local and Wavelength Zones lack NAT gateways and most instance families.
    zones = aws.get_availability_zones(
        state="available",
        filters=[{"name": "opt-in-status", "values": ["opt-in-not-required"]}],
    ).names
    if len(zones) < cfg.network.az_count:
        raise stack_config.ConfigError(
            f"{stack_config.NAMESPACE}:azCount",
            f"{cfg.network.az_count} AZs requested but {region} offers {len(zones)}: {zones}",
        )
    tags = dict(cfg.tags)

    network = Network(
        "network",
        NetworkArgs(
            vpc_cidr=cfg.network.vpc_cidr,
            availability_zones=zones[: cfg.network.az_count],
            region=region,
            tags=tags,
            nat_gateways=cfg.network.nat_gateways,
            interface_endpoints=cfg.network.interface_endpoints,
            flow_logs=cfg.network.flow_logs,
            flow_logs_retention_days=cfg.network.flow_logs_retention_days,
            service_prefix=partition_info.reverse_dns_prefix or "com.amazonaws",
            account_id=account_id,
        ),
    )
    gateway_cfg = cfg.gateway
    log_delivery = None
    if gateway_cfg is not None and gateway_cfg.access_logs:
        log_delivery = ("gateway", account_id, region, partition_info.partition)
    store = ModelStore(
        "store",
        ModelStoreArgs(
            tags=tags,
            encryption=cfg.storage.encryption,
            outputs_expiration_days=cfg.storage.outputs_expiration_days,
            noncurrent_version_days=cfg.storage.noncurrent_version_days,
            force_destroy=cfg.storage.force_destroy,
            load_balancer_logs=log_delivery,
        ),
    )
    images = {
        image: ImageRepository(
            f"{image}-images",
            ImageRepositoryArgs(
                repository_name=f"{cfg.prefix}/{image}",
                tags=tags,
                keep_last=cfg.keep_images,
            ),
        )
        for image in IMAGES
    }
    roles = Roles(
        "roles",
        RolesArgs(
            models_bucket_arn=store.buckets["models"].arn,
            data_bucket_arn=store.buckets["data"].arn,
            outputs_bucket_arn=store.buckets["outputs"].arn,
            repository_arns=[r.arn for r in images.values()],
            partition=partition_info.partition,
            region=region,
            account_id=account_id,
            prefix=cfg.prefix,
            tags=tags,
            kms_key_arn=store.kms_key_arn,
            model_prefix=cfg.storage.model_prefix,
            ssm_access=cfg.ssm_access,
        ),
    )

    models_bucket = store.buckets["models"].bucket
    data_bucket = store.buckets["data"].bucket
    outputs_bucket = store.buckets["outputs"].bucket
    groups: dict[str, InstanceGroup] = {}
    for group in cfg.groups:
        groups[group.name] = InstanceGroup(
            group.name,
            InstanceGroupArgs(
                role=group.role,
                accelerator=group.accelerator,
                instance_types=group.instance_types,
                vpc_id=network.vpc_id,
                subnet_ids=network.private_subnet_ids,
                instance_profile_arn=roles.profiles[PROFILE_FOR_ROLE[group.role]].arn,
                repository_url=images[IMAGE_FOR_ROLE[group.role]].repository_url,
                image_tag=group.image_tag,
                region=region,
                log_group_name=naming.log_group_name(cfg.prefix, group.name),
                tags=tags,
                ami_parameter=group.ami_parameter,
                ami_id=group.ami_id,
                min_size=group.min_size,
                max_size=group.max_size,
                desired_capacity=group.desired_capacity,
                on_demand_base=group.on_demand_base,
                spot_percentage=group.spot_percentage,
                capacity_rebalance=group.capacity_rebalance,
                warm_pool=_warm_pool(group),
                root_volume_gb=group.root_volume_gb,
                port=group.port,
                log_retention_days=cfg.log_retention_days,
                # Serving groups accept the model-server port from peers in the workload security group
                # (async workers, the platform); the load balancer's group is added by the endpoint stack.
                ingress_security_group_ids=[network.workload_security_group.id],
                extra_security_group_ids=[network.workload_security_group.id],
                model_data_uri=pulumi.Output.format("s3://{0}/{1}", models_bucket, group.model_key),
                environment=group.environment,
            ),
        )

    jobs: JobQueue | None = None
    if cfg.jobs is not None:
        jobs = JobQueue(
            "jobs",
            JobQueueArgs(
                prefix=cfg.prefix,
                environments=[
                    JobEnvironmentArgs(
                        name=env.name,
                        accelerator=env.accelerator,
                        instance_types=env.instance_types,
                        image_tag=env.image_tag,
                        max_vcpus=env.max_vcpus,
                        on_demand=env.on_demand,
                        spot=env.spot,
                        priority=env.priority,
                        vcpus=env.vcpus,
                        memory_mib=env.memory_mib,
                        gpus=env.gpus,
                        root_volume_gb=env.root_volume_gb,
                    )
                    for env in cfg.jobs.environments
                ],
                vpc_id=network.vpc_id,
                subnet_ids=network.private_subnet_ids,
                repository_url=images[JOBS_IMAGE].repository_url,
                repository_arn=images[JOBS_IMAGE].arn,
                models_bucket_arn=store.buckets["models"].arn,
                data_bucket_arn=store.buckets["data"].arn,
                outputs_bucket_arn=store.buckets["outputs"].arn,
                partition=partition_info.partition,
                region=region,
                account_id=account_id,
                tags=tags,
                kms_key_arn=store.kms_key_arn,
                model_prefix=cfg.storage.model_prefix,
                log_retention_days=cfg.log_retention_days,
                retry_attempts=cfg.jobs.retry_attempts,
                extra_security_group_ids=[network.workload_security_group.id],
                ssm_access=cfg.ssm_access,
            ),
        )

    gateway: Gateway | None = None
    served: dict[str, RealtimeEndpoint | ServerlessEndpoint | AsyncEndpoint] = {}
    if gateway_cfg is not None:
        internal = gateway_cfg.scheme == "internal"
        gateway = Gateway(
            "gateway",
            GatewayArgs(
                vpc_id=network.vpc_id,
                subnet_ids=network.private_subnet_ids if internal else network.public_subnet_ids,
                tags=tags,
                scheme=gateway_cfg.scheme,
                allowed_cidrs=list(gateway_cfg.allowed_cidrs),
                # instances of the stack (async workers, notebooks in the workload group) call endpoints too
                client_security_group_ids=[network.workload_security_group.id] if internal else [],
                certificate_arn=gateway_cfg.certificate_arn,
                ssl_policy=gateway_cfg.ssl_policy,
                trust_store_ca_bundle=gateway_cfg.trust_store_ca_bundle,
                access_logs_bucket=store.access_logs_bucket.bucket
                if store.access_logs_bucket is not None
                else None,
                idle_timeout=gateway_cfg.idle_timeout,
                deletion_protection=gateway_cfg.deletion_protection,
            ),
        )
        blocks = endpoints.priority_blocks(e.name for e in cfg.endpoints)
        for endpoint in cfg.endpoints:
            if endpoint.kind == "async":
                served[endpoint.name] = async_endpoint(
                    endpoint,
                    gateway,
                    blocks[endpoint.name],
                    cfg=cfg,
                    network=network,
                    store=store,
                    repository=images["serving"],
                    region=region,
                    account_id=account_id,
                    partition=partition_info.partition,
                )
                continue
            if endpoint.kind == "serverless":
                served[endpoint.name] = serverless_endpoint(
                    endpoint,
                    gateway,
                    blocks[endpoint.name],
                    cfg=cfg,
                    repository_url=images["serving"].repository_url,
                    store=store,
                    region=region,
                    account_id=account_id,
                    partition=partition_info.partition,
                )
                continue
            served[endpoint.name] = realtime_endpoint(
                endpoint,
                gateway,
                blocks[endpoint.name],
                cfg=cfg,
                network=network,
                roles=roles,
                repository_url=images["serving"].repository_url,
                models_bucket=models_bucket,
                region=region,
            )
        if any(e.kind == "serverless" for e in cfg.endpoints):
            # container-image functions are pulled by the Lambda service itself: the stack's functions only
            aws.ecr.RepositoryPolicy(
                "serving-images-lambda-pull",
                repository=images["serving"].repository.name,
                policy=json.dumps(
                    policies.ecr_lambda_pull_policy(
                        f"arn:{partition_info.partition}:lambda:{region}:{account_id}:function:{cfg.prefix}-*",
                        account_id,
                    )
                ),
                opts=pulumi.ResourceOptions(parent=images["serving"]),
            )

    return {
        "endpointUrl": gateway.url if gateway is not None else None,
        "endpoints": {e.name: endpoint_output(e, served[e.name]) for e in cfg.endpoints},
        "resourcePrefix": cfg.prefix,
        "region": region,
        "vpcId": network.vpc_id,
        "privateSubnetIds": network.private_subnet_ids,
        "publicSubnetIds": network.public_subnet_ids,
        "workloadSecurityGroupId": network.workload_security_group.id,
        "modelsBucket": models_bucket,
        "dataBucket": data_bucket,
        "outputsBucket": outputs_bucket,
        "kmsKeyArn": store.kms_key_arn,
        "repositoryUrls": {image: repo.repository_url for image, repo in images.items()},
        "roleArns": {kind: role.arn for kind, role in roles.roles.items()},
        "instanceProfileArns": {kind: profile.arn for kind, profile in roles.profiles.items()},
        "autoScalingGroups": {name: g.auto_scaling_group.name for name, g in groups.items()},
        "jobQueues": {key: q.name for key, q in jobs.queues.items()} if jobs else {},
        "jobDefinitions": {key: d.name for key, d in jobs.definitions.items()} if jobs else {},
    }


def _warm_pool(group: stack_config.GroupConfig) -> WarmPoolArgs | None:
    """The instance group's warm pool, as configured for a group or a variant."""
    pool = group.warm_pool
    return WarmPoolArgs(pool.min_size, pool.max_prepared_capacity, pool.state) if pool else None


def endpoint_output(
    endpoint: stack_config.EndpointConfig, served: RealtimeEndpoint | ServerlessEndpoint | AsyncEndpoint
) -> dict[str, Any]:
    """The ``endpoints`` stack output of one endpoint: its URL and, per variant, weights and group
    (or function; async: its queue, result locations and topics)."""
    if isinstance(served, AsyncEndpoint):
        return {
            "url": served.url,
            "kind": "async",
            "queueUrl": served.queue.url,
            "deadLetterQueueUrl": served.dead_letter_queue.url,
            "outputPath": served.output_path,
            "failurePath": served.failure_path,
            "successTopicArn": served.topic_arns["success"],
            "errorTopicArn": served.topic_arns["error"],
            "variants": {
                endpoint.variants[0].name: {"autoScalingGroup": served.workers.auto_scaling_group.name}
            },
        }
    weights = endpoints.alb_weights([v.weight for v in endpoint.variants])
    if isinstance(served, ServerlessEndpoint):
        return {
            "url": served.url,
            "variants": {
                v.name: {
                    "weight": v.weight,
                    "albWeight": w,
                    "function": served.functions[v.name].name,
                    "serverlessConfig": {
                        "memorySizeInMB": v.serverless.memory_size_in_mb,
                        "maxConcurrency": v.serverless.max_concurrency,
                        "provisionedConcurrency": v.serverless.provisioned_concurrency,
                    },
                }
                for v, w in zip(endpoint.variants, weights, strict=True)
                if v.serverless is not None
            },
        }
    return {
        "url": served.url,
        "dashboard": served.dashboard.dashboard_name,
        "variants": {
            v.name: {
                "weight": v.weight,
                "albWeight": w,
                "initialInstanceCount": v.initial_instance_count,
                "autoScalingGroup": served.groups[v.name].auto_scaling_group.name,
            }
            for v, w in zip(endpoint.variants, weights, strict=True)
        },
    }


def realtime_endpoint(
    endpoint: stack_config.EndpointConfig,
    gateway: Gateway,
    priority_block: int,
    *,
    cfg: stack_config.StackConfig,
    network: Network,
    roles: Roles,
    repository_url: pulumi.Input[str],
    models_bucket: pulumi.Input[str],
    region: str,
) -> RealtimeEndpoint:
    """The :class:`RealtimeEndpoint` of one configured endpoint (instance-backed variants)."""
    variants = []
    for v in endpoint.variants:
        group = v.group
        assert group is not None and group.model_key is not None  # instance variants always have one
        variants.append(
            ProductionVariantArgs(
                variant_name=v.name,
                model_data_uri=pulumi.Output.format("s3://{0}/{1}", models_bucket, group.model_key),
                image_tag=group.image_tag,
                ami_parameter=group.ami_parameter,
                ami_id=group.ami_id,
                initial_instance_count=v.initial_instance_count,
                initial_variant_weight=v.weight,
                accelerator=group.accelerator,
                instance_types=group.instance_types,
                volume_size_in_gb=group.root_volume_gb,
                port=group.port,
                on_demand_base=group.on_demand_base,
                spot_percentage=group.spot_percentage,
                capacity_rebalance=group.capacity_rebalance,
                warm_pool=_warm_pool(group),
                environment=dict(group.environment),
                managed_instance_scaling=ManagedInstanceScalingArgs(
                    v.scaling.min_instances,
                    v.scaling.max_instances,
                    v.scaling.invocations_per_instance,
                )
                if v.scaling
                else None,
                container_startup_health_check_timeout_in_seconds=600 if group.accelerator == "gpu" else 300,
            )
        )
    rollout, alarms = endpoint.rollout, endpoint.alarms
    return RealtimeEndpoint(
        endpoint.name,
        RealtimeEndpointArgs(
            gateway=gateway,
            variants=variants,
            priority_block=priority_block,
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            instance_profile_arn=roles.profiles["serving"].arn,
            repository_url=repository_url,
            region=region,
            prefix=cfg.prefix,
            tags=dict(cfg.tags),
            extra_security_group_ids=[network.workload_security_group.id],
            rollout=RolloutArgs(
                rollout.strategy, rollout.canary_percent, rollout.linear_step_percent, rollout.wait_seconds
            ),
            alarms=AlarmArgs(alarms.target_5xx_per_minute, alarms.p99_latency_ms, alarms.evaluation_minutes),
            log_retention_days=cfg.log_retention_days,
        ),
    )


def async_endpoint(
    endpoint: stack_config.EndpointConfig,
    gateway: Gateway,
    priority_block: int,
    *,
    cfg: stack_config.StackConfig,
    network: Network,
    store: ModelStore,
    repository: ImageRepository,
    region: str,
    account_id: str,
    partition: str,
) -> AsyncEndpoint:
    """The :class:`AsyncEndpoint` of one configured async endpoint (its one instance variant = the
    workers)."""
    config = endpoint.async_inference
    (variant,) = endpoint.variants
    group = variant.group
    assert config is not None and group is not None and group.model_key is not None
    low = variant.scaling.min_instances if variant.scaling else variant.initial_instance_count
    high = variant.scaling.max_instances if variant.scaling else max(variant.initial_instance_count, 1)
    return AsyncEndpoint(
        endpoint.name,
        AsyncEndpointArgs(
            endpoint_name=endpoint.name,
            variant_name=variant.name,
            models_bucket=store.buckets["models"].bucket,
            models_bucket_arn=store.buckets["models"].arn,
            model_key=group.model_key,
            outputs_bucket=store.buckets["outputs"].bucket,
            outputs_bucket_arn=store.buckets["outputs"].arn,
            output_prefix=config.output_prefix,
            failure_prefix=config.failure_prefix,
            state_prefix=config.state_prefix,
            input_bucket=store.buckets["data"].bucket,
            input_bucket_arn=store.buckets["data"].arn,
            input_prefix=config.input_prefix,
            max_concurrent_invocations_per_instance=config.max_concurrent_invocations_per_instance,
            accelerator=group.accelerator,
            instance_types=group.instance_types,
            vpc_id=network.vpc_id,
            subnet_ids=network.private_subnet_ids,
            repository_url=repository.repository_url,
            repository_arns=[repository.arn],
            image_tag=group.image_tag,
            region=region,
            account_id=account_id,
            partition=partition,
            prefix=cfg.prefix,
            tags=dict(cfg.tags),
            ami_parameter=group.ami_parameter,
            ami_id=group.ami_id,
            scaling=async_scaling.BacklogScaling(
                min_instances=low,
                max_instances=high,
                target_backlog_per_instance=config.backlog_per_instance,
                idle_minutes=config.idle_minutes,
            ),
            success_topic_arn=config.success_topic_arn,
            error_topic_arn=config.error_topic_arn,
            include_inference_response_in=config.include_inference_response_in,
            # the async route takes the last priority of the endpoint's block, as a real-time weighted rule
            # would
            gateway=gateway,
            rule_priority=priority_block + endpoints.BLOCK - 1,
            root_volume_gb=group.root_volume_gb,
            spot_percentage=group.spot_percentage,
            on_demand_base=group.on_demand_base,
            environment=dict(group.environment),
            extra_security_group_ids=[network.workload_security_group.id],
            kms_key_arn=store.kms_key_arn,
            log_retention_days=cfg.log_retention_days,
            ssm_access=cfg.ssm_access,
        ),
    )


def serverless_endpoint(
    endpoint: stack_config.EndpointConfig,
    gateway: Gateway,
    priority_block: int,
    *,
    cfg: stack_config.StackConfig,
    repository_url: pulumi.Input[str],
    store: ModelStore,
    region: str,
    account_id: str,
    partition: str,
) -> ServerlessEndpoint:
    """The :class:`ServerlessEndpoint` of one configured endpoint (Lambda functions from the stack's
    image)."""
    variants = []
    for v in endpoint.variants:
        sv = v.serverless
        assert sv is not None  # serverless endpoints have serverless variants only (checked by the config)
        variants.append(
            ServerlessVariantArgs(
                variant_name=v.name,
                model_key=sv.model_key,
                image_tag=sv.image_tag,
                memory_size_in_mb=sv.memory_size_in_mb,
                max_concurrency=sv.max_concurrency,
                provisioned_concurrency=sv.provisioned_concurrency,
                initial_variant_weight=v.weight,
                environment=dict(sv.environment),
                timeout_seconds=sv.timeout_seconds,
                ephemeral_storage_in_mb=sv.ephemeral_storage_in_mb,
                multi_value_headers=sv.multi_value_headers,
            )
        )
    return ServerlessEndpoint(
        endpoint.name,
        ServerlessEndpointArgs(
            gateway=gateway,
            variants=variants,
            priority_block=priority_block,
            repository_url=repository_url,
            models_bucket=store.buckets["models"].bucket,
            models_bucket_arn=store.buckets["models"].arn,
            region=region,
            account_id=account_id,
            partition=partition,
            prefix=cfg.prefix,
            tags=dict(cfg.tags),
            kms_key_arn=store.kms_key_arn,
            log_retention_days=cfg.log_retention_days,
        ),
    )


def main() -> None:
    """Entry point of ``pulumi up``: load the config, build, export the outputs."""
    for key, value in build(load_config()).items():
        pulumi.export(key, value)

"""`AsyncEndpoint`: SageMaker's asynchronous inference on SQS, a front Lambda and a worker group.

Per endpoint::

    ALB  POST /endpoints/<name>/async-invocations ──► front Lambda (zip: serving/asyncq/front.py)
            checks the request as InvokeEndpointAsync does, sends it ──► SQS queue (SSE, DLQ)
    worker Auto Scaling group (model server + ``python -m serving.asyncq``) ◄── long-polls the queue
            writes <outputs bucket>/<outputPath><InferenceId>.out (or the failure object), publishes to
            the success / error SNS topic (created here unless given)
    scaling: target tracking on backlog per instance, a wake-from-zero step policy, scale-in to zero on
            an empty queue (:mod:`infra.async_scaling`)

The front is a zip on the plain Python runtime, not the project image: it needs only the standard library
and boto3 (both in the runtime), so it starts in a fraction of the image's cold start, pulls nothing from
ECR and ships three small modules of ``serving/asyncq`` (and ``common/uris.py``) that ``selfmaker up``
runs too.

Least privilege: the front may send to its queue and read (HEAD) its input locations, nothing else; the
workers may consume their queue, read their inputs and model, write their result prefixes, publish to
their topics, pull the image and write logs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import async_scaling, endpoints, naming, policies
from infra.components.compute import InstanceGroup, InstanceGroupArgs
from infra.components.endpoints.gateway import Gateway, Route

#: The front's code, shipped as files (infra imports nothing of ours): zip path -> source under the repo
#: root, or None for an empty package marker (the real ``serving/__init__`` chains pull in the worker's
#: dependencies, which the Lambda runtime does not have).
FRONT_FILES: dict[str, str | None] = {
    "serving/__init__.py": None,
    "serving/asyncq/__init__.py": None,
    "serving/asyncq/front.py": "serving/asyncq/front.py",
    "serving/asyncq/invoke.py": "serving/asyncq/invoke.py",
    "serving/asyncq/request.py": "serving/asyncq/request.py",
    "common/__init__.py": None,
    "common/uris.py": "common/uris.py",
}
FRONT_HANDLER = "serving.asyncq.front.handler"
FRONT_RUNTIME = "python3.12"
REPO_ROOT = Path(__file__).resolve().parents[3]
_ENDPOINT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
INCLUDE_VALUES = ("SUCCESS_NOTIFICATION_TOPIC", "ERROR_NOTIFICATION_TOPIC")
#: SNS's AWS-managed key: encrypted topics any publisher of the account may use through SNS.
SNS_MANAGED_KEY = "alias/aws/sns"


def async_path(endpoint: str) -> str:
    """The ALB path of an endpoint's InvokeEndpointAsync (sagemaker-runtime's request URI)."""
    if not endpoints.valid_sagemaker_name(endpoint):
        raise ValueError(f"{endpoint!r} is not a valid endpoint name")
    return f"/endpoints/{endpoint}/async-invocations"


def front_sources(root: Path = REPO_ROOT) -> dict[str, Path | None]:
    """The files of the front's zip (raises ``FileNotFoundError`` naming a missing one)."""
    out: dict[str, Path | None] = {}
    for target, source in FRONT_FILES.items():
        if source is None:
            out[target] = None
            continue
        path = root / source
        if not path.is_file():
            raise FileNotFoundError(f"the async front needs {path}")
        out[target] = path
    return out


@dataclass
class AsyncEndpointArgs:
    """Inputs of :class:`AsyncEndpoint`; validated when constructed. Names follow SageMaker's
    AsyncInferenceConfig (``max_concurrent_invocations_per_instance``, topics) where one exists."""

    endpoint_name: str
    #: the model (``s3://<models bucket>/<model_key>``)
    models_bucket: pulumi.Input[str]
    models_bucket_arn: pulumi.Input[str]
    model_key: str
    #: where results go: prefixes in the outputs bucket
    outputs_bucket: pulumi.Input[str]
    outputs_bucket_arn: pulumi.Input[str]
    output_prefix: str
    failure_prefix: str
    state_prefix: str
    #: where inputs may come from (the front refuses others): a bucket and a key prefix
    input_bucket: pulumi.Input[str]
    input_bucket_arn: pulumi.Input[str]
    input_prefix: str
    max_concurrent_invocations_per_instance: int
    #: worker instances
    accelerator: str
    instance_types: Sequence[str]
    vpc_id: pulumi.Input[str]
    subnet_ids: Sequence[pulumi.Input[str]]
    repository_url: pulumi.Input[str]
    repository_arns: Sequence[pulumi.Input[str]]
    image_tag: str
    region: str
    account_id: str
    partition: str
    prefix: str
    tags: Mapping[str, str]
    ami_parameter: str
    scaling: async_scaling.BacklogScaling
    success_topic_arn: str | None = None
    error_topic_arn: str | None = None
    include_inference_response_in: Sequence[str] = ()
    #: the stack's gateway and this endpoint's listener-rule priority (no gateway: the front is unrouted)
    gateway: Gateway | None = None
    rule_priority: int | None = None
    variant_name: str = "AllTraffic"
    ami_id: str | None = None
    root_volume_gb: int = 40
    spot_percentage: int = 0
    on_demand_base: int = 0
    environment: Mapping[str, str] = field(default_factory=dict)
    extra_security_group_ids: Sequence[pulumi.Input[str]] = field(default_factory=list)
    kms_key_arn: pulumi.Input[str] | None = None
    log_retention_days: int = 30
    #: Session Manager on the workers instead of SSH (as the stack's other instance roles)
    ssm_access: bool = True
    max_invocation_timeout_seconds: int = async_scaling.MAX_INVOCATION_TIMEOUT

    def __post_init__(self) -> None:
        def bad(name: str, message: str) -> ValueError:
            return ValueError(f"AsyncEndpointArgs.{name}: {message}")

        if not _ENDPOINT_NAME.match(self.endpoint_name):
            raise bad("endpoint_name", f"{self.endpoint_name!r} is not a SageMaker endpoint name")
        if not 1 <= self.max_concurrent_invocations_per_instance <= 1000:
            raise bad("max_concurrent_invocations_per_instance", "must be 1-1000")
        for name in ("output_prefix", "failure_prefix", "state_prefix", "input_prefix"):
            value = getattr(self, name)
            if naming.normalize_key_prefix(value) != value or not value:
                raise bad(name, f"{value!r} must be a key prefix like 'async/name/'")
        if not self.model_key.endswith(".tar.gz"):
            raise bad("model_key", f"{self.model_key!r} must be a model.tar.gz key")
        for name in ("success_topic_arn", "error_topic_arn"):
            value = getattr(self, name)
            if value is not None and not _TOPIC_ARN.match(value):
                raise bad(name, f"{value!r} is not an SNS topic ARN")
        for value in self.include_inference_response_in:
            if value not in INCLUDE_VALUES:
                raise bad("include_inference_response_in", f"{value!r} must be one of {INCLUDE_VALUES}")
        if (self.gateway is None) != (self.rule_priority is None):
            raise bad("rule_priority", "a gateway needs a rule priority (and a priority a gateway)")
        if self.rule_priority is not None and not 1 <= self.rule_priority <= endpoints.MAX_PRIORITY:
            raise bad("rule_priority", f"must be 1-{endpoints.MAX_PRIORITY}")
        if not endpoints.valid_sagemaker_name(self.variant_name):
            raise bad("variant_name", f"{self.variant_name!r} is not a SageMaker variant name")
        if not self.repository_arns:
            raise bad("repository_arns", "the worker image's repository is needed")
        try:
            async_scaling.check(self.scaling)
            async_scaling.visibility_timeout(self.max_invocation_timeout_seconds)
        except ValueError as exc:
            raise bad("scaling", str(exc)) from None


class AsyncEndpoint(pulumi.ComponentResource):
    """Queue + DLQ, topics, front Lambda (+ its target group and listener rule), worker group, scaling."""

    def __init__(
        self, name: str, args: AsyncEndpointArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("selfmaker:endpoints:AsyncEndpoint", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {**args.tags, "Endpoint": args.endpoint_name}
        visibility = async_scaling.visibility_timeout(args.max_invocation_timeout_seconds)

        # ---- queue and dead-letter queue (SSE-SQS: no key policy for every sender to get right)
        self.dead_letter_queue = aws.sqs.Queue(
            naming.child_name(name, "dlq"),
            sqs_managed_sse_enabled=True,
            message_retention_seconds=1_209_600,
            tags=tags,
            opts=child,
        )
        self.queue = aws.sqs.Queue(
            naming.child_name(name, "queue"),
            sqs_managed_sse_enabled=True,
            visibility_timeout_seconds=visibility,
            message_retention_seconds=async_scaling.message_retention_seconds(),
            receive_wait_time_seconds=20,
            redrive_policy=self.dead_letter_queue.arn.apply(
                lambda arn: json.dumps(
                    {"deadLetterTargetArn": arn, "maxReceiveCount": async_scaling.max_receive_count()}
                )
            ),
            tags=tags,
            opts=child,
        )
        aws.sqs.RedriveAllowPolicy(
            naming.child_name(name, "dlq-allow"),
            queue_url=self.dead_letter_queue.id,
            redrive_allow_policy=self.queue.arn.apply(
                lambda arn: json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [arn]})
            ),
            opts=child,
        )

        # ---- topics: the given ones, else created (encrypted with SNS's managed key)
        self.topics: dict[str, aws.sns.Topic] = {}
        topic_arns: dict[str, pulumi.Input[str]] = {}
        for kind, given in (("success", args.success_topic_arn), ("error", args.error_topic_arn)):
            if given:
                topic_arns[kind] = given
                continue
            topic = aws.sns.Topic(
                naming.child_name(name, f"{kind}-topic"),
                kms_master_key_id=SNS_MANAGED_KEY,
                tags=tags,
                opts=child,
            )
            self.topics[kind] = topic
            topic_arns[kind] = topic.arn

        output_uri = pulumi.Output.format("s3://{0}/{1}", args.outputs_bucket, args.output_prefix)
        failure_uri = pulumi.Output.format("s3://{0}/{1}", args.outputs_bucket, args.failure_prefix)
        state_uri = pulumi.Output.format("s3://{0}/{1}", args.outputs_bucket, args.state_prefix)
        input_uri = pulumi.Output.format("s3://{0}/{1}", args.input_bucket, args.input_prefix)
        log_pattern = naming.log_group_arn_pattern(args.partition, args.region, args.account_id, args.prefix)

        def scope(values: dict[str, Any]) -> policies.AsyncEndpointScope:
            return policies.AsyncEndpointScope(
                queue_arn=values["queue"],
                topic_arns=tuple(values["topics"]),
                input_locations=((values["inputs"], args.input_prefix),),
                outputs_bucket_arn=values["outputs"],
                output_prefixes=(args.output_prefix, args.failure_prefix, args.state_prefix),
                models_bucket_arn=values["models"],
                model_key=args.model_key,
                repository_arns=tuple(values["repos"]),
                log_group_pattern=log_pattern,
                kms_key_arn=values["kms"],
            )

        scope_values = pulumi.Output.all(
            queue=self.queue.arn,
            topics=pulumi.Output.all(*topic_arns.values()),
            inputs=args.input_bucket_arn,
            outputs=args.outputs_bucket_arn,
            models=args.models_bucket_arn,
            repos=pulumi.Output.all(*args.repository_arns),
            kms=args.kms_key_arn,
        )

        # ---- the front Lambda
        self.front_log_group = aws.cloudwatch.LogGroup(
            naming.child_name(name, "front-logs"),
            name=f"/{args.prefix}/async/{args.endpoint_name}/front",
            retention_in_days=args.log_retention_days,
            tags=tags,
            opts=child,
        )
        self.front_role = aws.iam.Role(
            naming.child_name(name, "front-role"),
            description=f"selfmaker async front of {args.endpoint_name}",
            # aws:SourceAccount: the confused-deputy guard AWS recommends for service principals
            assume_role_policy=json.dumps(
                policies.assume_role_policy("lambda.amazonaws.com", args.account_id)
            ),
            tags=tags,
            opts=child,
        )
        front_policy = aws.iam.RolePolicy(
            naming.child_name(name, "front-policy"),
            role=self.front_role.id,
            policy=pulumi.Output.all(scope_values, self.front_log_group.arn).apply(
                lambda v: json.dumps(policies.async_front_policy(scope(v[0]), v[1]))
            ),
            opts=child,
        )
        archive = pulumi.AssetArchive(
            {
                target: pulumi.StringAsset("") if source is None else pulumi.FileAsset(str(source))
                for target, source in front_sources().items()
            }
        )
        self.front = aws.lambda_.Function(
            naming.child_name(name, "front"),
            description=f"selfmaker InvokeEndpointAsync front of {args.endpoint_name}",
            runtime=FRONT_RUNTIME,
            handler=FRONT_HANDLER,
            code=archive,
            role=self.front_role.arn,
            architectures=["arm64"],
            memory_size=256,
            timeout=15,
            kms_key_arn=args.kms_key_arn,
            logging_config={"log_format": "Text", "log_group": self.front_log_group.name},
            environment={
                "variables": {
                    "SELFMAKER_ENDPOINT_NAME": args.endpoint_name,
                    "SELFMAKER_QUEUE_URL": self.queue.url,
                    "SELFMAKER_OUTPUT_PATH": output_uri,
                    "SELFMAKER_FAILURE_PATH": failure_uri,
                    "SELFMAKER_SUCCESS_TOPIC": topic_arns["success"],
                    "SELFMAKER_ERROR_TOPIC": topic_arns["error"],
                    "SELFMAKER_INCLUDE_RESPONSE_IN": ",".join(args.include_inference_response_in),
                    "SELFMAKER_INPUT_LOCATIONS": input_uri,
                }
            },
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[front_policy]),
        )
        self.target_group: aws.lb.TargetGroup | None = None
        self.listener_rule: aws.lb.ListenerRule | None = None
        if args.gateway is not None and args.rule_priority is not None:
            self.target_group = aws.lb.TargetGroup(
                naming.child_name(name, "front-tg"),
                target_type="lambda",
                lambda_multi_value_headers_enabled=False,
                tags=tags,
                opts=child,
            )
            permission = aws.lambda_.Permission(
                naming.child_name(name, "front-invoke"),
                action="lambda:InvokeFunction",
                function=self.front.name,
                principal="elasticloadbalancing.amazonaws.com",
                source_arn=self.target_group.arn,
                opts=child,
            )
            aws.lb.TargetGroupAttachment(
                naming.child_name(name, "front-target"),
                target_group_arn=self.target_group.arn,
                target_id=self.front.arn,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[permission]),
            )
            self.listener_rule = args.gateway.add_route(
                f"{name}-async",
                paths=[async_path(args.endpoint_name)],
                routes=[Route(self.target_group.arn)],
                priority=args.rule_priority,
            )

        # ---- the workers: role, profile, group
        self.worker_role = aws.iam.Role(
            naming.child_name(name, "worker-role"),
            description=f"selfmaker async workers of {args.endpoint_name}",
            assume_role_policy=json.dumps(policies.assume_role_policy("ec2.amazonaws.com")),
            tags=tags,
            opts=child,
        )
        aws.iam.RolePolicy(
            naming.child_name(name, "worker-policy"),
            role=self.worker_role.id,
            policy=scope_values.apply(lambda v: json.dumps(policies.async_endpoint_worker_policy(scope(v)))),
            opts=child,
        )
        if args.ssm_access:
            aws.iam.RolePolicyAttachment(
                naming.child_name(name, "worker-ssm"),
                role=self.worker_role.name,
                policy_arn=f"arn:{args.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore",
                opts=child,
            )
        self.worker_profile = aws.iam.InstanceProfile(
            naming.child_name(name, "worker-profile"),
            role=self.worker_role.name,
            tags=tags,
            opts=child,
        )
        scaling = args.scaling
        self.workers = InstanceGroup(
            naming.child_name(name, "workers"),
            InstanceGroupArgs(
                role="async",
                accelerator=args.accelerator,
                instance_types=args.instance_types,
                vpc_id=args.vpc_id,
                subnet_ids=args.subnet_ids,
                instance_profile_arn=self.worker_profile.arn,
                repository_url=args.repository_url,
                image_tag=args.image_tag,
                region=args.region,
                log_group_name=naming.log_group_name(args.prefix, f"async-{args.endpoint_name}"),
                tags=tags,
                ami_parameter=args.ami_parameter,
                ami_id=args.ami_id,
                min_size=scaling.min_instances,
                max_size=scaling.max_instances,
                desired_capacity=scaling.min_instances,
                on_demand_base=args.on_demand_base,
                spot_percentage=args.spot_percentage,
                capacity_rebalance=args.spot_percentage > 0,
                root_volume_gb=args.root_volume_gb,
                log_retention_days=args.log_retention_days,
                extra_security_group_ids=list(args.extra_security_group_ids),
                model_data_uri=pulumi.Output.format("s3://{0}/{1}", args.models_bucket, args.model_key),
                # the model server must allow the longest invocation the queue allows
                environment={
                    "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(args.max_invocation_timeout_seconds),
                    **args.environment,
                },
                queue_url=self.queue.url,
                state_uri=state_uri,
                endpoint_name=args.endpoint_name,
                variant_name=args.variant_name,
                concurrency=args.max_concurrent_invocations_per_instance,
                visibility_timeout=visibility,
                scaled=True,
            ),
            opts=child,
        )
        group = self.workers.auto_scaling_group

        # ---- scaling on backlog
        tracking: Any = {
            "target_value": scaling.target_backlog_per_instance,
            "customized_metric_specification": {
                "metrics": pulumi.Output.all(self.queue.name, group.name).apply(
                    lambda v: async_scaling.backlog_metrics(v[0], v[1])
                ),
            },
        }
        self.backlog_policy = aws.autoscaling.Policy(
            naming.child_name(name, "backlog-tracking"),
            autoscaling_group_name=group.name,
            policy_type="TargetTrackingScaling",
            estimated_instance_warmup=300,
            target_tracking_configuration=tracking,
            opts=child,
        )
        self.wake_policy = aws.autoscaling.Policy(
            naming.child_name(name, "wake"),
            autoscaling_group_name=group.name,
            policy_type="StepScaling",
            adjustment_type="ExactCapacity",
            step_adjustments=async_scaling.wake_step_adjustments(scaling.min_instances),
            opts=child,
        )
        self.wake_alarm = aws.cloudwatch.MetricAlarm(
            naming.child_name(name, "wake-alarm"),
            alarm_description=f"{args.endpoint_name}: requests wait and no async worker runs",
            comparison_operator="GreaterThanOrEqualToThreshold",
            threshold=1,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            treat_missing_data="notBreaching",
            metric_queries=pulumi.Output.all(self.queue.name, group.name).apply(
                lambda v: async_scaling.wake_alarm_queries(v[0], v[1])
            ),
            alarm_actions=[self.wake_policy.arn],
            tags=tags,
            opts=child,
        )
        self.idle_policy = aws.autoscaling.Policy(
            naming.child_name(name, "idle"),
            autoscaling_group_name=group.name,
            policy_type="StepScaling",
            adjustment_type="ExactCapacity",
            step_adjustments=async_scaling.idle_step_adjustments(scaling.min_instances),
            opts=child,
        )
        self.idle_alarm = aws.cloudwatch.MetricAlarm(
            naming.child_name(name, "idle-alarm"),
            alarm_description=f"{args.endpoint_name}: queue empty for {scaling.idle_minutes} minutes",
            comparison_operator="LessThanOrEqualToThreshold",
            threshold=0,
            evaluation_periods=scaling.idle_minutes,
            datapoints_to_alarm=scaling.idle_minutes,
            treat_missing_data="breaching",
            metric_queries=self.queue.name.apply(async_scaling.idle_alarm_queries),
            alarm_actions=[self.idle_policy.arn],
            tags=tags,
            opts=child,
        )

        #: InvokeEndpointAsync's URL through the gateway (None without one)
        self.url: pulumi.Output[str] | None = (
            pulumi.Output.concat(args.gateway.url, async_path(args.endpoint_name))
            if args.gateway is not None
            else None
        )
        # Something no worker could handle after every retry: worth a look (subscribe to it as you like).
        self.dead_letter_alarm = aws.cloudwatch.MetricAlarm(
            naming.child_name(name, "dlq-alarm"),
            alarm_description=f"{args.endpoint_name}: requests in the dead-letter queue",
            namespace="AWS/SQS",
            metric_name="ApproximateNumberOfMessagesVisible",
            dimensions={"QueueName": self.dead_letter_queue.name},
            statistic="Maximum",
            period=async_scaling.ALARM_PERIOD_SECONDS,
            evaluation_periods=1,
            threshold=0,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            tags=tags,
            opts=child,
        )

        self.output_path = output_uri
        self.failure_path = failure_uri
        self.topic_arns = topic_arns
        self.register_outputs(
            {
                "url": self.url,
                "queue_url": self.queue.url,
                "dead_letter_queue_url": self.dead_letter_queue.url,
                "dead_letter_alarm": self.dead_letter_alarm.name,
                "front_function": self.front.name,
                "output_path": output_uri,
                "failure_path": failure_uri,
                "success_topic_arn": topic_arns["success"],
                "error_topic_arn": topic_arns["error"],
                "auto_scaling_group_name": group.name,
            }
        )
